"""On-disk cache of frozen image-encoder features, for millions of images.

Key = the encoder's ``cache_key`` (weights, feature layer, resolution, normalisation, pooling), the
precision and the image loader's version (the folder's name), and the SHA-1 of the image file's bytes
(the entry), so a changed image, encoder setting or image loading is never served a stale entry, and
two paths holding the same bytes share one entry.

Layout (``LAYOUT`` 2; docs/CACHE.md)::

    <root>/<cache_key>-<precision>-l<loader version>-layout2/
        index.sqlite          digest -> shard, (path, size, times, inode) -> digest, last-used times
        shards/<uuid>.safetensors   one writer's features, tensor name = the image's digest

Why shards and an index rather than one file per image: a million small files exhaust inodes, make
folders slow to list and copy, and left every run re-reading every image to hash it. A shard is written
by one process only (a fresh uuid name), to a temporary file that is synced and renamed into place,
and only then recorded in the index in one transaction: concurrent writers (a multi-process training
run, two runs sharing the cache) never write the same file, and a crash leaves at most an orphan shard
(removed by ``vlgraft cache prune``), never an entry pointing at missing or half-written bytes. A warm
run stats each image and finds its digest in the index instead of hashing it; a file whose size,
mtime, ctime or inode changed is hashed again.

Values are the exact tensors the encoder returned (bf16 under ``precision: bf16``, else fp32), handed
out as float32 by ``load`` — the same numbers the former per-file layout returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from vlgraft.data.cache_index import LAYOUT, SHARDS_NAME, Index, recovery
from vlgraft.data.images import LOADER_VERSION, load_image
from vlgraft.errors import DataError
from vlgraft.files import atomic_path, remove_leftovers
from vlgraft.paths import feature_cache_root

SHARD_BYTES = 64 * 2**20  # a shard is closed at this size: ~1,600 default-recipe images, few files per million
OPEN_SHARDS = 32  # shards each process keeps open for reading (least recently used closed first)
# A file modified this shortly before it was stat'ed is hashed but its stat not recorded: file times
# have a coarse granularity (milliseconds on Linux, 2 s on FAT), so a same-size rewrite within the same
# tick would otherwise keep its recorded digest (git's "racily clean" problem).
RACY_NS = 2_000_000_000


def file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def folder_name(cache_key: str, precision: str) -> str:
    return f"{cache_key}-{precision}-l{LOADER_VERSION}-layout{LAYOUT}"


def write_shard(folder: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
    """A new shard in ``folder`` under a name no other writer uses, written to a temporary file that is
    synced before the rename (so that an index entry never names bytes a power cut lost); returns its
    name and size. Recording it in the index is the caller's next step."""
    final = folder / f"{uuid.uuid4().hex}.safetensors"
    with atomic_path(final) as tmp:
        save_file(tensors, str(tmp), metadata={"vlgraft": f"feature cache layout {LAYOUT}"})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    return final.name, final.stat().st_size


