"""Padding-free training: several whole records packed into one row (``data.pack``).

Each row holds records of one source and one modality, laid end to end; ``document_ids`` (0, 1, ...
per record, -1 for padding) restrict attention to a record's own tokens and ``position_ids`` restart
at every record (``masks.segment_mask``), so every record is computed exactly as it would be alone —
its logits equal the unpacked ones (tests/test_pack_records.py) — while the short records of a
LLaVA-style mix (captions beside long conversations) no longer pay for padding. Independent turns
(``data.turns: independent``) keep their segments inside their record.

In memory, the rows are planned once from the token lengths, before the sampler (best-fit
decreasing: the longest record first, into the fullest row it still fits), so the sampler, exact
resume and the same-global-batch-on-any-number-of-processes guarantee work on rows exactly as they
did on records. ``train.batch_size`` then counts rows; a mixture's weights count rows of each source.
With ``data.stream`` there are no lengths before training: each micro-batch's records are packed as
the batch is collated (``pack_batch``), so the records of every step stay those of the unpacked run.
"""

from __future__ import annotations

import dataclasses
import heapq

import torch

from vlgraft.data.mixture import Source
from vlgraft.errors import ConfigError
from vlgraft.methods.base import Method


def check_packable(vlm) -> None:
    """Refuse methods whose computation for a token depends on its *sample* rather than on the tokens it
    attends to: with records packed, a row is no longer one sample."""
    for m in vlm.methods:
        if m.consumes_visual:
            raise ConfigError(f"data.pack: method {m.name!r} takes each sample's image outside the sequence (its "
                              "prompts carry that image), so records cannot share a row; set data.pack: false, or "
                              "use a method that leaves the visual tokens in the sequence")
        if type(m).prefix_embeds is not Method.prefix_embeds:
            raise ConfigError(f"data.pack: method {m.name!r} puts embeddings before each sample's sequence, so records "
                              "cannot share a row; set data.pack: false")


def pack_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of total length <= ``capacity`` (best-fit decreasing;
    deterministic). Written by hand: no kept library packs into bins with this guarantee in O(n)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep record order
    rows: list[list[int]] = []
    by_free: list[list[int]] = [[] for _ in range(capacity + 1)]  # free space -> rows with exactly that much
    mask = 0  # bit c set <=> some row has exactly c free (so the best fit is the lowest set bit >= length)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"length {n} of item {i} exceeds the row capacity {capacity}")
        above = mask >> n
        if above:
            free = n + (above & -above).bit_length() - 1
            row = by_free[free].pop()
            if not by_free[free]:
                mask &= ~(1 << free)
        else:
            free, row = capacity, len(rows)
            rows.append([])
        rows[row].append(i)
        left = free - n
        if left:
            by_free[left].append(row)
            mask |= 1 << left
    return rows


def balance_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` in the fewest rows of total length <= ``capacity`` that a greedy balance
    finds, the rows as even as it can make them (the longest item first, into the shortest row): a
    batch's rows are padded to its longest, so even rows waste the least. Written by hand (as
    ``pack_lengths``): a dozen lines, no kept library does it."""
    if not lengths:
        return []
    if max(lengths) > capacity:
        raise ValueError(f"length {max(lengths)} exceeds the row capacity {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    k = max(1, -(-sum(lengths) // capacity))
    while True:
        heap = [(0, r) for r in range(k)]  # (row total, row)
        rows: list[list[int]] = [[] for _ in range(k)]
        for i in order:
            total, r = heapq.heappop(heap)
            rows[r].append(i)
            heapq.heappush(heap, (total + lengths[i], r))
        if max(t for t, _ in heap) <= capacity:
            return [r for r in rows if r]
        k += 1


def plan_rows(records, lengths: list[int], sources: list[Source], capacity: int,
              by_epochs: bool) -> tuple[list[list[int]], list[Source]]:
    """Rows (record indices) packed within each source and modality, and the sources re-expressed over
    rows (offset and size in rows; a weight given by epochs scales with the row count)."""
    rows: list[list[int]] = []
    out = []
    for s in sources:
        start = len(rows)
        for image in (True, False):
            idx = [i for i in range(s.offset, s.offset + s.size) if records[i].has_image == image]
            rows += [[idx[j] for j in group] for group in pack_lengths([lengths[i] for i in idx], capacity)]
        n = len(rows) - start
        weight = s.weight * n / s.size if by_epochs else s.weight
        out.append(dataclasses.replace(s, offset=start, size=n, weight=weight))
    return rows, out


class PackedDataset(torch.utils.data.Dataset):
    """A ``ConversationDataset``'s records, ``rows[j]`` of them laid end to end as sample ``j``."""

    def __init__(self, base, rows: list[list[int]]):
        self.base, self.rows = base, rows
        self.records = base.records

    def __len__(self) -> int:
        return len(self.rows)

    def num_tokens(self, j: int) -> int:
        return sum(self.base.num_tokens(i) for i in self.rows[j])

    def has_image(self, j: int) -> bool:
        return self.records[self.rows[j][0]].has_image  # rows are one modality

    def __getitem__(self, j: int) -> dict:
        return pack_samples([self.base[i] for i in self.rows[j]])


def pack_samples(parts: list[dict]) -> dict:
    """Training samples (tokens and images of one record each) laid end to end as one row."""
    out = {"input_ids": torch.cat([p["input_ids"] for p in parts]),
           "labels": torch.cat([p["labels"] for p in parts]),
           # positions restart at every record; a record without independent turns is one segment (0)
           "position_ids": torch.cat([p.get("position_ids", torch.arange(len(p["input_ids"]))) for p in parts]),
           "segment_ids": torch.cat([p.get("segment_ids", torch.zeros(len(p["input_ids"]), dtype=torch.long))
                                     for p in parts]),
           "document_ids": torch.cat([torch.full((len(p["input_ids"]),), d, dtype=torch.long)
                                      for d, p in enumerate(parts)])}
    for key in ("image_features", "pixel_values"):  # [k, ...] per record -> [sum k, ...] per row
        xs = [p[key] for p in parts if p.get(key) is not None]
        out[key] = torch.cat(xs) if xs else None
    return out


def pack_batch(samples: list[dict], capacity: int) -> list[dict]:
    """A micro-batch's samples packed into few, even rows of up to ``capacity`` tokens, each row one
    modality (``data.stream`` with ``data.pack``: the batch's records, and so every step's records,
    stay what they are unpacked; only the rows they sit in change)."""
    rows = []
    for image in (True, False):
        idx = [i for i, s in enumerate(samples) if _has_image(s) == image]
        rows += [pack_samples([samples[idx[j]] for j in group])
                 for group in balance_lengths([len(samples[i]["input_ids"]) for i in idx], capacity)]
    return rows


def _has_image(sample: dict) -> bool:
    return sample.get("image_features") is not None or sample.get("pixel_values") is not None
