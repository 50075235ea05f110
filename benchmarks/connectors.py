"""Every connector on the bundled default task at an equal budget (same steps, batch, data order, LoRA
r16 on the LLM's attention), plus MM1-style sweeps of the number of visual tokens and of the input
resolution: visual tokens, trainable parameters, samples/s, easy-VQA test accuracy; a table, JSON
and a plot of accuracy against visual tokens and against resolution.

    python benchmarks/connectors.py --steps 40 --eval-limit 500 --out benchmarks/results/connectors_cpu.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, run_cli, train_and_eval, write_json

RECIPE = "recipes/default.yaml"
BASE = ["methods=[{name: lora, r: 16, alpha: 32, target_modules: [q_proj, k_proj, v_proj, o_proj]}]",
        "trainable=[{name: connector, params: [connector], lr: 2.0e-3}, {name: lora, params: [lora], lr: 1.0e-3}]"]


def conn(spec: str, grid: str = "4", size: str = "null", *extra: str) -> list[str]:
    return [*BASE, f"connector={{{spec}}}", f"vision.grid={grid}", f"vision.image_size={size}", *extra]


# name -> (overrides, family); the families are the table's sections and the plot's panels
VARIANTS: dict[str, tuple[list[str], str]] = {
    "linear": (conn("name: linear"), "connector"),
    "mlp": (conn("name: mlp"), "connector"),
    "git": (conn("name: git"), "connector"),
    "resampler (8 queries over 49)": (conn("name: resampler, num_queries: 8, num_heads: 8", "null"), "connector"),
    "pool avg 3x3 (of 7x7)": (conn("name: pool, mode: avg, grid: 3", "null"), "connector"),
    "pool shuffle 2x2 (of 4x4)": (conn("name: pool, mode: shuffle, grid: 2"), "connector"),
    "prompt_projection (1 token)": (conn("name: prompt_projection"), "connector"),
    "patch_mining 128+256 px": (conn("name: patch_mining", "null", "128",
                                     "vision_hr={name: efficientnet-lite0, image_size: 256}"), "connector"),
    # MM1-style sweeps with the mlp connector: token count at 224 px, resolution at 16 tokens
    "mlp 1 token": (conn("name: mlp", "1"), "tokens"),
    "mlp 4 tokens": (conn("name: mlp", "2"), "tokens"),
    "mlp 49 tokens": (conn("name: mlp", "null"), "tokens"),
    "mlp 128 px": (conn("name: mlp", "4", "128"), "resolution"),
    "mlp 320 px": (conn("name: mlp", "4", "320"), "resolution"),
}


def visual_tokens(run: Path, work: Path) -> int:
    log = work / f"{run.name}-info.log"
    run_cli(["info", str(run / "final" / "recipe.yaml")], work, log=log)
    return int(re.search(r"visual tokens per image: (\d+)", log.read_text()).group(1))


def resolution(overrides: list[str]) -> int:
    size = next(o for o in overrides if o.startswith("vision.image_size=")).split("=")[1]
    return 224 if size == "null" else int(size)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    tok = sorted((r["visual_tokens"], 100 * r["accuracy"]) for n, r in results.items()
                 if r["family"] == "tokens" or n == "mlp")
    res = sorted((r["resolution"], 100 * r["accuracy"]) for n, r in results.items()
                 if r["family"] == "resolution" or n == "mlp")
    axes[0].plot(*zip(*tok), "o-", label="mlp, 224 px")
    for n, r in results.items():
        if r["family"] == "connector" and n != "mlp":
            axes[0].scatter(r["visual_tokens"], 100 * r["accuracy"], marker="x")
            axes[0].annotate(n.split(" (")[0], (r["visual_tokens"], 100 * r["accuracy"]), fontsize=7)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("visual tokens per image")
    axes[1].plot(*zip(*res), "o-", label="mlp, 16 tokens")
    axes[1].set_xlabel("input resolution (px)")
    for ax in axes:
        ax.set_ylabel("easy-VQA test accuracy (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("accuracy vs visual tokens and vs resolution (equal training budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-limit", type=int, default=600)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--out", default="benchmarks/results/connectors.json")
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="vlgraft-connectors-"))
    for name in args.variants.split(","):
        ovs, family = VARIANTS[name]
        # only the images the budget reaches are encoded into the feature cache
        ovs = [*ovs, f"data.limit={args.steps * args.batch}"]
        r = {"family": family, **train_and_eval(name, RECIPE, ovs, work, args.steps, args.batch, args.eval_limit)}
        r["visual_tokens"] = visual_tokens(Path(r.pop("run")), work)
        r["resolution"] = resolution(ovs)
        results[name] = r
        print(f"{name:<30} tokens {r['visual_tokens']:>3}  params {r['trainable_params']:>10,}  "
              f"{r['samples_per_s']:.2f} samples/s  acc {100 * r['accuracy']:.2f}%", flush=True)
        write_json(out, results)
        plot(results, out.with_suffix(".png"))
    print_table(results, [("visual tokens", lambda r: str(r["visual_tokens"])),
                          ("resolution", lambda r: str(r["resolution"])),
                          ("trainable params", lambda r: f"{r['trainable_params']:,}"),
                          ("samples/s", lambda r: f"{r['samples_per_s']:.2f}"),
                          ("final train loss", lambda r: f"{r['final_train_loss']:.4f}")])
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
