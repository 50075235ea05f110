"""Parse a generation into turns and decide whether to keep it; each drop has one named reason.

Checks, in order (the first that fails is the reason): ``unparseable`` (no complete Q/A pair; a
conversation needs two), ``length`` (word count outside the kind's bounds), ``repetition`` (too
many repeated word 3-grams), ``mentions_source`` (talks about the annotation, caption, question or
answer instead of the image, or, after refining, about its own edits), ``copies_example`` (mostly a
copy of a few-shot example),
``missing_key_term`` (does not mention the record's name or a short answer), ``off_topic`` (no
key terms: shares too few words with the annotation), ``contradicts_annotation`` (uses a colour /
shape / label from the data set that this record's annotation never mentions, or states one that
a yes/no answer denies: "there is a triangle" after "Is there a triangle?" -> "no"),
``negates_annotation`` (a negated statement denies a key term or an affirmed one: "the shape is not
red"), ``answer_disagrees`` (answers an annotated question differently). ``duplicate`` (exact or
near copy of an earlier kept output of the same kind) is checked by :class:`Deduper` after these.
Parsing first cuts a generation where it starts to loop (the first sentence or question whose
content words repeat an earlier one's), so a loop costs its tail, not the whole output.
"""

from __future__ import annotations

import hashlib
import re

from vlgraft.curate.annotation import NEGATION, Annotation, claims, content_stems, mentions, words

# (min words, max words) over the whole output, per kind.
LENGTH = {"conversation": (12, 300), "detail": (15, 250), "reasoning": (15, 250)}
MIN_PAIRS = {"conversation": 2, "reasoning": 1}
MAX_REPEAT = 0.15  # fraction of word 3-grams that repeat an earlier one (the seeds: at most 0.03)
MAX_COPY = 0.7  # fraction of an output's 3-grams found in one few-shot example
REASONS = ("unparseable", "length", "repetition", "mentions_source", "copies_example", "missing_key_term",
           "off_topic", "contradicts_annotation", "negates_annotation", "answer_disagrees", "eval_overlap",
           "duplicate")  # in order

_Q = re.compile(r"^\s*(?:\*\*)?(?:Q|Question|User|Human)\s*\d*(?:\*\*)?\s*[:：]\s*", re.I)
_A = re.compile(r"^(?:\s*(?:\*\*)?(?:A|Answer|Assistant|GPT)\s*\d*(?:\*\*)?\s*[:：]\s*)+", re.I)
_INLINE_A = re.compile(r"\s+(?:A|Answer)\s*:\s+")
_LABEL = re.compile(r"^\s*(?:description|output|text|answer)\s*:\s*", re.I)
_SOURCE = re.compile(r"\b(annotations?|captions?|the (?:question|answer|text|description)s?|short names?|"
                     r"bounding box(?:es)?|(?:provided|given|original|corrected|revised) text|"
                     r"I (?:removed|added|changed|corrected|fixed|kept)|here(?:'s| is) the)\b|"
                     r"^\s*(?:name|category|also called|note)\s*:", re.I | re.M)


def clean(text: str) -> str:
    """Strip a leading label and cut an unfinished last sentence (generation hit its token limit)."""
    text = _LABEL.sub("", text.strip()).strip()
    if text and text[-1] not in ".!?\"')" and re.search(r"[.!?]", text):
        text = text[: max(text.rfind(c) for c in ".!?") + 1]
    return text.strip()


def _until_repeat(items: list[str]) -> list[str]:
    """Items up to (not including) the first that repeats an earlier one (same content words): small
    models loop."""
    seen: set[str] = set()
    for i, it in enumerate(items):
        key = " ".join(sorted(set(content_stems(it)))) or " ".join(words(it))
        if key in seen:
            return items[:i]
        seen.add(key)
    return items


def parse(kind: str, text: str) -> list[tuple[str, str]] | None:
    """Generation -> (question, answer) pairs, cut where a sentence (detail) or a question starts to
    repeat; ``detail`` gives one pair with an empty question."""
    if kind == "detail":
        t = " ".join(_until_repeat(re.split(r"(?<=[.!?])\s+", clean(text))))
        return [("", t)] if t else None
    pairs: list[list[str]] = []
    cur: list[str] | None = None  # [question, answer or None]
    for line in text.strip().splitlines():
        if _Q.match(line):
            q = _Q.sub("", line)
            inline = _INLINE_A.split(q, maxsplit=1)
            cur = [inline[0].strip(), _A.sub("", inline[1]).strip() if len(inline) == 2 else None]
            pairs.append(cur)
        elif _A.match(line) and cur is not None and not cur[1]:
            cur[1] = _A.sub("", line).strip()
        elif cur is not None and line.strip():
            i = 0 if cur[1] is None else 1
            cur[i] = f"{cur[i]} {line.strip()}" if cur[i] else _A.sub("", line).strip()
    out = [(q, clean(a)) for q, a in pairs if q and a and clean(a)]
    keep = _until_repeat([q for q, _ in out])
    out = out[:len(keep)]
    if kind == "reasoning":
        out = out[:1]
    return out if len(out) >= MIN_PAIRS.get(kind, 1) else None


