"""vlgraft: graft a pretrained image encoder onto a pretrained causal LM with small trainable parts."""

__version__ = "0.1.0"

from vlgraft.errors import VlgraftError  # noqa: F401