class FeatureCache:
    def __init__(self, encoder, precision: str = "fp32", root: Path | None = None):
        self.encoder = encoder
        self.precision = precision  # bf16: encoded under bf16 autocast and stored as bf16
        self.dir = (root or feature_cache_root()) / folder_name(encoder.cache_key(), precision)
        self.index = Index(self.dir, {"cache_key": encoder.cache_key(), "precision": precision,
                                      "loader_version": str(LOADER_VERSION)})
        self.last_fill: dict = {}  # what the latest fill did: images, hits, hashed, encoded, seconds, ...
        self._digest: dict[str, str] = {}  # image path as given -> digest, for this process's lookups
        self._open: OrderedDict[str, object] = OrderedDict()  # shard name -> safe_open handle
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # a spawned DataLoader worker opens its own shards and index
        return {**self.__dict__, "_open": OrderedDict(), "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- digests ----------------------------------------------------------------------------------------

    def _digests(self, todo: list[tuple[str, str]]) -> tuple[dict[str, str], int]:
        """Path -> digest for every (path, record): from the index where the file's stat matches what was
        recorded, else by hashing it (then recorded, unless modified too recently to trust its times).
        Returns the digests and how many files were hashed."""
        keys = [os.path.realpath(p) for p, _ in todo]  # one row per file, however a record spells its path
        known = self.index.known_files(keys)
        out, rows, forget, hashed = {}, [], [], 0
        for (p, where), key in zip(todo, keys):
            now = time.time_ns()
            try:
                sig = _signature(os.stat(key))
                row = known.get(key)
                if row is not None and tuple(row[:4]) == sig:
                    d = row[4]
                else:
                    d, hashed = file_digest(key), hashed + 1
                    if now - max(sig[1], sig[2]) > RACY_NS:
                        rows.append((key, *sig, d))
                    elif row is not None:
                        forget.append(key)
            except FileNotFoundError:
                raise DataError(f"{where}: image file not found: {p}") from None
            except OSError as e:
                raise DataError(f"{where}: cannot read image {p}: {e.strerror or e}") from None
            out[p] = self._digest[p] = d
        self.index.record_files(rows, forget)
        return out, hashed

    def digest(self, image_path: str) -> str:
        """The content digest of the image at ``image_path`` now (its entry's name), as ``fill`` finds it."""
        return self._digests([(image_path, image_path)])[0][image_path]

    def _lookup_digest(self, image_path: str) -> str:
        """Like ``digest`` but read-only (a DataLoader worker never writes the index)."""
        d = self._digest.get(image_path)
        if d is not None:
            return d
        key = os.path.realpath(image_path)
        try:
            sig = _signature(os.stat(key))
            row = self.index.known_files([key]).get(key)
            d = row[4] if row is not None and tuple(row[:4]) == sig else file_digest(key)
        except FileNotFoundError:
            raise DataError(f"image file not found: {image_path}") from None
        except OSError as e:
            raise DataError(f"cannot read image {image_path}: {e.strerror or e}") from None
        self._digest[image_path] = d
        return d

    # -- reading ----------------------------------------------------------------------------------------

    def _fresh(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's open shards are not ours to share
            self._open, self._pid = OrderedDict(), os.getpid()

    def _shard(self, name: str):
        """An open shard (None if its file is gone: compacted away by a concurrent prune)."""
        h = self._open.get(name)
        if h is not None:
            self._open.move_to_end(name)
            return h
        path = self.dir / SHARDS_NAME / name
        try:
            h = safe_open(str(path), framework="pt")
        except FileNotFoundError:
            return None
        except Exception as e:  # SafetensorError: truncated, overwritten, not a safetensors file
            raise self._damaged(path, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        self._open[name] = h
        while len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)
        return h

    def _damaged(self, path: Path, reason: str) -> DataError:
        return DataError(f"{path}: a damaged feature-cache shard ({reason}); run `vlgraft cache prune` to drop "
                         f"it (its images are encoded again by the next run), or {recovery(self.dir)}")

    def load(self, image_path: str) -> torch.Tensor:
        d = self._lookup_digest(image_path)
        with self._lock:
            self._fresh()
            for _ in range(2):  # the second look: the shard was rewritten by prune between lookup and open
                name = self.index.shard_of(d)
                if name is None:
                    raise DataError(f"{image_path}: no cached features for this image in {self.dir} (its entry "
                                    "was pruned, or the cache was never filled for it); run the command again "
                                    "to encode it")
                h = self._shard(name)
                if h is not None:
                    break
            else:
                raise self._damaged(self.dir / SHARDS_NAME / name, "the index names it but the file is gone")
            try:
                t = h.get_tensor(d)
            except Exception as e:
                raise self._damaged(self.dir / SHARDS_NAME / name, f"no readable tensor {d}: {e}") from None
        return t.float()

    # -- writing ----------------------------------------------------------------------------------------

    def _write_shard(self, tensors: dict[str, torch.Tensor]) -> int:
        """Write one shard and then record its entries; returns its size."""
        name, size = write_shard(self.dir / SHARDS_NAME, tensors)
        self.index.add_shard(name, size, [(d, _nbytes(t)) for d, t in tensors.items()], time.time())
        return size

    @torch.no_grad()
    def fill(self, items: list[tuple[str, str]], device: torch.device, batch_size: int = 64,
             rank: int = 0, world: int = 1, show: bool = True) -> int:
        """Encode every (image path, record name) not yet cached; this process takes every world-th one.
        Returns how many images this process encoded; ``last_fill`` says what else it did."""
        t0 = time.perf_counter()
        if rank == 0:  # shards a killed writer left half-written (not a live one's)
            remove_leftovers(self.dir / SHARDS_NAME, older_than_s=3600)
        unique = sorted({p: w for p, w in items}.items())
        mine = unique[rank::world]
        digests, hashed = self._digests(mine)
        hits = self.index.hits(set(digests.values()), time.time())
        todo, seen = [], set()
        for p, w in mine:  # same order and batches as before: the same features, bit for bit
            d = digests[p]
            if d not in hits and d not in seen:
                seen.add(d)
                todo.append((p, w, d))
        enc = self.encoder.to(device).eval()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        pending: dict[str, torch.Tensor] = {}
        size = written = 0
        try:
            for i in tqdm(range(0, len(todo), batch_size), desc="encoding images", disable=not show or not todo,
                          unit="batch"):
                chunk = todo[i: i + batch_size]
                pixels = enc.preprocess([load_image(p, w) for p, w, _ in chunk]).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    feats = enc(pixels)
                feats = feats.to(dtype).cpu()
                for (_, _, d), f in zip(chunk, feats):
                    pending[d] = f.clone(memory_format=torch.contiguous_format)  # own, packed storage
                    size += _nbytes(f)
                if size >= SHARD_BYTES:
                    written += self._write_shard(pending)
                    pending, size = {}, 0
        except BaseException:
            if pending:  # keep what was encoded before the failure (a bad image, Ctrl-C)
                with contextlib.suppress(Exception):  # the failure itself is what to report
                    self._write_shard(pending)
            raise
        if pending:
            written += self._write_shard(pending)
        self.last_fill = {"images": len(unique), "mine": len(mine), "hits": sum(digests[p] in hits for p, _ in mine),
                          "hashed": hashed, "encoded": len(todo), "bytes_written": written,
                          "seconds": time.perf_counter() - t0}
        return len(todo)

    def info(self) -> dict:
        """Entries, shards, bytes on disk, bytes per 1,000 images, orphan shards, dead bytes (cache_admin)."""
        from vlgraft.data.cache_admin import folder_info

        return folder_info(self.dir)
