"""``vlgraft cache info|prune``: the feature cache's size per encoder folder, and its upkeep
(``cache_admin``; docs/CACHE.md). Registered by :func:`register_cache`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vlgraft.errors import ConfigError, DataError, VlgraftError
from vlgraft.options import add_arguments, from_arguments, option


@dataclass
class CacheOptions:
    root: Path | None = option(None, "the feature cache's root folder (default: $VLGRAFT_FEATURE_CACHE or "
                               "<cache root>/features)")


@dataclass
class PruneOptions(CacheOptions):
    older_than: float | None = option(None, "also drop entries no fill has asked for in this many days (the "
                                      "next run that needs them encodes them again; fill refreshes an entry's "
                                      "last use hourly, so keep this over 0.05 while runs use the cache)", min=0)
    key: str | None = option(None, "remove every encoder folder whose name starts with this, whole (old-layout "
                             "folders too)")
    dry_run: bool = option(False, "print what would be removed, remove nothing")


def _root(opts: CacheOptions) -> Path:
    from vlgraft.paths import feature_cache_root

    return Path(opts.root) if opts.root else feature_cache_root()


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_info(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from vlgraft.data.cache_admin import cache_folders, damaged_info, folder_info

    root = _root(from_arguments(CacheOptions, args))
    rows, problems = [], []
    for f in cache_folders(root):
        try:
            rows.append(folder_info(f))
        except DataError as e:  # one damaged folder does not hide the others
            rows.append(damaged_info(f))
            problems.append(str(e))
    console = Console()
    if not rows:
        console.print(f"feature cache {root}: empty")
        return
    t = Table(title=f"feature cache {root}")
    heads = ("folder (--key)", "layout", "entries", "shards", "size", "/1,000 images", "orphans", "dead",
             "last used")
    for h in heads:
        t.add_column(h, justify="left" if h in ("folder (--key)", "layout", "last used") else "right",
                     no_wrap=h == "folder (--key)")
    for r in rows:
        t.add_row(r["name"], r["layout"], f"{r['entries']:,}", f"{r['shards']:,}", human_bytes(r["bytes"]),
                  human_bytes(r["bytes_per_1000"]) if r["entries"] else "-",
                  f"{r['orphan_shards']} ({human_bytes(r['orphan_bytes'])})" if r["orphan_shards"] else "0",
                  human_bytes(r["dead_bytes"]), _when(r["last_used"]))
    t.add_row("all", "", f"{sum(r['entries'] for r in rows):,}", f"{sum(r['shards'] for r in rows):,}",
              human_bytes(sum(r["bytes"] for r in rows)), "", "", "", "")
    console.print(t)
    missing = [r["name"] for r in rows if r["missing_shards"]]
    if missing:
        console.print(f"[yellow]warning[/]: shards named by the index are missing in {', '.join(missing)}; "
                      "`vlgraft cache prune` drops their entries")
    if any(r["layout"] not in ("current", "damaged") for r in rows):
        console.print("folders of an older layout are never read: remove them with `vlgraft cache prune --key NAME`")
    for message in problems:
        console.print(f"[red]error[/]: {message}", markup=True, highlight=False)


def cmd_prune(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from vlgraft.data.cache_admin import cache_folders, layout_of, prune, remove_folder

    opts = from_arguments(PruneOptions, args)
    root, console = _root(opts), Console()
    verb = "would free" if opts.dry_run else "freed"
    folders = cache_folders(root)
    if opts.key is not None:
        if opts.older_than is not None:
            raise ConfigError("--key removes whole folders; give --older-than in a separate prune")
        chosen = [f for f in folders if f.name.startswith(opts.key)] if opts.key else []
        if not chosen:
            names = ", ".join(f.name for f in folders) or "none"
            raise VlgraftError(f"no feature-cache folder under {root} starts with {opts.key!r} (folders: {names})")
        total = 0
        for f in chosen:
            freed = remove_folder(f, opts.dry_run)
            total += freed
            console.print(f"{'would remove' if opts.dry_run else 'removed'} {f} ({layout_of(f)}): "
                          f"{human_bytes(freed)}")
        console.print(f"{verb} {human_bytes(total)}")
        return
    t = Table(title=f"prune {root}" + (" (dry run)" if opts.dry_run else ""))
    heads = ("folder", "temp files", "orphan shards", "expired entries", "damaged shards", "empty shards",
             "compacted shards", verb)
    for h in heads:
        t.add_column(h, justify="left" if h == "folder" else "right")
    total, skipped, problems = 0, [], []
    for f in folders:
        if layout_of(f) != "current":
            skipped.append(f.name)
            continue
        try:
            r = prune(f, opts.older_than, opts.dry_run)
        except DataError as e:  # a damaged index: the other folders are still pruned, then it is the error
            problems.append(str(e))
            continue
        total += r["freed_bytes"]
        compacted = f"{r['compacted_shards']}" + (f" -> {r['new_shards']}" if r["new_shards"] else "")
        t.add_row(f.name, str(r["leftovers"]), str(r["orphan_shards"]), f"{r['expired_entries']:,}",
                  str(r["damaged_shards"]), str(r["empty_shards"]), compacted, human_bytes(r["freed_bytes"]))
    console.print(t)
    console.print(f"{verb} {human_bytes(total)}")
    if skipped:
        console.print(f"older-layout folders left as they are (remove with --key): {', '.join(skipped)}")
    if problems:
        more = f" ({len(problems) - 1} more folders could not be pruned either)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)


def register_cache(sub) -> None:
    """Add the ``cache`` subcommand (``info``, ``prune``) to the main parser's subparsers."""
    c = sub.add_parser("cache", help="the image-feature cache: size per encoder, prune and compact",
                       description="Inspect and tidy the on-disk cache of frozen image-encoder features "
                                   "(docs/CACHE.md).")
    actions = c.add_subparsers(dest="cache_cmd", required=True)
    i = actions.add_parser("info", help="entries, shards, size and last use per encoder folder")
    add_arguments(i, CacheOptions)
    i.set_defaults(func=cmd_info)
    p = actions.add_parser("prune", help="remove orphan shards, old entries or whole folders; compact shards")
    add_arguments(p, PruneOptions)
    p.set_defaults(func=cmd_prune)
