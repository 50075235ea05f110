"""Mixture-of-Modality Adapters (LaVIN).

A learnable modality token (one embedding for text-only, one for image-text samples) is placed first
in every sequence. Before each attention layer, the normalised hidden states pass through two
adapters sharing a down-projection; a router reads the hidden state at position 0 (the modality
token), applies softmax(router(h0) / temperature) and mixes the two adapters' outputs:
``x + s * (w0 * up0(down(x)) + w1 * up1(down(x)))``. Up-projections start at zero, so at step 0 the
LLM computes exactly what it computes with the modality token in front. Routes are computed at
prefill and kept for decoding steps (position 0 is not in a decode step's input).

Vision side: transformer towers get plain (unrouted) adapters before attention — every vision input
is an image; CNN towers get one on the features entering the connector (the visual neck). Either
way the encoder's output changes while training, so the feature cache is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlgraft.config import MethodOptions
from vlgraft.methods.adapters import Bottleneck
from vlgraft.methods.base import Method, active_rows, current_context
from vlgraft.models.anatomy import attention_of, decoder_layers
from vlgraft.options import option
from vlgraft.registry import METHOD


class RoutedAdapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int, temperature: float, scale: float):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.ModuleList([nn.Linear(bottleneck, dim) for _ in range(2)])
        for u in self.up:
            nn.init.zeros_(u.weight)
            nn.init.zeros_(u.bias)
        self.router = nn.Linear(dim, 2)
        self.temperature = temperature
        self.scale = scale

    def routes(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 2]`` mixing weights from the modality token's hidden state: computed at prefill and kept
        for the decoding steps, whose inputs do not hold the modality token."""
        def compute():
            return F.softmax(self.router(x[:, 0].to(self.router.weight.dtype)) / self.temperature, dim=-1)
        ctx = current_context()
        return compute() if ctx is None else ctx.memo(self, compute, per_sample=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if active_rows() is False:  # a base pass
            return x
        w = self.routes(x)
        z = self.down(x.to(self.down.weight.dtype))
        mixed = w[:, 0, None, None] * self.up[0](z) + w[:, 1, None, None] * self.up[1](z)
        return x + (self.scale * mixed).to(x.dtype)


def _pre_hook(adapter):
    def hook(module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": adapter(kwargs["hidden_states"])}
        else:
            args = (adapter(args[0]), *args[1:])
        return args, kwargs
    return hook


class _Plain(nn.Module):
    def __init__(self, dim: int, bottleneck: int, scale: float):
        super().__init__()
        self.adapter = Bottleneck(dim, bottleneck, act="identity", scale=scale)

    def forward(self, x):
        return x + self.adapter(x).to(x.dtype)


@dataclass
class MMAOptions(MethodOptions):
    bottleneck: int = option(8, "adapter width (LaVIN's)", min=1)
    temperature: float = option(10.0, "router softmax temperature", gt=0)
    scale: float = option(1.0, "scale of the adapters' output")
    vision: bool = option(True, "also adapt the vision side (tower layers, or the neck of a CNN tower)")


@METHOD.register("mma")
class MMA(Method):
    Options = MMAOptions

    def apply(self, vlm) -> None:
        dim = vlm.llm.hidden_size
        self.embedding = nn.Embedding(2, dim)  # 0: text-only, 1: image-text
        nn.init.normal_(self.embedding.weight, std=0.02)
        vlm.add_module("mma_modality", self.embedding)
        for layer in decoder_layers(vlm.llm.model):
            ad = RoutedAdapter(dim, self.cfg.bottleneck, self.cfg.temperature, self.cfg.scale)
            layer.add_module("vlgraft_mma", ad)
            attention_of(layer).register_forward_pre_hook(_pre_hook(ad), with_kwargs=True)
        if self.cfg.vision:
            self._vision(vlm)

    def _vision(self, vlm) -> None:
        tower_layers = vlm.vision.transformer_layers()
        if tower_layers:
            for layer in tower_layers:
                attn = attention_of(layer)
                ad = _Plain(vlm.vision.embed_dim, self.cfg.bottleneck, self.cfg.scale)
                layer.add_module("vlgraft_mma", ad)
                attn.register_forward_pre_hook(_pre_hook(ad), with_kwargs=True)
        else:  # CNN tower: one adapter on the visual neck (the connector's input)
            ad = _Plain(vlm.vision.embed_dim, self.cfg.bottleneck, self.cfg.scale)
            vlm.add_module("mma_neck", ad)  # beside, not inside, the connector: its own parameter group
            vlm.connector.register_forward_pre_hook(lambda m, a: (ad(a[0]), *a[1:]))

    def prefix_embeds(self, vlm, ctx, batch: int) -> torch.Tensor | None:
        if ctx.base:
            return None
        return self.embedding(ctx.has_image.long()).unsqueeze(1)  # [B, 1, Dl]
