"""A single linear projection per token (MiniGPT-4, LLaVA-1): ``[B, N, Dv] -> [B, N, Dl]``."""

from torch import nn

from vlgraft.registry import CONNECTOR


@CONNECTOR.register("linear")
class LinearConnector(nn.Module):
    def __init__(self, cfg, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def output_tokens(self, n_in: int) -> int:
        return n_in

    def forward(self, x):
        return self.proj(x)
