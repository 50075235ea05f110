"""Exact and near-duplicate text detection with an inverted index (no all-pairs comparison).

Used to keep generated training data apart from itself and from evaluation sets (``vlgraft
curate-text``), and to check that no evaluation item appears in a training source. Texts are
compared after :func:`normalize_text`; a query duplicates an indexed text when one of these rules
holds (defaults chosen on crafted pairs, ``tests/test_dedup.py``, and on the bundled text
evaluation set, whose templated questions must not match each other):

================  ==========================================================================  =========
rule              measure                                                                     threshold
================  ==========================================================================  =========
``exact``         the normalised texts are equal                                              —
``content_bag``   Jaccard similarity of the content-word sets (stemmed, British spellings     ≥ 0.7
                  folded; function words, question words and instruction verbs such as
                  "explain", "tell", "give", "describe" left out), and the shorter text at
                  least half as many words as the longer
``word_jaccard``  Jaccard similarity of the word 3-gram sets, and content-bag Jaccard ≥ 0.6   ≥ 0.5
``char_jaccard``  Jaccard similarity of the character 5-gram sets, and content-bag ≥ 0.6      ≥ 0.7
``containment``   share of the smaller text's word 3-grams found in the other text, and       ≥ 0.8
                  every content word of the smaller text found there too
================  ==========================================================================  =========

Caught: reordered or reworded instructions ("What do you call a young dog?" / "What is a young dog
called?", "Explain what a noun is." / "What is a noun?", "How can I save water at home?" / "What
are some ways to save water at home?", "colour" / "color"), and a text that holds another whole
("What is the capital of Japan? Answer in one word."). Passed: questions that share a frame or a
topic but ask something else ("What is the capital of Japan?" / "... of France?", "What is the
opposite of hot?" / "... of cold?", "Which day comes after Friday?" / "... Saturday?", "What is
photosynthesis?" / "Why is photosynthesis important for animals?"). The content-bag condition on
the two n-gram Jaccard rules is what keeps such templated questions apart: their 3-grams and
character grams overlap by 50-75%. A one-content-word text matches any text whose only content
word is the same ("Describe rain." / "Why does it rain?"): for decontamination, erring that way
costs one dropped instruction. The length condition keeps a bare answer ("triangle", "a volcano")
from matching a question about it ("What is a triangle?"); a text that holds another whole is the
``containment`` rule's.
"There" counts as a content word: "Is there a triangle?" asks something else than "What is a
triangle?".

Candidates come from inverted indexes (word 3-gram, character 5-gram and content-word postings).
For the character and content-word Jaccard rules only the query's rarest grams are looked up: a
pair with Jaccard ``>= t`` shares at least ``ceil(t * |A|)`` of the query's ``|A|`` grams, so any
``|A| - ceil(t * |A|) + 1`` of them hit it (prefix filtering). Indexing 10,000 instructions and
matching 500 evaluation texts against them takes about 1.5 s on one CPU core.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

_OPERATOR = re.compile(r"(?<=\d)\s*([-+*/×÷=^x])\s*(?=\d)")
_OPERATOR_WORDS = {"-": "minus", "+": "plus", "*": "times", "×": "times", "x": "times", "/": "over", "÷": "over",
                   "=": "equals", "^": "power"}
_PERCENT = re.compile(r"(?<=\d)\s*%")
_APOSTROPHE = re.compile(r"(?<=[a-z0-9])['’](?=[a-z])")
_TOKEN = re.compile(r"[^\W_]+")

# Function words, question words and the verbs that frame an instruction: left out of the content bag.
_STOP_TEXT = """
a an the and or but if of in on at to for with by from as into onto over under about after before between
through during than then so such also just only very too more most much many some any few several each every
all both either neither no not nor is are was were be been being am do does did done doing have has had having
can could would should will shall may might must it its this that these those here what which who whom
whose how why when where whats hows whys wheres whos i me my mine we us our ours you your yours he him his she
her hers they them their theirs one ones someone something anything thing things way ways please kindly
explain describe tell give write list provide share suggest show say name briefly simply quickly
"""
STOPWORDS = frozenset(_STOP_TEXT.split())


def normalize_text(text: str) -> str:
    """Unicode NFKC, lower case, apostrophes inside words dropped ("what's" -> "whats"), arithmetic
    between digits in words ("10-3" and "10 - 3" -> "10 minus 3", "50%" -> "50 percent"), every other
    punctuation mark a space, spaces collapsed."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = _APOSTROPHE.sub("", t)
    t = _OPERATOR.sub(lambda m: f" {_OPERATOR_WORDS[m.group(1)]} ", t)
    t = _PERCENT.sub(" percent", t)
    return " ".join(_TOKEN.findall(t))