def joined(pairs: list[tuple[str, str]]) -> str:
    """The text of parsed pairs, as the checks and the deduper see it."""
    return "\n".join(f"{q}\n{a}" if q else a for q, a in pairs)


def ngrams(ws: list[str], n: int = 3) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def repeat_ratio(text: str, n: int = 3) -> float:
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def copy_ratio(text: str, example: str) -> float:
    grams = ngrams(words(text))
    ref = set(ngrams(words(example)))
    return sum(g in ref for g in grams) / len(grams) if grams else 0.0


def _clauses(pairs: list[tuple[str, str]]):
    """(clause, negated) for every statement an output makes: each clause of each answer, and a
    question answered yes (as stated) or no (negated)."""
    for q, a in pairs:
        first = words(a)[:1]
        if q and first and first[0] in ("yes", "no"):
            yield q, bool(NEGATION.search(q)) != (first[0] == "no")
        for clause in re.split(r"[.;:!?,]|\bbut\b", a):
            if clause.strip():
                yield clause.strip(), bool(NEGATION.search(clause))


def _answer_agrees(q: str, a: str, ann: Annotation) -> bool:
    """If ``q`` asks an annotated question (it contains all that question's content words), ``a`` must
    give its answer (a yes/no flipped when one of the two questions is negated and the other is not)."""
    qs = set(content_stems(q))
    first = words(a)[:1]
    for aq, aa in ann.qa:
        ref = set(content_stems(aq))
        if not ref or not ref <= qs or len(ref) / len(qs) < 0.5:
            continue
        aa = aa.strip().lower()
        if aa in ("yes", "no"):
            want = aa if bool(NEGATION.search(q)) == bool(NEGATION.search(aq)) else {"yes": "no", "no": "yes"}[aa]
            if first and first[0] in ("yes", "no") and first[0] != want:
                return False
        elif len(aa.split()) <= 3 and content_stems(aa) and not mentions(set(content_stems(a)), aa):
            return False
    return True


def check(kind: str, pairs: list[tuple[str, str]] | None, ann: Annotation, vocab: set[str],
          examples: list[str]) -> tuple[str | None, str]:
    """(drop reason or None, detail) for parsed pairs; ``examples`` are the few-shot outputs shown."""
    if not pairs:
        return "unparseable", f"needs {MIN_PAIRS.get(kind, 1)} complete Q:/A: pair(s)" if kind != "detail" else "empty"
    text = joined(pairs)
    n = len(words(text))
    lo, hi = LENGTH[kind]
    if not lo <= n <= hi:
        return "length", f"{n} words, allowed {lo}-{hi}"
    r = repeat_ratio(text)
    if r > MAX_REPEAT:
        return "repetition", f"{r:.0%} of 3-grams repeated"
    m = _SOURCE.search(text)
    if m:
        return "mentions_source", repr(m.group(0).strip())
    for ex in examples:
        c = copy_ratio(text, ex)
        if c >= MAX_COPY:
            return "copies_example", f"{c:.0%} of 3-grams from a few-shot example"
    stems = set(content_stems(text))
    for group in ann.key_terms:
        if not any(mentions(stems, t) for t in group):
            return "missing_key_term", repr(group[0])
    if not ann.key_terms and ann.stems:
        shared = stems & ann.stems
        if len(shared) < min(2, len(ann.stems)):
            return "off_topic", f"shares {len(shared)} content words with the annotation"
    foreign = sorted((stems & vocab) - ann.stems)
    if foreign:
        return "contradicts_annotation", f"mentions {', '.join(foreign)}"
    key_stems = {s for g in ann.key_terms for t in g for s in content_stems(t)}
    said = claims(ann)
    affirmed = {t for qs, present in said if present for t in qs & vocab}
    denied = {t for qs, present in said if not present for t in qs & vocab} - affirmed
    for clause, negated in _clauses(pairs):
        cs = set(content_stems(clause))
        if negated and (cs & affirmed or any(mentions(cs, t) for g in ann.key_terms for t in g)):
            return "negates_annotation", repr(clause)
        if not negated and cs & denied - key_stems:
            return "contradicts_annotation", f"asserts {', '.join(sorted(cs & denied))}: {clause!r}"
    for q, a in pairs:
        if q and not _answer_agrees(q, a, ann):
            return "answer_disagrees", repr(f"{q} -> {a}")
    return None, ""


def normalise(text: str) -> str:
    return " ".join(words(text))


class Deduper:
    """Exact (normalised text) and near (same bag of content words) duplicates, per kind."""

    def __init__(self):
        self.seen: set[str] = set()

    def keys(self, kind: str, text: str) -> list[str]:
        bag = " ".join(sorted(set(content_stems(text))))
        return [hashlib.sha1(f"{kind}|{s}|{v}".encode()).hexdigest()[:16]
                for s, v in (("exact", normalise(text)), ("near", bag))]

    def add(self, kind: str, text: str) -> list[str] | None:
        """The keys recorded for ``text``, or None (and nothing recorded) if it duplicates an earlier one."""
        ks = self.keys(kind, text)
        if any(k in self.seen for k in ks):
            return None
        self.seen.update(ks)
        return ks
