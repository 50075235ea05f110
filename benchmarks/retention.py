"""Task accuracy against text retention: every regulariser of the default recipe and the recipes that
claim to keep the LLM's language, trained to the same budget and measured the same way.

    python benchmarks/retention.py [--steps 80] [--limit 500] [--out benchmarks/results/retention_cpu.json]

Each variant trains ``--steps`` x 8 from the CLI's runner (as ``vlgraft sweep`` runs its variants), then
``vlgraft eval`` scores the first ``--limit`` easy-VQA test questions (as the recipe asks them) and
``vlgraft eval --text-only`` the text ability before and after on the bundled text set (perplexity and
QA, with their 95% intervals). The text-only training data of the mixture variants is the
self-distilled set ``vlgraft curate-text`` writes (instructions by the bundled LLM, answered by the
frozen base model), built first if missing. Prints a table, writes JSON and a plot (easy-VQA accuracy
against text QA retained, one point per variant). Time it with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import run_cli, write_json

DISTILLED = "data/text_distill.jsonl"
MIX = [f'data.mixture=[{{train: "easyvqa:train", weight: 10}}, {{train: "{DISTILLED}", weight: 1}}]',
       "data.train=null"]
SCOPE_IMAGE = ["methods[0].scope=image", "methods[1].scope=image"]

# name -> (recipe, overrides, what it tries)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "default, no regulariser": ("recipes/default.yaml", ["methods[0].scope=all", "methods[1].scope=all"],
                                "LLaMA-Adapter + LoRA acting on every input"),
    "default (scope: image)": ("recipes/default.yaml", SCOPE_IMAGE,
                               "text-only input takes the base model's path exactly"),
    "default + text mix 10:1": ("recipes/default.yaml", ["methods[0].scope=all", "methods[1].scope=all", *MIX],
                                "self-distilled text in the mixture (MM1)"),
    "default + text mix + KL": ("recipes/default.yaml", ["methods[0].scope=all", "methods[1].scope=all", *MIX,
                                                         "train.text_kl=1.0"],
                                "and a KL term to the base on the text-only samples"),
    "lavin": ("recipes/lavin.yaml", [], "MMA: text-only inputs routed by their modality token"),
    "llama_adapter_v2": ("recipes/llama_adapter_v2.yaml", [], "joint training with disjoint parameter groups"),
    "git_llm": ("recipes/git_llm.yaml", [], "GIT projection + LoRA on q, k, v (no regulariser)"),
    "llama_adapter_v1": ("recipes/llama_adapter_v1.yaml", [], "adaption prompts with zero-init gates, on every input"),
    "llava_stage2": ("recipes/llava_stage2.yaml", ["init_from=null"],
                     "MLP projection + LoRA on every projection (emoji QA + easy-VQA; no stage 1 here)"),
    "mini_gemini": ("recipes/mini_gemini.yaml", [], "patch mining over a 448-pixel tower + LoRA on attention"),
    "minigpt4_stage1": ("recipes/minigpt4_stage1.yaml", [],
                        "projection only, on captions (no LLM-side weight; easy-VQA is not its task)"),
}


def distilled(work: Path, n: int) -> dict:
    """The self-distilled text set, built once (kept in data/ for later runs)."""
    out = Path(DISTILLED)
    report = out.with_suffix(".report.json")
    wall = None
    if not report.is_file():
        wall = run_cli(["curate-text", "--out", str(out), "--n", str(n), "--recipe", "recipes/default.yaml"], work,
                       log=work / "curate-text.log")["wall_s"]
    rep = json.loads(report.read_text())
    return {"command": f"vlgraft curate-text --out {out} --n {n} --recipe recipes/default.yaml", "wall_s": wall,
            "report": {k: v for k, v in rep.items() if k not in ("dropped_examples", "settings")}}


def run_variant(name: str, recipe: str, overrides: list[str], work: Path, steps: int, limit: int) -> dict:
    from vlgraft.config import dump_recipe, load_recipe
    from vlgraft.files import write_text_atomic
    from vlgraft.runner import train_and_evaluate, training_figures

    run = work / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")  # "default + text mix 10:1": default_text_mix_10_1
    o = [*overrides, f"train.max_steps={steps}", "train.batch_size=8", f"train.output_dir={run}",
         "train.save_every=null", "train.log_every=10"]
    recipe_file = work / f"{run.name}.recipe.yaml"
    write_text_atomic(recipe_file, dump_recipe(load_recipe(recipe, o)))
    vqa, text = work / f"{run.name}-vqa.json", work / f"{run.name}-text.json"
    job = train_and_evaluate(recipe_file, run, [(vqa, ['data.eval="easyvqa:test"', f"eval.limit={limit}"]),
                                                (text, ['eval.text="only"'])], work / f"{run.name}.log")
    if job["status"] != "ok":
        raise SystemExit(f"variant {name} failed: {job['error']} (log: {work / f'{run.name}.log'})")
    tr, ev = training_figures(run), json.loads(vqa.read_text())
    ta = json.loads(text.read_text())["text_ability"]
    return {"recipe": recipe, "overrides": o, "steps": tr["steps"], "trainable_params": tr["trainable_params"],
            "train_wall_s": job["train_wall_s"], "eval_wall_s": job["eval_wall_s"],
            "final_loss": tr["final_train_loss"], "accuracy": ev["accuracy"], "n": ev["n"],
            "by_type": {k: v["accuracy"] for k, v in ev["by_type"].items()}, "text_ability": ta}


def print_table(results: dict) -> None:
    from vlgraft.eval.text import text_cells

    print("\n| variant | what it tries | easy-VQA | text ppl before → after [95% CI] | after / before [95% CI] "
          "| text QA before → after [95% CI] | QA retained | train s |")
    print("|---|---|---:|---|---:|---|---:|---:|")
    for name, r in results.items():
        t = r["text_ability"]
        b, a, c = t["before"], t["after"], t["change"]
        ratio = c.get("ppl_ratio", a["ppl"] / b["ppl"])
        rci = c.get("ppl_ratio_ci")
        ratio_cell = f"{ratio:.3f}" + (f" [{rci[0]:.3f}, {rci[1]:.3f}]" if rci else "")
        kept = a["qa_acc"] / b["qa_acc"] if b["qa_acc"] else float("nan")
        ppl, qa = text_cells(t)
        print(f"| {name} | {VARIANTS[name][2]} | {100 * r['accuracy']:.2f}% | {ppl} | {ratio_cell} | {qa} | "
              f"{100 * kept:.0f}% | {r['train_wall_s']:.0f} |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5.5))
    # 11+ variants, several close together: numbered points and a legend, so no name overprints another
    colours = plt.get_cmap("tab20").colors
    for i, (name, r) in enumerate(results.items()):
        b, a = r["text_ability"]["before"], r["text_ability"]["after"]
        qa_kept, ppl_ratio, acc = a["qa_acc"] / max(b["qa_acc"], 1e-9), a["ppl"] / b["ppl"], 100 * r["accuracy"]
        for ax, x in ((ax1, 100 * qa_kept), (ax2, ppl_ratio)):
            ax.scatter([x], [acc], s=40, color=colours[i % 20], label=f"{i + 1}. {name}" if ax is ax1 else None)
            ax.annotate(str(i + 1), (x, acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax1.set_xlabel("text QA kept (after / before, %)")
    ax2.set_xlabel("text perplexity after / before (1 = kept; log scale)")
    ax2.set_xscale("log")
    for ax in (ax1, ax2):
        ax.set_ylabel("easy-VQA accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("task accuracy against text retention (same budget, same measures)")
    fig.legend(loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--limit", type=int, default=500, help="easy-VQA test questions per variant")
    ap.add_argument("--distill", type=int, default=400, help="self-distilled text records to build if missing")
    ap.add_argument("--only", nargs="*", help="run these variants (the others are kept from --out)")
    ap.add_argument("--work", default="runs/retention")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out or f"benchmarks/results/retention_{device}.json")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    results = dict(previous.get("variants", {}))
    chosen = [n for n in VARIANTS if not args.only or n in args.only]
    mixes = any(DISTILLED in " ".join(VARIANTS[n][1]) for n in chosen)
    source = distilled(work, args.distill) if mixes else previous.get("distilled")
    for name, (recipe, overrides, _) in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        results[name] = run_variant(name, recipe, overrides, work, args.steps, args.limit)
        write_json(out, {"steps": args.steps, "limit": args.limit, "distilled": source, "variants": results})
    results = {k: results[k] for k in VARIANTS if k in results}
    print_table(results)
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
