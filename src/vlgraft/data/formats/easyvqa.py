"""easy-VQA (PyPI ``easy-vqa``) in the canonical format.

All questions about one image become one record (a multi-turn conversation), so the image is
encoded and attended once per sequence; recipes train and evaluate them with ``data.turns:
independent`` so that each question is answered from the image alone, as in single-turn VQA.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

from vlgraft.config import FormatOptions
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import DataError
from vlgraft.options import option
from vlgraft.registry import DATASET

SHAPES = {"circle", "rectangle", "triangle"}
COLORS = {"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"}


def answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in SHAPES else "color" if answer in COLORS else "other"


def _question(q: str) -> str:
    return q[:1].upper() + q[1:]


def negated(q: str) -> bool:
    return " not " in q or " no " in q


def description(qas: list[tuple[str, str]]) -> str | None:
    """"A red circle." when the image's questions determine its colour and its shape (asked directly,
    or answered *yes* to "is there a red shape?" / *no* to "is there not a red shape?"), else None."""
    known: dict[str, str] = {}
    for q, a in qas:
        if a in SHAPES:
            known["shape"] = a
        elif a in COLORS:
            known["color"] = a
        elif a in ("yes", "no") and (a == "yes") != negated(q):
            words = set(q.lower().rstrip("?").split())
            for kind, vocab in (("shape", SHAPES), ("color", COLORS)):
                hit = words & vocab
                if hit:
                    known[kind] = hit.pop()
    return f"A {known['color']} {known['shape']}." if len(known) == 2 else None


def _balanced(by_image: dict[int, list[tuple[str, str]]], seed: int = 0) -> dict[int, list[tuple[str, str]]]:
    """Keep every colour/shape question and a yes/no subset in which the answer no longer follows
    from the wording: in easy-VQA a plain question ("is there a red shape?") is answered *no* and a
    negated one *yes* about 82% of the time, and a model trained on all of them learns that prior
    instead of looking at the image. The majority (wording, answer) pairs are subsampled to the
    size of the minority ones, deterministically."""
    import random

    groups: dict[tuple[bool, str], int] = defaultdict(int)
    for qas in by_image.values():
        for q, a in qas:
            if a in ("yes", "no"):
                groups[(negated(q), a)] += 1
    keep_rate = {}
    for neg in (False, True):
        n_yes, n_no = groups[(neg, "yes")], groups[(neg, "no")]
        small = min(n_yes, n_no)
        keep_rate[(neg, "yes")] = small / n_yes if n_yes else 1.0
        keep_rate[(neg, "no")] = small / n_no if n_no else 1.0
    rng = random.Random(seed)
    out = {}
    for img in sorted(by_image):
        kept = [(q, a) for q, a in by_image[img]
                if a not in ("yes", "no") or rng.random() < keep_rate[(negated(q), a)]]
        if kept:
            out[img] = kept
    return out


def _load(split: str):
    try:
        import easy_vqa
    except ImportError:
        raise DataError("dataset 'easyvqa' needs the PyPI package easy-vqa (pip install easy-vqa)") from None
    if split in ("train", "train-balanced"):
        return easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()
    if split == "test":
        return easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()
    raise DataError(f"dataset 'easyvqa' has splits 'train', 'train-balanced' and 'test', not {split!r}")


@dataclass
class EasyVQAOptions(FormatOptions):
    split: str = option("train", "train | test | train-balanced (yes/no questions balanced against their wording)",
                        choices=("train", "train-balanced", "test"))
    spec_arg: ClassVar[str] = "split"


@DATASET.register("easyvqa", options=EasyVQAOptions)
def easyvqa(o: EasyVQAOptions) -> list[Record]:
    """One record per image holding all its questions; ``meta["answer_types"]`` gives each question's
    type, ``meta["description"]`` the image's description where its questions determine it (for
    ``data.describe_first``; 3,132 of 4,000 training images, 772 of 1,000 test images).

    Splits: ``train``, ``test``, and ``train-balanced`` (``train`` with yes/no questions balanced so
    that the wording does not give the answer away; see :func:`_balanced`)."""
    split = o.split
    (questions, answers, image_ids), paths = _load(split)
    by_image: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for q, a, img in zip(questions, answers, image_ids):
        by_image[img].append((q, a))
    full = by_image
    if split == "train-balanced":
        by_image = _balanced(by_image)
    records = []
    for img in sorted(by_image):
        turns = []
        for k, (q, a) in enumerate(by_image[img]):
            turns.append(("user", (f"{IMAGE_PLACEHOLDER}\n" if k == 0 else "") + _question(q)))
            turns.append(("assistant", a))
        records.append(Record(f"easyvqa-{split}-img{img}", turns, images=[paths[img]],
                              meta={"answer_types": [answer_type(a) for _, a in by_image[img]],
                                    **({"description": d} if (d := description(full[img])) else {})},
                              source=f"easyvqa:{split} image {img}"))
    return records
