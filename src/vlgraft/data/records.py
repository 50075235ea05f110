"""The canonical record: LLaVA's conversation format, validated.

A record is ``{"id", "image"?, "conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}``.
``image`` is one path or a list of paths (several images, in the order of their placeholders); an
image-text record has one ``<image>`` placeholder per image in its human turns; a text-only record has
none. Every format loads into ``Record``: a ``chat`` (turns of user / assistant / system) or a
``document`` (an interleaved image-text document, ``interleaved:`` format: one turn, text with
``<image>`` placeholders, learnt as a whole). For TOMGPT-style text-only training a record may carry
``image_text`` instead of ``image``: a text that the paired text encoder of a CLIP-style model embeds
in the image's place. Every check names the file and the record.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vlgraft.errors import DataError
from vlgraft.files import iter_jsonl, read_json

IMAGE_PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


KINDS = ("chat", "document")


@dataclass
class Record:
    id: str
    turns: list[tuple[str, str]]  # (role in user|assistant|system, text); a document: one ("document", text)
    images: list[str] = field(default_factory=list)  # resolved image paths, in the order of the placeholders
    kind: str = "chat"  # chat | document (every text token learnt, no chat template)
    image_text: str | None = None  # TOMGPT: a text standing in for the image (encoded by the paired text tower)
    lead_pairs: int = 0  # leading (user, assistant) exchanges that every question is asked behind (describe-first)
    meta: dict = field(default_factory=dict)
    source: str = ""  # "file:record" for error messages
    # the images' encoded bytes when they travel inside the data (a webdataset sample); else empty and
    # ``images`` are files
    image_data: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self):  # positional arguments in the wrong order would otherwise go unnoticed
        if not isinstance(self.turns, list) or not isinstance(self.images, list) or self.kind not in KINDS:
            raise TypeError(f"Record {self.id!r}: turns and images must be lists, kind one of {KINDS}")

    @property
    def has_image(self) -> bool:
        return bool(self.images) or self.image_text is not None

    @property
    def document(self) -> bool:
        return self.kind == "document"

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


def parse_record(raw: dict, index: int, source: str, image_root: Path | None, check_files: bool = True) -> Record:
    """A raw LLaVA record validated (``check_files``: every image path must be a file; off where the
    images come with the record, as bytes)."""
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
    images: list[str] = []
    if image_text is not None:
        if image is not None:
            raise DataError(f"{where}: has both 'image' and 'image_text' (one stands for the other)")
        if not isinstance(image_text, str) or not image_text.strip():
            raise DataError(f"{where}: 'image_text' must be a non-empty string")
        if n_ph != 1:
            raise DataError(f"{where}: has an 'image_text' but {n_ph} {IMAGE_PLACEHOLDER} placeholders "
                            "(need exactly 1)")
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
        images = [resolve_image(x, image_root, where) for x in paths] if check_files else paths
    meta = {k: v for k, v in raw.items() if k not in ("id", "image", "image_text", "conversations")}
    return Record(rid, turns, images=images, image_text=image_text, meta=meta, source=where)


def resolve_image(path: str, image_root: Path | None, where: str) -> str:
    """An image path made absolute against ``image_root``; the file must exist."""
    p = Path(path)
    if not p.is_absolute() and image_root is not None:
        p = image_root / p
    if not p.is_file():
        raise DataError(f"{where}: image file not found: {p}")
    return str(p)


def iter_llava_json(path: str | Path, image_root: str | Path | None = None) -> Iterator[Record]:
    """Validated records of a LLaVA JSON list or JSONL file (the ``llava`` format), one at a time: a
    JSONL file is read line by line, so a consumer that stops early reads no further."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    root = Path(image_root) if image_root else p.parent
    if p.suffix == ".jsonl":
        raws: Iterable = (raw for _, raw in iter_jsonl(p))
    else:
        raws = read_json(p)
        if not isinstance(raws, list):
            raise DataError(f"{p}: expected a JSON list of records")
    for i, raw in enumerate(raws):
        yield parse_record(raw, i, str(p), root)


def load_llava_json(path: str | Path, image_root: str | Path | None = None, limit: int | None = None) -> list[Record]:
    """The first ``limit`` (all: None) records of a LLaVA JSON / JSONL file; ids checked unique."""
    records = list(itertools.islice(iter_llava_json(path, image_root), limit or None))
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
