"""Helpers shared by the benchmark scripts: train and evaluate a variant, or run one CLI command, in a
child process through ``vlgraft.runner`` (what ``vlgraft sweep`` uses), and read back the figures."""

from __future__ import annotations

import time
from pathlib import Path

from vlgraft.files import iter_jsonl, write_json  # noqa: F401  (the benchmarks write their results with it)
from vlgraft.runner import run_commands


def run_cli(args: list[str], workdir: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``vlgraft ARGS`` in a child process (``vlgraft.runner``); return wall seconds and peak memory."""
    log = log or workdir / f"cli-{time.time_ns()}.log"
    res = run_commands([args], log, env)
    if res["status"] != "ok":
        raise SystemExit(f"benchmark step failed: vlgraft {' '.join(args)}: {res['error']} (log: {log})")
    return {"wall_s": res["wall_s"], "max_rss_mb": res["commands"][0]["max_rss_mb"],
            **({"cuda_peak_mb": res["cuda_peak_mb"]} if "cuda_peak_mb" in res else {})}


def read_metrics(run: Path) -> list[dict]:
    return [rec for _, rec in iter_jsonl(run / "metrics.jsonl")]


DIRECT = "data.describe_first=null"  # benchmarks measure answering straight from the image


def train_and_eval(name: str, recipe: str, overrides: list[str], work: Path, steps: int, batch: int,
                   eval_limit: int, loss_records: int = 0) -> dict:
    """Train ``recipe`` with ``overrides`` for ``steps`` x ``batch`` and evaluate on the first
    ``eval_limit`` easy-VQA test questions, in one child process (the runner ``vlgraft sweep`` uses);
    return the figures the benchmark tables show."""
    from vlgraft.config import dump_recipe, load_recipe
    from vlgraft.files import write_text_atomic
    from vlgraft.runner import eval_figures, train_and_evaluate, training_figures

    run = work / name.replace("+", "_").replace("@", "_").replace(" ", "_")
    # DIRECT: the variants are compared on answering straight from the image (docs/DESCRIBE.md)
    o = [DIRECT, *overrides, f"train.batch_size={batch}", f"train.max_steps={steps}", f"train.output_dir={run}",
         "train.log_every=5", "train.save_every=null"]
    recipe_file = work / f"{run.name}.yaml"
    write_text_atomic(recipe_file, dump_recipe(load_recipe(recipe, o)))
    ev_path = work / f"{run.name}-eval.json"
    ev_o = [f"eval.limit={eval_limit}"] + ([f"eval.loss_records={loss_records}"] if loss_records else [])
    job = train_and_evaluate(recipe_file, run, [(ev_path, ev_o)], work / f"{run.name}.log")
    if job["status"] != "ok":
        raise SystemExit(f"benchmark variant {name} failed: {job['error']} (log: {work / f'{run.name}.log'})")
    tr, ev = training_figures(run), eval_figures(ev_path)
    by_type = {"all": ev["accuracy"], **ev["by_type"]}
    return {"run": str(run), "recipe": recipe, "overrides": o, "steps": steps, "batch": batch,
            "trainable_params": tr["trainable_params"], "samples_per_s": tr["samples_per_s"],
            "peak_rss_mb": job["peak_rss_mb"], "final_train_loss": tr["final_train_loss"], "val_loss": ev["val_loss"],
            "accuracy": ev["accuracy"], "by_type": by_type, "eval_questions": ev["eval_n"],
            "train_wall_s": job["train_wall_s"], "eval_wall_s": job["eval_wall_s"][0], "curve": tr["curve"]}


def print_table(results: dict, lead: list[tuple[str, object]]) -> None:
    """Markdown table: one row per variant, the ``lead`` columns (header, row -> text), then
    accuracy and its yes/no, colour and shape breakdown."""
    heads = ["variant", *(h for h, _ in lead), "accuracy", "yes/no", "colour", "shape"]
    print("\n| " + " | ".join(heads) + " |")
    print("|---" + "|---:" * (len(heads) - 1) + "|")
    for name, r in results.items():
        b = r["by_type"]
        cells = [name, *(fmt(r) for _, fmt in lead), f"{100 * r['accuracy']:.2f}%",
                 *(f"{100 * b.get(k, 0):.1f}%" for k in ("yes/no", "color", "shape"))]
        print("| " + " | ".join(cells) + " |")
