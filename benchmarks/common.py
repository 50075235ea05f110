"""Helpers shared by the benchmark scripts: run a CLI command in a child process and read back its
wall time, peak memory and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vlgraft.files import write_json  # noqa: F401  (the benchmarks write their results with it)

# Runs vlgraft's CLI in this child process and reports its own peak RSS (and CUDA peak) on exit.
_WRAPPER = r"""
import json, resource, sys, atexit
def report():
    out = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        import torch
        if torch.cuda.is_available():
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except Exception:
        pass
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
atexit.register(report)
from vlgraft.cli import main
main(sys.argv[2:])
"""


def run_cli(args: list[str], workdir: Path, env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``vlgraft ARGS`` in a child process; return wall seconds and peak memory."""
    mem = workdir / f"mem-{time.time_ns()}.json"
    t0 = time.time()
    with open(log or os.devnull, "w") as logf:
        res = subprocess.run([sys.executable, "-c", _WRAPPER, str(mem), *args], env={**os.environ, **(env or {})},
                             stdout=logf, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"benchmark step failed: vlgraft {' '.join(args)} (log: {log})")
    out = json.loads(mem.read_text())
    mem.unlink()
    return {"wall_s": wall, **out}


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def trainable_params(run: Path) -> int:
    """Parameters in a run's final checkpoint (exactly the trainable ones)."""
    from vlgraft.train.checkpoint import saved_param_count

    return saved_param_count(run / "final")


DIRECT = "data.describe_first=null"  # benchmarks measure answering straight from the image


def train_and_eval(name: str, recipe: str, overrides: list[str], work: Path, steps: int, batch: int,
                   eval_limit: int, loss_records: int = 0) -> dict:
    """Train ``recipe`` with ``overrides`` for ``steps`` x ``batch`` in a child process, evaluate on the
    first ``eval_limit`` easy-VQA test questions, and return the figures the benchmark tables show."""
    run = work / name.replace("+", "_").replace("@", "_").replace(" ", "_")
    # DIRECT: the variants are compared on answering straight from the image (docs/DESCRIBE.md)
    o = [DIRECT, *overrides, f"train.batch_size={batch}", f"train.max_steps={steps}", f"train.output_dir={run}",
         "train.log_every=5", "train.save_every=null"]
    tr = run_cli(["train", recipe, "--overwrite", *[x for kv in o for x in ("-o", kv)]], work, log=work / f"{run.name}.log")
    ev_path = work / f"{run.name}-eval.json"
    extra = ["--loss-records", str(loss_records)] if loss_records else []
    ev_run = run_cli(["eval", str(run), "--limit", str(eval_limit), *extra, "--out", str(ev_path)], work,
                     log=work / f"{run.name}-eval.log")
    ev = json.loads(ev_path.read_text())
    m = read_metrics(run)
    sps = [r["samples_per_s"] for r in m[1:]] or [m[0]["samples_per_s"]]
    return {"run": str(run), "recipe": recipe, "overrides": o, "steps": steps, "batch": batch,
            "trainable_params": trainable_params(run), "samples_per_s": sum(sps) / len(sps),
            "peak_rss_mb": tr["max_rss_mb"], "final_train_loss": m[-1]["loss"], "val_loss": ev.get("val_loss"),
            "accuracy": ev["accuracy"], "by_type": {k: v["accuracy"] for k, v in ev["by_type"].items()},
            "eval_questions": ev["n"], "train_wall_s": tr["wall_s"], "eval_wall_s": ev_run["wall_s"],
            "curve": [(r["step"], r["loss"]) for r in m]}


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
