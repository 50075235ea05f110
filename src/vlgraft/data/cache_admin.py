"""Size and upkeep of the feature cache: what each encoder folder holds (``folder_info``) and what can
be removed from it (``prune``: orphan shards, long-unused entries, damaged shards, shards mostly dead
compacted into fresh ones). ``vlgraft cache info|prune`` (cache_cli) prints them.

Pruning is safe while other processes fill or read the cache: a shard younger than an hour that the
index does not name may be a writer's between its rename and its insert, and is kept; a compacted
shard's entries move to the new shard in one transaction before the old file is deleted, and a reader
that looked the old name up just before opens the new one (``FeatureCache.load`` looks twice).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path

import torch
from safetensors import safe_open

from vlgraft.data.cache_index import INDEX_NAME, LAYOUT, SHARDS_NAME, Index, chunks
from vlgraft.errors import DataError
from vlgraft.files import remove_leftovers

ORPHAN_AGE_S = 3600  # an unrecorded shard younger than this may be a live writer's, not an orphan
COMPACT_BELOW = 0.5  # a shard whose live bytes fall under this share of its data is rewritten


def cache_folders(root: Path) -> list[Path]:
    """The encoder folders under the cache root (every layout)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def layout_of(folder: Path) -> str:
    """"current", "old layout" (one file per image, LAYOUT 1) or "layout N" (another vlgraft's)."""
    m = re.search(r"-layout(\d+)$", folder.name)
    if m is None:
        return "old layout"
    return "current" if int(m.group(1)) == LAYOUT else f"layout {m.group(1)}"


def _files(folder: Path, pattern: str) -> list[Path]:
    return [p for p in folder.glob(pattern) if p.is_file()] if folder.is_dir() else []


