"""Connectors map vision features ``[B, N, Dv]`` into the LLM's embedding space ``[B, M, Dl]``."""

from __future__ import annotations

from torch import nn

from vlgraft.config import ConnectorConfig
from vlgraft.errors import ConfigError
from vlgraft.connectors import git, linear, mlp, patch_mining, pool, prompt_projection, resampler  # noqa: F401
from vlgraft.registry import CONNECTOR


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int, vision=None) -> nn.Module:
    """``vision`` (the encoder) goes to connectors that read its token layout (``needs_vision``)."""
    cls = CONNECTOR.get(cfg.name)
    if getattr(cls, "needs_vision", False):
        return cls(cfg, in_dim, out_dim, vision=vision)
    if getattr(vision, "parts", None):
        raise ConfigError(f"'vision_hr' (two encoders) is for the patch_mining connector, not {cfg.name!r}")
    return cls(cfg, in_dim, out_dim)
