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
precision and generation settings under ``<cache>/text_ability``, with the per-item values the
intervals need (each response's summed NLL and token count, each question's answer).

Every figure comes with a 95% interval: QA accuracies with the Wilson score interval, perplexity by a
percentile bootstrap over items (1,000 resamples, seed 0: the ppl items drawn with replacement,
``exp(total NLL / total tokens)`` recomputed each time); the change before -> after by a *paired*
bootstrap (the same resampled items for both): the ratio after/before for perplexity, the difference
for QA accuracy. The paired intervals are the ones that say whether a model kept its language.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from vlgraft.data.records import Record
from vlgraft.errors import DataError
from vlgraft.eval.vqa import heldout_nll, normalize
from vlgraft.files import iter_jsonl
from vlgraft.inference import device_of, generate_answers

BUNDLED_TEXT_SET = Path(__file__).resolve().parent.parent / "data" / "bundled" / "text_eval.jsonl"
CACHE_VERSION = 3  # 2: the cached "before" carries per-item NLL sums (``ppl_items``) for the intervals;
#                   3: those sums are taken in float64 by ``VLM.forward(per_sample=True)``
CI_LEVEL, CI_RESAMPLES, CI_SEED = 0.95, 1000, 0
INTERVALS = {"level": CI_LEVEL, "qa": "Wilson score", "ppl": "percentile bootstrap over items",
             "change": "paired percentile bootstrap over items", "resamples": CI_RESAMPLES, "seed": CI_SEED}


@dataclasses.dataclass
class TextSet:
    path: str
    sha1: str
    ppl: list[Record]  # single-turn instruction -> response
    qa: list[dict]  # {"id", "question", "answers", "where"}

    def near_duplicate_index(self):
        """Every ``ppl`` instruction and response and every ``qa`` question, indexed to find near
        duplicates in training data (keys ``<id>:instruction|response|question``)."""
        from vlgraft.data.dedup import NearDuplicateIndex

        texts, keys = [], []
        for r in self.ppl:
            for field, (_, t) in zip(("instruction", "response"), r.turns):
                texts.append(t)
                keys.append(f"{r.id}:{field}")
        for q in self.qa:
            texts.append(q["question"])
            keys.append(f"{q['id']}:question")
        return NearDuplicateIndex(texts, keys)


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
    """Teacher-forced NLL per labelled response token over ``records`` (the held-out loss of VQA eval),
    with the per-record ``[NLL sum, tokens]`` under ``ppl_items``."""
    nll, n, items = heldout_nll(vlm, records, "conversation", max_length, None, batch_size, precision,
                                device_of(vlm))
    return {"ppl": math.exp(nll), "nll": nll, "tokens": n, "ppl_items": items}


# ---------------------------------------------------------------------------------------- intervals
def wilson_interval(k: int, n: int, level: float = CI_LEVEL) -> list[float]:
    """Wilson score interval ``[low, high]`` for ``k`` successes out of ``n``:
    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``, ``p = k/n``, ``z`` the normal quantile."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half)]


def _resamples(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]`` item indices drawn with replacement (the same for the same ``n`` and seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentile(stats: np.ndarray, level: float) -> list[float]:
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def _ppl_of(items, idx: np.ndarray) -> np.ndarray:
    a = np.asarray(items, dtype=np.float64).reshape(-1, 2)
    return np.exp(a[idx, 0].sum(1) / np.maximum(a[idx, 1].sum(1), 1))


def ppl_bootstrap(items: list, resamples: int = CI_RESAMPLES, seed: int = CI_SEED,
                  level: float = CI_LEVEL) -> list[float]:
    """Percentile bootstrap interval of ``exp(total NLL / total tokens)`` over ``items``
    (``[NLL sum, tokens]`` per item), resampling items with replacement."""
    return _percentile(_ppl_of(items, _resamples(len(items), resamples, seed)), level)


def ppl_ratio_bootstrap(before: list, after: list, resamples: int = CI_RESAMPLES, seed: int = CI_SEED,
                        level: float = CI_LEVEL) -> list[float]:
    """Paired bootstrap interval of perplexity after / before: the same resampled items for both."""
    if len(before) != len(after):
        raise ValueError(f"paired bootstrap: {len(before)} items before, {len(after)} after")
    idx = _resamples(len(before), resamples, seed)
    return _percentile(_ppl_of(after, idx) / _ppl_of(before, idx), level)


def diff_bootstrap(before: list, after: list, resamples: int = CI_RESAMPLES, seed: int = CI_SEED,
                   level: float = CI_LEVEL) -> list[float]:
    """Paired bootstrap interval of mean(after) - mean(before) (e.g. 0/1 correctness per question)."""
    if len(before) != len(after):
        raise ValueError(f"paired bootstrap: {len(before)} items before, {len(after)} after")
    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    idx = _resamples(len(b), resamples, seed)
    return _percentile(a[idx].mean(1) - b[idx].mean(1), level)


def _add_intervals(res: dict, correct: list[bool] | None, exact: list[bool] | None) -> None:
    """``ppl_ci``, ``qa_ci``, ``qa_exact_ci`` on one side's result, from its per-item values."""
    if res.get("ppl_items"):
        res["ppl_ci"] = ppl_bootstrap(res["ppl_items"])
    if correct:
        res["qa_ci"] = wilson_interval(sum(correct), len(correct))
        res["qa_exact_ci"] = wilson_interval(sum(exact), len(exact))


