"""Build a run's report page and write its folder: ``index.html`` (self-contained) and ``report.md`` with
``figures/`` and ``examples/`` beside it, all in one atomic rename (a failure leaves the previous report,
or nothing)."""

from __future__ import annotations

from pathlib import Path

from vlgraft.errors import VlgraftError
from vlgraft.eval.report.collect import RunInputs, collect
from vlgraft.eval.report.examples import example_sections
from vlgraft.eval.report.html import GENERATOR, render_html
from vlgraft.eval.report.markdown import render_markdown
from vlgraft.eval.report.page import DEFAULT_EXAMPLES, Page
from vlgraft.eval.report.sections import has_vqa, loss_section, recipe_section, text_section, vqa_section
from vlgraft.eval.report.tasks import task_section
from vlgraft.files import atomic_path


def build_page(inputs: RunInputs, examples: int = DEFAULT_EXAMPLES) -> Page:
    """The report's content, in page order: recipe, loss curve, VQA, each task, text ability, example grids."""
    page = Page(inputs.run.resolve().name)
    page.sections.append(recipe_section(inputs.recipe))
    if inputs.metrics:
        page.sections.append(loss_section(inputs.metrics, page))
    result = inputs.result or {}
    if has_vqa(result):
        page.sections.append(vqa_section(result, page))
    tasks = result.get("tasks") if isinstance(result.get("tasks"), dict) else {}
    for spec, block in tasks.items():
        page.sections.append(task_section(spec, block, page))
    if isinstance(result.get("text_ability"), dict):
        page.sections.append(text_section(result["text_ability"], inputs.text_rows, examples))
    vqa_title = f"VQA on {result['data']}" if isinstance(result.get("data"), str) else "VQA"
    page.sections += example_sections(inputs.predictions, inputs.task_rows, list(tasks), examples, page, vqa_title)
    return page


def is_report(folder: Path) -> bool:
    """Whether ``folder`` holds a report this command wrote (and may be replaced by a new one)."""
    index = folder / "index.html"
    try:
        return index.is_file() and f'<meta name="generator" content="{GENERATOR}">' in index.read_text("utf-8")[:2000]
    except (OSError, UnicodeDecodeError):
        return False


def check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an earlier report (or an empty folder): ``--out`` pointing at the run
    folder, or at a folder of the user's, must not delete it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise VlgraftError(f"--out {out} is a file, not a report folder; choose another --out")
    if any(out.iterdir()) and not is_report(out):
        raise VlgraftError(f"refusing to replace {out}: it is not a vlgraft report (no index.html written by "
                           "`vlgraft report`); choose another --out or remove it")


def write_page(page: Page, out: Path) -> list[Path]:
    """``page`` into the folder ``out`` in one rename; returns the paths written (the two pages, then the
    asset folders)."""
    check_replaceable(out)
    html, md = render_html(page), render_markdown(page)  # rendered before anything is written
    with atomic_path(out, folder=True) as tmp:
        (tmp / "index.html").write_text(html, encoding="utf-8")
        (tmp / "report.md").write_text(md, encoding="utf-8")
        for name, png in page.assets.items():
            (tmp / name).parent.mkdir(exist_ok=True)
            (tmp / name).write_bytes(png)
    folders = sorted({out / Path(name).parent for name in page.assets})
    return [out / "index.html", out / "report.md", *folders]


def write_report(run: str | Path, out: str | Path | None = None, eval_file: str | Path | None = None,
                 examples: int = DEFAULT_EXAMPLES) -> list[Path]:
    """Read ``run`` (its ``eval.json`` or ``eval_file``, ``metrics.jsonl``, ``recipe.yaml``, row files) and
    write its report to ``out`` (default ``RUN/report``); returns the paths written."""
    if examples < 0:
        raise VlgraftError(f"--examples must be 0 or more, got {examples}")
    inputs = collect(run, eval_file)
    out = Path(out) if out is not None else inputs.run / "report"
    check_replaceable(out)  # before the figures are drawn: a refused --out fails at once
    return write_page(build_page(inputs, examples), out)
