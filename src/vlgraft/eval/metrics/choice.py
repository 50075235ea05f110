"""Multiple choice: the option a generated answer picks, ScienceQA's category table, MMBench's
circular evaluation.

* :func:`extract_choice` reads the option letter out of a generated text (None when it names none).
* :func:`scienceqa_accuracy` is the table of ScienceQA papers (Lu et al., "Learn to Explain",
  NeurIPS 2022) that LLaVA and LaVIN report, computed as ScienceQA's ``get_scores`` does
  (``tools/evaluate_acc.py`` of github.com/lupantech/ScienceQA; LaVIN's ``eval.py`` carries a copy):
  NAT / SOC / LAN by ``subject`` (natural / social / language science), TXT: the problem has a text
  context (a non-empty ``hint``), IMG: it has an image, NO: neither, G1-6 / G7-12 by ``grade``
  ("grade1" .. "grade12"), Avg over all. TXT and IMG overlap (a problem with both counts in both).
* :func:`rotations` and :func:`circular_accuracy` are MMBench's CircularEval (Liu et al., "MMBench:
  Is Your Multi-modal Model an All-around Player?", ECCV 2024): a question with N options is asked
  N times with the options shifted cyclically, and counts as correct only when every pass is.

Likelihood scoring (choosing the option the model finds most likely instead of generating) needs
the model and lives elsewhere; its results come in these shapes, and feed the same functions: per
question ``{"id": qid, "option_logprobs": [float, ...]}`` — the summed log-probability of each
option's answer tokens after the prompt, in option order — and optionally ``"option_tokens":
[int, ...]`` (their token counts, for a length-normalised choice). The choice is the argmax, its
letter ``LETTERS[argmax]``; per rotation, one such record with the rotated options.

All accuracies are fractions in [0, 1] (the papers print 100 x them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from vlgraft.data.formats.scienceqa import LETTERS
from vlgraft.data.records import IMAGE_PLACEHOLDER
from vlgraft.errors import DataError

# "The answer is B", "Answer: (C)", "the correct answer is option D".
_STATED = re.compile(r"\b(?i:answer(?:\s+is)?(?:\s*:)?(?:\s+option)?)\s*\(?([A-Z])\)?(?![\w'’-])")
_PAREN = re.compile(r"\(([A-Za-z])\)")
# A capital letter standing alone: not inside a word, an abbreviation ("U-turn") or a contraction ("I'm").
_LETTER = re.compile(r"(?<![\w'’-])([A-Z])(?![\w'’-])")
_WORD_AFTER = re.compile(r"\s+[a-z]")
_ONLY_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:)]?")


def _option_key(text: str) -> str:
    """Option texts compare without case, extra spaces or a final period ("Paris." == "paris")."""
    return " ".join(text.casefold().split()).rstrip(".").strip()


def _check_options(options: Sequence[str]) -> None:
    if isinstance(options, str) or not isinstance(options, Sequence) or not 1 <= len(options) <= len(LETTERS):
        raise DataError(f"'options' must be a list of 1 to {len(LETTERS)} option texts")
    for k, o in enumerate(options):
        if not isinstance(o, str):
            raise DataError(f"option #{k} must be a string, not {type(o).__name__}")


def extract_choice(text: str, options: Sequence[str]) -> str | None:
    """The letter of the option ``text`` picks among ``options`` (their texts, in order: A, B, ...),
    or None when it names none. In this order, the first rule that finds a letter of an option wins:

    1. the whole answer is a letter: "B", "b", "B.", "(B)", "B)";
    2. the whole answer is one option's text (case, spaces and a final period aside);
    3. a statement: "The answer is B", "Answer: (C)", "the correct answer is option D";
    4. a letter in parentheses: "I pick (B) because ...";
    5. the first capital letter standing alone: "B is right", "Option C." — but an "A" or "I" followed
       by a lower-case word is the article or the pronoun ("A cat sits" names no option).

    Letters past the last option are passed over ("E" with four options).
    """
    _check_options(options)
    if not isinstance(text, str):
        raise DataError(f"the answer must be a string, not {type(text).__name__}")
    letters = LETTERS[:len(options)]
    t = text.strip()
    only = _ONLY_LETTER.fullmatch(t)
    if only and only.group(1).upper() in letters:
        return only.group(1).upper()
    key = _option_key(t)
    same = [k for k, o in enumerate(options) if _option_key(o) == key]
    if key and len(same) == 1:
        return letters[same[0]]
    for pattern in (_STATED, _PAREN):
        for m in pattern.finditer(t):
            if m.group(1).upper() in letters:
                return m.group(1).upper()
    for m in _LETTER.finditer(t):
        letter = m.group(1)
        if letter in "AI" and _WORD_AFTER.match(t, m.end()):
            continue
        if letter in letters:
            return letter
    return None


# --- ScienceQA ----------------------------------------------------------------------------------

SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")
_GRADE = re.compile(r"grade([1-9]|1[0-2])")


def _has_context_line(record) -> bool:
    """Whether the record's question carries a text context: the ``scienceqa:`` loader writes a
    ``Context: {hint}`` line exactly when the problem's hint is not empty (scienceqa.prompt)."""
    user = next((text for role, text in record.turns if role == "user"), "")
    if user.startswith(IMAGE_PLACEHOLDER + "\n"):
        user = user[len(IMAGE_PLACEHOLDER) + 1:]
    return user.startswith("Context: ")


