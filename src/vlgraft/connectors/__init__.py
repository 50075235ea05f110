"""Connectors map vision features ``[B, N, Dv]`` into the LLM's embedding space ``[B, M, Dl]``."""

from __future__ import annotations

from torch import nn

from vlgraft.config import ConnectorConfig
from vlgraft.connectors import git, linear, mlp, pool, resampler  # noqa: F401  (registration)
from vlgraft.registry import CONNECTOR


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    return CONNECTOR.get(cfg.name)(cfg, in_dim, out_dim)
