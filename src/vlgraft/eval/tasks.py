"""``eval.tasks``: benchmarks beyond the recipe's own eval set, several in one ``vlgraft eval`` call on
the model loaded once, image features shared through the feature cache. A task is a spec string:

* ``vqa`` — the recipe's ``data.eval`` (exact match, token F1, held-out loss: ``eval/vqa.py``); the
  default when ``eval.tasks`` is empty.
* ``caption:SOURCE`` — one caption per image of a caption data source (``emoji:captions-test``,
  ``coco:captions_val2017.json``), asked with the source's own prompt, scored against every
  reference caption of the image with the COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L,
  CIDEr-D; docs/METRICS.md). The caption is the model's answer itself, so describe-first does not
  apply.
* ``pope:OBJECTS[:SETTING]`` — POPE's yes/no object questions built from object annotations:
  ``emoji-test`` / ``emoji-train`` (the emoji set), or ``coco=FILE`` (a COCO instances file; images
  under ``data.image_root``, else the file's folder); SETTING ``random``, ``popular`` or
  ``adversarial`` (default: all three). Questions are asked as the recipe asks any question
  (describe-first included); accuracy, precision, recall, F1 and yes-ratio per setting.
* ``choice:SOURCE`` — multiple choice on records that carry their options, by generation or by
  likelihood, optionally circular, with ScienceQA's category table (``eval/choice_task.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

from vlgraft.data.cache import FeatureCache
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.data.sources import load_records
from vlgraft.errors import ConfigError, DataError
from vlgraft.eval.asking import answers, prepared
from vlgraft.eval.choice_task import run_choice
from vlgraft.eval.vqa import question_of

POPE_SETTINGS = ("random", "popular", "adversarial")


def check_specs(specs: list[str]) -> None:
    """Every spec names a task with its argument: errors before anything is generated."""
    for spec in specs:
        name, _, arg = spec.partition(":")
        if name != "vqa" and name not in TASKS:
            raise ConfigError(f"eval.tasks: {spec!r} is not a task (vqa | caption:SOURCE | pope:OBJECTS[:SETTING] | "
                              "choice:SOURCE)")
        if name != "vqa" and not arg:
            raise ConfigError(f"eval.tasks: {spec!r} needs its data ({name}:...)")
        if name == "pope":
            _, _, setting = arg.partition(":")
            if setting and setting not in POPE_SETTINGS:
                raise ConfigError(f"eval.tasks: {spec!r}: POPE setting {setting!r} is not one of "
                                  f"{', '.join(POPE_SETTINGS)}")


def run_tasks(vlm, recipe, specs: list[str], precision: str) -> tuple[dict, list[dict]]:
    """(``{spec: block}``, prediction rows) for the non-``vqa`` tasks."""
    cache = FeatureCache(vlm.vision, precision) if vlm.vision_cacheable() else None
    blocks, rows = {}, []
    for spec in specs:
        name, _, arg = spec.partition(":")
        t0 = time.time()
        block, task_rows = TASKS[name](vlm, recipe, arg, precision, cache)
        blocks[spec] = {**block, "seconds": time.time() - t0}
        rows += [{"task": spec, **r} for r in task_rows]
    return blocks, rows


def _caption(vlm, recipe, source: str, precision: str, cache) -> tuple[dict, list[dict]]:
    from vlgraft.eval.metrics.captioning import caption_metrics

    by_image: dict[str, list[Record]] = {}
    for rec in load_records(source, recipe.data.image_root):
        body = [t for t in rec.turns if t[0] != "system"]
        if len(rec.images) != 1 or [r for r, _ in body] != ["user", "assistant"]:
            raise DataError(f"{rec.where}: a caption task needs records of one image, one prompt and its caption")
        by_image.setdefault(rec.images[0], []).append(rec)
    if not by_image:
        raise DataError(f"caption:{source}: no captions")
    firsts = [recs[0] for recs in by_image.values()]
    preds = answers(vlm, recipe, prepared(vlm, recipe, firsts, precision, cache, describe=False), precision, cache,
                    recipe.eval.caption_max_new_tokens, f"caption {source}")
    refs = {img: [r.turns[-1][1] for r in recs] for img, recs in by_image.items()}
    scores = caption_metrics(dict(zip(by_image, ([p] for p in preds))), refs)
    per_image = scores.pop("per_image")
    rows = [{"image": img, "question": question_of(rec.turns), "prediction": p, "references": refs[img],
             "CIDEr": per_image[img]["CIDEr"]} for img, p, rec in zip(by_image, preds, firsts)]
    return {"data": source, "images": len(by_image), "captions": sum(map(len, refs.values())), **scores}, rows


def _objects(arg: str, recipe) -> dict:
    from vlgraft.eval.metrics.pope import coco_objects, emoji_objects

    if arg in ("emoji-test", "emoji-train"):
        return emoji_objects(arg.split("-")[1])
    if arg.startswith("coco="):
        path = Path(arg[len("coco="):])
        root = Path(recipe.data.image_root) if recipe.data.image_root else path.parent
        return {str(root / name): objs for name, objs in coco_objects(path).items()}
    raise ConfigError(f"pope:{arg}: objects come from emoji-test, emoji-train or coco=FILE")


def _pope(vlm, recipe, arg: str, precision: str, cache) -> tuple[dict, list[dict]]:
    from vlgraft.eval.metrics.pope import pope_answer, pope_metrics, pope_questions

    source, _, setting = arg.partition(":")
    objects = _objects(source, recipe)
    settings = [setting] if setting else list(POPE_SETTINGS)
    by_image: dict[str, list[dict]] = {}  # every setting's questions about an image in one record: one prefix
    for s in settings:
        for q in pope_questions(objects, s, seed=0):
            by_image.setdefault(q["image"], []).append(q)
    records = []
    for k, (image, qs) in enumerate(by_image.items()):
        lead = [f"{IMAGE_PLACEHOLDER}\n"] + [""] * (len(qs) - 1)  # the image before the first question
        turns = [t for pre, q in zip(lead, qs) for t in (("user", pre + q["text"]), ("assistant", q["label"]))]
        records.append(Record(f"pope-{k}", turns, images=[image], source=f"pope:{source} image {image}"))
    questions = [q for qs in by_image.values() for q in qs]
    replies = answers(vlm, recipe, prepared(vlm, recipe, records, precision, cache, describe=True), precision, cache,
                      recipe.eval.max_new_tokens, f"POPE {source}")
    block = {"objects": source, "images": len(objects)}
    for s in settings:
        mine = [(q, a) for q, a in zip(questions, replies) if q["setting"] == s]
        block[s] = pope_metrics([a for _, a in mine], [q["label"] for q, _ in mine])
    rows = [{"setting": q["setting"], "image": q["image"], "question": q["text"], "label": q["label"],
             "prediction": a, "read_as": pope_answer(a)} for q, a in zip(questions, replies)]
    return block, rows


TASKS = {"caption": _caption, "pope": _pope, "choice": run_choice}  # besides vqa, which eval/vqa.py runs


def print_tasks(blocks: dict) -> None:
    """One line per task (and POPE setting) with its headline figures."""
    for spec, b in blocks.items():
        if spec.startswith("caption:"):
            figs = ", ".join(f"{k} {b[k]:.3f}" for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr") if k in b)
            print(f"{spec}: {b['images']} images: {figs}")
        elif spec.startswith("choice:"):
            table = b.get("scienceqa", {}).get("accuracy", {})
            cols = ", ".join(f"{c} {100 * v:.1f}" for c, v in table.items() if v is not None)
            how = (f"{b['unanswered']} without an option letter" if b["scoring"] == "generate"
                   else f"by likelihood of the option {'letters' if b['candidates'] == 'letter' else 'texts'}")
            circular = (f", circular {100 * b['circular_accuracy']:.2f}% ({b['passes']} passes)"
                        if "circular_accuracy" in b else "")
            print(f"{spec}: accuracy {100 * b['accuracy']:.2f}%{circular} ({b['n']} questions, {how})"
                  f"{'; ' + cols if cols else ''}")
        else:
            for s in POPE_SETTINGS:
                if s in b:
                    m = b[s]
                    print(f"{spec} {s}: accuracy {100 * m['accuracy']:.2f}%, F1 {100 * m['f1']:.2f}%, "
                          f"yes-ratio {100 * m['yes_ratio']:.1f}% ({m['n']} questions)")
