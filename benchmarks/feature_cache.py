"""Feature-cache scale benchmark: size on disk, fill rate, warm-run fill and random lookups at 1,000 /
10,000 / 100,000 images.

    python benchmarks/feature_cache.py                       # 1,000, 10,000 and 100,000 images
    python benchmarks/feature_cache.py --skip-large          # 1,000 and 10,000 (100,000 writes ~4 GB)
    python benchmarks/feature_cache.py --sizes 1000 --workdir /mnt/fast/tmp

The entries are the default recipe's (``recipes/default.yaml``: efficientnet-lite0, grid 4, precision
bf16): [16, 1280] bfloat16, 40,960 bytes each. A fake encoder (a fixed random projection of the mean
pixel) makes them, so the figures are the cache's own cost — hashing, image decoding, shard writing,
the index — not the encoder's. Images are tiny generated PNGs (6 x 6 pixels), aged past the cache's
racy-timestamp window before the first fill, as a data set's files are. Per size:

- cold fill: every image hashed, decoded, "encoded" and written; images/s;
- warm fill: a fresh ``FeatureCache`` (a new run) filling the same items, all hits: stat only, no hashing;
- load: ``load`` of up to 5,000 images in random order in a fresh ``FeatureCache`` (a DataLoader worker
  that did not fill: digest looked up by stat in the index, shard opened on first use), then the same
  order again (digests known, shards open); p50 / p95 microseconds per lookup;
- bytes on disk (shards + index) per 1,000 images, and entries per shard.

``measure(n, workdir)`` returns one size's figures (``benchmarks/data_scale.py`` imports it). Writes
``benchmarks/results/feature_cache_cpu.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json

TOKENS, DIM = 16, 1280  # FeatureCache's entry for the default recipe's vision (checked: python -c, see docs/CACHE.md)
RESULTS = Path(__file__).parent / "results"


class FakeEncoder(torch.nn.Module):
    """FeatureCache's encoder interface; [B, 16, 1280] from each image's mean pixel, distinct per image."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3, TOKENS * DIM, generator=g))

    def cache_key(self) -> str:
        return f"benchfake{TOKENS}x{DIM}"

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.tensor(np.stack([np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) for im in images])) / 255

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels @ self.proj).view(-1, TOKENS, DIM)


def make_images(folder: Path, n: int) -> list[str]:
    """n distinct tiny PNGs, 1,000 per subfolder."""
    paths = []
    for i in range(n):
        p = folder / f"{i // 1000:04d}" / f"{i}.png"
        if i % 1000 == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 6), (i % 251, (i // 251) % 251, (i // 63001) % 251)).save(p)
        paths.append(str(p))
    return paths


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _timed_loads(cache, paths: list[str]) -> list[float]:
    out = []
    for p in paths:
        t0 = time.perf_counter()
        cache.load(p)
        out.append(1e6 * (time.perf_counter() - t0))
    return out


def measure(n: int, workdir: Path, batch_size: int = 64, lookups: int = 5000) -> dict:
    """Fill a fresh cache under ``workdir`` with ``n`` generated images and measure it (see the module)."""
    from vlgraft.data import cache as cache_mod
    from vlgraft.data.cache import FeatureCache

    torch.set_num_threads(1)
    workdir = Path(workdir)
    t0 = time.perf_counter()
    paths = make_images(workdir / "img", n)
    gen_s = time.perf_counter() - t0
    wait = cache_mod.RACY_NS / 1e9 - (time.time() - os.stat(paths[-1]).st_mtime) + 0.1
    if wait > 0:  # files this fresh are hashed every run (racy timestamps); a data set's files are older
        time.sleep(wait)
    items = [(p, f"rec{i}") for i, p in enumerate(paths)]
    device, root = torch.device("cpu"), workdir / "cache"
    cold = FeatureCache(FakeEncoder(), "bf16", root=root)
    cold.fill(items, device, batch_size=batch_size, show=False)
    cold_s = cold.last_fill["seconds"]
    warm = FeatureCache(FakeEncoder(), "bf16", root=root)
    warm.fill(items, device, batch_size=batch_size, show=False)
    assert warm.last_fill["encoded"] == 0 and warm.last_fill["hashed"] == 0, warm.last_fill
    order = random.Random(0).sample(paths, min(lookups, n))
    reader = FeatureCache(FakeEncoder(), "bf16", root=root)
    first = _timed_loads(reader, order)
    again = _timed_loads(reader, order)
    info = cold.info()
    return {"images": n, "entry_shape": [TOKENS, DIM], "entry_dtype": "bfloat16", "generate_s": gen_s,
            "cold_fill_s": cold_s, "fill_images_per_s": n / cold_s, "warm_fill_s": warm.last_fill["seconds"],
            "warm_fill_us_per_image": 1e6 * warm.last_fill["seconds"] / n, "entries": info["entries"],
            "shards": info["shards"], "entries_per_shard": info["entries"] / max(1, info["shards"]),
            "bytes": info["bytes"], "bytes_per_1000": info["bytes_per_1000"],
            "index_bytes": sum(p.stat().st_size for p in cold.dir.glob("index.sqlite*")),
            "lookups": len(order), "load_fresh_p50_us": _pct(first, 0.5), "load_fresh_p95_us": _pct(first, 0.95),
            "load_fresh_mean_us": statistics.fmean(first), "load_warm_p50_us": _pct(again, 0.5),
            "load_warm_p95_us": _pct(again, 0.95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--skip-large", action="store_true", help="leave out sizes over 10,000 (100,000 writes ~4 GB "
                                                              "and takes minutes)")
    ap.add_argument("--workdir", help="where the images and caches go (default: a temporary folder, removed after)")
    ap.add_argument("--out", default=str(RESULTS / "feature_cache_cpu.json"))
    args = ap.parse_args()
    sizes = [n for n in args.sizes if not (args.skip_large and n > 10000)]
    base = Path(args.workdir or tempfile.mkdtemp(prefix="vlgraft-cache-bench-"))
    rows = []
    results = {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(), "args": vars(args),
               "sizes": rows}
    try:
        for n in sizes:
            work = base / f"n{n}"
            shutil.rmtree(work, ignore_errors=True)
            rows.append(measure(n, work))
            shutil.rmtree(work, ignore_errors=True)
            r = rows[-1]
            print(f"{n:>7,} images: fill {r['fill_images_per_s']:.0f}/s, warm fill {r['warm_fill_s']:.2f} s, "
                  f"load p50 {r['load_fresh_p50_us']:.0f} us", flush=True)
            write_json(Path(args.out), results)  # partial results survive an interrupted run
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    print("\n| images | bytes / 1,000 images | index | entries / shard | fill images/s | warm fill (all hits) | "
          "load fresh p50 / p95 | load warm p50 / p95 |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']:,} | {r['bytes_per_1000'] / 1e6:.1f} MB | {r['index_bytes'] / 1e6:.1f} MB | "
              f"{r['entries_per_shard']:,.0f} | {r['fill_images_per_s']:,.0f} | {r['warm_fill_s']:.2f} s "
              f"({r['warm_fill_us_per_image']:.0f} µs/image) | {r['load_fresh_p50_us']:.0f} / "
              f"{r['load_fresh_p95_us']:.0f} µs | {r['load_warm_p50_us']:.0f} / {r['load_warm_p95_us']:.0f} µs |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
