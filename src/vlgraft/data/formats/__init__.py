"""Data formats, one file each, registered by name with their typed options (``data/sources.py``)."""

from vlgraft.data.formats import (  # noqa: F401
    alpaca,
    coco,
    easyvqa,
    emoji,
    hf,
    interleaved,
    llava,
    m3it,
    scienceqa,
    vqav2,
    webdataset,
)
