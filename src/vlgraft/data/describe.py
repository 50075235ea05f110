"""Describe first, then answer: LLaMA-Adapter V2's expert context, with the model as its own expert.

LLaMA-Adapter V2 puts the text of an expert model (a captioner) into the prompt, so that the LLM
answers from the image *and* a description of it. Here the VLM is its own expert: with
``data.describe_first`` set to a request (e.g. "Describe the image."), every question about an image
is asked behind a first exchange ``<image> + request -> description``.

- Training uses each record's gold description (its ``description`` field, ``meta["description"]``;
  easy-VQA derives one from its annotations). The description is learnt like any answer; records
  with an image but no description are trained as they are.
- Evaluation, chat and ``Model.generate`` let the model write the description itself first
  (``describe_records``), then ask the question in the same conversation (``with_description``). With
  packed independent questions the exchange is part of the shared prefix, so it costs one short
  generation per image.

Comparing a question's words with the words of a description is text matching, which a small LLM
learns in a few steps; binding the question's words directly to visual features is what it learns
slowly (docs/RESULTS.md).
"""

from __future__ import annotations

import dataclasses

from vlgraft.data.records import Record, split_image_lead
from vlgraft.errors import DataError

_NEED = "to describe the image first"


def gold_description(rec: Record) -> str | None:
    """The record's ``description`` field (None when absent); anything but a non-empty string is an error."""
    d = rec.meta.get("description")
    if d is None:
        return None
    if not isinstance(d, str) or not d.strip():
        raise DataError(f"{rec.where}: 'description' must be a non-empty string")
    return d.strip()


def describe_prompt(rec: Record, request: str) -> list[tuple[str, str]]:
    """The turns that ask for the description: system turns, then the record's images and ``request``."""
    system, lead, _ = split_image_lead(rec, _NEED)
    return system + [("user", lead + request)]


def with_description(rec: Record, request: str, description: str) -> Record:
    """``rec`` with the exchange ``images + request -> description`` before its first question (the
    images move into that exchange). Records without an image, documents and records that already
    have a lead exchange are returned unchanged."""
    if not describable(rec):
        return rec
    system, lead, body = split_image_lead(rec, _NEED)
    turns = system + [("user", lead + request), ("assistant", description)] + body
    return dataclasses.replace(rec, turns=turns, lead_pairs=1)


def with_gold_descriptions(records: list[Record], request: str) -> tuple[list[Record], int]:
    """Training records for describe-first: every image record with a gold description gets the
    describe exchange. Returns the records and how many got one."""
    out = [with_gold_description(rec, request) for rec in records]
    return [rec for rec, _ in out], sum(got for _, got in out)


def with_gold_description(rec: Record, request: str) -> tuple[Record, bool]:
    """One training record for describe-first, and whether it got the describe exchange."""
    d = gold_description(rec) if describable(rec) else None
    return (rec, False) if d is None else (with_description(rec, request, d), True)


def describable(rec: Record) -> bool:
    """Whether a record gets a describe exchange: a chat with an image and none yet."""
    return rec.has_image and rec.kind == "chat" and not rec.lead_pairs


def describe_records(vlm, records: list[Record], request: str, cache=None, batch_size: int = 64,
                     max_new_tokens: int = 32, precision: str = "fp32", show: bool = True) -> list[str | None]:
    """The model's own description of each record's images (None for records that get none), asked
    with ``request`` and greedy-decoded by the packed decoder, ``batch_size`` images per forward (its
    prefill-once KV-cache loop is several times faster than ``generate`` here)."""
    from vlgraft.inference import generate_answers

    todo = [i for i, r in enumerate(records) if describable(r)]
    asks = [{"record": records[i], "turns": describe_prompt(records[i], request)} for i in todo]
    out: list[str | None] = [None] * len(records)
    for i, d in zip(todo, generate_answers(vlm, asks, cache, batch_size, max_new_tokens, precision, packed=True,
                                           desc="describe", show=show)):
        out[i] = d
    return out


def with_descriptions(records: list[Record], request: str, described: list[str | None]) -> list[Record]:
    """Each record behind its generated description (``describe_records``), where it has one."""
    return [with_description(r, request, d) if d is not None else r for r, d in zip(records, described)]
