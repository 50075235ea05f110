"""Helpers shared by the benchmark scripts: run a CLI command in a child process and read back its
wall time, peak memory and metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
