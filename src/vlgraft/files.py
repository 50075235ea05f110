"""Reading and writing files: one atomic writer for files and folders, one JSON / JSONL reader, one
safetensors reader, and the check that an output location can be written before any work.

Every file vlgraft produces (checkpoints, exports, results, caches, converted models) is written to a
temporary path beside its final place and renamed into place, so a reader never sees half a file and
an interrupted write leaves the previous version (or nothing); a write that fails (disk full, read-only,
no permission) is one ``OutputError`` naming the path and saying what was kept. Every JSON and
safetensors file vlgraft reads goes through this module, whose errors name the file (and line).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vlgraft.errors import DataError, VlgraftError


class OutputError(VlgraftError):
    """An output could not be written (disk full, read-only, no permission, a file in the way)."""


# errors of writing, as opposed to bugs: reported as one line naming the path
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR,
                 errno.EEXIST, errno.EISDIR, errno.EIO, errno.EFBIG, errno.ENAMETOOLONG}


def _output_error(final: Path, e: OSError) -> OutputError:
    kept = "the previous version is kept intact" if final.exists() else "nothing was written there"
    return OutputError(f"cannot write {final}: {e.strerror or e}; {kept}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# tempfile creates private paths (0600 / 0700); what lands follows the umask like any other file
_FILE_MODE, _DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


def _follow_umask(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the modes a plain write would: writers such as
    safetensors create private files, and tempfile private folders."""
    if path.is_dir():
        os.chmod(path, _DIR_MODE)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), _DIR_MODE)
            for f in files:
                os.chmod(os.path.join(root, f), _FILE_MODE)
    elif path.exists():
        os.chmod(path, _FILE_MODE)


@contextlib.contextmanager
def atomic_path(final: str | Path, folder: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` to write to (an empty folder when ``folder``); when the
    block ends normally it takes ``final``'s place in one rename, and on an error it is removed and
    ``final`` is untouched. ``keep_existing``: for content that any writer produces alike (caches, a
    converted model) — if ``final`` appeared meanwhile (another process won the race), it is kept and
    this copy dropped. Parent folders are created."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
            os.chmod(tmp, _DIR_MODE)
        else:
            fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".tmp-{final.name}-")
            os.close(fd)
            tmp = Path(name)
            os.chmod(tmp, _FILE_MODE)
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:
            raise _output_error(final, e) from None
        raise
    try:
        yield tmp
        if keep_existing and final.exists():
            return
        _follow_umask(tmp)
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
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:
            raise _output_error(final, e) from None
        raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def ensure_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Check, before any work that would write there, that ``folder`` can be written, or created (it is
    not created here: a run that then fails on its input leaves nothing behind); errors name the folder."""
    folder = Path(folder)
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise OutputError(f"the {what} {folder} cannot be created: {probe_in} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe_in, prefix=".tmp-probe-"))
    except OSError as e:
        raise OutputError(f"the {what} {folder} cannot be written: {e.strerror or e} ({probe_in})") from None
    return folder


def remove_leftovers(folder: str | Path, older_than_s: float = 0.0) -> int:
    """Remove the temporary paths (``.tmp-*``, ``.old-*``) an interrupted write left in ``folder``
    (only those older than ``older_than_s``, where another process may be writing now). Returns how many."""
    import time

    folder, n = Path(folder), 0
    if not folder.is_dir():
        return 0
    for p in [*folder.glob(".tmp-*"), *folder.glob(".old-*")]:
        try:
            if older_than_s and time.time() - p.lstat().st_mtime < older_than_s:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


def read_safetensors(path: str | Path) -> dict:
    """The tensors of a safetensors file; a missing, truncated or foreign file (a pickle renamed, random
    bytes) is one error naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        return load_file(path)
    except Exception as e:  # SafetensorError, OSError, ...: the file is not what its name says
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable safetensors file ({reason}); it is damaged or was written "
                        "by something else") from None


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent))


def write_jsonl(path: str | Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _loads(text: str, path: Path, where: str):
    """JSON with every key once per object (json keeps the last of a repeated key silently)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise DataError(f"{path}: {where}an object has the key {e.args[0]!r} twice") from None


def _text(data: bytes, path: Path, where: str = "") -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows tools write one) is dropped
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {where}not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None


def read_json(path: str | Path):
    """Parse a whole JSON document; errors name the file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a JSON file") from None
    try:
        return _loads(_text(data, path), path, "")
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield ``(line_number, value)`` for each non-blank line, reading one line at a time (a consumer
    that stops early reads no further)."""
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a JSONL file") from None
    with f:
        for ln, raw in enumerate(f, 1):
            line = _text(raw, path, f"line {ln}: ")
            if not line.strip():
                continue
            try:
                value = _loads(line, path, f"line {ln}: ")
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {ln} is not valid JSON: {e.msg}") from None
            except RecursionError:
                raise DataError(f"{path}: line {ln}: JSON nested too deeply to read") from None
            yield ln, value
