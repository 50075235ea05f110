"""A data source -> records: the one way every command reads data.

A source is a data format's typed options (``{name: coco, path: captions.json, prompt: ...}``), or the
short form ``name:ARG`` (``easyvqa:train``, ``coco:captions.json``, ``scienceqa:problems.json#train``),
or the path of a LLaVA conversation ``.json`` / ``.jsonl`` file. A format is a function from its
options to an iterable of ``Record``s, registered in ``DATASET`` with its options class
(``data/formats/<name>.py``); it may yield records one at a time, and only the first ``limit`` are read.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from vlgraft.config import DataSource, FormatOptions
from vlgraft.data.records import Record, check_unique_ids
from vlgraft.errors import ConfigError
from vlgraft.options import load
from vlgraft.registry import DATASET, UnknownNameError


def parse_source(spec: DataSource, where: str | None = None) -> FormatOptions:
    """A source as its format's options; ``where`` prefixes errors (e.g. the recipe key; default: the spec)."""
    if isinstance(spec, FormatOptions):
        return spec
    where = where or f"data source {spec!r}"
    if isinstance(spec, dict):  # a format's options as plain data (as a recipe gives them)
        if spec.get("name") not in DATASET:
            raise ConfigError(f"{where}: 'name' must be a data format ({', '.join(sorted(DATASET.names()))})")
        return load(DATASET.options(spec["name"]), spec, where)
    name, sep, arg = spec.partition(":")
    if sep and len(name) > 1 and name in DATASET:  # a Windows drive letter is not a format
        cls = DATASET.options(name)
        return load(cls, {"name": name, **cls.from_arg(arg)}, where)
    if spec.endswith((".json", ".jsonl")) or Path(spec).exists():
        return load(DATASET.options("llava"), {"name": "llava", "path": spec}, where)
    if not sep and spec in DATASET:  # a bare format name: its default options
        return load(DATASET.options(spec), {"name": spec}, where)
    try:
        DATASET.get(name)  # not registered: the error lists the known formats
    except UnknownNameError as e:
        raise ConfigError(f"{where}: {e}") from None
    raise ConfigError(f"{where}: {spec!r} is not a data source (a format is given as 'name:ARG')")


def source_options(spec: DataSource, image_root: str | None = None, where: str | None = None) -> FormatOptions:
    """A source's format options, with ``image_root`` applied where the source sets none."""
    opts = parse_source(spec, where)
    if image_root and hasattr(opts, "image_root") and opts.image_root is None:
        opts = dataclasses.replace(opts, image_root=image_root)
    return opts


def load_records(spec: DataSource, image_root: str | None = None, limit: int | None = None) -> list[Record]:
    """The records of a source (``image_root`` applies where the source sets none); ids are unique."""
    opts = source_options(spec, image_root)
    records = DATASET.get(opts.name)(opts)
    records = list(itertools.islice(records, limit) if limit else records)
    check_unique_ids(records)
    return records
