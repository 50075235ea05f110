"""Training on streams (``data.stream: true``): batches drawn from a shuffle buffer, tokenised in workers.

``StreamBatches`` runs in the main process as the DataLoader's batch sampler. It reads raw items
(``data.streams``) into a seeded shuffle buffer per source, draws each global batch from the buffers
(a mixture picks each sample's source by weight), and hands this process's micro-batches of raw
items to the DataLoader; ``StreamDataset`` turns a raw item into a validated record, its tokens and
its pixels — in the worker processes, so neither the records nor their tokens are ever all in memory,
and the first step waits only for one buffer.

Every process reads the same stream and draws the same global batches, then keeps its own slice: the
same global batch holds the same samples whatever the number of processes. Before each global batch
the sampler notes its state — per source the epoch, the shard and the position in it, the buffer —
and the random generator's; a checkpoint stores the state of the step it resumes at
(``data_state.json``), so a resumed run draws exactly the batches the uninterrupted run draws, without
reading its stream again from the start.
"""

from __future__ import annotations

import base64
import copy
import dataclasses

import numpy as np
import torch

from vlgraft.data.dataset import check_answers, collate, sample, tokenizer_for
from vlgraft.data.describe import with_gold_description
from vlgraft.data.packing import pack_batch
from vlgraft.data.records import Record
from vlgraft.data.streams import RecordStream
from vlgraft.errors import DataError

KEEP_STATES = 64  # states kept for steps the DataLoader has prefetched but the loop not yet taken


class SourceReader:
    """One stream read on through epochs (each epoch visits the shards in a seeded order), with its
    shuffle buffer."""

    def __init__(self, stream: RecordStream, k: int, seed: int, limit: int | None, state: dict | None = None):
        self.stream, self.k, self.seed, self.limit = stream, k, seed, limit
        st = state or {"epoch": 0, "shard": 0, "position": None, "read": 0, "buffer": []}
        self.epoch, self.shard, self.read, self.buffer = st["epoch"], st["shard"], st["read"], list(st["buffer"])
        self.position = st["position"] if st["position"] is not None else self._first()
        self._items = None

    def _order(self) -> list[int]:
        n = len(self.stream.shards)
        return np.random.default_rng([self.seed, 31, self.k, self.epoch]).permutation(n).tolist()

    def _first(self):
        return self.stream.start(self._order()[self.shard])

    def _next_epoch(self) -> None:
        if self.read == 0:
            raise DataError(f"{self.stream.name}: the stream holds no records")
        self.epoch, self.shard, self.read = self.epoch + 1, 0, 0
        self.position = self._first()

    def pull(self):
        """The next raw item of the stream (the next epoch begins where one ends)."""
        while True:
            if self.limit is not None and self.read >= self.limit:
                self._items = None
                self._next_epoch()
            if self._items is None:
                self._items = self.stream.read(self._order()[self.shard], self.position)
            try:
                raw, self.position = next(self._items)
                self.read += 1
                return raw
            except StopIteration:
                self._items = None
                if self.shard + 1 < len(self.stream.shards):
                    self.shard += 1
                    self.position = self._first()
                else:
                    self._next_epoch()

    def state(self) -> dict:
        return {"epoch": self.epoch, "shard": self.shard, "position": copy.deepcopy(self.position),
                "read": self.read, "buffer": list(self.buffer)}


