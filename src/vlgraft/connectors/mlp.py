"""Two-layer GELU MLP per token (LLaVA-1.5): ``[B, N, Dv] -> [B, N, Dl]``."""

from torch import nn

from vlgraft.registry import CONNECTOR


@CONNECTOR.register("mlp")
class MLPConnector(nn.Module):
    def __init__(self, cfg, in_dim: int, out_dim: int):
        super().__init__()
        hidden = cfg.hidden_dim or out_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def output_tokens(self, n_in: int) -> int:
        return n_in

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
