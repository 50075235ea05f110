"""Asking a task's questions as the recipe asks any question: behind the model's own description of
the image when the recipe describes first, greedy, packed per image."""

from __future__ import annotations

from vlgraft.data.describe import describe_records, with_descriptions
from vlgraft.data.records import Record
from vlgraft.eval.vqa import eval_items
from vlgraft.inference import device_of, generate_answers


def prepared(vlm, recipe, records: list[Record], precision: str, cache, describe: bool) -> list[Record]:
    """``records`` with their images in the feature cache and, if ``describe`` and the recipe has
    ``data.describe_first``, each behind the model's description of its image."""
    cfg, request = recipe.eval, recipe.data.describe_first if describe else None
    if cache is not None:
        cache.fill([(p, r.where) for r in records for p in r.images], device_of(vlm))
    if not request:
        return records
    described = describe_records(vlm, records, request, cache, cfg.batch_size, cfg.describe_max_new_tokens, precision)
    return with_descriptions(records, request, described)


def answers(vlm, recipe, records: list[Record], precision: str, cache, max_new_tokens: int, desc: str) -> list[str]:
    """Greedy answers to every question of (prepared) ``records``, each asked alone with its record's
    image, in order — the packed decoding of ``vlgraft eval --turns independent``: the questions about
    one image share its prefix (and its description)."""
    items = eval_items(records, "independent")
    return generate_answers(vlm, items, cache, recipe.eval.batch_size, max_new_tokens, precision, packed=True,
                            desc=desc)
