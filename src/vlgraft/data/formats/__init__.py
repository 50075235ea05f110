from vlgraft.data.formats import easyvqa  # noqa: F401
from vlgraft.data.formats import alpaca, coco, emoji, hf, interleaved, m3it, scienceqa  # noqa: F401
