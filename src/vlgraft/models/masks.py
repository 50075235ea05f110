"""Every attention mask vlgraft builds, in one place.

Masks are built as boolean "may attend" tensors ``[B, 1, T_query, T_key]`` and converted once to the
form the LLM's attention takes: boolean for SDPA (and vlgraft's attention, SDPA underneath), additive
(0 / dtype min) for eager attention.
"""

from __future__ import annotations

import torch

# Attention implementations that take boolean 4-D masks ("vlgraft" is methods/attention.py's, SDPA below).
BOOL_MASK_IMPLEMENTATIONS = ("sdpa", "vlgraft")


def uses_bool_mask(config) -> bool:
    """Whether the model's attention takes boolean (SDPA-style) 4-D masks rather than additive ones."""
    return config._attn_implementation in BOOL_MASK_IMPLEMENTATIONS


def for_model(allowed: torch.Tensor, config, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" mask in the form ``config``'s attention takes: as is for SDPA, additive otherwise."""
    if uses_bool_mask(config):
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def segment_mask(segment_ids: torch.Tensor, config, dtype: torch.dtype,
                 document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 1, T, T]`` for packed independent segments (``segment_ids [B, T]``: 0 = the shared prefix,
    k = segment k, -1 = padding): causal, and a token sees the shared prefix and its own segment only.
    ``document_ids [B, T]`` (records packed into one row, ``data.pack``; -1 = padding): a token sees only
    its own record's tokens, and within the record the segment rule applies. Padding attends to itself
    so that no row is empty."""
    t = segment_ids.shape[1]
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & ((k == 0) | (k == q)) & (k >= 0)
    if document_ids is not None:
        dq, dk = document_ids[:, :, None], document_ids[:, None, :]
        allowed &= (dq == dk) & (dk >= 0)
    allowed |= torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    return for_model(allowed[:, None], config, dtype)


def decode_step_mask(cached_segments: torch.Tensor, new_segments: torch.Tensor, config,
                     dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, G, L + G]`` for one decoding step of G packed questions: each new token (its segment in
    ``new_segments [B, G]``) sees the shared prefix and its own segment's cached tokens
    (``cached_segments [B, L]``, prompt and generated) and itself, not the other new tokens."""
    b, g = new_segments.shape
    eye = torch.eye(g, dtype=torch.bool, device=new_segments.device)
    cached = (cached_segments[:, None, :] == 0) | (cached_segments[:, None, :] == new_segments[:, :, None])
    return for_model(torch.cat([cached, eye[None].expand(b, -1, -1)], dim=-1)[:, None], config, dtype)


def with_prefix_keys(mask: torch.Tensor | None, batch: int, t: int, s: int, p: int, device) -> torch.Tensor:
    """A layer's mask ``[B|1, 1, t, s]`` (None: SDPA's implicit causal mask, aligned to the end as when
    cached keys come first) with ``p`` always-visible key columns in front (prefix keys)."""
    if mask is None:
        mask = torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)[None, None]
    if mask.dtype == torch.bool:
        extra = torch.ones(*mask.shape[:-1], p, dtype=torch.bool, device=device)
    else:
        extra = torch.zeros(*mask.shape[:-1], p, dtype=mask.dtype, device=device)
    out = torch.cat([extra, mask], dim=-1)
    return out.expand(batch, -1, -1, -1) if out.shape[0] == 1 else out
