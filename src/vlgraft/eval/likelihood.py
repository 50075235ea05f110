"""The log-probability of a record's final reply given everything before it — the one scorer behind
likelihood multiple choice (``eval.choice_scoring: likelihood``) and lmms-eval's ``loglikelihood``
requests (``integrations/lmms_eval.py``)."""

from __future__ import annotations

import torch
from tqdm import tqdm

from vlgraft.data.records import Record


def reply_example(vlm, rec: Record, cache=None) -> dict:
    """``rec`` tokenised as in training, labelled only on its last reply's own tokens (the template's
    turn end is not counted), with its images as ``image_input`` gives them."""
    from vlgraft.data.conversation import IGNORE, tokenize_conversation, tokenize_prompt
    from vlgraft.data.dataset import image_input

    llm, n_img = vlm.llm, vlm.num_image_tokens
    ex = tokenize_conversation(rec, llm, n_img, 10**9)
    ids = ex["input_ids"]
    start = len(tokenize_prompt(rec.turns[:-1], llm, n_img, rec.where))
    reply = rec.turns[-1][1]
    labelled = [int(t) for t, lab in zip(ids[start:], ex["labels"][start:]) if lab != IGNORE]
    own = llm.tokenizer(reply, add_special_tokens=False).input_ids
    if labelled[:len(own)] == own:
        n = len(own)
    else:  # the reply's last token merged with the template's turn end: count the covering tokens
        n = next((k for k in range(1, len(labelled) + 1)
                  if len(llm.tokenizer.decode(labelled[:k]).strip()) >= len(reply)), len(labelled))
    labels = torch.full_like(ids, IGNORE)
    labels[start:start + n] = ids[start:start + n]
    return {"input_ids": ids, "labels": labels, "image_features": None, "pixel_values": None,
            **image_input(rec, cache, vlm.vision)}


@torch.no_grad()
def _batch_logprobs(vlm, batch: dict) -> list[tuple[float, bool, int]]:
    """(summed log-probability, greedy, labelled tokens) per sample, from the labelled forward."""
    out = vlm(**batch, per_sample=True)
    return [(-s + 0.0, bool(g), int(c)) for s, g, c in
            zip(out["sample_nll"].tolist(), out["sample_greedy"].tolist(), out["sample_tokens"].tolist())]


def reply_logprobs(vlm, records: list[Record], cache=None, batch_size: int = 8, precision: str = "fp32",
                   desc: str = "log-likelihood", show: bool = True) -> list[tuple[float, bool, int]]:
    """For each record: the summed log-probability of its last reply's tokens, whether greedy decoding
    gives exactly those tokens, and their number; batched by length, in the records' order."""
    from vlgraft.data.dataset import collate
    from vlgraft.inference import autocast, device_of

    examples = [reply_example(vlm, rec, cache) for rec in records]
    device, pad = device_of(vlm), vlm.llm.tokenizer.pad_token_id
    out: list[tuple[float, bool, int] | None] = [None] * len(examples)
    order = sorted(range(len(examples)), key=lambda k: len(examples[k]["input_ids"]))
    for s in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not show):
        chunk = order[s: s + batch_size]
        batch = collate([examples[k] for k in chunk], pad)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with autocast(device, precision):
            for k, score in zip(chunk, _batch_logprobs(vlm, batch)):
                out[k] = score
    return out  # type: ignore[return-value]
