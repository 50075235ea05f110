"""Visual question answering by free generation, by answer type: exact match after normalisation, token
F1, and VQA accuracy (``metrics.vqa_accuracy``: the benchmark's normalisation and its 10-annotator
rule for records with several human answers; exact match under that normalisation otherwise)."""

from __future__ import annotations

import re
import string
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from vlgraft.config import DataConfig, EvalConfig
from vlgraft.data.cache import FeatureCache
from vlgraft.data.conversation import single_turns
from vlgraft.data.dataset import collate
from vlgraft.data.describe import describe_records, gold_description, with_descriptions, with_gold_descriptions
from vlgraft.data.records import IMAGE_PLACEHOLDER
from vlgraft.data.sources import load_records
from vlgraft.errors import DataError
from vlgraft.eval.metrics.vqa_accuracy import vqa_accuracy
from vlgraft.files import OutputError, write_json, write_jsonl
from vlgraft.inference import autocast, device_of, generate_answers
from vlgraft.options import to_dict

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse spaces (VQA-style answer normalisation)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def token_f1(prediction: str, answer: str) -> float:
    """SQuAD-style token F1 of the normalised texts: partial credit for free-form answers (captions,
    descriptions) where exact match is all-or-nothing."""
    p, a = normalize(prediction).split(), normalize(answer).split()
    common = sum((Counter(p) & Counter(a)).values())
    if not p or not a:
        return float(p == a)
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(a)
    return 2 * prec * rec / (prec + rec)


def eval_items(records, turns: str = "conversation") -> list[dict]:
    """One item per assistant turn. ``conversation``: the conversation before it is the prompt (gold
    history). ``independent``: the question alone, with the record's image, as a single-turn prompt.
    An item's ``references`` are the question's human answers where the record carries them
    (``meta["references"]``, one list per question, as ``vqav2:`` gives them), else its one answer."""
    items = []
    for rec in records:
        if rec.kind == "document":
            raise DataError(f"{rec.where}: an interleaved document has no question to answer; evaluate on a "
                            "question or caption set (documents are for training)")
        types, refs = rec.meta.get("answer_types"), rec.meta.get("references")
        if turns == "independent":
            for k, conv in enumerate(single_turns(rec)):
                items.append({"id": f"{rec.id}#{k}", "record": rec, "turns": conv[:-1], "answer": conv[-1][1],
                              "type": types[k] if types else rec.meta.get("answer_type", "all"),
                              "references": refs[k] if refs else [conv[-1][1]]})
            continue
        k, skip = 0, rec.lead_pairs  # lead exchanges (describe-first) are context, not questions
        for i, (role, text) in enumerate(rec.turns):
            if role == "assistant" and skip:
                skip -= 1
            elif role == "assistant":
                items.append({"id": f"{rec.id}#{k}", "record": rec, "turns": rec.turns[:i], "answer": text,
                              "type": types[k] if types else rec.meta.get("answer_type", "all"),
                              "references": refs[k] if refs else [text]})
                k += 1
    return items


def question_of(turns) -> str:
    """The last question of a prompt, its image placeholders aside (for prediction rows)."""
    users = [text for role, text in turns if role == "user"]
    return users[-1].replace(IMAGE_PLACEHOLDER, "").strip() if users else ""


def describe_summary(records, described: list[str | None], request: str) -> dict:
    """How many images were described and, where records carry a gold description, how many of the
    model's descriptions equal it after normalisation."""
    pairs = [(gold_description(r), d) for r, d in zip(records, described) if d is not None]
    gold = [(g, d) for g, d in pairs if g is not None]
    hits = sum(normalize(g) == normalize(d) for g, d in gold)
    return {"request": request, "described": len(pairs), "with_gold": len(gold),
            "gold_match": hits / len(gold) if gold else None}


@torch.no_grad()
def heldout_nll(vlm, records, turns: str, max_length: int, cache, batch_size: int, precision: str,
                device) -> tuple[float, int, list[list]]:
    """Teacher-forced cross-entropy over ``records`` (tokenised and masked as in training, batched by
    length): ``(mean per labelled token, labelled tokens, [[NLL sum, tokens] per record])``."""
    from vlgraft.data.dataset import ConversationDataset

    ds = ConversationDataset(records, vlm, max_length, cache, turns)
    order = sorted(range(len(ds)), key=ds.num_tokens)
    total, n, items = 0.0, 0, [[0.0, 0] for _ in records]
    for s in range(0, len(order), batch_size):
        rows = order[s: s + batch_size]
        batch = collate([ds[i] for i in rows], vlm.llm.tokenizer.pad_token_id)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(device, precision):
            out = vlm(**batch, per_sample=True)
        for i, nll, k in zip(rows, out["sample_nll"].tolist(), out["sample_tokens"].tolist()):
            items[i] = [nll, int(k)]
        total += float(out["loss_sum"])
        n += out["n_tokens"]
    return total / max(1, n), n, items


