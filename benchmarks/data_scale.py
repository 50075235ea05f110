"""Data at LLaVA scale: time to the first step and peak memory against the data set's size, records/s
through the streamed data pipeline, the feature cache, and padding-free packing.

    python benchmarks/data_scale.py                      # everything (about 20 minutes on 2 cores)
    python benchmarks/data_scale.py --parts scale        # only the 10K / 100K / 1M first-step runs
    python benchmarks/data_scale.py --sizes 10000 100000 --workdir /mnt/fast/tmp

Data: ``synthetic_llava.py`` — a LLaVA-format JSONL of 1,000,000 records (captions, short exchanges,
long conversations, text-only conversations) over 1,000 generated 64 x 64 images; the smaller sets
are its first lines. Model: the bundled parts, LLaVA-style — EfficientNet-Lite0 (grid 4: 16 visual
tokens spliced into the sequence) + SmolLM2-135M-Instruct with an MLP connector and LoRA on every
linear layer, bf16, ``data.max_length: 512``. Parts:

- ``scale``: ``vlgraft train`` in a child process for 3 steps with ``data.stream: true`` at each size;
  time to first step = from starting the child to the first step's metrics record (Python start-up,
  model load and the stream's first shuffle buffer included), and the child's peak RSS. The same
  with the in-memory path (``data.stream: false``: every record read and tokenised, every image's
  features cached first) at the ``--eager-sizes``.
- ``pipeline``: records/s through the streamed pipeline alone (shuffle buffer -> parse, validate,
  tokenise, load and preprocess the image -> collate), 0 and 2 DataLoader workers, no model step.
- ``cache``: ``feature_cache.measure`` (bytes per 1,000 entries, lookup p50/p95) at 10,000 images.
- ``packing``: training throughput on the mixed-length set (its first 4,000 records) without and with
  ``data.pack``: in memory (features cached, batches sorted by length within windows; packed: 2 rows
  of up to 512 tokens, about as many records as 8) and streamed (images encoded in each step, batches
  as the shuffle buffer draws them; packed: the same 8 records per step in fewer rows) — the share of
  padding positions and non-padding tokens/s (``metrics.jsonl``, the first step excluded).

Writes ``benchmarks/results/data_scale_cpu.json`` and ``data_scale_cpu.png`` (time to first step and
peak RSS against size).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import read_metrics, run_cli, write_json
from synthetic_llava import head, write_jsonl
from vlgraft.files import read_json

RESULTS = Path(__file__).parent / "results"
RECIPE = {
    "name": "llava_style",
    "vision": {"name": "efficientnet-lite0", "feature_layer": -1, "grid": 4},
    "llm": {"name": "smollm2-135m-instruct", "system_prompt": "", "dtype": "bfloat16"},
    "connector": {"name": "mlp"},
    "methods": [{"name": "lora", "r": 16, "alpha": 32,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}],
    "trainable": [{"name": "projection", "params": ["connector"], "lr": 1e-3},
                  {"name": "lora", "params": ["lora"], "lr": 1e-3}],
    "data": {"max_length": 512, "eval": "easyvqa:test"},
    "train": {"batch_size": 8, "precision": "bf16", "log_every": 1, "warmup_ratio": 0.0},
}


def write_recipe(work: Path, name: str, data: dict, train: dict) -> Path:
    r = {**RECIPE, "data": {**RECIPE["data"], **data}, "train": {**RECIPE["train"], **train,
                                                                  "output_dir": str(work / "runs" / name)}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return path


def first_step(work: Path, name: str, data_file: Path, stream: bool) -> dict:
    """One ``vlgraft train`` child for 3 steps: seconds to its first step, its peak RSS."""
    recipe = write_recipe(work, name, {"train": str(data_file), "stream": stream}, {"max_steps": 3})
    env = {"VLGRAFT_FEATURE_CACHE": str(work / "features")}
    t0 = time.time()
    res = run_cli(["train", str(recipe), "--overwrite"], work, env=env, log=work / f"{name}.log")
    steps = [m for m in read_metrics(work / "runs" / name) if "loss" in m]
    with open(data_file, "rb") as f:
        records = sum(1 for _ in f)
    return {"records": records, "stream": stream,
            "first_step_s": steps[0]["time"] - t0, "wall_s": res["wall_s"], "peak_rss_mb": res["max_rss_mb"]}


def pipeline(data_file: Path, workers: int, batches: int = 60) -> dict:
    """Records/s of the streamed data pipeline alone (no model step)."""
    import functools

    import torch

    from vlgraft.config import Recipe, from_dict
    from vlgraft.data.streaming import StreamBatches, StreamDataset, collate_stream
    from vlgraft.data.streams import open_stream
    from vlgraft.models.vlm import VLM

    torch.set_num_threads(1)
    vlm = VLM.from_recipe(from_dict(Recipe, {**RECIPE, "data": {**RECIPE["data"], "train": str(data_file)}}))
    stream = open_stream(str(data_file))
    sampler = StreamBatches([stream], [1.0], [None], 8, 1, 1, 0, 0, 0, batches, 10_000)
    ds = StreamDataset([stream], vlm, 512, "conversation", None)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=functools.partial(collate_stream,
                                                                      pad_id=vlm.llm.tokenizer.pad_token_id))
    it = iter(loader)
    next(it)  # the shuffle buffer's fill and the workers' start-up are the first-step figures, not these
    t0, n = time.perf_counter(), 0
    for batch in it:
        assert "error" not in batch, batch.get("error")
        n += batch["input_ids"].shape[0]
    dt = time.perf_counter() - t0
    return {"workers": workers, "records": n, "seconds": dt, "records_per_s": n / dt}


PACK_VARIANTS = [  # (name, data settings, rows or records per micro-batch, the baseline it is compared with)
    ("in memory", {"pack": False}, 8, None),
    ("in memory + data.pack", {"pack": True}, 2, "in memory"),  # 2 rows of <= 512 tokens: ~8-9 records
    ("stream", {"stream": True, "pack": False}, 8, None),
    ("stream + data.pack", {"stream": True, "pack": True}, 8, "stream"),  # the same 8 records, fewer rows
]


def packing(work: Path, data_file: Path, steps: int) -> list[dict]:
    """Training on the mixed-length set without and with data.pack, in memory (batches sorted by length)
    and streamed (batches as the shuffle buffer gives them): padding share and non-padding tokens/s."""
    out = {}
    for name, data, batch, base in PACK_VARIANTS:
        tag = "pack-" + name.replace(" + ", "-").replace(".", "").replace(" ", "-")
        recipe = write_recipe(work, tag, {"train": str(data_file), **data}, {"max_steps": steps, "batch_size": batch})
        run_cli(["train", str(recipe), "--overwrite"], work, env={"VLGRAFT_FEATURE_CACHE": str(work / "features")},
                log=work / f"{tag}.log")
        logged = [r for r in read_metrics(work / "runs" / tag) if "loss" in r]
        m = logged[1:]  # the first step (warm-up) excluded; log_every 1: a record per step
        secs = [b["time"] - a["time"] for a, b in zip(logged, logged[1:])]  # each step's seconds
        records = sum(r["samples_per_s"] * s for r, s in zip(m, secs))
        tokens = sum(r["tokens_per_s"] * s for r, s in zip(m, secs))
        row = {"variant": name, **data, "batch_size": batch, "steps": len(m), "records_per_step": records / len(m),
               "padding": sum(r["padding"] for r in m) / len(m), "tokens_per_s": tokens / sum(secs),
               "records_per_s": records / sum(secs), "s_per_step": sum(secs) / len(m), "baseline": base}
        if base is not None:
            b = out[base]
            row["tokens_per_s_vs_baseline"] = row["tokens_per_s"] / b["tokens_per_s"]
            row["padding_removed"] = 1 - row["padding"] / b["padding"] if b["padding"] else 0.0
        out[name] = row
    return list(out.values())


def plot(scale: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for stream, style in ((True, "o-"), (False, "s--")):
        rows = sorted((r for r in scale if r["stream"] == stream), key=lambda r: r["records"])
        if not rows:
            continue
        label = "data.stream: true" if stream else "in memory (data.stream: false)"
        x = [r["records"] for r in rows]
        axes[0].plot(x, [r["first_step_s"] for r in rows], style, label=label)
        axes[1].plot(x, [r["peak_rss_mb"] for r in rows], style, label=label)
    axes[0].axhline(30, color="gray", lw=0.8, ls=":", label="target (30 s at 1M)")
    for ax, title in zip(axes, ("time to first step (s)", "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("training records")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["scale", "pipeline", "cache", "packing"],
                    choices=["scale", "pipeline", "cache", "packing"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--eager-sizes", nargs="*", type=int, default=[10_000, 100_000],
                    help="sizes also run in memory (data.stream: false); 1M in memory takes many minutes")
    ap.add_argument("--pack-steps", type=int, default=12)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=RESULTS / "data_scale_cpu.json")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="data_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    # the parts not run this time keep their figures from the last run (each part records its own args)
    results: dict = read_json(args.out) if args.out.is_file() else {}
    results.update(host=platform.node(), platform=platform.platform())
    run_args = vars(args) | {"workdir": str(args.workdir), "out": str(args.out)}
    results.setdefault("args", {}).update({part: run_args for part in args.parts})

    t0 = time.perf_counter()
    big = write_jsonl(work / "data" / f"train-{max(args.sizes)}.jsonl", max(args.sizes))
    files = {n: head(big, work / "data" / f"train-{n}.jsonl", n) for n in sorted(set(args.sizes + args.eager_sizes))}
    results["data"] = {"records": max(args.sizes), "bytes": big.stat().st_size, "generate_s": time.perf_counter() - t0}
    print(f"data: {max(args.sizes):,} records, {big.stat().st_size / 1e6:.0f} MB, "
          f"{results['data']['generate_s']:.0f} s to generate")

    if "scale" in args.parts:
        results["scale"] = []
        for n in sorted(args.sizes):
            results["scale"].append(first_step(work, f"stream-{n}", files[n], True))
        for n in sorted(args.eager_sizes):
            results["scale"].append(first_step(work, f"memory-{n}", files[n], False))
        print("\n| records | path | first step (s) | peak RSS (MB) |\n|---:|---|---:|---:|")
        for r in results["scale"]:
            print(f"| {r['records']:,} | {'stream' if r['stream'] else 'in memory'} | {r['first_step_s']:.1f} | "
                  f"{r['peak_rss_mb']:.0f} |")
        plot(results["scale"], args.out.with_suffix(".png"))
    if "pipeline" in args.parts:
        results["pipeline"] = [pipeline(big, w) for w in (0, 2)]
        print("\n| DataLoader workers | records/s |\n|---:|---:|")
        for r in results["pipeline"]:
            print(f"| {r['workers']} | {r['records_per_s']:.0f} |")
    if "cache" in args.parts:
        from feature_cache import measure

        c = measure(10_000, work / "cache-bench")
        results["cache"] = c
        print(f"\nfeature cache, 10,000 entries of [16, 1280] bf16: {c['bytes_per_1000'] / 1e6:.1f} MB per 1,000 "
              "images, "
              f"lookup p50 {c['load_warm_p50_us']:.0f} us (fresh reader {c['load_fresh_p50_us']:.0f} us)")
        shutil.rmtree(work / "cache-bench", ignore_errors=True)
    if "packing" in args.parts:
        mixed = head(big, work / "data" / "train-4000.jsonl", 4000)
        results["packing"] = packing(work, mixed, args.pack_steps)
        print("\n| variant | batch | records/step | padding | tokens/s (non-padding) | vs its baseline |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in results["packing"]:
            vs = (f"{r['tokens_per_s_vs_baseline']:.2f}x, {r['padding_removed']:.0%} of padding removed"
                  if r["baseline"] else "baseline")
            print(f"| {r['variant']} | {r['batch_size']} | {r['records_per_step']:.1f} | {r['padding']:.1%} | "
                  f"{r['tokens_per_s']:.0f} | {vs} |")
    write_json(args.out, results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