_SPELLING = ((re.compile(r"(?<=[a-z]{2})our(s?)$"), r"or\1"),  # colour -> color (not four, your, hour)
             (re.compile(r"(?<=[a-z]{3})is(e|es|ed|ing|ation|ations)$"), r"iz\1"),  # summarise -> summarize
             (re.compile(r"(?<=[a-z]{3})ys(e|es|ed|ing)$"), r"yz\1"),  # analyse -> analyze
             (re.compile(r"(?<=[a-z]{2})tre(s?)$"), r"ter\1"))  # metre -> meter


def stem(word: str) -> str:
    """Crude folding of British spellings and of suffixes (plurals, -ed, -ing, a final -e) so that
    variants and inflections compare equal."""
    w = word
    for pat, rep in _SPELLING:
        w = pat.sub(rep, w)
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    for suf in ("ing", "ed", "es", "s"):
        if len(w) > len(suf) + 2 and w.endswith(suf) and not (suf == "s" and w.endswith(("ss", "us", "is"))):
            w = w[: -len(suf)]
            if suf in ("ing", "ed") and len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz":
                w = w[:-1]  # stopped -> stop, running -> run
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    return w


def word_shingles(norm: str, n: int = 3) -> set[str]:
    """Word ``n``-grams of a normalised text (a shorter text: the whole text, one shingle)."""
    ws = norm.split()
    if len(ws) < n:
        return {norm} if norm else set()
    return {" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def char_shingles(norm: str, n: int = 5) -> set[str]:
    """Character ``n``-grams of a normalised text padded with one space each side."""
    t = f" {norm} "
    if len(t) <= n:
        return {t} if norm else set()
    return {t[i:i + n] for i in range(len(t) - n + 1)}


def content_bag(norm: str) -> set[str]:
    """The stemmed content words of a normalised text."""
    return {stem(w) for w in norm.split() if w not in STOPWORDS}


@dataclass(frozen=True)
class Match:
    """Why a query duplicates an indexed text."""

    text: str  # the indexed text
    key: Hashable  # what was given with it (default: its position in the index)
    rule: str  # exact | word_jaccard | containment | char_jaccard | content_bag
    score: float

    def describe(self) -> str:
        return f"{self.rule} {self.score:.2f} with {self.key!r}: {self.text[:120]!r}"


@dataclass
class _Entry:
    text: str
    key: Hashable
    norm: str
    words: set[str]
    chars: set[str]
    bag: set[str]
    length: int  # words of the normalised text


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicateIndex:
    """Texts indexed for :meth:`match` (which indexed text a query duplicates) and :meth:`add`.

    Thresholds (module docstring): ``jaccard`` on word ``n``-grams, ``containment`` of the smaller
    side's word ``n``-grams (that side needs at least ``min_contained`` of them), ``char_jaccard`` on
    character ``char_n``-grams, ``bag_jaccard`` on content words; ``min_bag``: the content-bag
    Jaccard the two n-gram Jaccard rules also need; ``bag_length_ratio``: the shortest word count,
    relative to the longer text's, the content-bag rule needs; ``None`` turns a rule off.
    """

    def __init__(self, texts: Iterable[str] = (), keys: Iterable[Hashable] | None = None, *, n: int = 3,
                 char_n: int = 5, jaccard: float | None = 0.5, containment: float | None = 0.8,
                 char_jaccard: float | None = 0.7, bag_jaccard: float | None = 0.7, min_bag: float = 0.6,
                 min_contained: int = 1, bag_length_ratio: float = 0.5):
        self.n, self.char_n, self.min_contained, self.min_bag = n, char_n, min_contained, min_bag
        self.bag_length_ratio = bag_length_ratio
        self.jaccard, self.containment, self.char_jaccard, self.bag_jaccard = (
            jaccard, containment, char_jaccard, bag_jaccard)
        self.entries: list[_Entry] = []
        self._exact: dict[str, int] = {}
        self._words: dict[str, list[int]] = {}
        self._chars: dict[str, list[int]] = {}
        self._bags: dict[str, list[int]] = {}
        texts = list(texts)
        keys = list(keys) if keys is not None else None
        if keys is not None and len(keys) != len(texts):
            raise ValueError(f"{len(keys)} keys for {len(texts)} texts")
        for i, t in enumerate(texts):
            self.add(t, keys[i] if keys is not None else None)

    def __len__(self) -> int:
        return len(self.entries)

    def _entry(self, text: str, key: Hashable) -> _Entry:
        norm = normalize_text(text)
        return _Entry(text, key, norm, word_shingles(norm, self.n), char_shingles(norm, self.char_n),
                      content_bag(norm), len(norm.split()))

    def add(self, text: str, key: Hashable = None) -> None:
        """Index ``text`` (``key``: returned in :meth:`find`'s ``Match``; default: its position)."""
        i = len(self.entries)
        e = self._entry(text, i if key is None else key)
        self.entries.append(e)
        self._exact.setdefault(e.norm, i)
        for post, grams in ((self._words, e.words), (self._chars, e.chars), (self._bags, e.bag)):
            for g in grams:
                post.setdefault(g, []).append(i)

    def match(self, text: str) -> str | None:
        """The indexed text that ``text`` duplicates (exactly or nearly), or None."""
        m = self.find(text)
        return m.text if m else None

    def find(self, text: str) -> Match | None:
        """The strongest reason ``text`` duplicates an indexed text: an exact match first, else the
        candidate with the highest score over the rules that fire (None if none fires)."""
        q = self._entry(text, None)
        if not q.norm:
            return None
        if q.norm in self._exact:
            e = self.entries[self._exact[q.norm]]
            return Match(e.text, e.key, "exact", 1.0)
        best: Match | None = None

        def consider(i: int, rule: str, score: float) -> None:
            nonlocal best
            if best is None or score > best.score:
                e = self.entries[i]
                best = Match(e.text, e.key, rule, round(score, 4))

        if (self.jaccard is not None or self.containment is not None) and q.words:
            shared = Counter(i for g in q.words for i in self._words.get(g, ()))
            for i, k in shared.items():
                e = self.entries[i]
                if self.jaccard is not None:
                    jac = k / (len(q.words) + len(e.words) - k)
                    if jac >= self.jaccard and _jaccard(q.bag, e.bag) >= self.min_bag:
                        consider(i, "word_jaccard", jac)
                small, other = (q, e) if len(q.words) <= len(e.words) else (e, q)
                if (self.containment is not None and len(small.words) >= self.min_contained
                        and len(small.norm.split()) >= self.n and small.bag <= other.bag):
                    c = k / len(small.words)
                    if c >= self.containment:
                        consider(i, "containment", c)
        for grams, post, t, rule in ((q.chars, self._chars, self.char_jaccard, "char_jaccard"),
                                     (q.bag, self._bags, self.bag_jaccard, "content_bag")):
            if t is None or not grams:
                continue
            for i, jac in self._jaccard_candidates(grams, post, t, rule):
                e = self.entries[i]
                if rule == "content_bag":
                    if min(q.length, e.length) >= self.bag_length_ratio * max(q.length, e.length):
                        consider(i, rule, jac)
                elif _jaccard(q.bag, e.bag) >= self.min_bag:
                    consider(i, rule, jac)
        return best

    def _jaccard_candidates(self, grams: set[str], post: dict[str, list[int]], t: float, rule: str):
        """(index, Jaccard) of every indexed text whose ``rule`` grams have Jaccard ``>= t`` with ``grams``."""
        need = math.ceil(t * len(grams) - 1e-9)  # a match shares at least this many of the query's grams
        probe = sorted(grams, key=lambda g: len(post.get(g, ())))[: len(grams) - need + 1]
        cands = {i for g in probe for i in post.get(g, ())}
        attr = "chars" if rule == "char_jaccard" else "bag"
        for i in cands:
            other = getattr(self.entries[i], attr)
            k = len(grams & other)
            jac = k / (len(grams) + len(other) - k)
            if jac >= t:
                yield i, jac
