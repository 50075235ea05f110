"""Alpaca-style text-only instructions in the canonical format.

Spec: ``alpaca:PATH.json`` (a JSON list) or ``alpaca:PATH.jsonl`` (one object a line, streamed).
Each ``{"instruction", "input" (optional), "output"}`` becomes one text-only record: user
``instruction + ("\\n\\n" + input if input)``, assistant ``output``. The id is the record's ``id``
field when it has one, else ``alpaca-{index}`` (0-based position in the file); other fields go to
``meta``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vlgraft.config import FormatOptions
from vlgraft.data.formats.common import check_placeholders, existing_file, instruction_fields
from vlgraft.data.records import Record
from vlgraft.errors import DataError
from vlgraft.files import iter_jsonl, read_json
from vlgraft.options import option
from vlgraft.registry import DATASET

_FIELDS = ("id", "instruction", "input", "output")


def _record(raw: object, index: int, where: str) -> Record:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a record must be an object")
    user, answer = instruction_fields(raw, where, ("instruction", "input", "output"), "\n\n")
    turns = [("user", user), ("assistant", answer)]
    check_placeholders(turns, False, where)
    rid = str(raw["id"]) if raw.get("id") is not None else f"alpaca-{index}"
    return Record(rid, turns, meta={k: v for k, v in raw.items() if k not in _FIELDS}, source=where)


def _where(path: object, raw: object, index: int, line: int | None = None) -> str:
    rid = raw.get("id") if isinstance(raw, dict) and raw.get("id") is not None else f"alpaca-{index}"
    return f"{path}: record {str(rid)!r} (#{index}" + (f", line {line})" if line else ")")


@dataclass
class AlpacaOptions(FormatOptions):
    path: str = option(help="a JSON list, or a .jsonl file (streamed)")


@DATASET.register("alpaca", options=AlpacaOptions)
def alpaca(o: AlpacaOptions) -> Iterator[Record]:
    """One text-only record per instruction (see the module docstring)."""
    p = existing_file(o.path, "Alpaca file")
    items: Iterable[tuple[int | None, object]]
    if p.suffix == ".jsonl":
        items = iter_jsonl(p)
    else:
        data = read_json(p)
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON list of instructions (or use a .jsonl file)")
        items = ((None, raw) for raw in data)
    for index, (line, raw) in enumerate(items):
        yield _record(raw, index, _where(p, raw, index, line))
