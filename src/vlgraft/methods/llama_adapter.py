"""LLaMA-Adapter V1 and V2 on any causal LM, through the attention interface (methods/attention.py).

V1: K learnable adaptation prompts in each of the top L layers. The layer's queries attend to the
prompts' keys/values (the layer's own frozen k/v projections, no rotary embedding) through a
*separate* softmax; the result is scaled per head by ``tanh(g)``, g initialised to 0, and added to
the attention output before the output projection — at step 0 the model is the frozen LLM.
Multimodal V1: the global image feature (mean of the connector's output) is added to every prompt;
the image does not enter the token sequence.

V2 adds: unfrozen norms; a learnable bias (0) and scale (1) on every linear layer of the LLM,
``y = scale * (W x + bias)``; early fusion — the visual tokens are attended from the first
``fusion_layers`` layers with their own zero-initialised gates while the static prompts stay in the
top layers; and two disjoint parameter groups for joint training, referable in recipes as
``llama_adapter_v2.image`` (connector, fusion gates) and ``llama_adapter_v2.language`` (prompts,
their gates, norms, bias/scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlgraft.config import MethodOptions
from vlgraft.errors import ConfigError
from vlgraft.methods.attention import enable as enable_attention_hooks
from vlgraft.methods.base import Method, active_rows, current_context, keep_rows, scope_option
from vlgraft.models.anatomy import (
    attention_of,
    decoder_layers,
    kv_dtype,
    linear_layers,
    norm_parameters,
    num_heads,
    project_kv,
)
from vlgraft.options import option
from vlgraft.registry import METHOD


class GatedPrompt(nn.Module):
    """Extra tokens attended through their own softmax, gated per head by ``tanh(gate)`` (gate = 0)."""

    def __init__(self, n_heads: int, n_prompt: int = 0, hidden: int = 0, source: str = "static",
                 init_std: float = 0.02, scope: str = "all"):
        super().__init__()
        self.source = source  # static | static+global | visual
        self.scope = scope
        self.gate = nn.Parameter(torch.zeros(n_heads))
        if source != "visual":
            self.prompt = nn.Parameter(torch.randn(n_prompt, hidden) * init_std)

    def tokens(self, batch: int, ctx) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Prompt tokens ``[B, K, hidden]`` and a per-sample keep mask ``[B]`` (None: all)."""
        if self.source == "visual":
            vis = ctx.visual_per_sample() if ctx is not None else None
            return (None, None) if vis is None else (vis, ctx.has_image)
        p = self.prompt.unsqueeze(0).expand(batch, -1, -1)
        if self.source == "static+global" and ctx is not None and ctx.visual is not None:
            p = p + ctx.visual_per_sample().mean(1, keepdim=True).to(p.dtype)  # zero for text-only samples
        return p, None

    def keys_values(self, attn: nn.Module, batch: int, heads: int, dtype: torch.dtype, ctx):
        """(keys, values) ``[B, H, K, D]`` of the prompt tokens and the keep mask, or None without tokens."""
        toks, keep = self.tokens(batch, ctx)
        if toks is None:
            return None
        key, value = project_kv(attn, toks.to(kv_dtype(attn)))
        rep = heads // key.shape[1]
        return key.repeat_interleave(rep, 1).to(dtype), value.repeat_interleave(rep, 1).to(dtype), keep

    def forward(self, attn: nn.Module, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        b, h, t, d = query.shape
        rows = active_rows(self.scope)
        if rows is False:  # added to the attention output: zeros leave the base path exact
            return query.new_zeros(b, t, h, d)
        ctx = current_context()

        def compute():
            return self.keys_values(attn, b, h, query.dtype, ctx)
        # the prompts are the same for every decoding step of a context: projected once
        kv = compute() if ctx is None else ctx.memo(self, compute)
        if kv is None:
            return query.new_zeros(b, t, h, d)
        key, value, keep = kv
        scale = scaling if scaling is not None else 1 / math.sqrt(d)
        probs = F.softmax((query @ key.transpose(-1, -2)).float() * scale, dim=-1).to(query.dtype)
        out = (probs @ value) * torch.tanh(self.gate).to(query.dtype).view(1, h, 1, 1)
        if keep is not None:
            out = out * keep.to(out.dtype).view(b, 1, 1, 1)
        return keep_rows(out, rows).transpose(1, 2)


def _attach(attn: nn.Module, name: str, module: GatedPrompt) -> None:
    attn.add_module(name, module)
    gated = list(getattr(attn, "vlgraft_gated", ()))
    gated.append(module)
    attn.vlgraft_gated = gated


class BiasScale(nn.Module):
    """``y = scale * (y + bias)`` on a linear layer's output; bias 0, scale 1 at start."""

    def __init__(self, width: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width))
        self.scale = nn.Parameter(torch.ones(width))

    def hook(self, module, args, output):
        rows = active_rows()
        if rows is False:
            return None  # the base output
        scaled = (self.scale * (output + self.bias)).to(output.dtype)
        return scaled if rows is True else torch.where(rows.view(-1, *([1] * (output.dim() - 1))), scaled, output)


