"""Perceiver / Q-Former-style resampler: M learned queries cross-attend the visual features, so the
LLM sees M tokens whatever the input count: ``[B, N, Dv] -> [B, M, Dl]``."""

from dataclasses import dataclass

import torch
from torch import nn

from vlgraft.config import ConnectorOptions
from vlgraft.connectors.base import Connector
from vlgraft.errors import ConfigError
from vlgraft.options import option
from vlgraft.registry import CONNECTOR


@dataclass
class ResamplerOptions(ConnectorOptions):
    num_queries: int = option(16, "number M of learned queries (visual tokens sent to the LLM)", min=1)
    num_heads: int = option(8, "attention heads (must divide the LLM's hidden size)", min=1)


@CONNECTOR.register("resampler")
class Resampler(Connector):
    Options = ResamplerOptions

    def __init__(self, cfg, in_dim: int, out_dim: int, vision=None):
        super().__init__(cfg, in_dim, out_dim)
        if out_dim % cfg.num_heads:
            raise ConfigError(f"resampler: num_heads ({cfg.num_heads}) must divide the LLM hidden size {out_dim}")
        self.m = cfg.num_queries
        self.kv = nn.Linear(in_dim, out_dim)
        self.norm_kv = nn.LayerNorm(out_dim)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, out_dim) * 0.02)
        self.norm_q = nn.LayerNorm(out_dim)
        self.attn = nn.MultiheadAttention(out_dim, cfg.num_heads, batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(out_dim), nn.Linear(out_dim, 4 * out_dim), nn.GELU(),
                                 nn.Linear(4 * out_dim, out_dim))

    def output_tokens(self, n_in: int) -> int:
        return self.m

    def forward(self, x):
        kv = self.norm_kv(self.kv(x))
        q = self.norm_q(self.queries).unsqueeze(0).expand(x.shape[0], -1, -1)
        h = q + self.attn(q, kv, kv, need_weights=False)[0]
        return h + self.ffn(h)
