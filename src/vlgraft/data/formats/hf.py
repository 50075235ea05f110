"""Hugging Face data (``datasets`` folders and parquet files) with LLaVA-style columns.

Spec: ``hf:PATH`` or ``hf:PATH#split``, where PATH is

* a folder written by ``Dataset.save_to_disk`` (memory-mapped with ``load_from_disk``), or one
  written by ``DatasetDict.save_to_disk`` (``#split`` picks the split; needed if it has several);
* a ``.parquet`` file, or a folder of them (read recursively in name order; ``#split`` keeps the
  files named ``{split}-*.parquet`` / ``{split}.parquet`` or under a ``{split}/`` folder), streamed
  in row batches with pyarrow.

Rows have LLaVA's columns: ``conversations`` (a list of ``{"from", "value"}``, or that list as a
JSON string), optional ``id`` (default: the row's position) and optional ``image``, which is

* a path string, relative to ``image_root`` or by default to the data folder (the parquet file's
  folder), or
* an HF ``Image`` value: ``{"bytes", "path"}`` (bytes are written once to the content-addressed
  store of :mod:`vlgraft.data.formats.image_store`; without bytes, ``path`` is used as a path) or a
  decoded PIL image (re-encoded as PNG into the same store).

Each row is then checked by :func:`vlgraft.data.records.parse_record`; other columns go to ``meta``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlgraft.config import FormatOptions
from vlgraft.data.formats.common import path_and_split
from vlgraft.data.formats.image_store import store_image_bytes, store_pil_image
from vlgraft.data.records import Record, parse_record
from vlgraft.errors import DataError
from vlgraft.options import option
from vlgraft.registry import DATASET

BATCH_ROWS = 256


def _image(value: object, where: str) -> str | None:
    """A row's ``image`` as a path string (relative ones are resolved by ``parse_record``)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return str(store_image_bytes(value["bytes"], where))
        if isinstance(value.get("path"), str):
            return value["path"]
        raise DataError(f"{where}: 'image' has neither bytes nor a path")
    from PIL import Image

    if isinstance(value, Image.Image):
        return str(store_pil_image(value, where))
    raise DataError(f"{where}: 'image' must be a path, an HF Image value or null, not {type(value).__name__}")


def _record(row: dict, index: int, source: str, root: Path) -> Record:
    raw = dict(row)
    if raw.get("id") is None:
        raw["id"] = index
    where = f"{source}: record {str(raw['id'])!r} (#{index})"
    if isinstance(raw.get("conversations"), str):
        try:
            raw["conversations"] = json.loads(raw["conversations"])
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: 'conversations' is a string but not valid JSON: {e.msg}") from None
    if "image" in raw:
        raw["image"] = _image(raw["image"], where)
    return parse_record(raw, index, source, root)


def _parquet_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet"))
    if split:
        files = [f for f in files if split in f.relative_to(path).parts[:-1]
                 or f.stem == split or f.name.startswith(f"{split}-")]
    if not files:
        raise DataError(f"{path}: no parquet files" + (f" for split {split!r}" if split else ""))
    return files


def _parquet_rows(path: Path, split: str) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in _parquet_files(path, split):
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS):
                for row in batch.to_pylist():
                    yield str(f), row
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{f}: cannot read parquet: {e}") from None


def _saved(path: Path, split: str):
    """The split's ``Dataset`` of a ``save_to_disk`` folder, images kept encoded."""
    from datasets import Dataset, DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if not split and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise DataError(f"{path}: {'pick a split with #SPLIT' if not split else f'no split {split!r}'}"
                            f" (splits: {', '.join(ds)})")
        ds = ds[split]
    elif split:
        raise DataError(f"{path}: a single Dataset folder has no splits (drop '#{split}')")
    assert isinstance(ds, Dataset)
    return _encoded_images(ds)


def _encoded_images(ds):
    from datasets import Image

    if ds.features is not None and isinstance(ds.features.get("image"), Image):
        ds = ds.cast_column("image", Image(decode=False))  # keep the encoded bytes: no decode + re-encode
    return ds


def _saved_rows(path: Path, split: str) -> Iterator[tuple[str, dict]]:
    for row in _saved(path, split):
        yield str(path), row


def _check_path(path: Path) -> bool:
    """Whether ``path`` is a ``save_to_disk`` folder (else parquet); a missing or foreign path is an error."""
    if not path.exists():
        raise DataError(f"hf data not found: {path}")
    saved = path.is_dir() and any((path / n).is_file() for n in ("state.json", "dataset_dict.json"))
    if not saved and path.is_file() and path.suffix != ".parquet":
        raise DataError(f"{path}: 'hf:' reads parquet files or save_to_disk folders (use the file's own format)")
    return saved


def iterable_dataset(o: HFOptions):
    """The source as a ``datasets.IterableDataset`` (``streaming``): parquet files through
    ``load_dataset(..., streaming=True)``, a saved folder through ``to_iterable_dataset``."""
    path = Path(o.path)
    if _check_path(path):
        return _saved(path, o.split).to_iterable_dataset()
    from datasets import load_dataset

    files = [str(f) for f in _parquet_files(path, o.split)]
    return _encoded_images(load_dataset("parquet", data_files=files, split="train", streaming=True))


def _image_root(o: HFOptions) -> Path:
    """Where relative image paths resolve: ``image_root``, else the data folder (a file's folder)."""
    path = Path(o.path)
    return Path(o.image_root) if o.image_root else (path if path.is_dir() else path.parent)


def row_record(row: dict, index: int, o: HFOptions) -> Record:
    """Row ``index`` of the source as a record."""
    return _record(row, index, str(Path(o.path)), _image_root(o))


@dataclass
class HFOptions(FormatOptions):
    path: str = option(help="a save_to_disk folder, a .parquet file or a folder of them")
    split: str = option("", "the split (a DatasetDict's, or parquet files named/under it); empty: the only one / all")
    image_root: str | None = option(None, "folder that relative image paths resolve against (default: the data's)")
    streaming: bool = option(False, "read through datasets' streaming (an IterableDataset: nothing is loaded or "
                             "converted up front; with data.stream a resumed run continues from its saved position)")
    from_arg = staticmethod(path_and_split)


@DATASET.register("hf", options=HFOptions)
def hf(o: HFOptions) -> Iterator[Record]:
    """Rows of a saved ``datasets`` folder or of parquet files as records (see the module docstring)."""
    split, path = o.split, Path(o.path)
    saved = _check_path(path)
    if o.streaming:
        for index, row in enumerate(iterable_dataset(o)):
            yield row_record(row, index, o)
        return
    root = _image_root(o)
    rows = _saved_rows(path, split) if saved else _parquet_rows(path, split)
    for index, (source, row) in enumerate(rows):
        yield _record(row, index, source, root)
