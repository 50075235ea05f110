"""Training throughput, peak memory and time-to-accuracy of the default recipe:
fp32 vs bf16, with vs without the on-disk feature cache.

For each configuration: a cold-cache training run of ``--steps`` optimizer steps (samples/s and
tokens/s are taken after ``--warmup`` steps; peak memory is the run's max RSS, plus CUDA peak on a
GPU). Time-to-accuracy: one run per configuration in ``--curve`` (default: bf16 + cache) trains
``--curve-steps`` steps with a checkpoint every ``--eval-every`` steps; each checkpoint is evaluated on
the first ``--eval-limit`` easy-VQA test questions. For configurations without a measured curve, the
time to reach ``--target`` is *projected*: cache build time + (steps the measured curve needed) x
(that configuration's measured seconds per step) — the table marks these as projected.

    python benchmarks/train_throughput.py                     # CPU defaults
    python benchmarks/train_throughput.py --device cuda --curve all --curve-steps 250
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import DIRECT, read_metrics, run_cli, write_json

CONFIGS = {
    "fp32": {"precision": "fp32", "dtype": "float32", "cache": False},
    "fp32+cache": {"precision": "fp32", "dtype": "float32", "cache": True},
    "bf16": {"precision": "bf16", "dtype": "bfloat16", "cache": False},
    "bf16+cache": {"precision": "bf16", "dtype": "bfloat16", "cache": True},
}


def overrides(cfg: dict, out: Path, steps: int, extra: list[str]) -> list[str]:
    o = [f"train.precision={cfg['precision']}", f"llm.dtype={cfg['dtype']}", f"train.feature_cache={cfg['cache']}",
         f"train.output_dir={out}", f"train.max_steps={steps}", "train.log_every=1", DIRECT, *extra]
    return [x for kv in o for x in ("-o", kv)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/default.yaml")
    ap.add_argument("--steps", type=int, default=8, help="steps per throughput run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--curve", default="bf16+cache", help="configs with a measured accuracy curve, or 'all'")
    ap.add_argument("--curve-steps", type=int, default=90)
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--device", default=None, help="eval device (training uses accelerate's choice)")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vlgraft-bench-"))
    configs = args.configs.split(",")
    curve_cfgs = configs if args.curve == "all" else [c for c in args.curve.split(",") if c]
    results: dict = {"host": platform.node(), "args": vars(args), "configs": {}}
    for name in configs:
        cfg = CONFIGS[name]
        feat_dir = work / f"features-{name}"  # cold cache: its build time is part of the cost
        env = {"VLGRAFT_FEATURE_CACHE": str(feat_dir)}
        run = work / f"tp-{name}"
        print(f"[{name}] throughput run, {args.steps} steps", flush=True)
        mem = run_cli(["train", args.recipe, "--overwrite", *overrides(cfg, run, args.steps, [])], work, env,
                      log=work / f"tp-{name}.log")
        m = read_metrics(run)[args.warmup:]
        dt = [b["time"] - a["time"] for a, b in zip(m, m[1:])]
        s_per_step = sum(dt) / len(dt)
        log_text = (work / f"tp-{name}.log").read_text()
        found = re.search(r"feature cache .*? hashed, ([\d.]+)s", " ".join(log_text.split()))  # rich wraps lines
        cache_s = float(found.group(1)) if found else 0.0
        row = {"samples_per_s": sum(x["samples_per_s"] for x in m[1:]) / len(m[1:]),
               "tokens_per_s": sum(x["tokens_per_s"] for x in m[1:]) / len(m[1:]),
               "s_per_step": s_per_step, "peak_rss_mb": mem["max_rss_mb"], "cuda_peak_mb": mem.get("cuda_peak_mb"),
               "cache_build_s": cache_s, "curve": None}
        if name in curve_cfgs:
            print(f"[{name}] accuracy curve, {args.curve_steps} steps", flush=True)
            crun = work / f"curve-{name}"
            tr = run_cli(["train", args.recipe, "--overwrite",
                          *overrides(cfg, crun, args.curve_steps,
                                     [f"train.save_every={args.eval_every}", "train.keep_checkpoints=100"])],
                         work, env, log=work / f"curve-{name}.log")
            metrics = {x["step"]: x for x in read_metrics(crun)}
            t_start = metrics[1]["time"] - s_per_step
            points = []
            ckpts = sorted((crun / "checkpoints").glob("step-*"))
            for ck in ckpts:
                step = int(ck.name.split("-")[1])
                res_path = work / f"eval-{name}-{step}.json"
                ev = ["eval", str(ck), "--limit", str(args.eval_limit), "--out", str(res_path),
                      "--precision", cfg["precision"]] + (["--device", args.device] if args.device else [])
                run_cli(ev, work, env, log=work / f"eval-{name}-{step}.log")
                acc = json.loads(res_path.read_text())["accuracy"]
                points.append({"step": step, "train_s": metrics[step]["time"] - t_start + cache_s, "accuracy": acc})
                print(f"  step {step}: accuracy {acc:.4f}", flush=True)
            row["curve"] = points
            row["curve_train_wall_s"] = tr["wall_s"]
        results["configs"][name] = row
        write_json(Path(args.out), results)  # partial results survive an interrupted run

    # time to target: measured where a curve exists, projected from the reference curve otherwise
    ref = next((results["configs"][c]["curve"] for c in curve_cfgs if results["configs"][c]["curve"]), None)
    ref_steps = next((p["step"] for p in ref or [] if p["accuracy"] >= args.target), None)
    for row in results["configs"].values():
        hit = next((p for p in row["curve"] or [] if p["accuracy"] >= args.target), None)
        if hit:
            row["time_to_target_s"], row["time_to_target_kind"] = hit["train_s"], "measured"
        elif row["curve"] is None and ref_steps is not None:
            row["time_to_target_s"] = row["cache_build_s"] + ref_steps * row["s_per_step"]
            row["time_to_target_kind"] = f"projected ({ref_steps} steps x measured s/step)"
        else:
            row["time_to_target_s"], row["time_to_target_kind"] = None, "target not reached"
    write_json(Path(args.out), results)

    hdr = (f"{'config':<12}{'samples/s':>10}{'tokens/s':>10}{'s/step':>8}{'peak RSS MB':>12}{'CUDA MB':>9}"
           f"{'cache s':>8}  time to {args.target:.0%}")
    print(hdr)
    print("-" * len(hdr))
    for name, r in results["configs"].items():
        tta = "n/a" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.0f} s {r['time_to_target_kind']}"
        cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
        print(f"{name:<12}{r['samples_per_s']:>10.2f}{r['tokens_per_s']:>10.0f}{r['s_per_step']:>8.2f}"
              f"{r['peak_rss_mb']:>12.0f}{cuda:>9}{r['cache_build_s']:>8.1f}  {tta}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in results["configs"].items():
            if r["curve"]:
                ax.plot([p["train_s"] for p in r["curve"]], [100 * p["accuracy"] for p in r["curve"]], "o-", label=name)
        ax.axhline(100 * args.target, ls="--", c="gray")
        ax.set_xlabel("training wall time incl. feature cache (s)")
        ax.set_ylabel(f"easy-VQA test exact match (first {args.eval_limit} q), %")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(Path(args.out).with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
