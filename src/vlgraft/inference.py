"""Greedy answers to prompts about records, in batches: the one generation path of eval, the text
ability measure, describe-first, the public ``Model.generate`` and chat's descriptions.

A prompt is ``{"record": Record, "turns": [(role, text), ...]}``: the turns up to the question, the
record supplying the images (cached features or pixels) and the name used in errors. Prompts are
tokenised with the LLM's chat template exactly as in training (``data.conversation``).

* ``packed=False``: each prompt alone, left-padded, through ``VLM.generate`` (transformers' generate
  with the KV cache), batches of ``batch_size`` prompts sorted by length;
* ``packed=True``: the prompts of one record share their common prefix (system prompt, image tokens,
  a description) and are decoded together by ``VLM.generate_packed`` — the prefix computed once, about
  ``batch_size`` questions per forward. Tokens equal the single-prompt path's (tested).
"""

from __future__ import annotations

import contextlib

import torch
from tqdm import tqdm

from vlgraft.data.cache import FeatureCache
from vlgraft.data.conversation import packed_prompt, tokenize_prompt
from vlgraft.data.dataset import collate, image_input
from vlgraft.errors import VlgraftError


def autocast(device: torch.device, precision: str):
    """bf16 autocast on ``device`` for ``precision == "bf16"``, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_of(vlm) -> torch.device:
    return next(vlm.parameters()).device


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` when given (checked: it must exist here), else CUDA when available, else the CPU."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise VlgraftError(f"--device {device!r} is not a device: {str(e).splitlines()[0]}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise VlgraftError(f"--device {device!r}: no such CUDA device here ({torch.cuda.device_count()} found)")
    return dev


def generate_answers(vlm, prompts: list[dict], cache: FeatureCache | None = None, batch_size: int = 64,
                     max_new_tokens: int = 8, precision: str = "fp32", packed: bool = False,
                     desc: str = "generate", show: bool = True) -> list[str]:
    """The greedy answer to each prompt, decoded and stripped, in the prompts' order."""
    run = _packed if packed else _single
    return run(vlm, prompts, cache, batch_size, max_new_tokens, precision, desc, show)


def _single(vlm, items, cache, batch_size, max_new_tokens, precision, desc, show) -> list[str]:
    tok, device = vlm.llm.tokenizer, device_of(vlm)
    prompts = [tokenize_prompt(it["turns"], vlm.llm, vlm.num_image_tokens, it["record"].where) for it in items]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))  # little padding per batch
    preds = [""] * len(items)
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not show):
        idx = order[s: s + batch_size]
        batch = [{"input_ids": prompts[i], **image_input(items[i]["record"], cache, vlm.vision)} for i in idx]
        inp = collate(batch, tok.pad_token_id, left=True)
        inp = {k: v.to(device) if v is not None else None for k, v in inp.items()}
        with autocast(device, precision):
            new = vlm.generate(**inp, max_new_tokens=max_new_tokens)
        for i, seq in zip(idx, new):
            preds[i] = tok.decode(seq, skip_special_tokens=True).strip()
    return preds


def _packed(vlm, items, cache, batch_size, max_new_tokens, precision, desc, show) -> list[str]:
    tok, device = vlm.llm.tokenizer, device_of(vlm)
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it["record"].id, []).append(i)
    packs = []
    for idx in groups.values():
        rec = items[idx[0]]["record"]
        p = packed_prompt([items[i]["turns"] for i in idx], vlm.llm, vlm.num_image_tokens, rec.where)
        packs.append((idx, {**p, **image_input(rec, cache, vlm.vision)}))
    packs.sort(key=lambda x: len(x[1]["input_ids"]))
    preds = [""] * len(items)
    chunks, cur, n = [], [], 0
    for pk in packs:  # about batch_size questions per forward
        cur.append(pk)
        n += len(pk[0])
        if n >= batch_size:
            chunks.append(cur)
            cur, n = [], 0
    chunks += [cur] if cur else []
    for chunk in tqdm(chunks, desc=desc, unit="batch", disable=not show):
        batch = collate([p for _, p in chunk], tok.pad_token_id)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(device, precision):
            toks = vlm.generate_packed(batch, [len(idx) for idx, _ in chunk], max_new_tokens)
        for (idx, _), per_q in zip(chunk, toks):
            for i, t in zip(idx, per_q):
                preds[i] = tok.decode(t, skip_special_tokens=True).strip()
    return preds
