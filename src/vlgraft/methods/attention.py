"""One attention function for every model, through transformers' attention interface.

``enable(model)`` registers the ``vlgraft`` attention implementation (SDPA underneath, same masks)
and switches the model to it, so no model's attention class is copied. An attention module may
then carry:

* ``vlgraft_prefix``: callable ``(module, query) -> (keys, values)`` of shape ``[B, Hkv, P, D]`` (or
  None: no prefix in this forward), prepended to the layer's keys/values and attended through the
  *same* softmax (prefix tuning);
* ``vlgraft_gated``: list of callables ``(module, query, scaling) -> [B, T, H, D]`` added to the
  attention output before the output projection (LLaMA-Adapter's separately-softmaxed, gated
  adaptation prompts).

With neither attached the result is the plain SDPA result, bit for bit.
"""

from __future__ import annotations

import torch

from vlgraft.models.masks import BOOL_MASK_IMPLEMENTATIONS, with_prefix_keys

NAME = "vlgraft"
assert NAME in BOOL_MASK_IMPLEMENTATIONS  # SDPA underneath: it takes boolean masks
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


def enable(model) -> None:
    _register()
    if model.config._attn_implementation == NAME:
        return
    if model.config._attn_implementation not in ("sdpa", "eager"):
        from vlgraft.errors import ConfigError

        raise ConfigError(f"methods that hook attention need the 'sdpa' or 'eager' implementation, "
                          f"not {model.config._attn_implementation!r}")
    model.set_attn_implementation(NAME)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kw):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = getattr(module, "vlgraft_prefix", None)
    kv = prefix(module, query) if prefix is not None else None
    if kv is not None:
        pk, pv = kv
        b, _, t, _ = query.shape
        attention_mask = with_prefix_keys(attention_mask, b, t, key.shape[2], pk.shape[2], query.device)
        key = torch.cat([pk.to(key.dtype), key], dim=2)
        value = torch.cat([pv.to(value.dtype), value], dim=2)
        is_causal = False
    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, is_causal=is_causal, **kw)
    for extra in getattr(module, "vlgraft_gated", ()):
        out = out + extra(module, query, scaling).to(out.dtype)
    return out, weights