class StreamBatches(torch.utils.data.Sampler):
    """This process's micro-batches of ``(source, raw item)`` from optimizer step ``start`` on."""

    def __init__(self, streams: list[RecordStream], weights: list[float], limits: list[int | None], batch: int,
                 accum: int, world: int, rank: int, seed: int, start: int, total: int, buffer: int,
                 state: dict | None = None):
        self.b, self.a, self.w, self.r = batch, accum, world, rank
        self.start, self.total, self.size = start, total, buffer
        self.global_batch = batch * accum * world
        w = np.array(weights, dtype=np.float64)
        self.p = w / w.sum()
        self.rng = np.random.default_rng([seed, 4099])
        if state is not None:
            if state["step"] != start:
                raise DataError(f"data state is for step {state['step']}, not {start}")
            self.rng.bit_generator.state = state["rng"]
        self.readers = [SourceReader(s, k, seed, lim, state["sources"][k] if state else None)
                        for k, (s, lim) in enumerate(zip(streams, limits))]
        self.states: dict[int, dict] = {}

    def state_at(self, step: int) -> dict:
        """The sampler's state before global batch ``step`` (for a checkpoint taken after ``step`` steps)."""
        if step not in self.states:
            raise KeyError(f"no data state noted for step {step}")
        return self.states[step]

    def _note(self, step: int) -> None:
        self.states[step] = {"step": step, "rng": copy.deepcopy(self.rng.bit_generator.state),
                             "sources": [r.state() for r in self.readers]}
        for old in [s for s in self.states if s < step - KEEP_STATES]:
            del self.states[old]

    def _draw(self) -> tuple[int, object]:
        k = int(self.rng.choice(len(self.p), p=self.p)) if len(self.p) > 1 else 0
        reader = self.readers[k]
        while len(reader.buffer) < self.size:  # fill (and, after each draw, refill) the shuffle buffer
            reader.buffer.append(reader.pull())
        j = int(self.rng.integers(len(reader.buffer)))
        item = reader.buffer[j]
        reader.buffer[j] = reader.buffer[-1]
        reader.buffer.pop()
        return k, item

    def __iter__(self):
        self._note(self.start)
        for step in range(self.start, self.total):
            items = [self._draw() for _ in range(self.global_batch)]
            self._note(step + 1)  # before handing out this batch: a checkpoint after it resumes from here
            for a in range(self.a):  # global batch laid out [accum, process, batch], as MicroBatches does
                lo = (a * self.w + self.r) * self.b
                yield items[lo: lo + self.b]

    def __len__(self) -> int:
        return (self.total - self.start) * self.a


class StreamDataset(torch.utils.data.Dataset):
    """``dataset[(source, raw)]``: the raw item as a training sample (record validated, tokenised, images
    as pixels). A bad record becomes ``{"error": message}`` so that the message — naming the file and
    the record — reaches the training loop as it is, not wrapped in a worker's traceback."""

    def __init__(self, streams: list[RecordStream], vlm, max_length: int, turns: str, describe_first: str | None):
        self.streams, self.vision, self.llm = streams, vlm.vision, vlm.llm
        self.n_image_tokens, self.max_length = vlm.num_image_tokens, max_length
        self.tokenize, self.describe_first = tokenizer_for(turns), describe_first

    def __getitem__(self, item) -> dict:
        k, raw = item
        try:
            rec = self.streams[k].to_record(raw)
            if self.describe_first:
                rec, _ = with_gold_description(rec, self.describe_first)
            check_answers(rec)
            example = self.tokenize(rec, self.llm, self.n_image_tokens, self.max_length)
            return sample(rec, example, None, self.vision)
        except DataError as e:
            return {"error": str(e)}


def collate_stream(batch: list[dict], pad_id: int, pack: int | None = None) -> dict:
    """``collate`` for stream samples, packed into rows of up to ``pack`` tokens when it is given
    (``data.pack``); a batch with a bad record is that record's error."""
    bad = next((b["error"] for b in batch if "error" in b), None)
    if bad is not None:
        return {"error": bad}
    return collate(pack_batch(batch, pack) if pack else batch, pad_id)


def encode_state(obj):
    """A sampler state as JSON data: raw items hold bytes, tuples and records, which JSON has not — so a
    checkpoint stays plain data that loads without unpickling anything."""
    if isinstance(obj, bytes):
        return {"$bytes": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, tuple):
        return {"$tuple": [encode_state(x) for x in obj]}
    if isinstance(obj, Record):
        return {"$record": {f.name: encode_state(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, list):
        return [encode_state(x) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"a data-state mapping with non-string keys: {list(obj)[:3]}")
        return {k: encode_state(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"a stream item holds a {type(obj).__name__}, which a checkpoint cannot store")


def decode_state(obj):
    """The inverse of ``encode_state``."""
    if isinstance(obj, list):
        return [decode_state(x) for x in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (tag, val), = obj.items()
            if tag == "$bytes":
                return base64.b64decode(val)
            if tag == "$tuple":
                return tuple(decode_state(x) for x in val)
            if tag == "$record":
                return Record(**{k: decode_state(v) for k, v in val.items()})
        return {k: decode_state(v) for k, v in obj.items()}
    return obj
