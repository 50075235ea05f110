"""What every method shares: the per-batch context, the method base class, and finding the
decoder layers / attention / feed-forward / linear / norm modules of any causal LM.

A method's ``apply(vlm)`` adds its modules and parameters in place (so parameter names say where
they live, e.g. ``llm.model.layers.3.self_attn.vlgraft_prompt``). The parameters it creates are
found by diffing the model's parameter names around ``apply``; a method that trains *existing*
parameters (``select``, LLaMA-Adapter V2's norms) names them in ``claims``. Recipes refer to a
method's parameters by its name in ``trainable`` groups.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from vlgraft.errors import ConfigError


@dataclass
class MethodContext:
    """Set by ``VLM.prepare`` for every forward/generation: what methods may read besides hidden states."""

    visual: torch.Tensor | None  # [B_img, M, Dl] connector output, images in batch order
    has_image: torch.Tensor  # [B] bool
    store: dict = field(default_factory=dict)  # per-batch values kept across decode steps (e.g. MMA routes)
    image_counts: torch.Tensor | None = None  # [B] images per sample (None: at most one each)

    def visual_per_sample(self) -> torch.Tensor | None:
        """``[B, M, Dl]`` with zeros for text-only samples (None when the batch has no image). A sample
        with several images (interleaved documents) gets their token-wise mean: methods that take the
        image outside the sequence see one image-sized input per sample."""
        if self.visual is None:
            return None
        b = self.has_image.shape[0]
        counts = (self.has_image.long() if self.image_counts is None else self.image_counts).to(self.visual.device)
        owner = torch.repeat_interleave(torch.arange(b, device=self.visual.device), counts)
        out = self.visual.new_zeros(b, *self.visual.shape[1:]).index_add(0, owner, self.visual)
        return out / counts.clamp(min=1).to(out.dtype).view(b, *([1] * (out.dim() - 1)))


class Method:
    """Base class. Subclasses set ``Config`` (a dataclass of options) and implement ``apply``."""

    Config: type
    consumes_visual: bool = False  # visual tokens go to the method, not into the sequence
    name: str = ""

    def __init__(self, cfg):
        self.cfg = cfg
        self.claims: list[str] = []  # existing parameters this method trains
        self.groups: dict[str, list[str]] = {}  # named sub-groups, e.g. {"image": [...], "language": [...]}

    def apply(self, vlm) -> None:
        raise NotImplementedError

    def prefix_embeds(self, vlm, ctx: MethodContext, batch: int) -> torch.Tensor | None:
        """Embeddings ``[B, P, Dl]`` placed before the sequence (prompt tuning, MMA's modality token)."""
        return None


# ---------------------------------------------------------------------------- model anatomy
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The LM's stack of decoder blocks (``model.layers``, ``transformer.h``, ``decoder.layers`` ...)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and all(attention_of(m, strict=False) for m in mod):
            return mod
    raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}: no ModuleList of "
                      f"{n} blocks with an attention module")


def attention_of(layer: nn.Module, strict: bool = True) -> nn.Module | None:
    for name in _ATTN_NAMES:
        mod = getattr(layer, name, None)
        if isinstance(mod, nn.Module):
            return mod
    if strict:
        raise ConfigError(f"no attention module ({', '.join(_ATTN_NAMES)}) in {type(layer).__name__}")
    return None


def ffn_of(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(module receiving the feed-forward input, module producing its output): both ``mlp`` for most
    models; ``fc1``/``fc2`` for OPT, whose blocks have no MLP submodule."""
    for name in ("mlp", "feed_forward", "ffn"):
        mod = getattr(layer, name, None)
        if isinstance(mod, nn.Module):
            return mod, mod
    if isinstance(getattr(layer, "fc1", None), nn.Module) and isinstance(getattr(layer, "fc2", None), nn.Module):
        return layer.fc1, layer.fc2
    raise ConfigError(f"no feed-forward module (mlp / fc1+fc2) in {type(layer).__name__}")


def head_dim(attn: nn.Module) -> int:
    d = getattr(attn, "head_dim", None)
    if d is None:
        cfg = attn.config
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(d)


def num_heads(attn: nn.Module) -> tuple[int, int]:
    """(query heads, key/value heads)."""
    cfg = attn.config
    h = cfg.num_attention_heads
    return h, getattr(cfg, "num_key_value_heads", None) or h


def project_kv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values ``[B, Hkv, K, D]`` of extra tokens ``x [B, K, hidden]`` through the layer's own
    (frozen) projections, with the key norm where the model has one (Gemma3) and no rotary embedding."""
    x = x.contiguous()
    b, k, _ = x.shape
    d = head_dim(attn)
    if hasattr(attn, "k_proj") and hasattr(attn, "v_proj"):
        key = attn.k_proj(x).view(b, k, -1, d)
        if hasattr(attn, "k_norm"):
            key = attn.k_norm(key)
        value = attn.v_proj(x).view(b, k, -1, d)
    elif hasattr(attn, "c_attn"):  # GPT-2: fused q,k,v
        _, key, value = attn.c_attn(x).split(attn.split_size, dim=2)
        key, value = key.view(b, k, -1, d), value.view(b, k, -1, d)
    else:
        raise ConfigError(f"{type(attn).__name__} has neither k_proj/v_proj nor c_attn; cannot project prompts")
    return key.transpose(1, 2), value.transpose(1, 2)


def is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(mod).__name__.lower()


def linear_layers(root: nn.Module, exclude: tuple[nn.Module, ...] = ()) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear`` (and GPT-2 ``Conv1D``) under ``root``; peft's wrappers are looked through."""
    skip = {id(m) for m in exclude}
    out = []
    for name, mod in root.named_modules():
        if id(mod) in skip:
            continue
        if isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D":
            if ".lora_" in f".{name}" or name.split(".")[-1].startswith(("lora_", "vlgraft_")):
                continue
            out.append((name, mod))
    return out


def match_names(names: list[str], patterns: list[str]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def enable_attention_hooks(model: nn.Module) -> None:
    """Route the LM's attention through vlgraft's wrapper (extra keys/values, gated prompts)."""
    from vlgraft.methods.attention import enable

    enable(model)
