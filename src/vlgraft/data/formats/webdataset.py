"""Webdataset tar shards: the layout large image-text sets ship in (LAION / CC3M by img2dataset,
LLaVA-Pretrain repacked), read in order without unpacking.

Spec: ``webdataset:PATH``, where PATH is a ``.tar`` file, a folder of them (read in name order) or a
glob (``shards/train-{*}.tar`` style: ``shards/train-*.tar``). Consecutive members that share a key
(the member name up to its first dot) form a sample:

* ``KEY.json`` holding a LLaVA record (``conversations``, optional ``id``; default id: the key), or
* ``KEY.txt`` holding a caption, which becomes ``<image>\\n{prompt}`` -> caption (a ``KEY.json``
  beside it is metadata and goes to ``meta``),

and at most one image ``KEY.jpg|jpeg|png|webp``, which the record carries as bytes (no file is
written). ``data.stream: true`` reads the shards item by item (``data/streams.py``); without it the
records load like any format's.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlgraft.config import FormatOptions
from vlgraft.data.formats.coco import CAPTION_PROMPT
from vlgraft.data.records import Record
from vlgraft.errors import DataError
from vlgraft.options import option
from vlgraft.registry import DATASET


@dataclass
class WebdatasetOptions(FormatOptions):
    path: str = option(help="a .tar shard, a folder of .tar shards, or a glob of them")
    prompt: str = option(CAPTION_PROMPT, "the instruction a caption sample (KEY.txt) answers")


def shard_paths(o: WebdatasetOptions) -> list[Path]:
    """The shards of a webdataset source, in name order."""
    p = Path(o.path)
    if p.is_dir():
        paths = sorted(p.glob("*.tar"))
    elif any(c in o.path for c in "*?["):
        paths = sorted(Path(x) for x in glob.glob(o.path))
    else:
        paths = [p] if p.is_file() else []
    if not paths:
        raise DataError(f"webdataset: no .tar shards at {o.path}")
    return paths


@DATASET.register("webdataset", options=WebdatasetOptions)
def webdataset(o: WebdatasetOptions) -> Iterator[Record]:
    from vlgraft.data.streams import TarStream

    stream = TarStream(shard_paths(o), o.prompt, f"webdataset:{o.path}")
    for shard in range(len(stream.shards)):
        for raw, _ in stream.read(shard, 0):
            yield stream.to_record(raw)
