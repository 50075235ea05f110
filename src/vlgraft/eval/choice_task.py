"""``choice:SOURCE``: multiple choice on records that carry their options (``meta["choices"]`` and the
answer's index ``meta["answer"]``, as the ``scienceqa:`` format gives them).

* ``eval.choice_scoring: generate`` — the model answers freely and the option letter is read from its
  answer (``metrics.choice.extract_choice``; none found counts as wrong, and is counted).
  ``likelihood`` — each option is scored as the reply (``eval/likelihood.py``: the summed
  log-probability of its tokens after the question) and the most likely one is the model's choice;
  no answer goes unread. The reply is written as ``eval.choice_candidates`` says: ``letter`` (the
  options' letters, which is what ``scienceqa:`` records answer) or ``option`` (the options' texts;
  then ``accuracy_per_token`` is also given, the choice by the mean log-probability per token, which
  does not favour short options).
* ``eval.choice_circular: true`` — MMBench's CircularEval: a question of N options is asked N times,
  its options shifted cyclically (``metrics.choice.rotations``), and counts as right only when every
  pass is. The options are rotated in the question text, which must list them as ``(A) x (B) y ...``.
* ScienceQA's category table (NAT, SOC, LAN, TXT, IMG, NO, G1-6, G7-12, Avg) for records that carry
  ScienceQA's subject and grade, on the options in their given order.
"""

from __future__ import annotations

import dataclasses

from vlgraft.data.formats.scienceqa import LETTERS, options_text
from vlgraft.data.records import Record
from vlgraft.data.sources import load_records
from vlgraft.errors import DataError
from vlgraft.eval.asking import answers, prepared
from vlgraft.eval.vqa import question_of


def _checked(records: list[Record], source: str) -> list[Record]:
    for rec in records:
        choices, answer = rec.meta.get("choices"), rec.meta.get("answer")
        if not (isinstance(choices, list) and isinstance(answer, int) and 0 <= answer < len(choices)):
            raise DataError(f"{rec.where}: a choice task needs meta 'choices' (a list) and 'answer' (an index), "
                            "as the scienceqa: format gives them")
    if not records:
        raise DataError(f"choice:{source}: no questions")
    return records


def _replies_with_letter(rec: Record) -> bool:
    """Whether the record's gold reply is the answer's letter (else it is the answer's text)."""
    return rec.turns[-1][1].strip() == LETTERS[rec.meta["answer"]]


def _rotated(rec: Record, k: int) -> Record:
    """``rec`` asked with its options shifted by ``k`` (pass k of CircularEval): the options listed in
    the question, the gold reply if it is a letter, and ``meta`` follow the shift."""
    choices, n = rec.meta["choices"], len(rec.meta["choices"])
    if k == 0:
        return rec
    options = choices[k:] + choices[:k]
    answer = (rec.meta["answer"] - k) % n
    listed = options_text(choices)
    last_user = max(i for i, (role, _) in enumerate(rec.turns) if role == "user")
    text = rec.turns[last_user][1]
    if listed not in text:
        raise DataError(f"{rec.where}: circular evaluation rotates the options in the question, which must list "
                        f"them as {listed[:60]!r}...; this one does not")
    turns = list(rec.turns)
    turns[last_user] = ("user", text.replace(listed, options_text(options), 1))
    if _replies_with_letter(rec):
        turns[-1] = ("assistant", LETTERS[answer])
    return dataclasses.replace(rec, id=f"{rec.id}@{k}", turns=turns,
                               meta={**rec.meta, "choices": options, "answer": answer})