def scienceqa_fields(item) -> dict:
    """``subject``, ``grade``, ``has_text``, ``has_image`` of a ScienceQA problem, from a record of
    the ``scienceqa:`` format (``meta["subject"]``, ``meta["grade"]``, its images, and its prompt's
    ``Context:`` line — or ``meta["hint"]`` where the loader provides it) or from a raw
    ``problems.json`` entry (``subject``, ``grade``, ``hint``, ``image``, as ScienceQA's get_scores
    reads them: text = a non-empty hint, image = a non-empty image name)."""
    if hasattr(item, "meta"):
        where, meta = item.source or f"record {item.id!r}", item.meta
        subject, grade, has_image = meta.get("subject"), meta.get("grade"), bool(item.images)
        has_text = bool(meta["hint"]) if "hint" in meta else _has_context_line(item)
    elif isinstance(item, Mapping):
        where = f"problem {item.get('id', '?')!r}"
        subject, grade = item.get("subject"), item.get("grade")
        has_text, has_image = bool(item.get("hint")), bool(item.get("image"))
    else:
        raise DataError(f"a ScienceQA item must be a scienceqa: record or a problems.json entry, not "
                        f"{type(item).__name__}")
    if subject not in SUBJECTS:
        raise DataError(f"{where}: 'subject' is {subject!r}, expected one of {', '.join(SUBJECTS)}")
    if not isinstance(grade, str) or not _GRADE.fullmatch(grade):
        raise DataError(f"{where}: 'grade' is {grade!r}, expected 'grade1' .. 'grade12'")
    return {"subject": subject, "grade": grade, "has_text": has_text, "has_image": has_image}


def scienceqa_categories(fields: Mapping) -> list[str]:
    """The table's columns a problem counts in (Avg aside): its subject, TXT and/or IMG or NO, its
    grade band."""
    cats = [SUBJECTS[fields["subject"]]]
    cats += [c for c, on in (("TXT", fields["has_text"]), ("IMG", fields["has_image"])) if on]
    if not fields["has_text"] and not fields["has_image"]:
        cats.append("NO")
    cats.append("G1-6" if int(fields["grade"][5:]) <= 6 else "G7-12")
    return cats


def scienceqa_accuracy(results: Iterable[tuple[object, bool]]) -> dict:
    """ScienceQA's table from ``(problem, correct)`` pairs (problem: as :func:`scienceqa_fields`
    takes it): ``{"accuracy": {"NAT": .., ..., "Avg": ..}, "n": {"NAT": count, ...}}``; a column no
    problem falls in has accuracy None (ScienceQA's script would divide by zero)."""
    right = dict.fromkeys(CATEGORIES, 0)
    total = dict.fromkeys(CATEGORIES, 0)
    for i, pair in enumerate(results):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], bool)):
            raise DataError(f"ScienceQA result #{i} must be a (problem, correct: bool) pair")
        item, correct = pair
        for c in [*scienceqa_categories(scienceqa_fields(item)), "Avg"]:
            total[c] += 1
            right[c] += correct
    if not total["Avg"]:
        raise DataError("ScienceQA: no results to score")
    return {"accuracy": {c: right[c] / total[c] if total[c] else None for c in CATEGORIES}, "n": total}


# --- MMBench CircularEval -----------------------------------------------------------------------

def rotations(question: str, options: Sequence[str], answer_index: int) -> list[tuple[list[str], str]]:
    """The N passes of a question with N options: pass k shows ``options[k:] + options[:k]`` (A B C D,
    B C D A, C D A B, D A B C) and its answer letter moves with the right option. The first pass is
    the question as given. ``question`` names it in errors."""
    if not isinstance(options, Sequence) or isinstance(options, str) or not 2 <= len(options) <= len(LETTERS):
        raise DataError(f"question {question!r}: 'options' must be a list of 2 to {len(LETTERS)} option texts")
    n = len(options)
    if not isinstance(answer_index, int) or isinstance(answer_index, bool) or not 0 <= answer_index < n:
        raise DataError(f"question {question!r}: 'answer_index' must be in 0..{n - 1}, not {answer_index!r}")
    opts = list(options)
    return [(opts[k:] + opts[:k], LETTERS[(answer_index - k) % n]) for k in range(n)]


def circular_accuracy(results_per_question: Mapping[object, Sequence[bool]] | Iterable[Sequence[bool]]) -> float:
    """CircularEval accuracy: the fraction of questions answered correctly in every rotation.
    ``results_per_question``: question id -> one bool per rotation (or just those lists); an
    answer from which no option could be read counts as wrong (MMBench does the same)."""
    items = (results_per_question.items() if isinstance(results_per_question, Mapping)
             else enumerate(results_per_question))
    n = right = 0
    for q, passes in items:
        if isinstance(passes, (str, bytes)) or not isinstance(passes, Sequence) or not passes:
            raise DataError(f"question {q!r}: expected a non-empty list of per-rotation results")
        if not all(isinstance(p, bool) for p in passes):
            raise DataError(f"question {q!r}: each rotation's result must be True or False")
        n += 1
        right += all(passes)
    if not n:
        raise DataError("CircularEval: no questions to score")
    return right / n
