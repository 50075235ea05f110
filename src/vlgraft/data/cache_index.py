"""The feature cache's index: one SQLite file per encoder folder, mapping an image's content digest to
the shard file holding its features, and an image file's (path, size, times, inode) to its digest.

Why SQLite (the standard library's ``sqlite3``): millions of entries need a lookup that does not load a
table into every DataLoader worker, inserts that several processes make at once without losing each
other's rows, and a file that a crash cannot leave half-written; SQLite in WAL mode gives all three
(readers never wait for the writer, writers queue on ``busy_timeout``). WAL needs every process that
opens the file to run on one machine: a cache shared over NFS by several machines is not supported —
give each machine its own ``$VLGRAFT_FEATURE_CACHE``.

One connection per process, opened on first use and opened afresh after a fork (SQLite forbids using
a connection in a forked child, DataLoader workers are forked). Every SQLite error becomes one
``DataError`` naming the index file and saying how to start afresh.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vlgraft.errors import DataError

LAYOUT = 2  # 1: one safetensors file per image (<d[:2]>/<sha1>.safetensors); 2: shards + this index
INDEX_NAME = "index.sqlite"
SHARDS_NAME = "shards"
BUSY_TIMEOUT_S = 120  # a writer waits this long for another's transaction (they last milliseconds)
CHUNK = 500  # parameters per IN (...) query: under the smallest limit SQLite builds use (999)

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, bytes INTEGER NOT NULL,
    data_bytes INTEGER NOT NULL, tensors INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS entries (digest TEXT PRIMARY KEY, shard INTEGER NOT NULL, nbytes INTEGER NOT NULL,
    used REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_shard ON entries (shard);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, digest TEXT NOT NULL) WITHOUT ROWID;
COMMIT;
"""

# connections a forked child inherited from its parent: kept referenced so that they are never used
# nor closed in the child (closing one there could release the parent's locks)
_INHERITED: list[sqlite3.Connection] = []


def chunks(xs: list, n: int = CHUNK) -> Iterator[list]:
    for i in range(0, len(xs), n):
        yield xs[i: i + n]


def recovery(folder: Path) -> str:
    return (f"delete {folder}, or run `vlgraft cache prune --key {folder.name}`; the next run encodes its "
            "images again")


