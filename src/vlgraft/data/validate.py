"""``vlgraft validate``: every record of a data source checked up front, the way training reads it.

The main process reads a source's raw items in order (``data/streams.py``) and hands them, in chunks,
to worker processes; a worker makes each item a record (``to_record``: JSON, structure, placeholders,
image files), applies training's empty-answer check (``check_answers``) and decodes the record's images
(``load_image``). Unlike training, nothing stops at the first error: every bad record is reported, and
a shard that cannot be read is reported and the next one read. Duplicate ids are found in the main
process, over the whole source. A format without a fast reader is read through its loader, which
stops at its first bad record (``Report.stopped_at_first_error``).
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import re
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from vlgraft.config import DataSource
from vlgraft.data.dataset import check_answers
from vlgraft.data.images import load_image, set_max_pixels
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.data.streams import LoaderStream, RecordStream, open_stream
from vlgraft.errors import ConfigError, DataError

CHUNK = 256  # items per task: enough that pickling and queueing cost little beside the checks
IMAGE_MODES = ("check", "skip")

# (text in the message, kind), first match wins; the kinds a summary counts, in the order it shows them
_KIND_OF = [("not valid JSON", "json"), ("image file not found", "missing image"),
            ("image path is a folder", "missing image"), (f"{IMAGE_PLACEHOLDER} placeholder", "placeholders"),
            ("cannot read image", "bad image"), ("pixels, more than", "bad image"),
            ("empty answer", "empty answer"), ("duplicate id", "duplicate id")]
KINDS = ("json", "missing image", "bad image", "placeholders", "empty answer", "duplicate id", "shard", "other")
# a loader's error before any record that names no record but a missing file: the spec is wrong
# ("data file not found: x.json"), not a record (whose messages start "file: record ...: ...")
_MISSING_SOURCE = re.compile(r"[^:]*\bnot found: ")


def error_kind(message: str, default: str = "other") -> str:
    """The short kind of an error message, for the summary's counts."""
    return next((kind for text, kind in _KIND_OF if text in message), default)


@dataclass
class Report:
    """What validating one source found."""

    source: str
    records: int = 0  # records checked (an item that could not be made a record counts, as a bad one)
    bad: int = 0  # records with at least one error
    unreadable_shards: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, message), in the data's order
    seconds: float = 0.0
    stopped_at_first_error: bool = False  # read through a loader that stopped there: later records unchecked

    @property
    def ok(self) -> int:
        return self.records - self.bad

    @property
    def errors(self) -> list[str]:
        return [message for _, message in self.problems]

    @property
    def kinds(self) -> Counter:
        return Counter(kind for kind, _ in self.problems)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"source": self.source, "records": self.records, "ok": self.ok, "bad": self.bad,
                "unreadable_shards": self.unreadable_shards, "kinds": dict(self.kinds),
                "seconds": round(self.seconds, 3), "records_per_s": round(self.records_per_s, 1),
                "stopped_at_first_error": self.stopped_at_first_error,
                "errors": [{"kind": k, "message": m} for k, m in self.problems]}


class _Checked(NamedTuple):
    """One item's outcome: ``rid`` None when no record could be made (it joins no duplicate check)."""

    rid: str | None
    where: str
    errors: list[tuple[str, str]]  # (kind, message)
    is_record: bool = True  # False: a shard that could not be read


def _image_sources(rec: Record) -> list[tuple[object, str]]:
    """(what load_image opens, the image's name) for each image: bytes carried in the data, or files."""
    if rec.image_data:
        return [(io.BytesIO(b), name) for name, b in zip(rec.images, rec.image_data)]
    return [(path, path) for path in rec.images]


def _unexpected(where: str, e: Exception) -> str:
    return f"{where}: {type(e).__name__}: {e}"


def _check_item(stream: RecordStream, images: str, index: int, raw) -> _Checked:
    # Beyond DataError, any exception is this item's error too: input no check foresaw (an odd HF row)
    # must not end a validation whose point is to list every record that would break training.
    try:
        rec = stream.to_record(raw)
    except DataError as e:
        return _Checked(None, "", [(error_kind(str(e)), str(e))])
    except Exception as e:
        return _Checked(None, "", [("other", _unexpected(f"{stream.name}: item #{index}", e))])
    errors = []
    try:
        check_answers(rec)
    except DataError as e:
        errors.append(("empty answer", str(e)))
    if images == "check":
        for src, name in _image_sources(rec):
            try:
                load_image(src, rec.where, name=name)
            except DataError as e:
                errors.append((error_kind(str(e), "bad image"), str(e)))
            except Exception as e:
                errors.append(("bad image", _unexpected(f"{rec.where}: image {name}", e)))
    return _Checked(rec.id, rec.where, errors)


