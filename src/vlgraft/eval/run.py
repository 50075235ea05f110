"""``vlgraft eval``: every evaluation the recipe's ``eval`` section asks for, into one ``eval.json``."""

from __future__ import annotations

from pathlib import Path

from vlgraft.config import Recipe, inference_precision
from vlgraft.eval.tasks import check_specs, print_tasks, run_tasks
from vlgraft.eval.text import before_after, load_text_set, print_text_ability
from vlgraft.eval.vqa import evaluate, write_result
from vlgraft.files import OutputError, ensure_writable, read_json


def check_eval_inputs(recipe: Recipe, out: Path):
    """What ``run_eval`` reads or writes first, checked before any model is built or generates: the
    result's folder, the text set (returned, None with ``eval.text: off``) and the task specs."""
    ensure_writable(out.parent, "folder of the eval result (--out)")
    if out.is_dir():
        raise OutputError(f"the eval result {out} is a folder; give a file name (--out DIR/eval.json)")
    text_set = load_text_set(recipe.eval.text_set) if recipe.eval.text != "off" else None
    check_specs(recipe.eval.tasks or ["vqa"])
    return text_set


def run_eval(vlm, recipe: Recipe, out: Path) -> dict:
    """VQA on ``data.eval`` and the other ``eval.tasks`` (unless ``eval.text: only``) and the text ability
    before and after training (``eval.text``: also / only), written to ``out`` and its predictions files
    beside it (``.predictions.jsonl``, ``.tasks.jsonl``, ``.text.jsonl``)."""
    cfg, precision = recipe.eval, inference_precision(recipe)
    text_set = check_eval_inputs(recipe, out)
    tasks = cfg.tasks or ["vqa"]
    result: dict = {}
    if cfg.text != "only" and "vqa" in tasks:
        result = evaluate(vlm, recipe.data, cfg, precision, out_path=out)
        if "val_loss" in result:
            print(f"held-out loss {result['val_loss']:.4f} per answer token on {result['val_loss_records']} records")
        print(f"accuracy {100 * result['accuracy']:.2f}% on {result['n']} questions "
              f"({result['questions_per_s']:.1f} questions/s)")
    others = [t for t in tasks if t != "vqa"]
    if others and cfg.text != "only":
        blocks, rows = run_tasks(vlm, recipe, others, precision)
        result = read_json(out) if out.is_file() and "vqa" in tasks else {}
        result["tasks"] = blocks
        write_result(out, result, rows, ".tasks.jsonl")
        print_tasks(blocks)
    if text_set is not None:
        block = before_after(vlm, recipe, text_set, batch_size=cfg.text_batch_size, precision=precision)
        rows = block.pop("predictions")
        result = read_json(out) if out.is_file() else {}
        result["text_ability"] = block
        write_result(out, result, rows, ".text.jsonl")
        print_text_ability(block)
        print(f"wrote text_ability to {out}")
    return result
