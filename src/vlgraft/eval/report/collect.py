"""Read a run folder's inputs for the report: ``recipe.yaml``, ``metrics.jsonl``, the eval result and the row
files ``vlgraft eval`` writes beside it. Every input is optional except that a report needs something to
show (an eval result or a training log); a file that is there but unreadable is one error naming it (and
its line)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from vlgraft.errors import DataError
from vlgraft.files import iter_jsonl, read_json

ROW_KINDS = ("predictions", "tasks", "text")  # eval.json -> eval.predictions.jsonl, eval.tasks.jsonl, ...


@dataclasses.dataclass
class RunInputs:
    run: Path
    recipe: dict | None = None
    metrics: list[dict] = dataclasses.field(default_factory=list)  # training log lines, in order
    eval_path: Path | None = None
    result: dict | None = None  # the eval result (eval.json)
    predictions: list[dict] = dataclasses.field(default_factory=list)  # VQA rows
    task_rows: list[dict] = dataclasses.field(default_factory=list)  # caption / POPE / choice rows ("task": spec)
    text_rows: list[dict] = dataclasses.field(default_factory=list)  # text-ability questions, before and after


def rows_path(eval_path: Path, kind: str) -> Path:
    """The row file ``vlgraft eval`` writes beside its result (``eval/vqa.py: write_result``)."""
    return eval_path.with_suffix(f".{kind}.jsonl")


def read_rows(path: Path) -> list[dict]:
    """The objects of a JSONL file, one per line; anything else is an error naming the file and line."""
    rows = []
    for ln, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {ln} must be a JSON object, not {type(row).__name__}")
        rows.append(row)
    return rows


def read_recipe(path: Path) -> dict:
    """The recipe as plain YAML: a summary needs only names, and an old recipe the current loader would
    reject (or upgrade) still has them."""
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise DataError(f"{path}: not valid YAML{line}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not isinstance(recipe, dict):
        raise DataError(f"{path}: a recipe must be a mapping of keys, not {type(recipe).__name__}")
    return recipe


def collect(run: str | Path, eval_file: str | Path | None = None) -> RunInputs:
    """Everything the report shows of ``run``; ``eval_file`` replaces ``RUN/eval.json`` (its row files are
    beside it, with the same stem)."""
    run = Path(run)
    if not run.is_dir():
        raise DataError(f"run folder not found: {run}")
    inputs = RunInputs(run)
    eval_path = Path(eval_file) if eval_file is not None else run / "eval.json"
    metrics_path = run / "metrics.jsonl"
    if eval_file is not None and not eval_path.is_file():
        raise DataError(f"eval result not found: {eval_path} (--eval)")
    if not eval_path.is_file() and not metrics_path.is_file():
        raise DataError(f"{run} has neither eval.json nor metrics.jsonl to report on: run `vlgraft eval {run}` "
                        "first (or `vlgraft train` for a loss curve)")
    if (run / "recipe.yaml").is_file():
        inputs.recipe = read_recipe(run / "recipe.yaml")
    if metrics_path.is_file():
        inputs.metrics = read_rows(metrics_path)
    if eval_path.is_file():
        result = read_json(eval_path)
        if not isinstance(result, dict):
            raise DataError(f"{eval_path}: an eval result must be a JSON object, not {type(result).__name__}")
        inputs.eval_path, inputs.result = eval_path, result
        rows = {k: read_rows(rows_path(eval_path, k)) if rows_path(eval_path, k).is_file() else [] for k in ROW_KINDS}
        inputs.predictions, inputs.task_rows, inputs.text_rows = rows["predictions"], rows["tasks"], rows["text"]
    return inputs
