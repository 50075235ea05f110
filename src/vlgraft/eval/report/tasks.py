"""The sections of ``eval.json``'s ``tasks`` blocks, one per spec, chosen by the spec's kind (``caption:``,
``pope:``, ``choice:``, as ``eval/tasks.py`` writes them); a kind this report does not know is shown as a
key/value table, so a newer eval result never breaks an older report."""

from __future__ import annotations

from vlgraft.eval.report import figures
from vlgraft.eval.report.formatting import MISSING, count, flatten, is_number, key_value_rows, pct, raw
from vlgraft.eval.report.page import Figure, Page, Section, Table
from vlgraft.eval.report.sections import extras

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
POPE_SETTINGS = ("random", "popular", "adversarial")
POPE_MEASURES = (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("f1", "F1"),
                 ("yes_ratio", "yes-ratio"))


def _seconds(block: dict) -> str:
    return f" in {raw(block['seconds'], 1)} s" if is_number(block.get("seconds")) else ""


def caption_section(spec: str, block: dict, page: Page) -> Section:
    s = Section(f"Captions: {spec}")
    s.notes.append(f"{count(block.get('images'))} images, {count(block.get('captions'))} reference captions"
                   f"{_seconds(block)}.")
    metrics = [m for m in CAPTION_METRICS if m in block]
    if metrics:
        s.tables.append(Table(metrics, [[raw(block[m]) for m in metrics]], "COCO caption metrics"))
    plotted = [m for m in metrics if is_number(block[m])]
    if plotted:
        png = figures.bar_chart(plotted, [block[m] for m in plotted], f"caption metrics: {spec}", "score")
        s.figures.append(Figure(page.add_asset("figures", spec, png), f"caption metrics of {spec}"))
    if (t := extras(block, {"data", "images", "captions", "seconds", *CAPTION_METRICS})) is not None:
        s.tables.append(t)
    return s


def pope_section(spec: str, block: dict, page: Page) -> Section:
    s = Section(f"POPE: {spec}")
    s.notes.append(f"Objects {block.get('objects', MISSING)}, {count(block.get('images'))} images{_seconds(block)}.")
    settings = [k for k in POPE_SETTINGS if isinstance(block.get(k), dict)]
    rows = [[k] + [pct(block[k].get(m)) for m, _ in POPE_MEASURES] + [count(block[k].get("n"))] for k in settings]
    if rows:
        s.tables.append(Table(["setting"] + [f"{label} (%)" for _, label in POPE_MEASURES] + ["n"], rows))
        series = {k: [100 * block[k][m] if is_number(block[k].get(m)) else 0.0 for m, _ in POPE_MEASURES]
                  for k in settings}
        png = figures.grouped_bar_chart([label for _, label in POPE_MEASURES], series, f"POPE: {spec}", "%",
                                        ymax=100)
        s.figures.append(Figure(page.add_asset("figures", spec, png), f"POPE measures per setting of {spec}"))
    if (t := extras(block, {"objects", "images", "seconds", *POPE_SETTINGS})) is not None:
        s.tables.append(t)
    return s


def choice_section(spec: str, block: dict, page: Page) -> Section:
    s = Section(f"Multiple choice: {spec}")
    cols, row = ["questions", "accuracy (%)"], [count(block.get("n")), pct(block.get("accuracy"))]
    if "circular_accuracy" in block:
        cols.append("circular accuracy (%)")
        row.append(pct(block["circular_accuracy"]))
    cols += ["unanswered", "scoring"]
    row += [count(block.get("unanswered")), str(block.get("scoring", "generate"))]  # generate: before scoring existed
    s.tables.append(Table(cols, [row]))
    if is_number(block.get("seconds")):
        s.notes.append(f"Evaluated{_seconds(block)}; unanswered: no option letter found in the answer.")
    sqa = block.get("scienceqa")
    acc = sqa.get("accuracy") if isinstance(sqa, dict) and isinstance(sqa.get("accuracy"), dict) else {}
    n = sqa.get("n") if isinstance(sqa, dict) and isinstance(sqa.get("n"), dict) else {}
    cats = [c for c, v in acc.items() if is_number(v)]  # a category no question falls in is null: no column
    if cats:
        s.tables.append(Table(["", *cats], [["accuracy (%)"] + [pct(acc[c]) for c in cats],
                                            ["questions"] + [count(n.get(c)) for c in cats]],
                              "ScienceQA categories"))
        png = figures.bar_chart(cats, [100 * acc[c] for c in cats], f"ScienceQA categories: {spec}", "accuracy (%)",
                                ymax=100, fmt="{:.1f}")
        s.figures.append(Figure(page.add_asset("figures", spec, png), f"ScienceQA category accuracy of {spec}"))
    known = {"data", "n", "accuracy", "circular_accuracy", "unanswered", "scoring", "scienceqa", "seconds"}
    if (t := extras(block, known)) is not None:
        s.tables.append(t)
    return s


def generic_section(spec: str, block, page: Page) -> Section:
    s = Section(f"Task: {spec}")
    s.notes.append("A task kind this report does not know: its figures as they are.")
    pairs = flatten(block)
    if pairs:
        s.tables.append(Table(["key", "value"], key_value_rows(pairs)))
    return s


SECTION_OF_KIND = {"caption": caption_section, "pope": pope_section, "choice": choice_section}


def task_kind(spec: str) -> str:
    return spec.partition(":")[0]


def task_section(spec: str, block, page: Page) -> Section:
    make = SECTION_OF_KIND.get(task_kind(spec))
    return make(spec, block, page) if make is not None and isinstance(block, dict) else generic_section(
        spec, block, page)
