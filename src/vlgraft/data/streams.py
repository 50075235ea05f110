"""Record streams (``data.stream``): a data source read item by item from a resumable position.

Training on a stream never holds the dataset: the main process reads *raw items* (a JSONL line's
bytes, a webdataset sample's members, an HF row) in order, and DataLoader workers turn each into a
validated ``Record`` (``to_record``) and then into tokens and pixels. A stream is a list of shards
read one after another; ``read(shard, position)`` yields ``(raw, next_position)`` from a position
that ``read`` itself produced, so a checkpoint stores where each shard is and a resumed run reads on
from there without re-reading what came before.

Sources with a fast reader:

- a LLaVA ``.jsonl`` file: one shard, position = (byte offset, line number);
- ``webdataset:DIR`` (``data/formats/webdataset.py``): each ``.tar`` is a shard, position = the byte
  offset of the next sample's first member header;
- ``hf:PATH`` with ``streaming: true``: a ``datasets`` ``IterableDataset``, position = its own
  ``state_dict()``.

Every other format streams through its loader (a generator of records, run in the main process):
position = records read, and resuming skips that many records through the loader.
"""

from __future__ import annotations

import itertools
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from vlgraft.config import DataSource
from vlgraft.data.records import Record, parse_record
from vlgraft.data.sources import source_options
from vlgraft.errors import ConfigError, DataError
from vlgraft.registry import DATASET


class RecordStream:
    """Raw items of one source, shard by shard (see the module docstring)."""

    name: str = ""  # the source, for messages
    shards: list[str] = []

    def read(self, shard: int, position) -> Iterator[tuple[object, object]]:
        raise NotImplementedError

    def start(self, shard: int):
        """The position of a shard's first item."""
        return 0

    def to_record(self, raw) -> Record:
        """A raw item as a validated record (runs in DataLoader workers; errors name file and record)."""
        raise NotImplementedError

    def count(self) -> int | None:
        """The number of items when it is cheap to know (for ``train.epochs``), else None."""
        return None


class JsonlStream(RecordStream):
    """A LLaVA ``.jsonl`` file, read line by line from a byte offset; lines parse in the workers."""

    def __init__(self, path: Path, image_root: str | None):
        self.path, self.name, self.shards = path, str(path), [str(path)]
        self.root = Path(image_root) if image_root else path.parent

    def start(self, shard: int):
        return (0, 0)

    def read(self, shard: int, position):
        offset, line_no = position
        with open(self.path, "rb") as f:
            f.seek(offset)
            for line in f:
                offset += len(line)
                line_no += 1
                if line.strip():
                    yield (line_no, line), (offset, line_no)

    def to_record(self, raw) -> Record:
        line_no, line = raw
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{self.path}: line {line_no}: not valid JSON ({e})") from None
        return parse_record(obj, line_no - 1, str(self.path), self.root)

    def count(self) -> int:
        n = 0
        with open(self.path, "rb") as f:  # blank lines hold no record
            for line in f:
                n += bool(line.strip())
        return n


class LoaderStream(RecordStream):
    """Any format, through its loader (records are made in the main process)."""

    def __init__(self, opts):
        self.opts, self.name, self.shards = opts, str(opts.name), [str(opts.name)]

    def read(self, shard: int, position):
        records = DATASET.get(self.opts.name)(self.opts)
        for i, rec in enumerate(itertools.islice(records, position, None), start=position):
            yield rec, i + 1

    def to_record(self, raw) -> Record:
        return raw