def write_result(out: Path, result: dict, rows: list[dict], rows_suffix: str) -> None:
    """``result`` as JSON at ``out`` and ``rows`` as JSONL beside it, each written atomically. If that
    fails (disk full, ...), the work is not lost: both go to the system's temporary folder, and the
    error says where."""
    try:
        write_json(out, result)
        write_jsonl(out.with_suffix(rows_suffix), rows)
    except OutputError as e:
        spare = Path(tempfile.mkdtemp(prefix="vlgraft-eval-")) / out.name
        try:
            write_json(spare, result)
            write_jsonl(spare.with_suffix(rows_suffix), rows)
        except OutputError:
            raise e from None
        raise OutputError(f"{e}; the results were written to {spare} instead") from None


@torch.no_grad()
def evaluate(vlm, data: DataConfig, cfg: EvalConfig, precision: str = "bf16", out_path: Path | None = None,
             use_cache: bool = True, console: Console | None = None) -> dict:
    """Exact match and token F1 by answer type on ``data.eval`` (the first ``cfg.limit`` questions,
    asked as ``data.turns`` says), plus the held-out loss over ``cfg.loss_records`` records. With
    ``data.describe_first`` the model first describes each image, and every question is asked behind
    that exchange (docs/DESCRIBE.md)."""
    console = console or Console(stderr=True)
    device = device_of(vlm)
    turns, request = data.turns, data.describe_first
    items = eval_items(load_records(data.eval, data.image_root), turns)[:cfg.limit]
    if not items:
        raise DataError(f"{data.eval}: no questions to evaluate")
    records = list({it["record"].id: it["record"] for it in items}.values())
    cache = FeatureCache(vlm.vision, precision) if use_cache and vlm.vision_cacheable() else None
    if cache is not None:
        cache.fill([(p, rec.where) for rec in records for p in rec.images], device)
    val_loss, recs = None, []
    if cfg.loss_records:
        recs = records[:cfg.loss_records]
        if request:  # teacher forcing, as in training: the gold description where there is one
            recs = with_gold_descriptions(recs, request)[0]
        val_loss, _, _ = heldout_nll(vlm, recs, turns, data.max_length, cache, max(1, cfg.batch_size // 8), precision,
                                  device)
    t0 = time.time()
    described = None
    if request:
        described = describe_records(vlm, records, request, cache, cfg.batch_size, cfg.describe_max_new_tokens,
                                     precision)
        items = eval_items(with_descriptions(records, request, described), turns)[:cfg.limit]
    description_of = {r.id: d for r, d in zip(records, described or []) if d is not None}
    preds = generate_answers(vlm, items, cache, cfg.batch_size, cfg.max_new_tokens, precision,
                             packed=turns == "independent", desc="eval")
    elapsed = time.time() - t0
    by_type: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    rows = []
    for it, pred in zip(items, preds):
        ok = normalize(pred) == normalize(it["answer"])
        f1 = token_f1(pred, it["answer"])
        acc = vqa_accuracy(pred, it["references"], it["id"])
        for key in {it["type"], "all"}:
            by_type[key][0] += ok
            by_type[key][1] += 1
            by_type[key][2] += f1
            by_type[key][3] += acc
        rec = it["record"]
        rows.append({"id": it["id"], "answer": it["answer"], "prediction": pred, "correct": ok, "f1": f1,
                     "vqa_accuracy": acc, "type": it["type"], "question": question_of(it["turns"]),
                     "image": rec.images[0] if rec.images else None})
        if len(it["references"]) > 1:
            rows[-1]["references"] = it["references"]
        if it["record"].id in description_of:
            rows[-1]["description"] = description_of[it["record"].id]
    result = {
        "data": data.eval if isinstance(data.eval, str) else to_dict(data.eval), "n": len(items),
        "accuracy": by_type["all"][0] / max(1, by_type["all"][1]),
        "f1": by_type["all"][2] / max(1, by_type["all"][1]),
        "vqa_accuracy": by_type["all"][3] / max(1, by_type["all"][1]),
        "by_type": {k: {"n": n, "correct": c, "accuracy": c / n, "f1": f / n, "vqa_accuracy": a / n}
                    for k, (c, n, f, a) in sorted(by_type.items())},
        "seconds": elapsed, "questions_per_s": len(items) / max(elapsed, 1e-9), "precision": precision,
        "turns": turns,
    }
    if described is not None:
        result["describe_first"] = describe_summary(records, described, request)
    if val_loss is not None:
        result["val_loss"] = val_loss
        result["val_loss_records"] = len(recs)
    table = Table(title=f"exact match on {result['data']}")
    for col in ("answer type", "questions", "correct", "accuracy", "token F1", "VQA accuracy"):
        table.add_column(col, justify="left" if col == "answer type" else "right")
    for k, v in result["by_type"].items():
        table.add_row(k, str(v["n"]), str(v["correct"]), f"{100 * v['accuracy']:.2f}%", f"{100 * v['f1']:.1f}%",
                      f"{100 * v['vqa_accuracy']:.2f}%")
    console.print(table)
    if described is not None:
        d = result["describe_first"]
        gold = (f", {100 * d['gold_match']:.2f}% equal to the gold one ({d['with_gold']} images)"
                if d["with_gold"] else "")
        console.print(f"described first ({request!r}): {d['described']} images{gold}")
    if out_path is not None:
        write_result(Path(out_path), result, rows, ".predictions.jsonl")
        console.print(f"wrote {out_path}")
    return result