def _size(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile
            total += p.stat().st_size
    return total


def _old_info(folder: Path) -> dict:
    """A per-image folder (LAYOUT 1): <d[:2]>/<sha1>.safetensors."""
    files = _files(folder, "*/*.safetensors")
    last = max((p.stat().st_mtime for p in files), default=None)
    size = _size([p for p in folder.rglob("*") if p.is_file()])
    return {"folder": str(folder), "name": folder.name, "layout": layout_of(folder), "entries": len(files),
            "shards": 0, "bytes": size, "bytes_per_1000": 1000 * size / len(files) if files else 0.0,
            "orphan_shards": 0, "orphan_bytes": 0, "dead_bytes": 0, "missing_shards": 0, "last_used": last}


def folder_info(folder: Path) -> dict:
    """Entries, shards, bytes on disk (shards, orphans and index), bytes per 1,000 images, orphan
    shards (on disk, not in the index), dead bytes (in recorded shards, no entry names them), last use."""
    folder = Path(folder)
    if layout_of(folder) != "current":
        return _old_info(folder)
    index = Index(folder)
    shards_dir = folder / SHARDS_NAME
    on_disk = {p.name: p for p in _files(shards_dir, "*.safetensors") if not p.name.startswith(".")}
    recorded, live, entries, last = {}, {}, 0, None
    with index.read(snapshot=True) as conn:
        if conn is not None:
            recorded = {name: data for name, data in conn.execute("SELECT name, data_bytes FROM shards")}
            live = dict(conn.execute("SELECT s.name, SUM(e.nbytes) FROM entries e JOIN shards s ON s.id = e.shard "
                                     "GROUP BY e.shard"))
            entries, last = conn.execute("SELECT COUNT(*), MAX(used) FROM entries").fetchone()
    orphans = [p for name, p in on_disk.items() if name not in recorded]
    size = _size(list(on_disk.values()) + _files(shards_dir, ".tmp-*") + _files(folder, f"{INDEX_NAME}*"))
    return {"folder": str(folder), "name": folder.name, "layout": "current", "entries": entries,
            "shards": len(recorded), "bytes": size, "bytes_per_1000": 1000 * size / entries if entries else 0.0,
            "orphan_shards": len(orphans), "orphan_bytes": _size(orphans),
            "dead_bytes": sum(data - live.get(name, 0) for name, data in recorded.items()),
            "missing_shards": sum(name not in on_disk for name in recorded), "last_used": last}


def damaged_info(folder: Path) -> dict:
    """``folder_info``'s row for a folder whose index cannot be read: only its size is known."""
    size = _size([p for p in folder.rglob("*") if p.is_file()])
    return {"folder": str(folder), "name": folder.name, "layout": "damaged", "entries": 0, "shards": 0,
            "bytes": size, "bytes_per_1000": 0.0, "orphan_shards": 0, "orphan_bytes": 0, "dead_bytes": 0,
            "missing_shards": 0, "last_used": None}


def remove_folder(folder: Path, dry_run: bool = False) -> int:
    """Remove a whole encoder folder (any layout); returns the bytes it held."""
    size = _size([p for p in folder.rglob("*") if p.is_file()])
    if not dry_run:
        shutil.rmtree(folder)
    return size


def _readable(path: Path) -> bool:
    try:
        safe_open(str(path), framework="pt")
        return True
    except Exception:  # missing, truncated, not safetensors
        return False


def prune(folder: Path, older_than_days: float | None = None, dry_run: bool = False) -> dict:
    """Remove from one current-layout folder: leftover temp files and orphan shards older than an hour,
    entries no fill asked for in ``older_than_days``, shards that are damaged or hold no live entry; and
    rewrite shards whose live share is under ``COMPACT_BELOW``. Returns counts and the bytes freed."""
    folder = Path(folder)
    if layout_of(folder) != "current":
        raise DataError(f"{folder}: a feature-cache folder of the {layout_of(folder)}; remove it whole with "
                        f"`vlgraft cache prune --key {folder.name}`")
    index, shards_dir, now = Index(folder), folder / SHARDS_NAME, time.time()
    out = {"folder": str(folder), "name": folder.name, "leftovers": 0, "orphan_shards": 0, "expired_entries": 0,
           "damaged_shards": 0, "empty_shards": 0, "compacted_shards": 0, "new_shards": 0, "freed_bytes": 0}
    old = [p for p in _files(shards_dir, ".tmp-*") + _files(shards_dir, ".old-*")
           if now - p.lstat().st_mtime >= ORPHAN_AGE_S]
    out["leftovers"], out["freed_bytes"] = len(old), _size(old)
    if not dry_run:
        remove_leftovers(shards_dir, older_than_s=ORPHAN_AGE_S)
    if not index.exists():
        return out
    with index.read(snapshot=True) as conn:
        recorded = dict(conn.execute("SELECT name, id FROM shards"))
    on_disk = {p.name: p for p in _files(shards_dir, "*.safetensors") if not p.name.startswith(".")}
    for name, p in on_disk.items():
        if name not in recorded and now - p.stat().st_mtime >= ORPHAN_AGE_S:
            out["orphan_shards"] += 1
            out["freed_bytes"] += _size([p])
            if not dry_run:
                p.unlink(missing_ok=True)
    damaged = [sid for name, sid in recorded.items() if not _readable(shards_dir / name)]
    out["damaged_shards"] = len(damaged)
    cutoff = now - older_than_days * 86400 if older_than_days is not None else None
    if dry_run:
        return _dry_plan(index, out, damaged, cutoff)
    with index.write() as conn:
        for part in chunks(damaged):
            conn.execute(f"DELETE FROM entries WHERE shard IN ({', '.join('?' * len(part))})", part)
        if cutoff is not None:
            out["expired_entries"] = conn.execute("DELETE FROM entries WHERE used < ?", (cutoff,)).rowcount
            # path -> digest rows whose features are gone: a removed image must not be remembered forever
            conn.execute("DELETE FROM files WHERE digest NOT IN (SELECT digest FROM entries)")
        empty = conn.execute("SELECT id, name, bytes FROM shards "
                             "WHERE id NOT IN (SELECT shard FROM entries)").fetchall()
        conn.executemany("DELETE FROM shards WHERE id = ?", [(sid,) for sid, _, _ in empty])
    for _, name, _ in empty:
        out["freed_bytes"] += _size([shards_dir / name])
        (shards_dir / name).unlink(missing_ok=True)
    out["empty_shards"] = len({sid for sid, _, _ in empty} - set(damaged))
    _compact(index, out)
    index.checkpoint()
    return out


def _underfull(conn) -> list[tuple[int, str, int, int]]:
    """(id, name, bytes, live bytes) of the shards whose live share is under COMPACT_BELOW."""
    rows = conn.execute("SELECT s.id, s.name, s.bytes, s.data_bytes, COALESCE(SUM(e.nbytes), 0) FROM shards s "
                        "LEFT JOIN entries e ON e.shard = s.id GROUP BY s.id").fetchall()
    return [(sid, name, size, live) for sid, name, size, data, live in rows if live < COMPACT_BELOW * data]


def _dry_plan(index: Index, out: dict, damaged: list[int], cutoff: float | None) -> dict:
    """What ``prune`` would drop, without changing anything (bytes of compaction: the dead data)."""
    with index.read(snapshot=True) as conn:
        if cutoff is not None:
            q = "SELECT COUNT(*) FROM entries WHERE used < ?"
            out["expired_entries"] = conn.execute(q, (cutoff,)).fetchone()[0]
        keep = "e.used >= ?" if cutoff is not None else "1"
        args = (cutoff,) if cutoff is not None else ()
        rows = conn.execute(f"SELECT s.id, s.bytes, s.data_bytes, COALESCE(SUM(CASE WHEN {keep} THEN e.nbytes END), 0) "
                            "FROM shards s LEFT JOIN entries e ON e.shard = s.id GROUP BY s.id", args).fetchall()
    for sid, size, data, live in rows:
        if sid in damaged:
            out["freed_bytes"] += size
        elif live == 0:
            out["empty_shards"] += 1
            out["freed_bytes"] += size
        elif live < COMPACT_BELOW * data:
            out["compacted_shards"] += 1
            out["freed_bytes"] += data - live
    return out


def _compact(index: Index, out: dict) -> None:
    """Rewrite the under-full shards' live entries into new shards of up to SHARD_BYTES each."""
    from vlgraft.data.cache import SHARD_BYTES, write_shard  # cache imports this module lazily

    shards_dir = index.folder / SHARDS_NAME
    with index.read(snapshot=True) as conn:
        under = _underfull(conn)
    if not under:
        return
    pending: dict[str, torch.Tensor] = {}
    moved: list[tuple[str, int]] = []  # (digest, old shard id)
    done: list[tuple[int, str, int]] = []  # old shards read in full
    size = 0

    def flush() -> None:
        """Write the pending tensors as one shard, point their entries at it and drop the old shards
        read in full that no entry names any more (one transaction; files deleted after it)."""
        nonlocal pending, moved, done, size
        name, new_size = (None, 0) if not pending else write_shard(shards_dir, pending)
        with index.write() as conn:
            if name is not None:
                cur = conn.execute("INSERT INTO shards (name, bytes, data_bytes, tensors, created) "
                                   "VALUES (?, ?, ?, ?, ?)", (name, new_size, size, len(pending), time.time()))
                conn.executemany("UPDATE entries SET shard = ? WHERE digest = ? AND shard = ?",
                                 [(cur.lastrowid, d, sid) for d, sid in moved])
            gone = [(sid, nm, b) for sid, nm, b in done
                    if conn.execute("SELECT 1 FROM entries WHERE shard = ? LIMIT 1", (sid,)).fetchone() is None]
            conn.executemany("DELETE FROM shards WHERE id = ?", [(sid,) for sid, _, _ in gone])
        for _, nm, b in gone:
            (shards_dir / nm).unlink(missing_ok=True)
            out["freed_bytes"] += b
        out["freed_bytes"] -= new_size
        out["compacted_shards"] += len(gone)
        out["new_shards"] += name is not None
        pending, moved, done, size = {}, [], [d for d in done if d not in gone], 0

    for sid, name, shard_bytes, _ in under:
        with index.read() as conn:
            digests = [r[0] for r in conn.execute("SELECT digest FROM entries WHERE shard = ?", (sid,))]
        h = safe_open(str(shards_dir / name), framework="pt")
        for d in digests:
            t = h.get_tensor(d)
            pending[d] = t
            moved.append((d, sid))
            size += t.numel() * t.element_size()
            if size >= SHARD_BYTES:
                flush()
        done.append((sid, name, shard_bytes))
    if pending or done:
        flush()
