"""The canonical record: LLaVA's conversation format, validated.

A record is ``{"id", "image"?, "conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}``.
``image`` is one path or a list of paths (several images, in the order of their placeholders); an
image-text record has one ``<image>`` placeholder per image in its human turns; a text-only record has
none. An interleaved image-text *document* (``interleaved:`` format) is a record with
``document=True`` and a single turn: text with ``<image>`` placeholders, learnt as a whole. For TOMGPT-style text-only training a record may carry ``image_text`` instead of ``image``: a
text that the paired text encoder of a CLIP-style model embeds in the image's place. Every check names the file and the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vlgraft.errors import DataError

IMAGE_PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Record:
    id: str
    image: str | None  # resolved path of the (first) image, or None for text-only
    turns: list[tuple[str, str]]  # (role in user|assistant|system|document, text)
    meta: dict = field(default_factory=dict)
    source: str = ""  # "file:record" for error messages
    image_text: str | None = None  # TOMGPT: a text standing in for the image (encoded by the paired text tower)
    more_images: list[str] = field(default_factory=list)  # images 2..n, in placeholder order
    document: bool = False  # an interleaved document: one ("document", text) turn, every text token learnt
    lead_pairs: int = 0  # leading (user, assistant) exchanges that every question is asked behind (describe-first)

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_text is not None

    @property
    def images(self) -> list[str]:
        """Every image path, in the order of the record's ``<image>`` placeholders."""
        return ([self.image] if self.image is not None else []) + self.more_images

    @property
    def where(self) -> str:
        return self.source or self.id


def system_and_body(rec: Record) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A record's system turns and its other turns, each in order."""
    return [(r, t) for r, t in rec.turns if r == "system"], [(r, t) for r, t in rec.turns if r != "system"]


def split_image_lead(rec: Record, need: str) -> tuple[list[tuple[str, str]], str, list[tuple[str, str]]]:
    """(system turns, the first question up to and including its last ``<image>``, the other turns
    with that part removed). Every placeholder must be in the first question; ``need`` says what
    requires it in the error."""
    system, body = system_and_body(rec)
    first = body[0][1]
    if first.count(IMAGE_PLACEHOLDER) != max(1, len(rec.images)) or any(IMAGE_PLACEHOLDER in t for _, t in body[1:]):
        raise DataError(f"{rec.where}: {need}, every {IMAGE_PLACEHOLDER} must be in the first question")
    k = first.rindex(IMAGE_PLACEHOLDER) + len(IMAGE_PLACEHOLDER)
    if first[k: k + 1] == "\n":
        k += 1
    return system, first[:k], [("user", first[k:])] + body[1:]


def parse_record(raw: dict, index: int, source: str, image_root: Path | None) -> Record:
    rid = str(raw.get("id", index)) if isinstance(raw, dict) else str(index)
    where = f"{source}: record {rid!r} (#{index})"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a record must be an object")
    convs = raw.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise DataError(f"{where}: 'conversations' must be a non-empty list")
    turns = []
    for j, t in enumerate(convs):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise DataError(f"{where}: turn {j} must have 'from' and 'value'")
        role = _ROLES.get(t["from"])
        if role is None:
            raise DataError(f"{where}: turn {j} has unknown speaker {t['from']!r} (use human/gpt/system)")
        if not isinstance(t["value"], str):
            raise DataError(f"{where}: turn {j} 'value' must be a string")
        turns.append((role, t["value"]))
    body = [r for r, _ in turns if r != "system"]
    if body[0] != "user" or any(a == b for a, b in zip(body, body[1:])):
        raise DataError(f"{where}: turns must alternate human/gpt, starting with human")
    if "assistant" not in body:
        raise DataError(f"{where}: no gpt turn, nothing to learn or evaluate")
    n_ph = sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns)
    image, image_text = raw.get("image"), raw.get("image_text")
    more: list[str] = []
    if image_text is not None:
        if image is not None:
            raise DataError(f"{where}: has both 'image' and 'image_text' (one stands for the other)")
        if not isinstance(image_text, str) or not image_text.strip():
            raise DataError(f"{where}: 'image_text' must be a non-empty string")
        if n_ph != 1:
            raise DataError(f"{where}: has an 'image_text' but {n_ph} {IMAGE_PLACEHOLDER} placeholders (need exactly 1)")
    elif image is None:
        if n_ph:
            raise DataError(f"{where}: has an {IMAGE_PLACEHOLDER} placeholder but no 'image'")
    else:
        paths = [image] if isinstance(image, str) else image
        if not isinstance(paths, list) or not paths or not all(isinstance(x, str) and x for x in paths):
            raise DataError(f"{where}: 'image' must be a path (string) or a non-empty list of paths")
        if n_ph != len(paths):
            raise DataError(f"{where}: has {len(paths)} image(s) but {n_ph} {IMAGE_PLACEHOLDER} placeholders "
                            "(need one per image)")
        if any(IMAGE_PLACEHOLDER in text for r, text in turns if r != "user"):
            raise DataError(f"{where}: the {IMAGE_PLACEHOLDER} placeholder must be in a human turn")
        resolved = [resolve_image(x, image_root, where) for x in paths]
        image, more = resolved[0], resolved[1:]
    meta = {k: v for k, v in raw.items() if k not in ("id", "image", "image_text", "conversations")}
    return Record(id=rid, image=image, turns=turns, meta=meta, source=where, image_text=image_text,
                  more_images=more)


