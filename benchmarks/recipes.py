"""The paper recipes end to end on the bundled parts, as a user runs them: each stage from the CLI
(stage 2 loading stage 1 by reference), MiniGPT-4's curated set built by ``vlgraft curate`` first,
then every run evaluated on its tasks and for text ability before/after (``vlgraft eval --text``).
Prints a table, writes JSON; finished stages are kept in the JSON and skipped on a re-run.

    python benchmarks/recipes.py --out benchmarks/results/recipes_cpu.json

``--steps`` caps every stage's steps (the CPU budget; the recipes' own lengths are for a GPU);
``--only`` runs a subset (a stage's ``init_from`` stage must have run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import run_cli, write_json

CURATED = "data/curated/emoji_detail.jsonl"
DESCRIBE = "Describe this image in detail."

# name -> recipe, stage it starts from (or None), evals [(data, question limit, loss records[, turns])];
# own_length: the recipe's own length, not the --steps cap
STAGES: dict[str, dict] = {
    "llava_stage1": {"recipe": "recipes/llava_stage1.yaml", "evals": [("emoji:captions-test", None, 100)]},
    "llava_stage2": {"recipe": "recipes/llava_stage2.yaml", "init": "llava_stage1",
                     "evals": [("emoji:qa-test", None, 0), ("easyvqa:test", 1000, 0),
                               ("easyvqa:test", 1000, 0, "independent")], "text": True},
    "minigpt4_stage1": {"recipe": "recipes/minigpt4_stage1.yaml", "evals": [("emoji:captions-test", None, 100)]},
    "minigpt4_stage2": {"recipe": "recipes/minigpt4_stage2.yaml", "init": "minigpt4_stage1", "curate": True,
                        "own_length": True,  # a few epochs over the small curated set, as the recipe says
                        "evals": [("emoji:captions-test", None, 100)], "text": True, "describe": True},
    "llama_adapter_v2": {"recipe": "recipes/llama_adapter_v2.yaml",
                         "evals": [("easyvqa:test", 1000, 0), ("emoji:text-test", None, 0)], "text": True},
    "lavin": {"recipe": "recipes/lavin.yaml", "evals": [("easyvqa:test", 1000, 0), ("emoji:text-test", None, 0)],
              "text": True},
    "git_llm": {"recipe": "recipes/git_llm.yaml", "evals": [("easyvqa:test", 1000, 0)], "text": True},
}


def curate(work: Path, limit: int) -> dict:
    out = Path(CURATED)
    report = out.with_suffix(".report.json")
    if not report.is_file():
        t = run_cli(["curate", "emoji:annotations", "--kinds", "detail", "--refine", "--limit", str(limit),
                     "--out", str(out)], work, log=work / "curate.log")
    else:
        t = {"wall_s": None}
    rep = json.loads(report.read_text())
    return {"command": f"vlgraft curate emoji:annotations --kinds detail --refine --limit {limit} --out {out}",
            "wall_s": t["wall_s"], "report": {k: v for k, v in rep.items() if k != "examples"}}


def eval_key(data: str, turns: list) -> str:
    return f"{data} ({turns[0]})" if turns else data


def eval_path(work: Path, name: str, key: str) -> Path:
    return work / f"{name}-{key.replace(':', '_').replace(' ', '_')}.json"


def eval_summary(path: Path) -> dict:
    """Exact match, token F1 (from the saved predictions) and held-out loss of one eval file."""
    from vlgraft.eval.vqa import token_f1

    ev = json.loads(path.read_text())
    rows = [json.loads(line) for line in path.with_suffix(".predictions.jsonl").read_text().splitlines()]
    return {"n": ev["n"], "accuracy": ev["accuracy"],
            "f1": sum(token_f1(r["prediction"], r["answer"]) for r in rows) / len(rows), "val_loss": ev.get("val_loss"),
            "by_type": {k: v["accuracy"] for k, v in ev["by_type"].items()}}


def run_stage(name: str, spec: dict, work: Path, steps: int | None, curated: dict | None,
              previous: dict | None = None) -> dict:
    """Train (unless ``previous`` holds this stage's training, then only evaluate again) and evaluate,
    in one child process (``vlgraft.runner``, as ``vlgraft sweep`` runs its variants)."""
    from vlgraft.config import dump_recipe, load_recipe
    from vlgraft.files import write_text_atomic
    from vlgraft.runner import train_and_evaluate, training_figures

    run = work / name
    o = [f"train.output_dir={run}", "train.save_every=null"]
    if steps and not spec.get("own_length"):
        o.append(f"train.max_steps={steps}")
    o += spec.get("overrides", [])
    if spec.get("init"):
        o.append(f"init_from={work / spec['init']}")
    recipe_file = work / f"{name}.recipe.yaml"
    if previous is None:
        write_text_atomic(recipe_file, dump_recipe(load_recipe(spec["recipe"], o)))
    evals = []  # (key, eval.json, overrides)
    for data, limit, loss, *turns in spec["evals"]:
        key = eval_key(data, turns)
        ov = [f"data.eval={json.dumps(data)}", *([f"data.turns={turns[0]}"] if turns else []),
              *([f"eval.limit={limit}"] if limit else []), *([f"eval.loss_records={loss}"] if loss else [])]
        evals.append((key, eval_path(work, name, key), ov))
    if spec.get("text"):
        evals.append(("text", work / f"{name}-text.json", ['eval.text="only"']))
    job = train_and_evaluate(recipe_file, run, [(out, ov) for _, out, ov in evals], work / f"{name}.log",
                             train=previous is None)
    if job["status"] != "ok":
        raise SystemExit(f"stage {name} failed: {job['error']} (log: {work / f'{name}.log'})")
    if previous is not None:
        res = {**previous, "evals": {}}
    else:
        tr = training_figures(run)
        res = {"recipe": spec["recipe"], "overrides": o, "init_from": spec.get("init"), "steps": tr["steps"],
               "trainable_params": tr["trainable_params"], "train_wall_s": job["train_wall_s"],
               "peak_rss_mb": job["peak_rss_mb"], "first_loss": tr["first_train_loss"],
               "final_loss": tr["final_train_loss"], "samples_per_s": tr["samples_per_s"],
               "steps_by_modality": tr["steps_by_modality"], "evals": {}}
        if curated:
            res["curated"] = curated
    for (key, out, _), wall in zip(evals, job["eval_wall_s"]):
        if key == "text":
            ta = json.loads(out.read_text())["text_ability"]
            res["text"] = {k: ta[k] for k in ("before", "after", "change")}
        else:
            res["evals"][key] = {**eval_summary(out), "wall_s": wall}
    if spec.get("describe"):  # one free description of a test emoji, as a user would ask
        from vlgraft.data.sources import load_records

        rec = load_records("emoji:captions-test", limit=1)[0]
        chat = subprocess.run([sys.executable, "-m", "vlgraft.cli", "chat", "--ckpt", str(run),
                               "--image", rec.images[0], "--max-new-tokens", "80", DESCRIBE],
                              capture_output=True, text=True, check=True)
        res["describe"] = {"image": rec.id, "caption": rec.turns[-1][1], "question": DESCRIBE,
                           "answer": chat.stdout.strip()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/recipes_cpu.json")
    ap.add_argument("--work", default="runs/recipes", help="run folders (kept: chat with them afterwards)")
    ap.add_argument("--steps", type=int, default=150, help="cap on each stage's steps (0: the recipe's own)")
    ap.add_argument("--curate-limit", type=int, default=60, help="emoji records curated for minigpt4_stage2")
    ap.add_argument("--only", help="comma-separated stage names")
    ap.add_argument("--refresh", action="store_true", help="re-read the saved eval files into the JSON (no training)")
    ap.add_argument("--eval-only", action="store_true", help="with --only: evaluate the stages' existing runs again")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.refresh:
        for name, r in results.items():
            for data, ev in r["evals"].items():
                ev.update(eval_summary(eval_path(work, name, data)))
        write_json(out, results)
        print_results(results)
        return
    names = args.only.split(",") if args.only else list(STAGES)
    for name in names:
        spec = STAGES[name]
        if name in results and not args.only:
            continue
        t0 = time.time()
        curated = curate(work, args.curate_limit) if spec.get("curate") and not args.eval_only else None
        prev = results.get(name) if args.eval_only else None
        if args.eval_only and prev is None:
            raise SystemExit(f"--eval-only: {name} has not been trained yet")
        results[name] = run_stage(name, spec, work, args.steps or None, None if prev else curated, prev)
        results[name]["eval_again_wall_s" if prev else "total_wall_s"] = time.time() - t0
        write_json(out, results)
        print(f"{name}: done in {time.time() - t0:.0f}s", flush=True)
    print_results(results)
    print(f"\nwrote {out}")


def print_results(results: dict) -> None:
    from vlgraft.eval.text import text_cells

    print("\n| stage | steps | trainable params | train s | loss first → last | eval | exact match | token F1 "
          "| held-out loss | text ppl before → after [95% CI] | text QA before → after [95% CI] |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|---|---|")
    for name, r in results.items():
        t = r.get("text")
        ppl, qa = text_cells(t) if t else ("", "")
        for k, (data, ev) in enumerate(r["evals"].items()):
            vl = f"{ev['val_loss']:.3f}" if ev.get("val_loss") is not None else ""
            head = [name, str(r["steps"]), f"{r['trainable_params']:,}", f"{r['train_wall_s']:.0f}",
                    f"{r['first_loss']:.3f} → {r['final_loss']:.3f}"] if k == 0 else ["", "", "", "", ""]
            tail = [ppl, qa] if k == 0 else ["", ""]
            f1 = f"{100 * ev['f1']:.1f}%" if ev.get("f1") is not None else ""
            print("| " + " | ".join([*head, data, f"{100 * ev['accuracy']:.2f}%", f1, vl, *tail]) + " |")


if __name__ == "__main__":
    main()
