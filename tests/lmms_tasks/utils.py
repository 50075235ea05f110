"""Hooks of the local lmms-eval tasks over easy-VQA's test split (the ``easy-vqa`` package holds the
images; ``easyvqa_test.jsonl`` holds the questions about its first 8 test images, in its order)."""

from __future__ import annotations

import easy_vqa
from PIL import Image

SHAPES = ["circle", "rectangle", "triangle"]
COLORS = ["black", "blue", "brown", "gray", "green", "red", "teal", "yellow"]
YES_NO = ["yes", "no"]

_PATHS = easy_vqa.get_test_image_paths()


def doc_to_visual(doc: dict) -> list:
    with Image.open(_PATHS[doc["image_id"]]) as im:
        return [im.convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    q = doc["question"]
    return f"{kw.get('pre_prompt', '')}{q[:1].upper()}{q[1:]}{kw.get('post_prompt', '')}"


def doc_to_choice(doc: dict) -> list[str]:
    """The answers of the question's kind: scored by loglikelihood, the most likely one is the answer."""
    a = doc["answer"]
    return YES_NO if a in YES_NO else SHAPES if a in SHAPES else COLORS


def doc_to_target(doc: dict) -> int:
    return doc_to_choice(doc).index(doc["answer"])
