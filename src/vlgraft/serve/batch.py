"""The running decode batch of the server: rows join after their prefill and leave when done.

Continuous batching on transformers' ``DynamicCache``: each row's keys and values sit left-padded in
one ``[B, H, T, D]`` tensor per layer, with a 2-D attention mask ``[B, T]`` (0 on the padding) and
its own next position, so rows of different lengths decode in one forward per step. Joining pads
the shorter side on the left; leaving selects rows and drops the columns no row needs any more.
The methods' per-batch context (visual tokens, per-sample routes) is split and joined the same way
(``MethodContext.rows`` / ``join``). Written here because transformers' generate runs one fixed
batch to its end and its continuous-batching manager does not take input embeddings (our visual
tokens and method prefixes) or method contexts.

Caches with other layer types (sliding windows) cannot be padded on the left this way: ``joinable``
says so and the engine then starts new rows only when the batch is empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from vlgraft.methods.base import MethodContext


class RunningBatch:
    """Rows being decoded: cache, mask, positions, the last token and the methods' context."""

    def __init__(self):
        self.rows: list = []  # per-row objects owned by the engine, in batch order
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, T] long
        self.pos: torch.Tensor | None = None  # [B] position of the next token
        self.last: torch.Tensor | None = None  # [B] token to feed next
        self.ctx: MethodContext | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def joinable(cache: DynamicCache) -> bool:
        return all(type(layer) is DynamicLayer for layer in cache.layers)

    def join(self, rows: list, cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor, last: torch.Tensor,
             ctx: MethodContext) -> None:
        """Add prefilled rows (their own cache ``[b, H, T', D]``, mask ``[b, T']``, ...)."""
        if not self.rows:
            self.rows, self.cache, self.mask, self.pos, self.last, self.ctx = list(rows), cache, mask, pos, last, ctx
            return
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        t = max(t_old, t_new)
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, t - t_old), _pad_left(theirs.keys, t - t_new)])
            mine.values = torch.cat([_pad_left(mine.values, t - t_old), _pad_left(theirs.values, t - t_new)])
        self.mask = torch.cat([F.pad(self.mask, (t - t_old, 0)), F.pad(mask, (t - t_new, 0))])
        self.pos, self.last = torch.cat([self.pos, pos]), torch.cat([self.last, last])
        self.ctx = MethodContext.join([self.ctx, ctx])
        self.rows += rows

    def keep(self, index: list[int]) -> None:
        """Keep only rows ``index`` (in that order); drop left columns that are padding for all of them."""
        if not index:
            self.__init__()
            return
        idx = torch.tensor(index, device=self.mask.device)
        mask = self.mask[idx]
        start = int(mask.any(0).long().argmax())  # first column some row still attends to
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, start:]
            layer.values = layer.values[idx, :, start:]
        self.mask, self.pos, self.last = mask[:, start:], self.pos[idx], self.last[idx]
        self.ctx = self.ctx.rows(index)
        self.rows = [self.rows[i] for i in index]

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask ``[B, T + 1]`` and positions ``[B, 1]`` of one decoding step; the mask is kept."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        return self.mask, self.pos[:, None]


def _pad_left(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, H, T, D]`` with ``n`` zero positions in front of T."""
    return F.pad(x, (0, 0, n, 0)) if n else x