class Index:
    """The index of one encoder folder. ``meta``: what a new index records about its folder (encoder
    key, precision, loader version); an existing index of another layout is refused."""

    def __init__(self, folder: Path, meta: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.path = self.folder / INDEX_NAME
        self.meta = dict(meta or {})
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()  # one connection per process, shared by its threads

    def __getstate__(self) -> dict:  # a spawned worker opens its own connection
        return {**self.__dict__, "_conn": None, "_pid": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def exists(self) -> bool:
        return self.path.is_file()

    # -- connection and errors --------------------------------------------------------------------------

    def _damaged(self, reason: str) -> DataError:
        return DataError(f"{self.path}: the feature-cache index is damaged or not an index ({reason}); "
                         f"{recovery(self.folder)}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as e:
            text = str(e)
            if "locked" in text or "busy" in text:
                raise DataError(f"{self.path}: the feature-cache index stayed locked by another process for "
                                f"{BUSY_TIMEOUT_S} s ({text}); is a process stuck on it?") from None
            if "not a database" in text or "malformed" in text or "no such table" in text:
                raise self._damaged(text) from None
            raise DataError(f"{self.path}: cannot use the feature-cache index: {text}") from None
        except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
            raise self._damaged(str(e)) from None

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        """This process's connection; None when there is no index and ``create`` is false."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            _INHERITED.append(self._conn)
            self._conn = None
        if not self.path.is_file():
            if not create:
                return None
            self.folder.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL: a power cut may lose the last commits (orphan shards, encoded again), never corrupts
            conn.execute("PRAGMA synchronous = NORMAL")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "files" not in tables:
                if tables - {"meta", "shards", "entries"}:
                    raise self._damaged(f"tables {sorted(tables)} are not a feature-cache index's")
                if not create and not tables:
                    conn.close()
                    return None
                conn.executescript(_SCHEMA)
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT OR IGNORE INTO meta VALUES (?, ?)",
                                 [("layout", str(LAYOUT)), ("created", str(time.time())), *self.meta.items()])
                conn.execute("COMMIT")
            layout = conn.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()
            if layout is None or layout[0] != str(LAYOUT):
                raise self._damaged(f"layout {layout[0] if layout else 'unknown'}, this vlgraft reads {LAYOUT}")
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once, so that two writers queue instead of failing)."""
        with self._lock, self._errors():
            conn = self._connect(create=True)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def read(self, snapshot: bool = False) -> Iterator[sqlite3.Connection | None]:
        """A connection for reading (None where no index exists yet); ``snapshot``: its queries see one
        state of the index (a read transaction), else each query sees the latest."""
        with self._lock, self._errors():
            conn = self._connect(create=False)
            if conn is None or not snapshot:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the index file and truncate it (after a prune)."""
        with self._lock, self._errors():
            conn = self._connect(create=False)
            if conn is not None:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- queries ----------------------------------------------------------------------------------------

    def known_files(self, paths: list[str]) -> dict[str, tuple[int, int, int, int, str]]:
        """Path -> (size, mtime_ns, ctime_ns, inode, digest) as recorded when the file was last hashed."""
        out = {}
        with self.read() as conn:
            if conn is None:
                return out
            for part in chunks(paths):
                q = f"SELECT path, size, mtime_ns, ctime_ns, ino, digest FROM files WHERE path IN ({_marks(part)})"
                out.update((r[0], r[1:]) for r in conn.execute(q, part))
        return out

    def record_files(self, rows: list[tuple[str, int, int, int, int, str]], forget: list[str] = ()) -> None:
        """Record (path, size, mtime_ns, ctime_ns, inode, digest) rows; drop the rows of ``forget``
        (files changed too recently to record: their old row is outdated)."""
        for part in chunks(rows):
            with self.write() as conn:
                conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", part)
        for part in chunks(list(forget)):
            with self.write() as conn:
                conn.execute(f"DELETE FROM files WHERE path IN ({_marks(part)})", part)

    def hits(self, digests: Iterable[str], now: float, refresh_s: float = 3600.0) -> set[str]:
        """The digests that have an entry; their last-used time is set to ``now`` (only where it is
        older than ``refresh_s``: a warm run rewrites a few rows, not every one). Lookup and touch share
        a transaction, so a concurrent ``prune --older-than`` cannot drop an entry counted as a hit."""
        found: set[str] = set()
        for part in chunks(sorted(digests)):
            with self.write() as conn:
                marks = _marks(part)
                found.update(r[0] for r in conn.execute(f"SELECT digest FROM entries WHERE digest IN ({marks})",
                                                        part))
                conn.execute(f"UPDATE entries SET used = ? WHERE used < ? AND digest IN ({marks})",
                             [now, now - refresh_s, *part])
        return found

    def add_shard(self, name: str, size: int, entries: list[tuple[str, int]], now: float) -> int:
        """Record a shard file (already in place) and its entries ((digest, nbytes)); a digest that another
        writer recorded meanwhile keeps its entry (its bytes here are dead). Returns the entries added."""
        with self.write() as conn:
            cur = conn.execute("INSERT INTO shards (name, bytes, data_bytes, tensors, created) VALUES (?, ?, ?, ?, ?)",
                               (name, size, sum(n for _, n in entries), len(entries), now))
            shard = cur.lastrowid
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?)",
                             [(d, shard, n, now) for d, n in entries])
            return conn.total_changes - before

    def shard_of(self, digest: str) -> str | None:
        with self.read() as conn:
            if conn is None:
                return None
            row = conn.execute("SELECT s.name FROM entries e JOIN shards s ON s.id = e.shard WHERE e.digest = ?",
                               (digest,)).fetchone()
        return row[0] if row else None


def _marks(xs: list) -> str:
    return ", ".join("?" * len(xs))
