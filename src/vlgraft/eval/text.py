"""Text-only ability before and after multimodal training (LaVIN's question).

Two measures on a held-out text set (bundled: ``vlgraft/data/bundled/text_eval.jsonl``):

* **perplexity** on instruction/response pairs: ``exp`` of the mean negative log-likelihood per
  response token (the reply and its end-of-turn token), teacher-forced with the LLM's chat template
  and the training tokenisation and masking (``tokenize_conversation``);
* **QA accuracy** on short questions by greedy generation: the first line of the answer, normalised
  as VQA answers are (lower case, no punctuation or articles, spaces collapsed), is correct when it
  contains one of the accepted answers, normalised the same way, as whole words. ``qa_exact``
  requires the whole first line to equal an accepted answer.

Text-only inputs go through the same VLM forward as training, with no image: LoRA, adapters and
LLaMA-Adapter prompts apply (a multimodal LLaMA-Adapter adds no image feature to its prompts).
"Before" is the base LLM as the recipe builds it (same weights, dtype, chat template and system
prompt, no method applied, no trained weight loaded); its result is cached per LLM, text set,
precision and generation settings under ``<cache>/text_ability``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from vlgraft.data.records import Record
from vlgraft.errors import DataError
from vlgraft.eval.vqa import heldout_nll, normalize
from vlgraft.files import iter_jsonl
from vlgraft.inference import device_of, generate_answers

BUNDLED_TEXT_SET = Path(__file__).resolve().parent.parent / "data" / "bundled" / "text_eval.jsonl"


@dataclasses.dataclass
class TextSet:
    path: str
    sha1: str
    ppl: list[Record]  # single-turn instruction -> response
    qa: list[dict]  # {"id", "question", "answers", "where"}


def _text(raw: dict, key: str, where: str) -> str:
    v = raw.get(key)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string")
    return v


def load_text_set(path: str | Path | None = None) -> TextSet:
    """Read a text set (JSONL): ``{"id", "kind": "ppl", "instruction", "response"}`` or
    ``{"id", "kind": "qa", "question", "answers": [accepted, ...]}`` per line."""
    p = Path(path) if path else BUNDLED_TEXT_SET
    if not p.is_file():
        raise DataError(f"text set not found: {p}")
    ppl: list[Record] = []
    qa: list[dict] = []
    seen: set[str] = set()
    for ln, raw in iter_jsonl(p):
        if not isinstance(raw, dict):
            raise DataError(f"{p}: line {ln}: a record must be an object")
        rid = str(raw.get("id", f"line{ln}"))
        where = f"{p}: record {rid!r} (line {ln})"
        if rid in seen:
            raise DataError(f"{where}: duplicate id")
        seen.add(rid)
        kind = raw.get("kind")
        if kind == "ppl":
            turns = [("user", _text(raw, "instruction", where)), ("assistant", _text(raw, "response", where))]
            ppl.append(Record(rid, turns, source=where))
        elif kind == "qa":
            answers = raw.get("answers")
            if (not isinstance(answers, list) or not answers
                    or not all(isinstance(a, str) and normalize(a) for a in answers)):
                raise DataError(f"{where}: 'answers' must be a non-empty list of non-empty strings")
            qa.append({"id": rid, "question": _text(raw, "question", where), "answers": answers, "where": where})
        else:
            raise DataError(f"{where}: 'kind' must be 'ppl' or 'qa', got {kind!r}")
    if not ppl and not qa:
        raise DataError(f"{p}: no records")
    return TextSet(str(p), hashlib.sha1(p.read_bytes()).hexdigest(), ppl, qa)


def qa_correct(prediction: str, answers: list[str], exact: bool = False) -> bool:
    """Whether the first line of ``prediction`` contains (``exact``: equals) an accepted answer as
    whole words, both normalised (lower case, no punctuation or articles, single spaces)."""
    lines = prediction.strip().splitlines()
    pred = normalize(lines[0]) if lines else ""
    for a in answers:
        a = normalize(a)
        if pred == a or (not exact and f" {a} " in f" {pred} "):
            return True
    return False


def perplexity(vlm, records: list[Record], batch_size: int = 16, precision: str = "fp32",
               max_length: int = 1024) -> dict:
    """Teacher-forced NLL per labelled response token over ``records`` (the held-out loss of VQA eval)."""
    nll, n = heldout_nll(vlm, records, "conversation", max_length, None, batch_size, precision, device_of(vlm))
    return {"ppl": math.exp(nll), "nll": nll, "tokens": n}


def qa_predictions(vlm, items: list[dict], batch_size: int = 16, max_new_tokens: int = 16,
                   precision: str = "fp32") -> list[str]:
    """Greedy answers to single-turn text questions (VQA eval's batched generation, no image)."""
    prompts = [{"turns": [("user", it["question"])], "record": Record(it["id"], [], source=it["where"])}
               for it in items]
    return generate_answers(vlm, prompts, None, batch_size, max_new_tokens, precision, desc="text QA")


def text_ability(vlm, text_set: TextSet | str | Path | None = None, batch_size: int = 16,
                 max_new_tokens: int = 16, precision: str = "fp32", max_length: int = 1024) -> dict:
    """Perplexity and QA accuracy of ``vlm`` (a VLM; text-only inputs, no image) on ``text_set``."""
    ts = text_set if isinstance(text_set, TextSet) else load_text_set(text_set)
    vlm.eval()
    res: dict = {"n_ppl": len(ts.ppl), "n_qa": len(ts.qa)}
    if ts.ppl:
        res.update(perplexity(vlm, ts.ppl, batch_size, precision, max_length))
    if ts.qa:
        preds = qa_predictions(vlm, ts.qa, batch_size, max_new_tokens, precision)
        res["qa_acc"] = sum(qa_correct(p, it["answers"]) for p, it in zip(preds, ts.qa)) / len(ts.qa)
        res["qa_exact"] = sum(qa_correct(p, it["answers"], exact=True) for p, it in zip(preds, ts.qa)) / len(ts.qa)
        res["predictions"] = preds
    return res


def base_vlm(vlm, recipe):
    """The base LLM as ``recipe`` builds it (no method, no trained weight) behind ``vlm``'s own vision
    tower and connector (shared, unused for text), on ``vlm``'s device."""
    from vlgraft.models.llm import build_llm
    from vlgraft.models.vlm import VLM

    device = device_of(vlm)
    bare = dataclasses.replace(recipe, methods=[])
    return VLM(vlm.vision, vlm.connector, build_llm(recipe.llm), bare).to(device).eval()


def _weights_fingerprint(name: str) -> list:
    """Sizes and mtimes of a local ``hf:`` folder's files (its weights may change under one name)."""
    p = Path(name[3:]) if name.startswith("hf:") else None
    if p is None or not p.is_dir():
        return []
    return sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())