_WORKER: tuple[RecordStream, str] | None = None  # a pool worker's (stream, images), set once at its start


def _init_worker(stream: RecordStream, images: str) -> None:
    global _WORKER
    _WORKER = stream, images  # forked: the stream is inherited, never pickled


def _check_chunk(items: list[tuple[int, object]], ctx: tuple[RecordStream, str] | None = None) -> list[_Checked]:
    stream, images = ctx or _WORKER
    return [_check_item(stream, images, index, raw) for index, raw in items]


def _tasks(stream: RecordStream) -> Iterator[list[tuple[int, object]] | _Checked]:
    """Chunks of (item number, raw item), shard by shard; a shard that cannot be read comes as its
    ``_Checked`` (between the chunks around it, so errors keep the data's order), and so does the error
    a loader stops at."""
    chunk: list[tuple[int, object]] = []
    index = 0
    loader = isinstance(stream, LoaderStream)
    for shard, name in enumerate(stream.shards):
        first = index
        try:
            for raw, _ in stream.read(shard, stream.start(shard)):
                chunk.append((index, raw))
                index += 1
                if len(chunk) == CHUNK:
                    yield chunk
                    chunk = []
        except (DataError, OSError) as e:
            message = str(e) if isinstance(e, DataError) else f"{name}: cannot read: {e.strerror or e}"
            if loader and index == first and _MISSING_SOURCE.match(message):
                raise DataError(message) from None  # a bad spec: one error line, as every command gives
            if chunk:
                yield chunk
                chunk = []
            if loader:  # the loader's generator is done: its error is that of the record it stopped at
                yield _Checked(None, "", [(error_kind(message), message)])
            else:
                yield _Checked(None, "", [("shard", message)], is_record=False)
    if chunk:
        yield chunk


def _absorb(report: Report, seen: dict[str, str], results: list[_Checked], bar) -> None:
    """Count a chunk's outcomes in order, adding each duplicate id (naming where its first one was)."""
    records = 0
    for c in results:
        errors = c.errors
        if c.rid is not None:
            if c.rid in seen:
                errors = [*errors, ("duplicate id", f"{c.where}: duplicate id {c.rid!r} (first at {seen[c.rid]})")]
            else:
                seen[c.rid] = c.where
        if c.is_record:
            records += 1
            report.bad += bool(errors)
        else:
            report.unreadable_shards += 1
        report.problems.extend(errors)
    report.records += records
    bar.update(records)
    bar.set_postfix(bad=report.bad, refresh=False)


def validate_stream(stream: RecordStream, workers: int = 2, images: str = "check", show: bool = True,
                    name: str | None = None) -> Report:
    """Check every record of ``stream`` (see the module docstring); ``workers`` 0 or 1: in this process;
    ``name``: the source in the report and the progress bar (default: the stream's)."""
    from tqdm import tqdm

    if images not in IMAGE_MODES:
        raise ConfigError(f"images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
    report = Report(name or stream.name)
    seen: dict[str, str] = {}
    start = time.perf_counter()
    pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (stream, images)) if workers > 1 else None
    # results are taken in order, and at most ``ahead`` chunks are in flight: Pool.imap would read the
    # whole source into its queue, whatever its size
    ahead = 2 * workers if pool else 0
    pending: deque = deque()
    bar = tqdm(total=stream.count(), unit="rec", desc=f"validate {report.source}", disable=not show, dynamic_ncols=True)
    try:
        for task in _tasks(stream):
            if isinstance(task, _Checked):
                report.stopped_at_first_error |= task.is_record  # only a loader's error comes as a record
                pending.append(functools.partial(list, [task]))
            elif pool is None:
                pending.append(functools.partial(_check_chunk, task, (stream, images)))
            else:
                pending.append(pool.apply_async(_check_chunk, (task,)).get)
            while len(pending) > ahead:
                _absorb(report, seen, pending.popleft()(), bar)
        while pending:
            _absorb(report, seen, pending.popleft()(), bar)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()  # every result is in (or an error ends the run): nothing left to wait for
            pool.join()
    report.seconds = time.perf_counter() - start
    return report


def validate_source(spec: DataSource, image_root: str | None = None, workers: int = 2, images: str = "check",
                    show: bool = True, max_pixels: int | None = None) -> Report:
    """Check every record of a data source (any spec ``open_stream`` takes); ``max_pixels``: the image
    size limit, as ``data.max_image_pixels`` (None: the one in force, by default Pillow's threshold)."""
    if max_pixels is not None:
        set_max_pixels(max_pixels)  # before the workers fork, so they inherit it
    stream = open_stream(spec, image_root, where=f"data source {spec!r}")
    return validate_stream(stream, workers, images, show, spec if isinstance(spec, str) else None)
