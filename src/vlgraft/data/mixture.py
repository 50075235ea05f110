"""Training data from several sources: loading, weighted sampling and modality-grouped batches.

A mixture samples each training example's source by ratio (``weight``) or by passes (``epochs``);
within a source the records cycle through seeded permutations, one per pass. The schedule is cut in
blocks of ``group`` global batches; a block's source draws depend only on the seed and the block
number, and each source's position is the count of its earlier draws — so a resumed run and a run
on any number of processes see exactly the same global batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlgraft.config import DataConfig
from vlgraft.data.records import Record, first_duplicate
from vlgraft.data.sources import load_records
from vlgraft.errors import ConfigError, VlgraftError


@dataclass
class Source:
    spec: str
    offset: int  # first index in the concatenated record list
    size: int
    weight: float  # sampling ratio (epochs x size when given by epochs)


def load_training_data(data: DataConfig) -> tuple[list[Record], list[Source]]:
    """All training records (sources concatenated) and where each source sits among them (the
    recipe is validated: ``config.validate`` checked the mixture's settings)."""
    if not data.mixture:
        spec = data.train or "easyvqa:train"
        recs = load_records(spec, data.image_root, data.limit)
        if not recs:
            raise ConfigError(f"data.train ({spec}): no records")
        return recs, [Source(str(spec), 0, len(recs), 1.0)]
    records: list[Record] = []
    sources = []
    for i, m in enumerate(data.mixture):
        share = m.epochs if m.epochs is not None else (1.0 if m.weight is None else m.weight)
        recs = load_records(m.train, m.image_root or data.image_root, m.limit)
        if not recs:
            raise ConfigError(f"data.mixture[{i}] ({m.train}): no records")
        weight = share * len(recs) if m.epochs is not None else share
        sources.append(Source(str(m.train), len(records), len(recs), weight))
        records += recs
    dup = first_duplicate(records)
    if dup is not None:
        raise VlgraftError(f"{dup.where}: id {dup.id!r} appears in two mixture sources; ids must be unique across them")
    return records, sources


class SourceStreams:
    """Draws sample indices from pools (index tensors) by weight; each pool cycles through seeded
    permutations, one per pass. Draws come in units (1 sample, or a whole global batch when batches
    must be homogeneous)."""

    def __init__(self, pools: list[torch.Tensor], weights: list[float], seed: int, unit: int = 1):
        self.pools, self.seed, self.unit = pools, seed, unit
        w = np.array(weights, dtype=np.float64)
        self.p = w / w.sum()
        self._perm: dict[tuple[int, int], torch.Tensor] = {}

    def choices(self, block: int, n_units: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 7919, block]).choice(len(self.pools), size=n_units, p=self.p)

    def take(self, k: int, j: int, n: int) -> list[int]:
        """Pool k's draws j .. j+n-1 (pass = draw // size, each pass reshuffled)."""
        pool = self.pools[k]
        out = []
        for jj in range(j, j + n):
            ep, i = divmod(jj, len(pool))
            key = (k, ep)
            if key not in self._perm:
                if len(self._perm) > 64:
                    self._perm.clear()
                g = torch.Generator().manual_seed(self.seed * 1000003 + 7 * k + 104729 * ep)
                self._perm[key] = torch.randperm(len(pool), generator=g)
            out.append(int(pool[self._perm[key][i]]))
        return out

    def block(self, block: int, n_units: int, counts: np.ndarray) -> list[tuple[int, list[int]]]:
        """The ``n_units`` draws of ``block`` as (pool, sample indices); ``counts`` (draws per pool so
        far) is advanced."""
        out = []
        for k in self.choices(block, n_units):
            k = int(k)
            out.append((k, self.take(k, int(counts[k]), self.unit)))
            counts[k] += self.unit
        return out


def pools_for(n: int, sources: list[Source] | None,
              is_image: torch.Tensor | None) -> tuple[list[torch.Tensor], list[float]]:
    """Index pools and weights: one per source, each split into its image-text and text-only parts
    when batches are grouped by modality (weights split by the parts' sizes)."""
    sources = sources or [Source("", 0, n, 1.0)]
    pools, weights = [], []
    for s in sources:
        idx = torch.arange(s.offset, s.offset + s.size)
        parts = [idx] if is_image is None else [idx[is_image[idx]], idx[~is_image[idx]]]
        for part in parts:
            if len(part):
                pools.append(part)
                weights.append(s.weight * len(part) / s.size)
    return pools, weights


def sorted_batches(chunk: torch.Tensor, lengths: torch.Tensor, global_batch: int) -> list[torch.Tensor]:
    """Cut ``chunk`` (a multiple of ``global_batch`` sample indices) into global batches of similar length."""
    chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
    return list(chunk.view(-1, global_batch))