def _by_likelihood(vlm, recipe, passes: list[Record], precision: str, cache) -> tuple[list[dict], list[dict]]:
    """Per pass: the chosen option by summed log-probability (and by mean per token), and the scores."""
    from vlgraft.eval.likelihood import reply_logprobs

    by_letter = recipe.eval.choice_candidates == "letter"
    asked, owner = [], []
    for i, rec in enumerate(passes):
        choices = rec.meta["choices"]
        for cand in (LETTERS[:len(choices)] if by_letter else choices):
            asked.append(dataclasses.replace(rec, turns=rec.turns[:-1] + [("assistant", cand)]))
            owner.append(i)
    scores = reply_logprobs(vlm, asked, cache, max(1, recipe.eval.batch_size // 4), precision,
                            desc="choice likelihood")
    per_pass: list[list[tuple[float, bool, int]]] = [[] for _ in passes]
    for i, s in zip(owner, scores):
        per_pass[i].append(s)
    picks, details = [], []
    for rec, option_scores in zip(passes, per_pass):
        sums = [s for s, _, _ in option_scores]
        means = [s / max(1, n) for s, _, n in option_scores]
        best = max(range(len(sums)), key=sums.__getitem__)  # ties: the first option, as argmax does
        picks.append({"choice": LETTERS[best], "prediction": (LETTERS[:len(sums)] if by_letter
                                                               else rec.meta["choices"])[best],
                      "choice_per_token": LETTERS[max(range(len(means)), key=means.__getitem__)]})
        details.append({"logprobs": sums, "tokens": [n for _, _, n in option_scores]})
    return picks, details


def run_choice(vlm, recipe, source: str, precision: str, cache) -> tuple[dict, list[dict]]:
    from vlgraft.eval.metrics.choice import circular_accuracy, extract_choice, scienceqa_accuracy

    cfg = recipe.eval
    records = _checked(load_records(source, recipe.data.image_root), source)
    if cfg.choice_circular:
        for rec in records:
            if len(rec.meta["choices"]) < 2:
                raise DataError(f"{rec.where}: circular evaluation needs at least 2 options")
    records = prepared(vlm, recipe, records, precision, cache, describe=True)  # described once per question
    rotations = [range(len(r.meta["choices"])) if cfg.choice_circular else range(1) for r in records]
    passes = [_rotated(rec, k) for rec, ks in zip(records, rotations) for k in ks]
    owner = [(q, k) for q, ks in enumerate(rotations) for k in ks]
    if cfg.choice_scoring == "generate":
        preds = answers(vlm, recipe, passes, precision, cache, cfg.max_new_tokens, f"choice {source}")
        picks = [{"prediction": p, "choice": extract_choice(p, r.meta["choices"])} for r, p in zip(passes, preds)]
        details = [{} for _ in passes]
    else:
        picks, details = _by_likelihood(vlm, recipe, passes, precision, cache)
    rows, right = [], [[] for _ in records]
    for (q, k), rec, pick, extra in zip(owner, passes, picks, details):
        gold = LETTERS[rec.meta["answer"]]
        ok = pick["choice"] == gold
        right[q].append(ok)
        rows.append({"id": records[q].id, "rotation": k, "question": question_of(rec.turns),
                     "image": rec.images[0] if rec.images else None, **pick, "answer": gold, "correct": ok, **extra})
    first = [r for r in rows if r["rotation"] == 0]
    block = {"data": source, "n": len(records), "scoring": cfg.choice_scoring,
             "accuracy": sum(r["correct"] for r in first) / len(first)}
    if cfg.choice_scoring == "generate":
        block["unanswered"] = sum(r["choice"] is None for r in first)
    else:
        block["candidates"] = cfg.choice_candidates
        if cfg.choice_candidates == "option":
            block["accuracy_per_token"] = sum(r["choice_per_token"] == r["answer"] for r in first) / len(first)
    if cfg.choice_circular:
        block["circular_accuracy"] = circular_accuracy(right)
        block["passes"] = len(passes)
        block["pass_accuracy"] = sum(r["correct"] for r in rows) / len(rows)
    if all("subject" in r.meta and "grade" in r.meta for r in records):  # ScienceQA's own table
        block["scienceqa"] = scienceqa_accuracy([(rec, ok[0]) for rec, ok in zip(records, right)])
    return block, rows
