"""Mini-Gemini's patch-info mining: high-resolution detail for low-resolution tokens.

Two encoders (recipe keys ``vision`` and ``vision_hr``, joined by ``models.vision.DualEncoder``): the
low-resolution tokens form an ``h x h`` grid and the high-resolution features an ``H x H`` grid with
``H = k h``. Each low-res token is a query over the ``k x k`` high-res features of its own region
only (keys and values); the mined detail goes through an output layer initialised to zero and is
added to the low-res token, so the LLM still sees ``h x h`` tokens and, at step 0, exactly the
low-res ones. A two-layer GELU MLP then maps them into the LLM: ``[B, N_lr + N_hr, D] -> [B, N_lr, Dl]``.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlgraft.config import ConnectorOptions
from vlgraft.connectors.base import Connector
from vlgraft.errors import ConfigError
from vlgraft.options import option
from vlgraft.registry import CONNECTOR


@dataclass
class PatchMiningOptions(ConnectorOptions):
    hidden_dim: int | None = option(None, "width of the mining attention and of the MLP's hidden layer (null: "
                                    "the low-res feature width, and the LLM's hidden size)", min=1)


@CONNECTOR.register("patch_mining")
class PatchMining(Connector):
    Options = PatchMiningOptions
    reads_pair = True

    def __init__(self, cfg, in_dim: int, out_dim: int, vision=None):
        super().__init__(cfg, in_dim, out_dim)
        parts = getattr(vision, "parts", None)
        if not parts or len(parts) != 2:
            raise ConfigError("patch_mining needs two image encoders: set 'vision_hr' in the recipe (the "
                              "high-resolution one)")
        (self.n_lr, self.d_lr), (self.n_hr, self.d_hr) = parts
        self.h, big = math.isqrt(self.n_lr), math.isqrt(self.n_hr)
        if self.h**2 != self.n_lr or big**2 != self.n_hr or big % self.h:
            raise ConfigError(f"patch_mining: the low-res tokens ({self.n_lr}) and high-res features ({self.n_hr}) "
                              "must be square grids, the high-res side a multiple of the low-res side "
                              "(set vision.grid / vision_hr.grid or the image sizes)")
        self.k = big // self.h
        width = cfg.hidden_dim or self.d_lr
        self.q = nn.Sequential(nn.LayerNorm(self.d_lr), nn.Linear(self.d_lr, width))
        self.kv_norm = nn.LayerNorm(self.d_hr)
        self.key = nn.Linear(self.d_hr, width)
        self.value = nn.Linear(self.d_hr, width)
        self.out = nn.Linear(width, self.d_lr)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        hidden = cfg.hidden_dim or out_dim
        self.proj = nn.Sequential(nn.Linear(self.d_lr, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def output_tokens(self, n_in: int) -> int:
        return self.n_lr

    def regions(self, hr: torch.Tensor) -> torch.Tensor:
        """``[B, H*H, D] -> [B, h*h, k*k, D]``: the high-res features under each low-res token."""
        b, _, d = hr.shape
        h, k = self.h, self.k
        x = hr.view(b, h, k, h, k, d).permute(0, 1, 3, 2, 4, 5)  # [B, h, h, k, k, D]
        return x.reshape(b, h * h, k * k, d)

    def mine(self, x: torch.Tensor) -> torch.Tensor:
        """Low-res tokens plus their mined detail, in the low-res feature space ``[B, N_lr, D_lr]``."""
        lr = x[:, : self.n_lr, : self.d_lr]
        hr = self.kv_norm(x[:, self.n_lr:, : self.d_hr])
        regions = self.regions(hr)
        q = self.q(lr)  # [B, n, W]
        keys, values = self.key(regions), self.value(regions)  # [B, n, k*k, W]
        att = F.softmax((keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.shape[-1]), dim=-1)  # [B, n, k*k]
        mined = (att.unsqueeze(-2) @ values).squeeze(-2)  # [B, n, W]
        return lr + self.out(mined)

    def forward(self, x):
        if x.shape[1] != self.n_lr + self.n_hr:
            raise ConfigError(f"patch_mining expects {self.n_lr} + {self.n_hr} tokens, got {x.shape[1]}")
        return self.proj(self.mine(x))
