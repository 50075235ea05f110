"""``vlgraft validate DATA [DATA ...]``: every record of each source checked before any training
(``data/validate.py``; docs/DATA.md). Registered by :func:`register_validate`."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vlgraft.data.validate import IMAGE_MODES, KINDS, Report
from vlgraft.options import add_arguments, from_arguments, option


@dataclass
class ValidateOptions:
    image_root: str | None = option(None, "folder that relative image paths resolve against, where a "
                                    "source sets none")
    workers: int = option(4, "processes that parse records and decode images (0 or 1: in this process)", min=0)
    images: str = option("check", "check: decode every image; skip: decode none (image files a record names "
                         "are still checked to exist)", choices=IMAGE_MODES)
    max_image_pixels: int | None = option(None, "the largest image accepted, as the recipe's "
                                          "data.max_image_pixels; none: Pillow's threshold, 89,478,485", min=1)
    show: int = option(20, "print the first N error messages (--json holds them all)", min=0)
    json: Path | None = option(None, "write the whole report, every error, to this JSON file")


def print_summary(reports: list[Report], opts: ValidateOptions, console) -> None:
    """A table row per source (records, ok, bad, rate, errors by kind), then the first ``opts.show`` errors."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title="vlgraft validate")
    t.add_column("source", overflow="fold")
    for h in ("records", "ok", "bad", "records/s"):
        t.add_column(h, justify="right")
    t.add_column("errors by kind")  # one column, not one per kind: it wraps in a narrow terminal

    def row(name, rs):
        seconds, records, bad = (sum(getattr(r, a) for r in rs) for a in ("seconds", "records", "bad"))
        kinds = sum((r.kinds for r in rs), Counter())
        order = [k for k in KINDS if k in kinds] + sorted(set(kinds) - set(KINDS))
        t.add_row(name, f"{records:,}", f"{records - bad:,}", f"{bad:,}",
                  f"{records / seconds:,.0f}" if seconds > 0 else "-",
                  ", ".join(f"{k} {kinds[k]:,}" for k in order) or "-")

    for r in reports:
        row(r.source, [r])
    if len(reports) > 1:
        row("all", reports)
    console.print(t)
    for r in reports:
        if r.stopped_at_first_error:
            console.print(Text.assemble(("note", "yellow"), f": {r.source} is read through its format's loader, "
                                        "which stops at its first bad record: the records after it were not "
                                        "checked (fix it and run again)"), soft_wrap=True)
    errors = [m for r in reports for m in r.errors]
    for message in errors[:opts.show]:
        console.print(Text.assemble(("error", "red"), f": {message}"), soft_wrap=True)
    if len(errors) > opts.show:
        where = f"all in --json {opts.json}" if opts.json else "--json FILE writes them all"
        console.print(f"... and {len(errors) - opts.show:,} more ({where})", highlight=False, soft_wrap=True)
    if not errors:
        console.print(f"all {sum(r.records for r in reports):,} records are good", highlight=False)


def cmd_validate(args) -> None:
    from rich.console import Console

    from vlgraft.data.images import set_max_pixels
    from vlgraft.data.streams import open_stream
    from vlgraft.data.validate import validate_stream
    from vlgraft.files import ensure_writable, write_json

    opts = from_arguments(ValidateOptions, args)
    if opts.json is not None:
        ensure_writable(opts.json.parent, "--json folder")  # before the work, which may be long
    # every source opened first: a misspelt third spec fails before the first is read
    streams = [open_stream(spec, opts.image_root, where=f"data source {spec!r}") for spec in args.data]
    if opts.max_image_pixels is not None:
        set_max_pixels(opts.max_image_pixels)  # before the workers fork: they inherit it
    reports = [validate_stream(s, opts.workers, opts.images, name=spec) for spec, s in zip(args.data, streams)]
    print_summary(reports, opts, Console())
    bad = any(r.problems for r in reports)
    if opts.json is not None:
        write_json(opts.json, {"ok": not bad, "sources": [r.to_dict() for r in reports]})
    if bad:
        sys.exit(1)


def register_validate(sub) -> None:
    """Add the ``validate`` subcommand to the main parser's subparsers."""
    v = sub.add_parser("validate", help="check every record of a dataset (JSON, placeholders, images, empty "
                                        "answers, duplicate ids), in parallel",
                       description="Check every record of one or more data sources up front, as training "
                                   "would read them, and list every bad one; exit status 1 if any is bad "
                                   "(docs/DATA.md).")
    v.add_argument("data", nargs="+", metavar="DATA",
                   help="a data source: a .jsonl / .json file, webdataset:DIR, coco:FILE, hf:PATH, ...")
    add_arguments(v, ValidateOptions)
    v.set_defaults(func=cmd_validate)
