"""Conversations -> token ids and labels, with the LLM's own chat template.

The template is rendered turn by turn: text up to each assistant reply (with the generation prompt)
is context, the reply and its turn-end token are labelled. Every ``<image>`` expands to
``num_image_tokens`` copies of ``IMAGE_TOKEN_ID``. Prompts at inference use the same function, so
training and generation see byte-identical context.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from vlgraft.data.records import IMAGE_PLACEHOLDER, Record, split_image_lead, system_and_body
from vlgraft.errors import DataError, VlgraftError
from vlgraft.models.llm import LanguageModel
from vlgraft.models.vlm import IMAGE_TOKEN_ID

log = logging.getLogger(__name__)
IGNORE = -100


def _encode(text: str, llm: LanguageModel, n_img: int) -> list[int]:
    return encode_with_images(text, llm, n_img)[0]


def encode_with_images(text: str, llm: LanguageModel, n_img: int) -> tuple[list[int], list[int]]:
    """Token ids with ``n_img`` visual positions per ``<image>``, and where each image starts."""
    ids: list[int] = []
    starts: list[int] = []
    for k, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k:
            starts.append(len(ids))
            ids += [IMAGE_TOKEN_ID] * n_img
        if part:
            ids += llm.tokenizer(part, add_special_tokens=False).input_ids
    return ids, starts


def _segments(turns: list[tuple[str, str]], llm: LanguageModel, add_generation_prompt: bool, where: str):
    """Yield (text, is_labelled) pieces whose concatenation is the rendered conversation."""
    msgs = llm.messages(turns)
    pos, prev = 0, ""
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prefix = llm.render(msgs[:i], add_generation_prompt=True)
        full = llm.render(msgs[: i + 1])
        if not prefix.startswith(prev) or not full.startswith(prefix):
            raise VlgraftError(f"{where}: the chat template of this LLM does not render turns incrementally; "
                               "labels cannot be placed on the assistant replies")
        yield prefix[pos:], False
        yield full[len(prefix):], True
        pos, prev = len(full), full
    rest = llm.render(msgs, add_generation_prompt=add_generation_prompt)
    if rest[pos:]:
        yield rest[pos:], False


def tokenize_document(rec: Record, llm: LanguageModel, n_img: int, max_length: int) -> dict:
    """An interleaved image-text document as plain language modelling (MM1 / OBELICS pre-training):
    no chat template, every text token labelled, visual positions not, the tokenizer's end-of-text
    token closes the document. A document longer than ``max_length`` is cut there; a cut inside an
    image's visual tokens moves before that image, and ``n_images`` says how many images remain
    (those starting before the cut, also when images take no positions)."""
    ids, starts = encode_with_images(rec.turns[0][1], llm, n_img)
    eos = llm.tokenizer.eos_token_id
    if eos is not None:
        ids.append(eos)
    n_images = len(starts)
    if len(ids) > max_length:
        cut = next((st for st in starts if st < max_length < st + n_img), max_length)
        n_images = sum(st < cut for st in starts)
        ids = ids[:cut]
        log.warning("%s: document truncated to %d tokens (data.max_length), %d of %d images kept",
                    rec.where, cut, n_images, len(starts))
    labels = [IGNORE if t == IMAGE_TOKEN_ID else t for t in ids]
    if sum(lab != IGNORE for lab in labels[1:]) == 0:
        raise DataError(f"{rec.where}: the document has no text token to learn from within "
                        f"data.max_length={max_length}")
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "n_images": n_images}


def tokenize_conversation(rec: Record, llm: LanguageModel, n_img: int, max_length: int) -> dict:
    """Training example: ``input_ids`` and ``labels`` (IGNORE except on assistant replies)."""
    if rec.document:
        return tokenize_document(rec, llm, n_img, max_length)
    ids: list[int] = []
    labels: list[int] = []
    for text, labelled in _segments(rec.turns, llm, False, rec.where):
        piece = _encode(text, llm, n_img)
        ids += piece
        labels += piece if labelled else [IGNORE] * len(piece)
    if len(ids) > max_length:
        if IMAGE_TOKEN_ID in ids[max_length:]:
            raise DataError(f"{rec.where}: {len(ids)} tokens exceed data.max_length={max_length} and truncation "
                            "would cut visual tokens; raise max_length or shorten the record")
        log.warning("%s: truncated from %d to %d tokens (data.max_length)", rec.where, len(ids), max_length)
        ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE for lab in labels[1:]):
        raise DataError(f"{rec.where}: no assistant token left to learn from after tokenisation/truncation")
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def tokenize_prompt(turns: list[tuple[str, str]], llm: LanguageModel, n_img: int,
                    where: str = "prompt") -> torch.Tensor:
    """Inference prompt: the conversation so far plus the generation prompt."""
    ids: list[int] = []
    for text, _ in _segments(turns, llm, True, where):
        ids += _encode(text, llm, n_img)
    return torch.tensor(ids)


def packed_prompt(questions: list[list[tuple[str, str]]], llm: LanguageModel, n_img: int, where: str) -> dict:
    """Generation prompts of single-turn questions (each a list of turns ending with the user's
    question) packed behind their longest common prefix, as ``tokenize_independent`` packs training
    pairs; every question keeps at least one token of its own."""
    prompts = [tokenize_prompt(turns, llm, n_img, where) for turns in questions]
    p = common_prefix_len(prompts, min(len(x) for x in prompts) - 1)
    ids = [prompts[0][:p]] + [x[p:] for x in prompts]
    pos = [torch.arange(p)] + [torch.arange(p, len(x)) for x in prompts]
    seg = [torch.zeros(p, dtype=torch.long)] + [torch.full((len(x) - p,), k) for k, x in enumerate(prompts, 1)]
    return {"input_ids": torch.cat(ids), "position_ids": torch.cat(pos), "segment_ids": torch.cat(seg),
            "n_questions": len(prompts)}


def common_prefix_len(seqs: list[torch.Tensor], limit: int | None = None) -> int:
    """Length of the longest token prefix that all ``seqs`` share (at most ``limit``)."""
    p = min(len(x) for x in seqs) if limit is None else limit
    for x in seqs[1:]:
        diff = (x[:p] != seqs[0][:p]).nonzero()
        p = int(diff[0]) if len(diff) else p
    return p


def single_turns(rec: Record) -> list[list[tuple[str, str]]]:
    """Each (question, answer) pair of ``rec`` as its own single-turn conversation, the image (if any)
    placed where the record's first question had it. A record's lead exchanges (``lead_pairs``, e.g.
    the describe-first exchange, which holds the images) come before every question."""
    if rec.has_image and not rec.lead_pairs:
        system, lead, body = split_image_lead(rec, "with data.turns=independent (each question is asked about "
                                                   "all images; else use data.turns=conversation)")
    else:  # text-only, or the lead exchanges hold the images and precede every question
        system, body = system_and_body(rec)
        k, lead = 2 * rec.lead_pairs, ""
        system, body = system + body[:k], body[k:]
    return [system + [("user", lead + body[i][1]), ("assistant", body[i + 1][1])] for i in range(0, len(body), 2)]


def tokenize_independent(rec: Record, llm: LanguageModel, n_img: int, max_length: int) -> dict:
    """Pack a record's question/answer pairs as *independent* single-turn questions sharing one prefix.

    Every pair is tokenised exactly as a single-turn prompt + answer; their longest common token
    prefix (system prompt, image tokens, ...) is kept once, and each pair's remaining tokens follow as
    a segment. ``segment_ids`` (0 = shared prefix, k = pair k) lets the model attend from a segment
    only to the prefix and to itself, and ``position_ids`` restart after the prefix for every
    segment, so each answer is trained in exactly the context a single-turn question gives at
    inference — while the image is encoded and attended once per sequence, and no answer can be
    read off an earlier pair's text.
    """
    if rec.document:
        return tokenize_document(rec, llm, n_img, max_length)
    pairs = [dataclasses.replace(rec, turns=t, lead_pairs=0) for t in single_turns(rec)]
    if len(pairs) == 1:  # one question: the whole sequence is its own prefix, truncated as a conversation
        ex = tokenize_conversation(pairs[0], llm, n_img, max_length)
        n = len(ex["input_ids"])
        return {**ex, "position_ids": torch.arange(n), "segment_ids": torch.zeros(n, dtype=torch.long)}
    singles = [tokenize_conversation(r, llm, n_img, 10**9) for r in pairs]
    ids0 = singles[0]["input_ids"]
    p = common_prefix_len([s["input_ids"] for s in singles])
    # a segment must start with context, never with a labelled token (its label would be predicted
    # from the previous segment's last position)
    while p > 0 and any(s["labels"][p] != IGNORE for s in singles if len(s["labels"]) > p):
        p -= 1
    if rec.has_image and IMAGE_TOKEN_ID in ids0[p:].tolist():
        raise DataError(f"{rec.where}: questions do not share the image prefix; use data.turns=conversation")
    ids, labels = [ids0[:p]], [singles[0]["labels"][:p]]
    pos, seg = [torch.arange(p)], [torch.zeros(p, dtype=torch.long)]
    total, kept = p, 0
    if p >= max_length:  # the context before the first answer does not leave room for one answer token
        if IMAGE_TOKEN_ID in ids0[max_length:].tolist():
            raise DataError(f"{rec.where}: the prefix the questions share takes {p} tokens, more than data.max_length="
                            f"{max_length}, and truncation would cut visual tokens; raise max_length or shorten it")
        raise DataError(f"{rec.where}: the prefix the questions share takes {p} tokens, so no answer fits "
                        f"data.max_length={max_length}; raise max_length or shorten the record")
    for k, s in enumerate(singles, 1):
        n = len(s["input_ids"]) - p
        if total + n > max_length:
            room = max_length - total
            if kept == 0 and room >= 2:  # the first question is cut, as a conversation would be
                n = room
                s = {key: s[key][:p + n] for key in ("input_ids", "labels")}
                log.warning("%s: truncated to %d tokens (data.max_length)%s", rec.where, max_length,
                            f", {len(singles) - 1} more questions dropped" if len(singles) > 1 else "")
            else:
                log.warning("%s: %d of %d questions dropped to fit data.max_length=%d", rec.where,
                            len(singles) - kept, len(singles), max_length)
                break
        ids.append(s["input_ids"][p:])
        labels.append(s["labels"][p:])
        pos.append(torch.arange(p, p + n))
        seg.append(torch.full((n,), k))
        total, kept = total + n, kept + 1
        if n < len(singles[k - 1]["input_ids"]) - p:  # this one was cut: nothing more fits
            break
    if kept == 0:
        raise DataError(f"{rec.where}: no question fits data.max_length={max_length}")
    return {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "position_ids": torch.cat(pos),
            "segment_ids": torch.cat(seg)}
