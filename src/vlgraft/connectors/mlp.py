"""Two-layer GELU MLP per token (LLaVA-1.5): ``[B, N, Dv] -> [B, N, Dl]``."""

from dataclasses import dataclass

from torch import nn

from vlgraft.config import ConnectorOptions
from vlgraft.connectors.base import Connector
from vlgraft.options import option
from vlgraft.registry import CONNECTOR


@dataclass
class MLPOptions(ConnectorOptions):
    hidden_dim: int | None = option(None, "hidden width; null: the LLM's hidden size", min=1)


@CONNECTOR.register("mlp")
class MLPConnector(Connector):
    Options = MLPOptions

    def __init__(self, options, in_dim: int, out_dim: int, vision=None):
        super().__init__(options, in_dim, out_dim)
        hidden = options.hidden_dim or out_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