@dataclass
class LlamaAdapterOptions(MethodOptions):
    prompt_len: int = option(10, "K adaptation prompts per adapted layer", min=1)
    layers: int | None = option(None, "the top L layers get prompts (null: all)", min=1)
    multimodal: bool = option(True, "add the global image feature to every prompt (V1's visual path); the image "
                              "then does not enter the token sequence")
    init_std: float = option(0.02, "standard deviation of the prompts' initialisation", min=0)
    scope: str = scope_option()


@METHOD.register("llama_adapter")
class LlamaAdapter(Method):
    Options = LlamaAdapterOptions

    @property
    def consumes_visual(self) -> bool:
        return self.cfg.multimodal

    def _top_layers(self, vlm, n: int | None) -> list[nn.Module]:
        layers = list(decoder_layers(vlm.llm.model))
        n = len(layers) if n is None else n
        if not 0 < n <= len(layers):
            raise ConfigError(f"{self.name}: layers must be 1..{len(layers)}, got {n}")
        return layers[len(layers) - n:]

    def _add_prompts(self, vlm, n: int | None, source: str) -> None:
        """Gated static prompts (plus the global image feature for ``static+global``) in the top n layers."""
        hidden = vlm.llm.hidden_size
        for layer in self._top_layers(vlm, n):
            attn = attention_of(layer)
            _attach(attn, "vlgraft_prompt", GatedPrompt(num_heads(attn)[0], self.cfg.prompt_len, hidden, source,
                                                        self.cfg.init_std, getattr(self.cfg, "scope", "all")))

    def apply(self, vlm) -> None:
        enable_attention_hooks(vlm.llm.model)
        self._add_prompts(vlm, self.cfg.layers, "static+global" if self.cfg.multimodal else "static")


@dataclass
class LlamaAdapterV2Options(MethodOptions):
    prompt_len: int = option(10, "K adaptation prompts per adapted layer", min=1)
    layers: int | None = option(None, "the top L layers get static prompts (null: all but the fusion layers)",
                                min=0)
    fusion_layers: int = option(1, "the first layers, which attend to the visual tokens (early fusion)", min=1)
    bias_scale: bool = option(True, "a learnable bias (0) and scale (1) on every linear layer of the LLM")
    unfreeze_norms: bool = option(True, "train the LLM's normalisation layers")
    init_std: float = option(0.02, "standard deviation of the prompts' initialisation", min=0)


@METHOD.register("llama_adapter_v2")
class LlamaAdapterV2(LlamaAdapter):
    Options = LlamaAdapterV2Options

    @property
    def consumes_visual(self) -> bool:
        return True  # early fusion: visual tokens are attended as gated prompts

    def apply(self, vlm) -> None:
        model = vlm.llm.model
        enable_attention_hooks(model)
        layers = list(decoder_layers(model))
        f = self.cfg.fusion_layers
        if not 0 < f <= len(layers):
            raise ConfigError(f"llama_adapter_v2: fusion_layers must be 1..{len(layers)}, got {f}")
        n_top = self.cfg.layers if self.cfg.layers is not None else len(layers) - f
        if n_top:
            self._add_prompts(vlm, n_top, "static")
        for layer in layers[:f]:
            attn = attention_of(layer)
            _attach(attn, "vlgraft_visual", GatedPrompt(num_heads(attn)[0], source="visual"))
        if self.cfg.bias_scale:
            head = model.get_output_embeddings()
            for _, lin in linear_layers(model, exclude=(head,)):
                width = lin.weight.shape[0] if isinstance(lin, nn.Linear) else lin.weight.shape[1]
                bs = BiasScale(width).to(device=lin.weight.device)
                lin.add_module("vlgraft_bias_scale", bs)
                lin.register_forward_hook(bs.hook)
        if self.cfg.unfreeze_norms:
            self.claims += norm_parameters(model, "llm.model.")

    def parameter_groups(self) -> dict[str, list[str]]:
        image = [n for n in self.created if ".vlgraft_visual." in n]
        return {"image": ["connector.*", *image],
                "language": [n for n in self.created if n not in image] + self.claims}