def qa_predictions(vlm, items: list[dict], batch_size: int = 16, max_new_tokens: int = 16,
                   precision: str = "fp32") -> list[str]:
    """Greedy answers to single-turn text questions (VQA eval's batched generation, no image)."""
    prompts = [{"turns": [("user", it["question"])], "record": Record(it["id"], [], source=it["where"])}
               for it in items]
    return generate_answers(vlm, prompts, None, batch_size, max_new_tokens, precision, desc="text QA")


def text_ability(vlm, text_set: TextSet | str | Path | None = None, batch_size: int = 16,
                 max_new_tokens: int = 16, precision: str = "fp32", max_length: int = 1024) -> dict:
    """Perplexity and QA accuracy of ``vlm`` (a VLM; text-only inputs, no image) on ``text_set``, with
    their 95% intervals (``ppl_ci``, ``qa_ci``, ``qa_exact_ci``) and the per-item values they come from
    (``ppl_items``: ``[NLL sum, tokens]`` per instruction; ``predictions``: the answers)."""
    ts = text_set if isinstance(text_set, TextSet) else load_text_set(text_set)
    vlm.eval()
    res: dict = {"n_ppl": len(ts.ppl), "n_qa": len(ts.qa)}
    if ts.ppl:
        res.update(perplexity(vlm, ts.ppl, batch_size, precision, max_length))
    correct = exact = None
    if ts.qa:
        preds = qa_predictions(vlm, ts.qa, batch_size, max_new_tokens, precision)
        correct, exact = _scores(preds, ts.qa)
        res["qa_acc"] = sum(correct) / len(ts.qa)
        res["qa_exact"] = sum(exact) / len(ts.qa)
        res["predictions"] = preds
    _add_intervals(res, correct, exact)
    return res


