"""Compare variants of a recipe at an equal training budget: final train loss, eval accuracy by
answer type, and seconds per step. Used to choose the default recipe's settings (docs/RESULTS.md).

    python benchmarks/recipe_search.py --samples 1600 --eval-limit 1000 --out benchmarks/results/recipe_search_cuda.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import read_metrics, train_and_eval, write_json

ATTN = "[q_proj, k_proj, v_proj, o_proj]"
ALL = "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"


def groups(conn_lr: float, other: str, other_lr: float) -> str:
    return (f"trainable=[{{name: connector, params: [connector], lr: {conn_lr}}}, "
            f"{{name: llm, params: ['{other}'], lr: {other_lr}}}]")


def lora(targets: str, r: int = 16, alpha: int = 32) -> str:
    return f"methods=[{{name: lora, r: {r}, alpha: {alpha}, target_modules: {targets}}}]"


LORA_GROUPS = groups(2e-3, "llm.*lora_*", 1e-3)
# name -> (batch size, overrides)
VARIANTS = {
    "attn-lora b16": (16, [lora(ATTN), LORA_GROUPS]),
    "attn-lora b8": (8, [lora(ATTN), LORA_GROUPS]),
    "all-lora b8": (8, [lora(ALL), LORA_GROUPS]),
    "all-lora b8 hi-lr": (8, [lora(ALL), groups(5e-3, "llm.*lora_*", 2e-3)]),
    "all-lora r64 b8": (8, [lora(ALL, r=64, alpha=64), LORA_GROUPS]),
    "full-llm b8": (8, ["methods=[]", groups(2e-3, "llm.*", 1e-4)]),
    "attn-lora b8 grid1": (8, [lora(ATTN), LORA_GROUPS, "vision.grid=1"]),
    "attn-lora b8 grid2": (8, [lora(ATTN), LORA_GROUPS, "vision.grid=2"]),
    "full-llm b8 grid1": (8, ["methods=[]", groups(2e-3, "llm.*", 1e-4), "vision.grid=1"]),
    "full-llm b8 grid2": (8, ["methods=[]", groups(2e-3, "llm.*", 1e-4), "vision.grid=2"]),
    "all-lora b8 49tok": (8, [lora(ALL), LORA_GROUPS, "vision.grid=null"]),
    "all-lora b8 layer11": (8, [lora(ALL), LORA_GROUPS, "vision.feature_layer=11"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/default.yaml")
    ap.add_argument("--samples", type=int, default=1600, help="training conversations per variant (equal budget)")
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="benchmarks/results/recipe_search.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vlgraft-search-"))
    results = {}
    for name in args.variants.split(","):
        batch, ovs = VARIANTS[name]
        steps = args.samples // batch
        ev = train_and_eval(name, args.recipe, ovs, work, steps, batch, args.eval_limit)
        m = read_metrics(Path(ev["run"]))
        sps = [b["time"] - a["time"] for a, b in zip(m[1:], m[2:])]
        results[name] = {"batch": batch, "steps": steps, "final_loss": m[-1]["loss"],
                         "s_per_step": sum(sps) / max(1, len(sps)) / 5, "accuracy": ev["accuracy"],
                         "by_type": ev["by_type"], "train_wall_s": ev["train_wall_s"], "overrides": ev["overrides"]}
        r = results[name]
        print(f"{name:<22} loss {r['final_loss']:.4f}  acc {100 * r['accuracy']:.2f}%  "
              + "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["by_type"].items() if k != "all")
              + f"  {r['s_per_step']:.2f} s/step", flush=True)
        write_json(Path(args.out), results)


if __name__ == "__main__":
    main()
