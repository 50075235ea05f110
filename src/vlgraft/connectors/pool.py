"""Token reduction before a linear projection (MM1: the number of visual tokens matters most).

``avg``: average-pool the square token grid to ``grid x grid`` tokens. ``shuffle``: concatenate each
``grid x grid`` block of neighbouring tokens into one token (pixel-shuffle, as MiniGPT-v2 does with
4 neighbours), so N tokens become N / grid^2 tokens of grid^2 * Dv features, then project."""

import math
from dataclasses import dataclass

from torch import nn

from vlgraft.config import ConnectorOptions
from vlgraft.connectors.base import Connector
from vlgraft.errors import ConfigError
from vlgraft.models.vision import pool_to_grid
from vlgraft.options import option
from vlgraft.registry import CONNECTOR


@dataclass
class PoolOptions(ConnectorOptions):
    grid: int = option(2, "output grid side (grid x grid tokens) for mode 'avg'; 'shuffle' merges grid x grid "
                       "neighbours into one token", min=1)
    mode: str = option("avg", "'avg' (average-pool to grid x grid) or 'shuffle' (pixel-shuffle / neighbour "
                       "concat, MiniGPT-v2)", choices=("avg", "shuffle"))


@CONNECTOR.register("pool")
class PoolConnector(Connector):
    Options = PoolOptions

    def __init__(self, cfg, in_dim: int, out_dim: int, vision=None):
        super().__init__(cfg, in_dim, out_dim)
        self.mode, self.g = cfg.mode, cfg.grid
        self.proj = nn.Linear(in_dim * (self.g**2 if self.mode == "shuffle" else 1), out_dim)

    def output_tokens(self, n_in: int) -> int:
        side = math.isqrt(n_in)
        if side * side != n_in:
            raise ConfigError(f"pool: {n_in} visual tokens do not form a square grid")
        if self.mode == "avg":
            return self.g**2
        if side % self.g:
            raise ConfigError(f"pool: shuffle by {self.g} needs a grid side divisible by it, got {side}")
        return (side // self.g) ** 2

    def forward(self, x):
        if self.mode == "avg":
            return self.proj(pool_to_grid(x, self.g))
        b, n, d = x.shape
        side, g = math.isqrt(n), self.g
        x = x.view(b, side // g, g, side // g, g, d).permute(0, 1, 3, 2, 4, 5)  # [B, h, w, g, g, D]
        return self.proj(x.reshape(b, (side // g) ** 2, g * g * d))