def _scores(preds: list[str], items: list[dict]) -> tuple[list[bool], list[bool]]:
    """Per question: correct (answer contained), and exact."""
    return ([qa_correct(p, it["answers"]) for p, it in zip(preds, items)],
            [qa_correct(p, it["answers"], exact=True) for p, it in zip(preds, items)])


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
    key = {"version": CACHE_VERSION, "llm": dataclasses.asdict(recipe.llm),
           "files": _weights_fingerprint(recipe.llm.name), "text_set": ts.sha1, "precision": precision,
           "device": device.type, "max_new_tokens": max_new_tokens, "max_length": max_length}
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
    if before is not None and not _complete(before, ts):  # an older or partial entry: measure again
        before = None
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
    pb, pa = before.pop("predictions", []), after.pop("predictions", [])
    (cb, eb), (ca, ea) = _scores(pb, ts.qa), _scores(pa, ts.qa)
    _add_intervals(before, cb, eb)  # from the per-item values (a cached entry's too)
    rows = [{"id": it["id"], "question": it["question"], "answers": it["answers"], "before": b, "after": a,
             "before_correct": bc, "after_correct": ac}
            for it, b, a, bc, ac in zip(ts.qa, pb, pa, cb, ca)]
    change = {k: after[k] - before[k] for k in ("ppl", "nll", "qa_acc", "qa_exact") if k in after and k in before}
    ib, ia = before.pop("ppl_items", None), after.pop("ppl_items", None)
    if "ppl" in change:
        change["ppl_ratio"] = after["ppl"] / before["ppl"]
        if ib and ia:
            change["ppl_ratio_ci"] = ppl_ratio_bootstrap(ib, ia)
    if "qa_acc" in change and cb and ca:
        change["qa_diff"] = change["qa_acc"]
        change["qa_diff_ci"] = diff_bootstrap(cb, ca)
        change["qa_exact_diff"] = change["qa_exact"]
        change["qa_exact_diff_ci"] = diff_bootstrap(eb, ea)
    return {"text_set": ts.path, "text_set_sha1": ts.sha1, "precision": precision, "before": before, "after": after,
            "change": change, "intervals": dict(INTERVALS), "predictions": rows}


def _complete(before: dict, ts: TextSet) -> bool:
    """Whether a cached "before" has every per-item value the block needs for ``ts``."""
    ok = not ts.ppl or (isinstance(before.get("ppl_items"), list) and len(before["ppl_items"]) == len(ts.ppl)
                        and "ppl" in before)
    return ok and (not ts.qa or (isinstance(before.get("predictions"), list)
                                 and len(before["predictions"]) == len(ts.qa) and "qa_acc" in before))


def _ci(v, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    """`` [low, high]`` of an interval, or nothing when there is none."""
    if not (isinstance(v, (list, tuple)) and len(v) == 2):
        return ""
    return " [" + ", ".join(fmt.format(scale * x) for x in v) + "]"


def text_cells(block: dict) -> tuple[str, str]:
    """The text ability as two table cells, before -> after with the after figure's 95% interval:
    ``("11.81 → 13.60 [12.31, 15.02]", "42.2% → 5.6% [3.4, 9.1]")`` (sweep, benchmarks)."""
    b, a = block["before"], block["after"]
    ppl = f"{b['ppl']:.2f} → {a['ppl']:.2f}{_ci(a.get('ppl_ci'), '{:.2f}')}" if "ppl" in a else "-"
    qa = (f"{100 * b['qa_acc']:.1f}% → {100 * a['qa_acc']:.1f}%{_ci(a.get('qa_ci'), '{:.1f}', 100)}"
          if "qa_acc" in a else "-")
    return ppl, qa


def print_text_ability(block: dict, console: Console | None = None) -> None:
    console = console or Console()
    b, a, c = block["before"], block["after"], block["change"]
    t = Table(title=f"text ability ({b['n_ppl']} instructions, {b['n_qa']} questions)",
              caption="95% intervals in brackets: Wilson (QA), bootstrap over items (perplexity), "
                      "paired bootstrap (change)")
    for col in ("measure", "before", "after", "change"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    if "ppl" in c:
        t.add_row("perplexity per response token", f"{b['ppl']:.3f}{_ci(b.get('ppl_ci'))}",
                  f"{a['ppl']:.3f}{_ci(a.get('ppl_ci'))}",
                  f"{c['ppl']:+.3f} (x{c['ppl_ratio']:.3f}{_ci(c.get('ppl_ratio_ci'))})")
    for k, label, d in (("qa_acc", "QA accuracy (contains)", "qa_diff_ci"),
                        ("qa_exact", "QA exact first line", "qa_exact_diff_ci")):
        ci = "qa_ci" if k == "qa_acc" else "qa_exact_ci"
        if k in c:
            t.add_row(label, f"{100 * b[k]:.1f}%{_ci(b.get(ci), '{:.1f}', 100)}",
                      f"{100 * a[k]:.1f}%{_ci(a.get(ci), '{:.1f}', 100)}",
                      f"{100 * c[k]:+.1f} pts{_ci(c.get(d), '{:+.1f}', 100)}")
    console.print(t)
