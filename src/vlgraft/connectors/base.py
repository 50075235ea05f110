"""The connector protocol: vision features ``[B, N, Dv]`` -> the LLM's embedding space ``[B, M, Dl]``."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from vlgraft.config import ConnectorOptions
from vlgraft.errors import ConfigError
from vlgraft.registry import CONNECTOR


class Connector(nn.Module):
    """Base class. A subclass registers itself (``@CONNECTOR.register("name")``), sets ``Options`` (a
    dataclass subclassing ``ConnectorOptions``, when it has options) and builds its layers in
    ``__init__``; ``output_tokens`` says how many visual tokens it makes of ``n_in``."""

    Options: ClassVar[type] = ConnectorOptions
    reads_pair: ClassVar[bool] = False  # takes the low/high-resolution layout of two encoders (vision_hr)

    def __init__(self, options, in_dim: int, out_dim: int, vision=None):
        super().__init__()
        self.options = options

    def output_tokens(self, n_in: int) -> int:
        return n_in


def build_connector(options, in_dim: int, out_dim: int, vision=None) -> Connector:
    """The recipe's connector for ``in_dim``-wide features of ``vision`` (the encoder) into an
    ``out_dim``-wide LLM."""
    cls = CONNECTOR.get(options.name)
    if getattr(vision, "parts", None) and not cls.reads_pair:
        raise ConfigError(f"'vision_hr' (two encoders) is for the patch_mining connector, not {options.name!r}")
    return cls(options, in_dim, out_dim, vision=vision)
