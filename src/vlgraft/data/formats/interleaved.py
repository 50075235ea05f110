"""Interleaved image-text documents (OBELICS / MMC4 style web documents), for MM1-style pre-training.

Spec: ``interleaved:PATH.jsonl`` (one document a line, streamed) or ``interleaved:PATH.json`` (a JSON
list). A document is either

* OBELICS's parallel lists: ``{"id"?, "texts": [str | null, ...], "images": [path | null, ...]}``,
  equally long, each position holding exactly one of a text or an image; or
* a content list: ``{"id"?, "content": [{"type": "text", "text": str} | {"type": "image", "image": path}, ...]}``.

Pieces join in order with a newline, each image becoming an ``<image>`` placeholder, into one record
with ``document=True``: trained as plain language modelling over the whole text (no chat template,
every text token labelled, visual positions not). Image paths are relative to the file's folder (or
``data.image_root``). A document has at least one non-blank text; a literal ``<image>`` inside a text,
a missing image file, or a position holding both or neither is an error naming file, line and piece.
Other top-level fields go to ``meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlgraft.config import FormatOptions
from vlgraft.data.formats.common import existing_file
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record, resolve_image
from vlgraft.errors import DataError
from vlgraft.files import iter_jsonl, read_json
from vlgraft.options import option
from vlgraft.registry import DATASET


def _pieces(raw: dict, where: str) -> list[tuple[str, str]]:
    """``[("text" | "image", value), ...]`` in document order."""
    if "content" in raw:
        content = raw["content"]
        if not isinstance(content, list) or not content:
            raise DataError(f"{where}: 'content' must be a non-empty list")
        out = []
        for j, c in enumerate(content):
            kind = c.get("type") if isinstance(c, dict) else None
            if kind not in ("text", "image"):
                raise DataError(f"{where}: content[{j}] must be an object with type 'text' or 'image'")
            value = c.get(kind)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: content[{j}] ({kind}) needs a non-empty string '{kind}'")
            out.append((kind, value))
        return out
    texts, images = raw.get("texts"), raw.get("images")
    if not isinstance(texts, list) or not isinstance(images, list):
        raise DataError(f"{where}: a document needs 'texts' and 'images' lists (OBELICS) or a 'content' list")
    if len(texts) != len(images) or not texts:
        raise DataError(f"{where}: 'texts' ({len(texts)}) and 'images' ({len(images)}) must be equally long "
                        "and non-empty")
    out = []
    for j, (t, im) in enumerate(zip(texts, images)):
        if (t is None) == (im is None):
            raise DataError(f"{where}: position {j} must hold exactly one of a text and an image")
        kind, value = ("text", t) if t is not None else ("image", im)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: position {j} ({kind}) must be a non-empty string")
        out.append((kind, value))
    return out


def document_record(raw: object, index: int, source: str, image_root: Path | None) -> Record:
    rid = str(raw["id"]) if isinstance(raw, dict) and raw.get("id") is not None else f"doc-{index}"
    where = f"{source}: document {rid!r} (#{index})"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a document must be a JSON object")
    parts, images = [], []
    for j, (kind, value) in enumerate(_pieces(raw, where)):
        if kind == "image":
            images.append(resolve_image(value, image_root, f"{where}: piece {j}"))
            parts.append(IMAGE_PLACEHOLDER)
        elif IMAGE_PLACEHOLDER in value:
            raise DataError(f"{where}: piece {j}: the text contains a literal {IMAGE_PLACEHOLDER}")
        else:
            parts.append(value.strip())
    if not any(p != IMAGE_PLACEHOLDER for p in parts):
        raise DataError(f"{where}: the document has no text")
    meta = {k: v for k, v in raw.items() if k not in ("id", "texts", "images", "content")}
    return Record(rid, [("document", "\n".join(parts))], images=images, kind="document", meta=meta, source=where)


@dataclass
class InterleavedOptions(FormatOptions):
    path: str = option(help="a JSON list of documents, or a .jsonl file (a document per line)")
    image_root: str | None = option(None, "folder that relative image paths resolve against (default: the file's)")


@DATASET.register("interleaved", options=InterleavedOptions)
def interleaved(o: InterleavedOptions) -> Iterator[Record]:
    """One record per document (see the module docstring)."""
    p = existing_file(o.path, "interleaved documents file")
    root = Path(o.image_root) if o.image_root else p.parent
    if p.suffix == ".jsonl":
        for i, (ln, raw) in enumerate(iter_jsonl(p)):
            yield document_record(raw, i, f"{p}: line {ln}", root)
        return
    data = read_json(p)
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of documents (or use .jsonl)")
    for i, raw in enumerate(data):
        yield document_record(raw, i, str(p), root)
