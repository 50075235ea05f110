"""A single linear projection per token (MiniGPT-4, LLaVA-1): ``[B, N, Dv] -> [B, N, Dl]``."""

from torch import nn

from vlgraft.connectors.base import Connector
from vlgraft.registry import CONNECTOR


@CONNECTOR.register("linear")
class LinearConnector(Connector):
    def __init__(self, options, in_dim: int, out_dim: int, vision=None):
        super().__init__(options, in_dim, out_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return self.proj(x)
