"""Visual question answering by free generation: exact match after normalisation, by answer type."""

from __future__ import annotations

import contextlib
import json
import re
import string
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from vlgraft.data.cache import FeatureCache
from vlgraft.data.conversation import _single_turns, tokenize_prompt
from vlgraft.data.dataset import collate, image_input
from vlgraft.data.describe import describe_prompt, gold_description, with_description, with_gold_descriptions
from vlgraft.data.records import load_records
from vlgraft.eval.packed import generate_packed, packed_prompt
from vlgraft.errors import DataError
from vlgraft.paths import write_text_atomic

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
    history). ``independent``: the question alone, with the record's image, as a single-turn prompt."""
    items = []
    for rec in records:
        if rec.document:
            raise DataError(f"{rec.where}: an interleaved document has no question to answer; evaluate on a "
                            "question or caption set (documents are for training)")
        types = rec.meta.get("answer_types")
        if turns == "independent":
            for k, conv in enumerate(_single_turns(rec)):
                items.append({"id": f"{rec.id}#{k}", "record": rec, "turns": conv[:-1], "answer": conv[-1][1],
                              "type": types[k] if types else rec.meta.get("answer_type", "all")})
            continue
        k, skip = 0, rec.lead_pairs  # lead exchanges (describe-first) are context, not questions
        for i, (role, text) in enumerate(rec.turns):
            if role == "assistant" and skip:
                skip -= 1
            elif role == "assistant":
                items.append({"id": f"{rec.id}#{k}", "record": rec, "turns": rec.turns[:i], "answer": text,
                              "type": types[k] if types else rec.meta.get("answer_type", "all")})
                k += 1
    return items


def _predict_single(vlm, items, cache, batch_size, max_new_tokens, precision, device, desc: str = "eval") -> list[str]:
    """Batched single-prompt greedy generation (left-padded, HF generate with the KV cache)."""
    tok = vlm.llm.tokenizer
    prompts = [tokenize_prompt(it["turns"], vlm.llm, vlm.num_image_tokens, it["record"].where) for it in items]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))  # little padding per batch
    preds = [""] * len(items)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        idx = order[s: s + batch_size]
        batch = [{"input_ids": prompts[i], **image_input(items[i]["record"], cache, vlm.vision)} for i in idx]
        inp = {k: v.to(device) if v is not None else None for k, v in collate(batch, tok.pad_token_id, left=True).items()}
        with autocast(device, precision):
            new = vlm.generate(**inp, max_new_tokens=max_new_tokens)
        for i, seq in zip(idx, new):
            preds[i] = tok.decode(seq, skip_special_tokens=True).strip()
    return preds


def _predict_packed(vlm, items, cache, batch_size, max_new_tokens, precision, device, desc: str = "eval") -> list[str]:
    """Independent questions about one image decoded together behind one shared prefix."""
    tok = vlm.llm.tokenizer
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it["record"].id, []).append(i)
    packs = []
    for idx in groups.values():
        rec = items[idx[0]]["record"]
        p = packed_prompt([items[i]["turns"] for i in idx], vlm.llm, vlm.num_image_tokens, rec.where)
        packs.append((idx, {**p, **image_input(rec, cache, vlm.vision)}))
    packs.sort(key=lambda x: len(x[1]["input_ids"]))
    preds = [""] * len(items)
    chunks, cur, n = [], [], 0
    for pk in packs:  # about batch_size questions per forward
        cur.append(pk)
        n += len(pk[0])
        if n >= batch_size:
            chunks.append(cur)
            cur, n = [], 0
    chunks += [cur] if cur else []
    for chunk in tqdm(chunks, desc=desc, unit="batch"):
        batch = collate([p for _, p in chunk], tok.pad_token_id)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(device, precision):
            toks = generate_packed(vlm, batch, [len(idx) for idx, _ in chunk], max_new_tokens)
        for (idx, _), per_q in zip(chunk, toks):
            for i, t in zip(idx, per_q):
                preds[i] = tok.decode(t, skip_special_tokens=True).strip()
    return preds


def describe_records(vlm, records, request: str, cache, batch_size, max_new_tokens, precision, device) -> list[str | None]:
    """The model's own description of each image record (None for records without an image), asked
    with ``request`` and greedy-decoded in batches of ``batch_size`` images (the packed decoder with one
    question per image: its prefill-once KV-cache loop is several times faster than ``generate`` here)."""
    todo = [i for i, r in enumerate(records) if r.has_image and not r.document]
    asks = [{"record": records[i], "turns": describe_prompt(records[i], request)} for i in todo]
    out: list[str | None] = [None] * len(records)
    for i, d in zip(todo, _predict_packed(vlm, asks, cache, batch_size, max_new_tokens, precision, device, "describe")):
        out[i] = d
    return out