def _before_key(recipe, ts: TextSet, precision: str, device: torch.device, max_new_tokens: int, max_length: int) -> str:
    key = {"llm": dataclasses.asdict(recipe.llm), "files": _weights_fingerprint(recipe.llm.name), "text_set": ts.sha1,
           "precision": precision, "device": device.type, "max_new_tokens": max_new_tokens, "max_length": max_length}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def before_after(vlm, recipe, text_set: TextSet | str | Path | None = None, batch_size: int = 16,
                 max_new_tokens: int = 16, precision: str = "fp32", use_cache: bool = True,
                 console: Console | None = None) -> dict:
    """``{before, after, change}`` for trained ``vlm`` against the base LLM of ``recipe``; also the
    per-question predictions under ``predictions``."""
    from vlgraft.files import OutputError, read_json, write_json
    from vlgraft.paths import cache_root

    console = console or Console(stderr=True)
    ts = text_set if isinstance(text_set, TextSet) else load_text_set(text_set)
    device = device_of(vlm)
    kw = {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "precision": precision,
          "max_length": recipe.data.max_length}
    key = _before_key(recipe, ts, precision, device, max_new_tokens, recipe.data.max_length)
    cache = cache_root() / "text_ability" / f"{key}.json"
    before = read_json(cache) if use_cache and cache.is_file() else None
    if before is None:
        console.print(f"text ability: base LLM {recipe.llm.name} (before)")
        base = base_vlm(vlm, recipe)
        before = text_ability(base, ts, **kw)
        del base
        if use_cache:
            try:
                write_json(cache, before, indent=None)
            except OutputError as e:  # the cache only saves time: the measure goes on
                console.print(f"text ability: not cached ({e})")
        before["cached"] = False
    else:
        before["cached"] = True
    console.print("text ability: trained model (after)")
    after = text_ability(vlm, ts, **kw)
    rows = [{"id": it["id"], "question": it["question"], "answers": it["answers"], "before": b, "after": a,
             "before_correct": qa_correct(b, it["answers"]), "after_correct": qa_correct(a, it["answers"])}
            for it, b, a in zip(ts.qa, before.pop("predictions", []), after.pop("predictions", []))]
    change = {k: after[k] - before[k] for k in ("ppl", "nll", "qa_acc", "qa_exact") if k in after and k in before}
    if "ppl" in change:
        change["ppl_ratio"] = after["ppl"] / before["ppl"]
    return {"text_set": ts.path, "text_set_sha1": ts.sha1, "precision": precision, "before": before, "after": after,
            "change": change, "predictions": rows}


def print_text_ability(block: dict, console: Console | None = None) -> None:
    console = console or Console()
    b, a, c = block["before"], block["after"], block["change"]
    t = Table(title=f"text ability ({b['n_ppl']} instructions, {b['n_qa']} questions)")
    for col in ("measure", "before", "after", "change"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    if "ppl" in c:
        t.add_row("perplexity per response token", f"{b['ppl']:.3f}", f"{a['ppl']:.3f}",
                  f"{c['ppl']:+.3f} (x{c['ppl_ratio']:.3f})")
    for k, label in (("qa_acc", "QA accuracy (contains)"), ("qa_exact", "QA exact first line")):
        if k in c:
            t.add_row(label, f"{100 * b[k]:.1f}%", f"{100 * a[k]:.1f}%", f"{100 * c[k]:+.1f} pts")
    console.print(t)
