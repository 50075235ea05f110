"""Perceiver / Q-Former-style resampler: M learned queries cross-attend the visual features, so the
LLM sees M tokens whatever the input count: ``[B, N, Dv] -> [B, M, Dl]``."""

import torch
from torch import nn

from vlgraft.errors import ConfigError
from vlgraft.registry import CONNECTOR


@CONNECTOR.register("resampler")
class Resampler(nn.Module):
    def __init__(self, cfg, in_dim: int, out_dim: int):
        super().__init__()
        if cfg.num_queries < 1 or out_dim % cfg.num_heads:
            raise ConfigError(f"resampler: num_queries must be >= 1 and num_heads ({cfg.num_heads}) must divide "
                              f"the LLM hidden size {out_dim}")
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
