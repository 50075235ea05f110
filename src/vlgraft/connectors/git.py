"""GIT-style visual projection: linear then layer norm per token, ``[B, N, Dv] -> [B, N, Dl]``."""

from torch import nn

from vlgraft.connectors.base import Connector
from vlgraft.registry import CONNECTOR


@CONNECTOR.register("git")
class GITConnector(Connector):
    def __init__(self, options, in_dim: int, out_dim: int, vision=None):
        super().__init__(options, in_dim, out_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x):
        return self.norm(self.proj(x))
