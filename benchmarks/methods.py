"""Every parameter-efficient method, and GIT-LLM's module study, on the bundled default task at an
equal budget (same steps, batch, data order): trainable parameters, samples/s, peak memory, final
train loss, held-out loss, easy-VQA test accuracy; loss curves as PNG.

    python benchmarks/methods.py --steps 60 --eval-limit 1000 --loss-records 100 \
        --out benchmarks/results/methods_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import print_table, train_and_eval, write_json

ATTN = "[q_proj, k_proj, v_proj, o_proj]"


def groups(*gs: tuple[str, str, float]) -> str:
    return "trainable=[" + ", ".join(f"{{name: {n}, params: [{p}], lr: {lr}}}" for n, p, lr in gs) + "]"


CONN = ("connector", "connector", 2e-3)
# the method alone on the default task (the recipes add text-only data to their mixtures)
EASYVQA_ONLY = ["data.mixture=[]", "data.train=easyvqa:train", "data.group_by_modality=false"]
# name -> (recipe, overrides, family)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "lora": ("recipes/default.yaml", [f"methods=[{{name: lora, r: 16, alpha: 32, target_modules: {ATTN}}}]",
                                      groups(CONN, ("lora", "lora", 1e-3))], "methods"),
    "dora": ("recipes/default.yaml", [f"methods=[{{name: lora, r: 16, alpha: 32, use_dora: true, "
                                      f"target_modules: {ATTN}}}]",
                                      groups(CONN, ("lora", "lora", 1e-3))], "methods"),
    "ia3": ("recipes/default.yaml", ["methods=[{name: ia3, target_modules: [k_proj, v_proj, down_proj], "
                                     "feedforward_modules: [down_proj]}]",
                                     groups(CONN, ("ia3", "ia3", 5e-3))], "methods"),
    "adapter-serial": ("recipes/default.yaml", ["methods=[{name: bottleneck_adapter, mode: serial, bottleneck: 32}]",
                                                groups(CONN, ("adapter", "bottleneck_adapter", 1e-3))], "methods"),
    "adapter-parallel": ("recipes/default.yaml", ["methods=[{name: bottleneck_adapter, mode: parallel, "
                                                  "bottleneck: 32}]",
                                                  groups(CONN, ("adapter", "bottleneck_adapter", 1e-3))], "methods"),
    "prompt-tuning": ("recipes/default.yaml", ["methods=[{name: prompt_tuning, num_virtual_tokens: 10}]",
                                               groups(CONN, ("prompts", "prompt_tuning", 3e-3))], "methods"),
    "prefix-tuning": ("recipes/default.yaml", ["methods=[{name: prefix_tuning, num_virtual_tokens: 10}]",
                                               groups(CONN, ("prefix", "prefix_tuning", 3e-3))], "methods"),
    "llama-adapter-v1": ("recipes/llama_adapter_v1.yaml", [], "methods"),
    # every group on every batch at the lr its row was measured with (the joint recipe now uses 5e-4)
    "llama-adapter-v2": ("recipes/llama_adapter_v2.yaml", EASYVQA_ONLY + [
        "train.modality_groups=null", groups(("image", "llama_adapter_v2.image", 2e-3),
                                             ("language", "llama_adapter_v2.language", 2e-3))], "methods"),
    "mma": ("recipes/lavin.yaml", EASYVQA_ONLY, "methods"),
    # GIT-LLM module study: GIT projection always trained, plus one module
    "Proj": ("recipes/git_llm.yaml", ["methods=[{name: select, modules: [proj]}]",
                                      groups(("projection", "select", 1e-3))], "git"),
    "Proj+LoRA": ("recipes/git_llm.yaml", [], "git"),
    "Proj+LLM": ("recipes/git_llm.yaml", ["methods=[{name: select, modules: [proj]}]",
                                          groups(("projection", "select", 1e-3), ("llm", "llm", 1e-4))], "git"),
    "Proj+ViT": ("recipes/git_llm.yaml", ["methods=[{name: select, modules: [proj]}]",
                                          groups(("projection", "select", 1e-3), ("vision", "vision", 1e-4))], "git"),
    "Proj+Head": ("recipes/git_llm.yaml", ["methods=[{name: select, modules: [proj, head]}]",
                                           groups(("projection", "select", 1e-3))], "git"),
}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, fam, title in ((axes[0], "methods", "methods (equal budget)"), (axes[1], "git", "GIT-LLM module study")):
        for name, r in results.items():
            if r["family"] == fam:
                ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]],
                        label=f"{name} ({100 * r['accuracy']:.1f}%)")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("train loss (per answer token)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--loss-records", type=int, default=100)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", default="benchmarks/results/methods.json")
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="vlgraft-methods-"))
    for name in args.variants.split(","):
        recipe, ovs, family = VARIANTS[name]
        results[name] = {"family": family, **train_and_eval(name, recipe, ovs, work, args.steps, args.batch,
                                                             args.eval_limit, args.loss_records)}
        results[name].pop("run")
        r = results[name]
        print(f"{name:<18} params {r['trainable_params']:>11,}  {r['samples_per_s']:.2f} samples/s  "
              f"RSS {r['peak_rss_mb'] / 1024:.1f} GB  train {r['final_train_loss']:.4f}  val {r['val_loss']:.4f}  "
              f"acc {100 * r['accuracy']:.2f}%", flush=True)
        write_json(out, results)
        plot(results, out.with_suffix(".png"))
    print_table(results, [("trainable params", lambda r: f"{r['trainable_params']:,}"),
                          ("samples/s", lambda r: f"{r['samples_per_s']:.2f}"),
                          ("peak RSS (GB)", lambda r: f"{r['peak_rss_mb'] / 1024:.1f}"),
                          ("final train loss", lambda r: f"{r['final_train_loss']:.4f}"),
                          ("held-out loss", lambda r: f"{r['val_loss']:.4f}")])
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
