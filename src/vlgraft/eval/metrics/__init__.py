"""Benchmark metrics, each computed as its benchmark defines it; pure functions of predictions and
references (no model). See docs/METRICS.md.

* :mod:`.vqa_accuracy` — VQA v2 accuracy with the official answer normalisation.
* :mod:`.captioning` — BLEU-1..4, METEOR, ROUGE-L, CIDEr-D via pycocoevalcap (needs Java).
* :mod:`.pope` — POPE object-hallucination questions (random / popular / adversarial) and scores.
* :mod:`.choice` — multiple-choice answer extraction, ScienceQA's category table, MMBench CircularEval.
"""

from vlgraft.eval.metrics.captioning import JavaMissingError, caption_metrics, ptb_tokenize
from vlgraft.eval.metrics.choice import (
    circular_accuracy,
    extract_choice,
    rotations,
    scienceqa_accuracy,
    scienceqa_categories,
    scienceqa_fields,
)
from vlgraft.eval.metrics.pope import coco_objects, emoji_objects, pope_answer, pope_metrics, pope_questions
from vlgraft.eval.metrics.vqa_accuracy import normalize_answer, vqa_accuracy, vqa_score

__all__ = [
    "JavaMissingError", "caption_metrics", "circular_accuracy", "coco_objects", "emoji_objects", "extract_choice",
    "normalize_answer", "pope_answer", "pope_metrics", "pope_questions", "ptb_tokenize", "rotations",
    "scienceqa_accuracy", "scienceqa_categories", "scienceqa_fields", "vqa_accuracy", "vqa_score",
]
