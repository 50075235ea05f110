"""easy-VQA (PyPI ``easy-vqa``) in the canonical format.

All questions about one image become one record (a multi-turn conversation), so the image is
encoded and attended once per sequence; recipes train and evaluate them with ``data.turns:
independent`` so that each question is answered from the image alone, as in single-turn VQA.
"""

from __future__ import annotations

from collections import defaultdict

from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import DataError
from vlgraft.registry import DATASET

SHAPES = {"circle", "rectangle", "triangle"}
COLORS = {"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"}


def answer_type(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else "shape" if answer in SHAPES else "color" if answer in COLORS else "other"


def _question(q: str) -> str:
    return q[:1].upper() + q[1:]


def _load(split: str):
    try:
        import easy_vqa
    except ImportError:
        raise DataError("dataset 'easyvqa' needs the PyPI package easy-vqa (pip install easy-vqa)") from None
    if split == "train":
        return easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()
    if split == "test":
        return easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()
    raise DataError(f"dataset 'easyvqa' has splits 'train' and 'test', not {split!r}")


@DATASET.register("easyvqa")
def easyvqa(split: str) -> list[Record]:
    """One record per image holding all its questions; ``meta["answer_types"]`` gives each question's type."""
    (questions, answers, image_ids), paths = _load(split)
    by_image: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for q, a, img in zip(questions, answers, image_ids):
        by_image[img].append((q, a))
    records = []
    for img in sorted(by_image):
        turns = []
        for k, (q, a) in enumerate(by_image[img]):
            turns.append(("user", (f"{IMAGE_PLACEHOLDER}\n" if k == 0 else "") + _question(q)))
            turns.append(("assistant", a))
        records.append(Record(id=f"easyvqa-{split}-img{img}", image=paths[img], turns=turns,
                              meta={"answer_types": [answer_type(a) for _, a in by_image[img]]},
                              source=f"easyvqa:{split} image {img}"))
    return records
