"""Train a recipe and evaluate the run in a child process: the runner of ``vlgraft sweep`` and of the
benchmark scripts.

A child process per job returns all its memory when it ends (the next job starts clean) and lets a
failing job be recorded with its one-line error while the others go on. The child runs the CLI
itself (``vlgraft train RECIPE --overwrite``, then ``vlgraft eval RUN -o ... --out ...`` per
evaluation), so a job measures exactly what a user's commands do; it writes each command's wall time
and the peak memory after it to a stats file as it goes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from vlgraft.files import iter_jsonl, read_json, write_json


def run_commands(commands: list[list[str]], log: Path, env: dict | None = None) -> dict:
    """Run ``vlgraft`` commands (argument lists) one after another in one child process, output in
    ``log``, stopping at the first that fails. Returns ``{"status": "ok" | "failed", "error" (the
    child's one-line error), "wall_s", "commands": [{"wall_s", "max_rss_mb"} per finished command],
    "cuda_peak_mb" (on a GPU)}``; ``max_rss_mb`` is the process's peak so far."""
    log.parent.mkdir(parents=True, exist_ok=True)
    spec, stats = log.with_suffix(".commands.json"), log.with_suffix(".stats.json")
    write_json(spec, commands)
    stats.unlink(missing_ok=True)
    t0 = time.time()
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-c", _CHILD, str(spec), str(stats)], stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}).returncode
    res = {"status": "ok", "wall_s": time.time() - t0, "commands": [], **(read_json(stats) if stats.is_file() else {})}
    if rc != 0:
        res.update(status="failed", error=last_error(log))
    return res


_CHILD = "import sys; from vlgraft.runner import child; child(sys.argv[1], sys.argv[2])"


def child(spec_path: str, stats_path: str) -> None:
    """In the child process: each command through the CLI, timed, the peak memory after it recorded."""
    import resource

    from vlgraft.cli import main

    stats: dict = {"commands": []}
    for argv in read_json(spec_path):
        t = time.time()
        main(argv)
        stats["commands"].append({"wall_s": time.time() - t,
                                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            stats["cuda_peak_mb"] = sys.modules["torch"].cuda.max_memory_allocated() / 2**20
        write_json(stats_path, stats)


def train_and_evaluate(recipe_file: str | Path, run: str | Path, evals: list[tuple[str | Path, list[str]]],
                       log: Path, train: bool = True) -> dict:
    """``vlgraft train RECIPE --overwrite`` (unless ``train`` is False: only evaluate the run again),
    then ``vlgraft eval RUN -o ... --out OUT`` per ``(OUT, overrides)`` of ``evals``, in one child.
    Adds ``train_wall_s`` and ``peak_rss_mb`` (training's) and ``eval_wall_s`` (per evaluation)."""
    commands = [["train", str(recipe_file), "--overwrite"]] if train else []
    commands += [["eval", str(run), *[x for ov in overrides for x in ("-o", ov)], "--out", str(out)]
                 for out, overrides in evals]
    res = run_commands(commands, log)
    done = res["commands"]
    if train and done:
        res.update(train_wall_s=done[0]["wall_s"], peak_rss_mb=done[0]["max_rss_mb"])
    res["eval_wall_s"] = [c["wall_s"] for c in done[1 if train else 0:]]
    return res


def last_error(log: Path) -> str:
    """The child's one-line error (a progress bar may precede it on its line), else its last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    errs = [ln[ln.index("vlgraft: error:"):] for ln in lines if "vlgraft: error:" in ln]
    return (errs[-1] if errs else lines[-1] if lines else "failed with no output")[:400]


def training_figures(run: Path) -> dict:
    """A finished run's loss curve, throughput and trainable parameters."""
    from vlgraft.training.checkpoint import saved_param_count

    m = [rec for _, rec in iter_jsonl(run / "metrics.jsonl")]
    sps = [r["samples_per_s"] for r in m[1:]] or [m[0]["samples_per_s"]]  # the first window includes warm-up
    return {"trainable_params": saved_param_count(run / "final"), "samples_per_s": sum(sps) / len(sps),
            "steps": m[-1]["step"], "first_train_loss": m[0]["loss"], "final_train_loss": m[-1]["loss"],
            "curve": [[r["step"], r["loss"]] for r in m], "steps_by_modality": m[-1].get("steps_by_modality")}


def eval_figures(path: Path) -> dict:
    """One eval.json's accuracy, token F1, held-out loss, by-type accuracy and text ability."""
    ev = read_json(path)
    res = {"accuracy": ev.get("accuracy"), "f1": ev.get("f1"), "val_loss": ev.get("val_loss"),
           "by_type": {k: v["accuracy"] for k, v in ev.get("by_type", {}).items() if k != "all"}, "eval_n": ev.get("n")}
    if "text_ability" in ev:
        t = ev["text_ability"]
        res["text_ability"] = {k: t[k] for k in ("before", "after", "change")}
    return res
