"""Several benchmarks in one ``vlgraft eval`` call on a run, with each task's time and figures.

    python benchmarks/eval_tasks.py [--run runs/default] [--limit 1000]

Runs ``vlgraft eval RUN --task vqa --task caption:emoji:captions-test --task pope:emoji-test --task
choice:scienceqa:FILE`` in a child process, where FILE is a ScienceQA-format multiple-choice set
built here from easy-VQA test images (``What color is the shape?`` with the gold colour and two
others as options, the answer's place rotating; subject natural science, grades 2 to 8), so every
task runs offline on bundled data. Prints a table (task, figures, seconds, items per second) and
writes ``benchmarks/results/eval_tasks_<device>.json``. Three more calls score the multiple-choice set with
CircularEval (``--circular``): by generation, and by the likelihood of the option letters and of the option
texts (``--choice-scoring likelihood [-o eval.choice_candidates=option]``). Time it with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import run_cli, write_json

RESULTS = Path(__file__).parent / "results"
COLORS = ["red", "green", "blue", "yellow", "purple", "gray", "black", "brown", "orange", "teal"]


def easyvqa_choice_file(folder: Path, n: int = 200) -> Path:
    """A ScienceQA ``problems.json`` of colour questions about the first ``n`` easy-VQA test images."""
    import easy_vqa

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    colour_of = {}
    for q, a, i in zip(questions, answers, image_ids):
        if q == "what is the color of the shape?" and a in COLORS:
            colour_of.setdefault(i, a)
    problems = {}
    for k, (image_id, gold) in enumerate(sorted(colour_of.items())[:n]):
        others = [c for c in COLORS if c != gold]
        options = [others[k % len(others)], others[(k + 3) % len(others)]]
        options.insert(k % 3, gold)
        qid = str(k)
        (folder / "images" / "test" / qid).mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[image_id], folder / "images" / "test" / qid / "image.png")
        problems[qid] = {"question": "What color is the shape?", "choices": options, "answer": options.index(gold),
                         "hint": "", "image": "image.png", "subject": "natural science",
                         "grade": f"grade{2 + k % 7}", "category": "Colors", "split": "test"}
    path = folder / "problems.json"
    path.write_text(json.dumps(problems))
    return path


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--limit", type=int, default=1000, help="easy-VQA questions for the vqa task")
    ap.add_argument("--work", default="/tmp/vlgraft-eval-tasks")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    choice = easyvqa_choice_file(work / "sqa")
    tasks = ["vqa", "caption:emoji:captions-test", "pope:emoji-test", f"choice:scienceqa:{choice}"]
    out = work / "eval.json"
    cmd = ["eval", args.run, "--limit", str(args.limit), "--out", str(out)] + [a for t in tasks for a in ("--task", t)]
    cost = run_cli(cmd, work)
    result = json.loads(out.read_text())
    # the same multiple-choice set in every rotation of its options (CircularEval), by generation and by the
    # likelihood of the option letters or texts: one call each, since scoring is one setting per call
    choice_variants = {"generate": [], "likelihood of the letters": ["--choice-scoring", "likelihood"],
                       "likelihood of the option texts": ["--choice-scoring", "likelihood", "-o",
                                                          "eval.choice_candidates=option"]}
    circular = {}
    for label, flags in choice_variants.items():
        path = work / f"eval_choice_{len(circular)}.json"
        cost_c = run_cli(["eval", args.run, "--out", str(path), "--task", tasks[-1], "--circular", *flags], work)
        circular[label] = {**json.loads(path.read_text())["tasks"][tasks[-1]], "wall_s": cost_c["wall_s"]}
    rows = [("vqa (easy-VQA)", f"exact match {100 * result['accuracy']:.2f}%, VQA accuracy "
             f"{100 * result['vqa_accuracy']:.2f}%", result["seconds"], result["n"])]
    for spec, b in result["tasks"].items():
        if spec.startswith("caption:"):
            figs, n = f"CIDEr {b['CIDEr']:.3f}, BLEU-4 {b['BLEU-4']:.3f}, METEOR {b['METEOR']:.3f}", b["images"]
        elif spec.startswith("pope:"):
            figs = ", ".join(f"{s} {100 * b[s]['accuracy']:.1f}% (F1 {100 * b[s]['f1']:.1f})"
                             for s in ("random", "popular", "adversarial"))
            n = sum(b[s]["n"] for s in ("random", "popular", "adversarial"))
        else:
            figs, n = f"accuracy {100 * b['accuracy']:.2f}% (Avg {100 * b['scienceqa']['accuracy']['Avg']:.2f})", b["n"]
        rows.append((spec.split(":")[0] + " (" + spec.split(":", 1)[1].split("/")[-1] + ")", figs, b["seconds"], n))
    for label, b in circular.items():
        rows.append((f"choice, circular, {label}", f"accuracy {100 * b['accuracy']:.2f}%, circular "
                     f"{100 * b['circular_accuracy']:.2f}% ({b['passes']} passes)", b["seconds"], b["passes"]))
    print("\n| task | figures | seconds | items/s |\n|---|---|---|---|")
    for name, figs, sec, n in rows:
        print(f"| {name} | {figs} | {sec:.1f} | {n / sec:.1f} |")
    print(f"\nwhole command: {cost['wall_s']:.0f} s, peak memory {cost['max_rss_mb']:.0f} MB")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / f"eval_tasks_{device}.json", {"run": args.run, "tasks": tasks, "result": result,
                                                          "wall_s": cost["wall_s"], "max_rss_mb": cost["max_rss_mb"],
                                                          "choice_circular": circular})
    print(f"wrote {RESULTS / f'eval_tasks_{device}.json'}")


if __name__ == "__main__":
    main()
