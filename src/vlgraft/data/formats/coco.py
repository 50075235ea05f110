"""COCO captions (``captions_train2017.json`` and the like) in the canonical format.

Spec: ``coco:PATH/captions_train2017.json``; images are ``<image_root>/<file_name>``, where
``image_root`` defaults to the JSON's folder (for the usual layout, point it at ``train2017/``).

The JSON holds ``images`` (``id``, ``file_name``) and ``annotations`` (``id``, ``image_id``,
``caption``). Each annotation becomes one single-turn record, id ``coco-{image_id}-{ann_id}``:
user ``"<image>\\n" + prompt`` (option ``prompt``, default CAPTION_PROMPT), assistant the caption
(stripped). An image with five captions
gives five records. The prompt is one fixed instruction so that training and evaluation ask alike.
The document is parsed whole (JSON cannot be streamed), then records are yielded one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlgraft.config import FormatOptions
from vlgraft.data.formats.common import check_placeholders, existing_file
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import DataError
from vlgraft.files import read_json
from vlgraft.options import option
from vlgraft.registry import DATASET

CAPTION_PROMPT = "Describe the image briefly."


def id_table(data: dict, path: Path, key: str, field: str) -> dict:
    """``id -> entry[field]`` (a non-empty string) for the entries of the list ``data[key]`` of a COCO
    file: ``images`` -> ``file_name``, ``categories`` -> ``name``; errors name the file and entry."""
    entries = data.get(key)
    if not isinstance(entries, list):
        raise DataError(f"{path}: '{key}' must be a list")
    out = {}
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("id"), (int, str)) and isinstance(e.get(field), str)
                and e[field].strip()):
            raise DataError(f"{path}: {key} #{i} must be an object with 'id' and a non-empty '{field}'")
        out[e["id"]] = e[field]
    return out


def image_files(data: dict, path: Path) -> dict:
    """``image id -> file_name``, checked."""
    return id_table(data, path, "images", "file_name")


@dataclass
class CocoOptions(FormatOptions):
    path: str = option(help="the captions JSON (captions_train2017.json, ...)")
    image_root: str | None = option(None, "folder of the images (default: the JSON's folder)")
    prompt: str = option(CAPTION_PROMPT, "the instruction every caption answers")


@DATASET.register("coco", options=CocoOptions)
def coco(o: CocoOptions) -> Iterator[Record]:
    """One record per caption annotation (see the module docstring)."""
    p, image_root = existing_file(o.path, "COCO captions file"), o.image_root
    data = read_json(p)
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected a COCO captions object with 'images' and 'annotations'")
    files = image_files(data, p)
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise DataError(f"{p}: 'annotations' must be a list")
    root = Path(image_root) if image_root else p.parent
    for i, ann in enumerate(anns):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        where = f"{p}: annotation {ann_id!r} (#{i})" if ann_id is not None else f"{p}: annotation #{i}"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: an annotation must be an object")
        if ann_id is None:
            raise DataError(f"{where}: no 'id'")
        image_id = ann.get("image_id")
        if not isinstance(image_id, (int, str)) or image_id not in files:
            raise DataError(f"{where}: unknown image_id {image_id!r} (not in 'images')")
        caption = ann.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{where}: 'caption' must be a non-empty string")
        image = root / files[image_id]
        if not image.is_file():
            raise DataError(f"{where}: image file not found: {image}")
        turns = [("user", f"{IMAGE_PLACEHOLDER}\n{o.prompt}"), ("assistant", caption.strip())]
        check_placeholders(turns, True, where)
        yield Record(f"coco-{image_id}-{ann_id}", turns, images=[str(image)],
                     meta={"image_id": image_id, "annotation_id": ann_id}, source=where)
