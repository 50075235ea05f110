"""The order of training samples: this process's micro-batches, the same global batches whatever the
number of processes, and the same sequence after a resume."""

from __future__ import annotations

import numpy as np
import torch

from vlgraft.data.mixture import SourceStreams, pools_for, sorted_batches
from vlgraft.errors import VlgraftError


class MicroBatches(torch.utils.data.Sampler):
    """Yields this process's micro-batches (index lists) from optimizer step ``start`` on.

    One source, no grouping: each epoch is a seeded permutation. Several ``sources`` (a mixture) or
    grouping by modality (``is_image``): blocks of ``group`` global batches drawn by
    ``data.mixture.SourceStreams`` — per sample for a mixture, per whole global batch from one
    modality's pool when grouped, so every batch is one modality. Within a window of ``group``
    global batches the samples are sorted by length (little padding) and the batches' order is
    shuffled again. All of it happens at the global-batch level, before the split across processes,
    so the same global batch holds the same samples whatever the number of processes.
    """

    def __init__(self, lengths: list[int], batch: int, accum: int, world: int, rank: int, seed: int,
                 start: int, total: int, group: int = 32, is_image: list[bool] | None = None,
                 sources: list | None = None):
        self.lengths = torch.tensor(lengths)
        self.n, self.b, self.a, self.w, self.r = len(lengths), batch, accum, world, rank
        self.seed, self.start, self.total, self.group = seed, start, total, group
        self.global_batch = batch * accum * world
        self.grouped = is_image is not None
        self.streams = None
        if self.grouped or (sources and len(sources) > 1):
            flags = None if is_image is None else torch.tensor(is_image, dtype=torch.bool)
            pools, weights = pools_for(self.n, sources, flags)
            self.streams = SourceStreams(pools, weights, seed, unit=self.global_batch if self.grouped else 1)
            self.steps_per_epoch = group  # one block
        else:
            self.steps_per_epoch = self.n // self.global_batch
            if self.steps_per_epoch == 0:
                raise VlgraftError(f"{self.n} training records are fewer than one global batch ({self.global_batch})")
        self._next_block = (0, None)  # streams: (next block, draws per pool before it)

    def _block(self, block: int) -> list[tuple[int, list[int]]]:
        nxt, counts = self._next_block
        if counts is None or block < nxt:
            nxt, counts = 0, np.zeros(len(self.streams.pools), dtype=np.int64)
        units = self.group * self.global_batch // self.streams.unit
        while nxt < block:  # replay earlier blocks' draws (index arithmetic only)
            counts += self.streams.unit * np.bincount(self.streams.choices(nxt, units), minlength=len(counts))
            nxt += 1
        draws = self.streams.block(block, units, counts)
        self._next_block = (block + 1, counts)
        return draws

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """``[steps_per_epoch, global_batch]`` sample indices for one epoch (one block with streams)."""
        g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        if self.streams is None:
            perm = torch.randperm(self.n, generator=g)[: self.steps_per_epoch * self.global_batch]
            chunks = [perm]
        else:
            draws = self._block(epoch)
            if self.grouped:  # each pool's batches stay its own: one modality per batch
                chunks = [torch.tensor([i for k, idx in draws if k == pool for i in idx], dtype=torch.long)
                          for pool in sorted({k for k, _ in draws})]
            else:
                chunks = [torch.tensor([i for _, idx in draws for i in idx], dtype=torch.long)]
        batches = []
        window = self.group * self.global_batch
        for chunk in chunks:
            for s in range(0, len(chunk), window):
                batches += sorted_batches(chunk[s: s + window], self.lengths, self.global_batch)
        order = torch.randperm(len(batches), generator=g)
        return torch.stack([batches[i] for i in order])

    def __iter__(self):
        step, cached = self.start, (None, None)
        while step < self.total:
            epoch, k = divmod(step, self.steps_per_epoch)
            if cached[0] != epoch:
                cached = (epoch, self.epoch_batches(epoch))
            chunk = cached[1][k].view(self.a, self.w, self.b)
            for a in range(self.a):
                yield chunk[a, self.r].tolist()
            step += 1

    def __len__(self) -> int:
        return (self.total - self.start) * self.a
