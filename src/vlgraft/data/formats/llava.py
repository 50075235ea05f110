"""LLaVA's conversation format, a ``.json`` list or a ``.jsonl`` file (``data/records.py`` validates it).

Spec: the file's path (``data/train.json``), or ``llava:PATH``; image paths resolve against
``image_root``, by default the file's folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vlgraft.config import FormatOptions
from vlgraft.data.records import Record, iter_llava_json
from vlgraft.options import option
from vlgraft.registry import DATASET


@dataclass
class LlavaOptions(FormatOptions):
    path: str = option(help="the .json (a list of records) or .jsonl (a record per line) file")
    image_root: str | None = option(None, "folder that relative image paths resolve against (default: the file's)")


@DATASET.register("llava", options=LlavaOptions)
def llava(o: LlavaOptions) -> Iterator[Record]:
    return iter_llava_json(o.path, o.image_root)
