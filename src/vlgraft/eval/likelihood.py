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
    """(summed log-probability, greedy, labelled tokens) per sample; the LM head runs only at the
    labelled positions (as ``VLM.forward`` computes its loss)."""
    x = vlm.prepare(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                    batch.get("image_features"), labels=batch["labels"], image_counts=batch["image_counts"])
    with vlm.method_context(x["context"]):
        hidden = vlm.llm.hidden_states(x["embeds"], x["attention_mask"], x["position_ids"])
        target = x["labels"][:, 1:]
        sel = target != -100
        logits = vlm.llm.logits(hidden[:, :-1][sel]).float()  # [n_labelled, V]
    tgt = target[sel]
    logp = torch.log_softmax(logits, -1).gather(1, tgt[:, None])[:, 0]
    hit = logits.argmax(-1) == tgt
    rows = sel.nonzero()[:, 0]
    b = sel.shape[0]
    sums = torch.zeros(b, dtype=torch.float64, device=logp.device).index_add_(0, rows, logp.double())
    misses = torch.zeros(b, dtype=torch.long, device=logp.device).index_add_(0, rows, (~hit).long())
    counts = sel.sum(1)
    return [(s + 0.0, int(m) == 0, int(c)) for s, m, c in zip(sums.tolist(), misses.tolist(), counts.tolist())]


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