def resolve_image(path: str, image_root: Path | None, where: str) -> str:
    """An image path made absolute against ``image_root``; the file must exist."""
    p = Path(path)
    if not p.is_absolute() and image_root is not None:
        p = image_root / p
    if not p.is_file():
        raise DataError(f"{where}: image file not found: {p}")
    return str(p)


def load_llava_json(path: str | Path, image_root: str | Path | None = None, limit: int | None = None) -> list[Record]:
    """Read a LLaVA JSON list or JSONL file into validated records."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    root = Path(image_root) if image_root else p.parent
    raws: list = []
    if p.suffix == ".jsonl":
        with p.open() as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    raws.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}: line {ln} is not valid JSON: {e.msg}") from None
                if limit and len(raws) >= limit:
                    break
    else:
        try:
            raws = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: not valid JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(raws, list):
            raise DataError(f"{p}: expected a JSON list of records")
        raws = raws[:limit] if limit else raws
    records = [parse_record(r, i, str(p), root) for i, r in enumerate(raws)]
    check_unique_ids(records)
    return records


def first_duplicate(records: list[Record]) -> Record | None:
    """The first record whose id an earlier one already has."""
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            return r
        seen.add(r.id)
    return None


def check_unique_ids(records: list[Record]) -> None:
    dup = first_duplicate(records)
    if dup is not None:
        raise DataError(f"{dup.where}: duplicate id {dup.id!r}")


def load_records(spec: str, image_root: str | None = None, limit: int | None = None) -> list[Record]:
    """``spec`` is a LLaVA .json/.jsonl path, or ``name:arg`` for a registered dataset or format:
    ``easyvqa:train``, ``coco:captions.json``, ``scienceqa:problems.json#train``, ... (docs/DATA.md).
    A format's loader yields records one at a time; only the first ``limit`` are read."""
    import inspect
    import itertools

    from vlgraft.registry import DATASET
    import vlgraft.data.formats  # noqa: F401  (registration)

    if not _has_format_prefix(spec) and (spec.endswith((".json", ".jsonl")) or Path(spec).exists()):
        return load_llava_json(spec, image_root, limit)
    name, _, arg = spec.partition(":")
    fn = DATASET.get(name)
    kwargs = {"image_root": image_root} if "image_root" in inspect.signature(fn).parameters else {}
    records = fn(arg or "train", **kwargs)
    records = list(itertools.islice(records, limit) if limit else records)
    check_unique_ids(records)
    return records


def _has_format_prefix(spec: str) -> bool:
    from vlgraft.registry import DATASET

    name, sep, _ = spec.partition(":")
    return bool(sep) and len(name) > 1 and name in DATASET.names()
