"""A record's annotation: the text the generator is shown, and the facts its output must respect.

The annotation of a record is its ``meta`` name (``label``, the readable form, first) / short names /
category / subcategory when present (``emoji:annotations``) plus its human/gpt turns: the answer to a
"describe" / "caption" request, or an answer that reads as a sentence, is a caption; any other pair is
a question with its answer. Key terms are what an output
must mention: the record's name (or one of its short names) and every short non-yes/no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vlgraft.data.records import IMAGE_PLACEHOLDER, Record

STOPWORDS = frozenset(
    ["a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "with", "by", "from", "as", "is", "are",
     "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "there", "here", "what", "which",
     "who", "whom", "whose", "how", "why", "when", "where", "do", "does", "did", "not", "no", "yes", "any", "some",
     "one", "image", "picture", "photo", "shown", "show", "shows", "you", "your", "i", "me", "my", "we", "our",
     "they", "them", "their", "he", "she", "his", "her", "can", "could", "would", "should", "will", "very", "about",
     "into", "onto", "over", "under", "than", "then", "so", "such", "also", "just", "only"])
_CAPTION_Q = re.compile(r"\b(describe|description|caption)\b", re.I)
NEGATION = re.compile(r"\b(not|no|nothing|none|neither|nor|without|never|isn't|aren't|doesn't|don't|can't)\b", re.I)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def stem(w: str) -> str:
    """Crude plural folding, applied to both sides of every comparison."""
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def content_stems(text: str) -> list[str]:
    return [stem(w) for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def mentions(stems: set[str], term: str) -> bool:
    """Every content word of ``term`` occurs in ``stems`` (the output's content stems)."""
    need = content_stems(term)
    return bool(need) and all(w in stems for w in need)


@dataclass
class Annotation:
    text: str  # shown to the generator
    key_terms: list[list[str]] = field(default_factory=list)  # each group: alternatives, one must be mentioned
    qa: list[tuple[str, str]] = field(default_factory=list)  # annotated (question, answer) pairs
    stems: set[str] = field(default_factory=set)  # every content stem of the annotation (terms it may use)


def is_short_answer(answer: str) -> bool:
    return 0 < len(answer.split()) <= 3 and answer.strip().lower() not in ("yes", "no")


def _pairs(rec: Record) -> list[tuple[str, str]]:
    out, question = [], None
    for role, text in rec.turns:
        if role == "user":
            question = text.replace(IMAGE_PLACEHOLDER, " ").strip()
        elif role == "assistant" and question is not None:
            out.append((question, text.strip()))
            question = None
    return out


def extract(rec: Record) -> Annotation:
    """The annotation of one record (see the module docstring)."""
    m = rec.meta or {}
    lines: list[str] = []
    facts: list[str] = []  # the annotation's values, without the "Name:" / "Q:" labels
    groups: list[list[str]] = []
    qa: list[tuple[str, str]] = []
    name = next((m[k].strip() for k in ("label", "name") if isinstance(m.get(k), str) and m[k].strip()), "")
    if name:
        shorts = [s.replace("_", " ").strip() for s in m.get("short_names") or [] if isinstance(s, str)]
        shorts = [s for s in dict.fromkeys(shorts) if s and s.lower() != name.lower()]
        lines.append(f"Name: {name}")
        facts += [name, *shorts]
        if shorts:
            lines.append(f"Also called: {', '.join(shorts)}")
        groups.append([name, *shorts])
    cat = " / ".join(str(m[k]) for k in ("category", "subcategory") if m.get(k))
    if cat:
        lines.append(f"Category: {cat}")
        facts.append(cat)
    for q, a in _pairs(rec):
        if not a:
            continue
        facts += [q, a]
        if len(a.split()) > 6 or _CAPTION_Q.search(q) or (len(a.split()) >= 3 and a.endswith(".")):
            lines.append(f"Caption: {a}")
            continue
        lines.append(f"Q: {q} A: {a}")
        qa.append((q, a))
        if is_short_answer(a) and content_stems(a) and not any(a.lower() == g[0].lower() for g in groups):
            groups.append([a])
    return Annotation(text="\n".join(lines), key_terms=groups, qa=qa, stems=set(content_stems(" ".join(facts))))


def claims(ann: Annotation) -> list[tuple[set[str], bool]]:
    """Yes/no pairs as (content stems of the question, whether they are present): "Is there not a red
    shape?" -> "no" says red is present."""
    return [(set(content_stems(q)), (a.strip().lower() == "yes") != bool(NEGATION.search(q)))
            for q, a in ann.qa if a.strip().lower() in ("yes", "no")]


def answer_vocab(annotations: list[Annotation]) -> set[str]:
    """One-word short answers across the whole input (colours, shapes, labels): an output that uses one
    its own annotation never mentions contradicts it."""
    return {stem(a.lower()) for ann in annotations for _, a in ann.qa
            if is_short_answer(a) and len(words(a)) == 1 and words(a)[0] not in STOPWORDS}