def describe_summary(records, described: list[str | None], request: str) -> dict:
    """How many images were described and, where records carry a gold description, how many of the
    model's descriptions equal it after normalisation."""
    pairs = [(gold_description(r), d) for r, d in zip(records, described) if d is not None]
    gold = [(g, d) for g, d in pairs if g is not None]
    hits = sum(normalize(g) == normalize(d) for g, d in gold)
    return {"request": request, "described": len(pairs), "with_gold": len(gold),
            "gold_match": hits / len(gold) if gold else None}


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def heldout_nll(vlm, records, turns: str, max_length: int, cache, batch_size: int, precision: str,
                device) -> tuple[float, int]:
    """Mean cross-entropy per labelled token over ``records`` (teacher forcing, tokenised as in
    training) and the number of labelled tokens; records are batched by length."""
    from vlgraft.data.dataset import ConversationDataset

    ds = ConversationDataset(records, vlm, max_length, cache, turns)
    order = sorted(range(len(ds)), key=ds.num_tokens)
    total, n = 0.0, 0
    for s in range(0, len(order), batch_size):
        batch = collate([ds[i] for i in order[s: s + batch_size]], vlm.llm.tokenizer.pad_token_id)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(device, precision):
            out = vlm(**batch)
        total += float(out["loss_sum"])
        n += out["n_tokens"]
    return total / max(1, n), n


def write_result(out: Path, result: dict, rows: list[dict], rows_suffix: str) -> None:
    """``result`` as JSON at ``out`` and ``rows`` as JSONL beside it, each written atomically."""
    write_text_atomic(out, json.dumps(result, indent=1))
    write_text_atomic(out.with_suffix(rows_suffix), "".join(json.dumps(r) + "\n" for r in rows))


@torch.no_grad()
def evaluate(vlm, data_spec: str, turns: str = "conversation", batch_size: int = 64, max_new_tokens: int = 8, limit: int | None = None,
             precision: str = "bf16", image_root: str | None = None, use_cache: bool = True,
             out_path: Path | None = None, console: Console | None = None, loss_records: int = 0,
             max_length: int = 2048, describe_first: str | None = None, describe_max_new_tokens: int = 32) -> dict:
    """``describe_first``: a request (e.g. "Describe the image."); the model first describes each
    image in answer to it, then every question is asked behind that exchange (docs/DESCRIBE.md)."""
    console = console or Console(stderr=True)
    device = next(vlm.parameters()).device
    items = eval_items(load_records(data_spec, image_root), turns)[:limit]
    records = list({id(it["record"]): it["record"] for it in items}.values())
    cache = FeatureCache(vlm.vision, precision) if use_cache and vlm.vision_cacheable() else None
    if cache is not None:
        cache.fill([(p, rec.where) for rec in records for p in rec.images], device)
    val_loss, recs = None, []
    if loss_records:
        recs = records[:loss_records]
        if describe_first:  # teacher forcing, as in training: the gold description where there is one
            recs = with_gold_descriptions(recs, describe_first)[0]
        val_loss, _ = heldout_nll(vlm, recs, turns, max_length, cache, max(1, batch_size // 8), precision, device)
    t0 = time.time()
    described = None
    if describe_first:
        described = describe_records(vlm, records, describe_first, cache, batch_size, describe_max_new_tokens,
                                     precision, device)
        items = eval_items([with_description(r, describe_first, d) if d is not None else r
                            for r, d in zip(records, described)], turns)[:limit]
    description_of = {r.id: d for r, d in zip(records, described or []) if d is not None}
    predict = _predict_packed if turns == "independent" else _predict_single
    preds = predict(vlm, items, cache, batch_size, max_new_tokens, precision, device)
    elapsed = time.time() - t0
    by_type: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
    rows = []
    for it, pred in zip(items, preds):
        ok = normalize(pred) == normalize(it["answer"])
        f1 = token_f1(pred, it["answer"])
        for key in {it["type"], "all"}:
            by_type[key][0] += ok
            by_type[key][1] += 1
            by_type[key][2] += f1
        rows.append({"id": it["id"], "answer": it["answer"], "prediction": pred, "correct": ok, "f1": f1,
                     "type": it["type"]})
        if it["record"].id in description_of:
            rows[-1]["description"] = description_of[it["record"].id]
    result = {
        "data": data_spec, "n": len(items), "accuracy": by_type["all"][0] / max(1, by_type["all"][1]),
        "f1": by_type["all"][2] / max(1, by_type["all"][1]),
        "by_type": {k: {"n": n, "correct": c, "accuracy": c / n, "f1": f / n} for k, (c, n, f) in sorted(by_type.items())},
        "seconds": elapsed, "questions_per_s": len(items) / max(elapsed, 1e-9), "precision": precision,
        "turns": turns,
    }
    if described is not None:
        result["describe_first"] = describe_summary(records, described, describe_first)
    if val_loss is not None:
        result["val_loss"] = val_loss
        result["val_loss_records"] = len(recs)
    table = Table(title=f"exact match on {data_spec}")
    for col in ("answer type", "questions", "correct", "accuracy", "token F1"):
        table.add_column(col, justify="left" if col == "answer type" else "right")
    for k, v in result["by_type"].items():
        table.add_row(k, str(v["n"]), str(v["correct"]), f"{100 * v['accuracy']:.2f}%", f"{100 * v['f1']:.1f}%")
    console.print(table)
    if described is not None:
        d = result["describe_first"]
        gold = f", {100 * d['gold_match']:.2f}% equal to the gold one ({d['with_gold']} images)" if d["with_gold"] else ""
        console.print(f"described first ({describe_first!r}): {d['described']} images{gold}")
    if out_path is not None:
        write_result(Path(out_path), result, rows, ".predictions.jsonl")
        console.print(f"wrote {out_path}")
    return result