class TarStream(RecordStream):
    """Webdataset shards: ``.tar`` files whose consecutive members sharing a key (the name up to its
    first dot) form one sample — ``KEY.json`` (a LLaVA record) or ``KEY.txt`` (a caption), and one
    image ``KEY.jpg|jpeg|png|webp``."""

    IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

    def __init__(self, paths: list[Path], prompt: str, name: str):
        self.paths, self.prompt, self.name = paths, prompt, name
        self.shards = [str(p) for p in paths]

    def read(self, shard: int, position):
        path = self.paths[shard]
        with open(path, "rb") as f:
            f.seek(position)
            try:
                tar = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - f's context closes it
            except tarfile.ReadError:  # an empty remainder (the last sample was read) reads as no archive
                if position == 0:
                    raise DataError(f"{path}: not a tar file") from None
                return
            sample: dict = {}
            start = position
            try:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    if sample and key != sample["__key__"]:
                        yield sample, member.offset
                        sample, start = {}, member.offset
                    sample.setdefault("__key__", key)
                    sample["__shard__"], sample["__offset__"] = str(path), start
                    sample[ext.lower()] = tar.extractfile(member).read()
                    tar.members = []  # TarFile remembers every member: forget them (a shard may be large)
            except tarfile.TarError as e:
                raise DataError(f"{path}: damaged tar file near byte {start}: {e}") from None
            end = f.seek(0, 2)
            if end - tar.offset < 2 * tarfile.BLOCKSIZE:  # tarfile stops quietly where a cut-short file ends
                raise DataError(f"{path}: the tar file ends without its end-of-archive blocks after byte "
                                f"{tar.offset} (cut short?)")
            if sample:
                yield sample, end  # the end of the file: reading from there yields nothing

    def to_record(self, raw) -> Record:
        return tar_sample_record(raw, self.prompt)


def tar_sample_record(sample: dict, prompt: str) -> Record:
    """One webdataset sample as a record; its image travels as bytes (``Record.image_data``)."""
    key, shard = sample["__key__"], sample["__shard__"]
    where = f"{shard}: sample {key!r}"
    images = [e for e in TarStream.IMAGE_EXTS if e in sample]
    if len(images) > 1:
        raise DataError(f"{where}: has {len(images)} images ({', '.join(images)}); a sample holds one")
    if "json" in sample:
        try:
            obj = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: {key}.json is not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: {key}.json must hold an object")
    else:
        obj = {}
    if "conversations" not in obj:  # a caption sample (img2dataset's layout: KEY.txt + metadata KEY.json)
        if "txt" not in sample:
            raise DataError(f"{where}: no {key}.json with 'conversations' and no {key}.txt caption")
        caption = sample["txt"].decode("utf-8", "replace").strip()
        if not caption:
            raise DataError(f"{where}: {key}.txt is empty")
        head = "<image>\n" if images else ""
        obj = {**obj, "conversations": [{"from": "human", "value": head + prompt}, {"from": "gpt", "value": caption}]}
    obj.setdefault("id", key)
    member = f"{key}.{images[0]}" if images else None
    if member is not None:
        if "image" in obj:
            raise DataError(f"{where}: {key}.json names an 'image' but the sample carries its own ({member})")
        obj["image"] = f"{shard}::{member}"
    rec = parse_record(obj, 0, shard, None, check_files=False)
    rec.source = f"{where}"
    if member is not None:
        rec.image_data = [sample[images[0]]]
    return rec


class HFStream(RecordStream):
    """An ``hf:`` source read with ``datasets``' streaming (``IterableDataset``); its position is the
    iterable's own ``state_dict()``."""

    def __init__(self, opts):
        self.opts, self.name, self.shards = opts, f"hf:{opts.path}", [f"hf:{opts.path}"]

    def start(self, shard: int):
        return None

    def read(self, shard: int, position):
        from vlgraft.data.formats.hf import iterable_dataset

        ds = iterable_dataset(self.opts)  # a fresh one: a loaded state would apply to every later pass too
        if position is not None:
            ds.load_state_dict(position["state"])
        index = position["index"] if position is not None else 0
        for row in ds:
            yield (index, row), {"state": ds.state_dict(), "index": index + 1}
            index += 1

    def to_record(self, raw) -> Record:
        from vlgraft.data.formats.hf import row_record

        index, row = raw
        return row_record(row, index, self.opts)


def open_stream(spec: DataSource, image_root: str | None = None, where: str = "data.train") -> RecordStream:
    """The stream of a data source (the same specs as ``load_records``; a ``limit`` is the sampler's)."""
    opts = source_options(spec, image_root, where)
    if opts.name == "llava" and str(opts.path).endswith(".jsonl"):
        path = Path(opts.path)
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        return JsonlStream(path, opts.image_root)
    if opts.name == "webdataset":
        from vlgraft.data.formats.webdataset import shard_paths

        return TarStream(shard_paths(opts), opts.prompt, f"webdataset:{opts.path}")
    if opts.name == "hf" and getattr(opts, "streaming", False):
        return HFStream(opts)
    if opts.name not in DATASET:
        raise ConfigError(f"{where}: unknown format {opts.name!r}")
    return LoaderStream(opts)
