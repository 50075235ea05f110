"""``vlgraft export RUN OUT --format FORMAT``: a trained model out of its run folder.

Each format is a module with ``check(vlm, recipe)`` — raises a ``VlgraftError`` naming the part that
does not fit before anything is written or merged — and ``write(vlm, recipe, folder) -> dict``, which
merges what it needs and writes the folder; ``summary(info)`` is the line printed afterwards. The
folder is written atomically: a failed export leaves nothing behind.

* ``vlgraft`` (``native``): any recipe; read back by ``vlgraft chat/eval/serve`` and ``vlgraft.load``;
* ``llava-hf`` (``llava_hf``): ``transformers.LlavaForConditionalGeneration`` + ``AutoProcessor``,
  read by transformers alone and by the servers that read that format (docs/EXPORT.md).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from vlgraft.errors import VlgraftError
from vlgraft.files import atomic_path, ensure_writable

FORMATS = {"vlgraft": "vlgraft.export.native", "llava-hf": "vlgraft.export.llava_hf"}


def export(run: str | Path, out: Path, format: str = "vlgraft", overwrite: bool = False,
           overrides: list[str] | None = None) -> dict:
    """Export ``run`` (a run, checkpoint or vlgraft export folder) to ``out`` in ``format``."""
    from vlgraft.training.checkpoint import load_vlm

    if format not in FORMATS:
        raise VlgraftError(f"--format {format!r} is not a format; choose from {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise VlgraftError(f"{out} exists; pass --overwrite to replace it")
    ensure_writable(out.parent, "export's parent folder")
    writer = importlib.import_module(FORMATS[format])
    vlm, recipe, ckpt = load_vlm(run, overrides=overrides)
    writer.check(vlm, recipe)
    with atomic_path(out, folder=True) as tmp:
        info = writer.write(vlm, recipe, tmp)
    print(f"exported {ckpt} -> {out} ({format}): {writer.summary(info)}")
    return info
