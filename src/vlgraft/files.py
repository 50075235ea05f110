"""Reading and writing files: one atomic writer for files and folders, one JSON / JSONL reader.

Every file vlgraft produces (checkpoints, exports, results, caches, converted models) is written to a
temporary path beside its final place and renamed into place, so a reader never sees half a file and
an interrupted write leaves the previous version (or nothing). Every JSON file vlgraft reads goes
through ``read_json`` / ``iter_jsonl``, whose errors name the file and line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vlgraft.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# tempfile creates private paths (0600 / 0700); what lands follows the umask like any other file
_FILE_MODE, _DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(final: str | Path, folder: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` to write to (an empty folder when ``folder``); when the
    block ends normally it takes ``final``'s place in one rename, and on an error it is removed and
    ``final`` is untouched. ``keep_existing``: for content that any writer produces alike (caches, a
    converted model) — if ``final`` appeared meanwhile (another process won the race), it is kept and
    this copy dropped. Parent folders are created."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
        os.chmod(tmp, _DIR_MODE)
    else:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".tmp-{final.name}-")
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, _FILE_MODE)
    try:
        yield tmp
        if keep_existing and final.exists():
            return
        if folder and final.exists():  # a folder cannot be replaced in one rename: move the old one aside
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".old-{final.name}-"))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, final)
            except OSError:
                if not (keep_existing and final.exists()):  # else another process finished first
                    raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent))


def write_jsonl(path: str | Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path: str | Path):
    """Parse a whole JSON document; errors name the file and line."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e.reason}") from None


def iter_jsonl(path: str | Path, limit: int | None = None) -> Iterator[tuple[int, object]]:
    """Yield ``(line_number, value)`` for each non-blank line, reading one line at a time (at most
    ``limit`` values)."""
    path = Path(path)
    n = 0
    try:
        with path.open(encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                if limit is not None and n >= limit:
                    return
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {ln} is not valid JSON: {e.msg}") from None
                n += 1
                yield ln, value
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e.reason}") from None
