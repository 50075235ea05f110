"""Faults a run meets: kill -9 at random points of training and checkpointing (then --resume gives the
uninterrupted run's weights bit for bit, with no leftovers and no repeated metric steps), a full disk
and a read-only output folder (one error line each, the previous checkpoint intact, no evaluation
lost). The disk faults use a small tmpfs; where one cannot be mounted the tests skip, saying why."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlgraft.config import to_dict

pytestmark = pytest.mark.slow


def _recipe(tiny_recipe, path: Path, out: Path, **train) -> Path:
    d = to_dict(tiny_recipe("llama", **train))
    d["train"]["output_dir"] = str(out)
    path.write_text(yaml.safe_dump(d))
    return path


def _cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vlgraft.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _leftovers(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if p.name.startswith((".tmp-", ".old-"))]


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_kill_9_anywhere_then_resume_is_bit_identical(tiny_recipe, tmp_path):
    steps = 30
    kw = {"max_steps": steps, "save_every": 3, "keep_checkpoints": 2, "log_every": 1}
    ref_run = tmp_path / "ref"
    t0 = time.time()
    code, err = _finish(_cli("train", _recipe(tiny_recipe, tmp_path / "ref.yaml", ref_run, **kw)))
    assert code == 0, err
    times = [json.loads(line)["time"] - t0 for line in (ref_run / "metrics.jsonl").read_text().splitlines()]
    ref = load_file(ref_run / "final" / "trainable.safetensors")
    rng = np.random.default_rng(0)
    for seed in range(4):
        run = tmp_path / f"killed-{seed}"
        recipe = _recipe(tiny_recipe, tmp_path / f"r{seed}.yaml", run, **kw)
        delay = rng.uniform(times[0] * 0.8, times[-1])  # from the first steps to the last checkpoint
        proc = _cli("train", recipe)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        resumable = any((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else False
        code, err = _finish(_cli("train", recipe, "--resume" if resumable else "--overwrite"))
        assert code == 0, (seed, delay, err)
        got = load_file(run / "final" / "trainable.safetensors")
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref), (seed, delay)
        assert not _leftovers(run), _leftovers(run)
        assert _steps(run) == list(range(1, steps + 1)), (seed, delay, _steps(run))


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size_kb, read_only=False)`` -> a fresh tmpfs folder, unmounted afterwards."""
    mounted = []

    def mount(size_kb: int, read_only: bool = False) -> Path:
        target = tmp_path / f"tmpfs-{len(mounted)}"
        target.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(target)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {res.stderr.strip()}")
        mounted.append(target)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
        return target

    yield mount
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def _one_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("vlgraft: error:") and sum("vlgraft: error:" in ln for ln in lines) == 1, err
    return lines[-1]


def test_disk_full_at_checkpoint_keeps_the_previous_one(tiny_recipe, tmp_path, tmpfs):
    from vlgraft.training.checkpoint import load_vlm

    kw = {"max_steps": 9, "save_every": 3, "keep_checkpoints": 1}
    probe = tmp_path / "probe"
    code, err = _finish(_cli("train", _recipe(tiny_recipe, tmp_path / "p.yaml", probe, max_steps=3, save_every=3)))
    assert code == 0, err
    used = [f.stat().st_blocks * 512 for f in (probe / "checkpoints").rglob("*") if f.is_file()]
    ckpt_kb = sum(used) // 1024  # as a tmpfs counts it: whole pages per file
    logs_kb = sum(f.stat().st_blocks * 512 for f in probe.rglob("*") if f.is_file() and "checkpoints" not in
                  f.parts and f.parent.name != "final") // 1024
    disk = tmpfs(int(ckpt_kb * 1.5) + logs_kb + 16)  # room for one checkpoint and the logs, not for a second
    run = disk / "run"
    code, err = _finish(_cli("train", _recipe(tiny_recipe, tmp_path / "full.yaml", run, **kw)))
    line = _one_error(err)
    assert code == 2 and "No space left on device" in line, line
    kept = sorted((run / "checkpoints").glob("step-*"))
    assert kept and f"{kept[-1]}" in line and "is intact" in line, line
    vlm, _, _ = load_vlm(kept[-1])  # the previous checkpoint still loads
    assert not _leftovers(run), _leftovers(run)


def test_read_only_output_is_refused_before_any_work(tiny_recipe, tmp_path, tmpfs):
    ro = tmpfs(64, read_only=True)
    code, err = _finish(_cli("train", _recipe(tiny_recipe, tmp_path / "r.yaml", ro / "run", max_steps=2)))
    line = _one_error(err)
    assert code == 2 and "run folder (train.output_dir)" in line and "Read-only file system" in line, line
    assert not (ro / "run").exists()
    ok = tmp_path / "ok"
    code, err = _finish(_cli("train", _recipe(tiny_recipe, tmp_path / "ok.yaml", ok, max_steps=2)))
    assert code == 0, err
    code, err = _finish(_cli("eval", ok, "--limit", "4", "--out", ro / "e.json"))
    line = _one_error(err)
    assert code == 2 and "cannot be written" in line and "Read-only" in line, line


def test_eval_results_survive_a_full_disk(tiny_recipe, tmp_path, tmpfs):
    run = tmp_path / "run"
    code, err = _finish(_cli("train", _recipe(tiny_recipe, tmp_path / "r.yaml", run, max_steps=2)))
    assert code == 0, err
    full = tmpfs(16)
    (full / "filler").write_bytes(b"\0" * 12 * 1024)  # a little room left: the checks pass, the results do not fit
    code, err = _finish(_cli("eval", run, "--out", full / "e.json"))
    line = _one_error(err)
    assert code == 2 and "No space left on device" in line and "the results were written to" in line, line
    spare = Path(line.rsplit("the results were written to ", 1)[1].split()[0].rstrip("."))
    assert json.loads(spare.read_text())["n"] == 28 and spare.with_suffix(".predictions.jsonl").is_file()
