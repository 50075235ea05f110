"""Finding the parts of any transformers model: blocks, attention, feed-forward, linear and norm layers.

Methods insert their modules relative to these parts, and vision towers find their encoder blocks the
same way, so one set of lookups serves every LLM family (Llama, Qwen2, Gemma3, GPT-2, OPT, ...) and
every tower (CLIP, SigLIP, ViT, DINOv2, ...) without a table of class names.
"""

from __future__ import annotations

import torch
from torch import nn

from vlgraft.errors import ConfigError

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


def attention_of(layer: nn.Module, strict: bool = True) -> nn.Module | None:
    """A block's attention module (``self_attn``, ``attn``, ``attention`` or ``self_attention``)."""
    for name in ATTENTION_NAMES:
        mod = getattr(layer, name, None)
        if isinstance(mod, nn.Module):
            return mod
    if strict:
        raise ConfigError(f"no attention module ({', '.join(ATTENTION_NAMES)}) in {type(layer).__name__}")
    return None


def blocks(root: nn.Module, count: int | None = None) -> nn.ModuleList | None:
    """The first stack of transformer blocks under ``root``: a ``ModuleList`` whose members all have an
    attention module (and, given ``count``, exactly that many of them)."""
    for _, mod in root.named_modules():
        if (isinstance(mod, nn.ModuleList) and len(mod) and (count is None or len(mod) == count)
                and all(attention_of(m, strict=False) for m in mod)):
            return mod
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The LM's stack of decoder blocks (``model.layers``, ``transformer.h``, ``decoder.layers`` ...)."""
    n = getattr(model.config, "num_hidden_layers", None)
    found = blocks(model, n)
    if found is None:
        raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}: no ModuleList of "
                          f"{n} blocks with an attention module")
    return found


def encoder_layers(tower: nn.Module) -> list[nn.Module]:
    """A vision tower's encoder blocks (empty for a tower without attention blocks, e.g. a CNN)."""
    found = blocks(tower)
    return list(found) if found is not None else []


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


def kv_dtype(attn: nn.Module) -> torch.dtype:
    """The dtype of the attention's key projection (the frozen weights' dtype)."""
    proj = getattr(attn, "k_proj", None) or attn.c_attn
    return proj.weight.dtype


def is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(mod).__name__.lower()


def norm_parameters(root: nn.Module, prefix: str = "") -> list[str]:
    """Names (under ``prefix``) of the parameters of every normalisation layer below ``root``."""
    return [f"{prefix}{n}.{p}" for n, m in root.named_modules() if is_norm(m)
            for p, _ in m.named_parameters(recurse=False)]


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
