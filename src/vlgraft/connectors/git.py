"""GIT-style visual projection: linear then layer norm per token, ``[B, N, Dv] -> [B, N, Dl]``."""

from torch import nn

from vlgraft.registry import CONNECTOR


@CONNECTOR.register("git")
class GITConnector(nn.Module):
    def __init__(self, cfg, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def output_tokens(self, n_in: int) -> int:
        return n_in

    def forward(self, x):
        return self.norm(self.proj(x))
