"""Helpers shared by the format loaders; every failure is a one-line DataError naming the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vlgraft.data.records import IMAGE_PLACEHOLDER
from vlgraft.errors import DataError


def existing_file(path: str | Path, what: str = "data file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} not found: {p}")
    return p


def read_json(path: Path):
    """Parse a whole JSON document (for formats that are one document, e.g. COCO annotations)."""
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e.reason}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    """Yield ``(line_number, value)`` for each non-blank line, reading one line at a time."""
    with path.open(encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield ln, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {ln} is not valid JSON: {e.msg}") from None


def check_placeholders(turns: list[tuple[str, str]], has_image: bool, where: str) -> None:
    """A record with an image has exactly one ``<image>`` (in its first user turn); one without has none,
    so a literal ``<image>`` in a dataset's text is an error rather than a silently misplaced image."""
    n = sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns)
    if n != int(has_image):
        raise DataError(f"{where}: the text contains a literal {IMAGE_PLACEHOLDER} "
                        f"({n} placeholders for {int(has_image)} image)")
