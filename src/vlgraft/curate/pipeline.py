"""The curate driver: records -> prompts -> generations -> (refine) -> filters -> dedup -> JSONL + report.

Records are processed in batches of ``batch_size`` source records; one generator call covers every
(record, kind) of a batch. After each batch the kept conversations are appended to the output
(flushed, fsynced) and then one line is appended to ``<out stem>.progress.jsonl``: the batch's
source ids with their outcome per kind, the output's byte length, the dedup keys added, the pools if
they changed, a few dropped examples and the seconds spent. A rerun reads that file, cuts the
output back to the last recorded length (dropping anything written after it) and goes on with the
next batch, so an interrupted run never duplicates a record and ends with the same file as an
uninterrupted one. The end writes ``<out stem>.report.json`` atomically and removes the progress file.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

from vlgraft.curate.annotation import Annotation, answer_vocab, extract
from vlgraft.curate.filters import LENGTH, MAX_COPY, MAX_REPEAT, MIN_PAIRS, REASONS, Deduper, check, joined, parse
from vlgraft.curate.generators import Generator
from vlgraft.curate.seeds import DETAIL_INSTRUCTIONS, KINDS, SEEDS, Example, SeedPool, messages, refine_messages
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.data.sources import load_records
from vlgraft.errors import VlgraftError
from vlgraft.eval.text import load_text_set
from vlgraft.files import write_json
from vlgraft.options import option

EXAMPLES_PER_REASON = 3


@dataclass
class CurateConfig:
    """A curate job; ``vlgraft curate``'s flags are made from these fields (``options.add_arguments``)."""

    spec: str = option(MISSING, "any data source: easyvqa:train, a LLaVA .json/.jsonl, coco:..., ...")
    out: Path = option(MISSING, "output conversations (.jsonl); the report goes next to it")
    kinds: tuple[str, ...] = option(KINDS, f"the kinds to generate, comma-separated ({', '.join(KINDS)})")
    limit: int | None = option(None, "only the first N source records", min=1)
    image_root: str | None = option(None, "folder that relative image paths resolve against")
    refine: bool = option(False, "second pass: the generator corrects each kept output (MiniGPT-4)")
    max_new_tokens: int = option(256, "per generation", min=1)
    temperature: float = option(0.7, "sampling temperature, 0 is greedy", min=0)
    seed: int = option(0, "few-shot draws, pool updates, sampling")
    batch_size: int = option(8, "source records per generator call", min=1)
    pool_update: float = option(0.25, "probability that a kept output replaces the oldest few-shot example of its "
                                "kind", min=0, max=1)
    text_set: str | None = option(None, "text evaluation set kept out of the output (default: the bundled one): an "
                                  "output with a question or answer that is, or nearly is, one of its items is dropped")
    overwrite: bool = option(False, "start over, replacing an existing output")


@dataclass
class _Job:
    rec: Record
    kind: str
    ann: Annotation
    rng: random.Random
    shots: list[Example]
    instruction: str = ""
    pairs: list[tuple[str, str]] | None = None
    raw: str = ""
    reason: str | None = None
    detail: str = ""


def progress_path(out: Path) -> Path:
    return out.with_name(out.stem + ".progress.jsonl")


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def render(kind: str, pairs: list[tuple[str, str]]) -> str:
    """Parsed pairs back in the generator's layout (a pool example, or the text to refine)."""
    return pairs[0][1] if kind == "detail" else "\n".join(f"Q: {q}\nA: {a}" for q, a in pairs)


def check_kinds(kinds) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise VlgraftError(f"unknown kind {bad[0]!r}; known: {', '.join(KINDS)}" if bad else "no kinds given")
    return tuple(dict.fromkeys(kinds))


def _image_ref(image: str, out: Path) -> str:
    """Relative to the output's folder when the image lies under it, else absolute."""
    p, root = Path(image).resolve(), out.parent.resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def read_progress(out: Path, prog: Path, settings: dict, command: str = "curate") -> list[dict]:
    """Batch lines of an unfinished ``command`` run (settings checked); a torn last line is cut off.
    Shared by ``vlgraft curate`` and ``vlgraft curate-text``, whose progress files have the same layout."""
    good, size = [], 0
    with prog.open("rb") as f:
        for raw in f:
            try:
                good.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            size += len(raw)
    if not good or "settings" not in good[0]:
        raise VlgraftError(f"{prog} is not a {command} progress file; pass --overwrite to start over")
    for k, v in settings.items():
        old = good[0]["settings"].get(k)
        if old != v:
            raise VlgraftError(f"{out}: the unfinished run there used {k}={old!r}, not {v!r}; rerun with the "
                               "same options to resume it, or pass --overwrite to start over")
    if len(good) > 1 and not out.is_file():
        raise VlgraftError(f"{out} is missing but {prog} records progress; pass --overwrite to start over")
    with prog.open("r+b") as f:
        f.truncate(size)
    return good[1:]


def append_batch(fo, fp, line: dict, recs: list[dict], t0: float) -> None:
    """Records first, then the progress line that points past them, each synced: a run cut off between
    the two resumes from the last progress line and cuts the output back to its offset."""
    fo.write(b"".join(json.dumps(r).encode() + b"\n" for r in recs))
    fo.flush()
    os.fsync(fo.fileno())
    line["offset"] = fo.tell()
    line["seconds"] = round(time.time() - t0, 3)
    fp.write(json.dumps(line) + "\n")
    fp.flush()
    os.fsync(fp.fileno())


def curate(cfg: CurateConfig, generator: Generator, records: list[Record] | None = None,
           show_progress: bool = True) -> dict:
    """Run (or resume) a curate job; returns the report (also written next to the output)."""
    from tqdm import tqdm

    kinds = check_kinds(cfg.kinds)
    out = Path(cfg.out)
    prog, rep = progress_path(out), report_path(out)
    if out.suffix != ".jsonl":
        raise VlgraftError(f"--out must be a .jsonl file, not {out}")
    text_set = load_text_set(cfg.text_set)
    eval_index = text_set.near_duplicate_index()
    settings = {"spec": cfg.spec, "limit": cfg.limit, "image_root": cfg.image_root, "kinds": list(kinds),
                "generator": generator.name, "refine": cfg.refine, "max_new_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature, "seed": cfg.seed, "batch_size": cfg.batch_size,
                "pool_update": cfg.pool_update, "text_set_sha1": text_set.sha1}
    if cfg.overwrite:
        for p in (out, prog, rep):
            p.unlink(missing_ok=True)
    if not prog.is_file() and out.exists():
        raise VlgraftError(f"{out} exists (a finished curate run, see {rep.name}); pass --overwrite to replace it")
    lines = read_progress(out, prog, settings) if prog.is_file() else None
    if records is None:
        records = load_records(cfg.spec, cfg.image_root, cfg.limit)
    anns = {r.id: extract(r) for r in records}
    vocab = answer_vocab(list(anns.values()))

    pools = {k: SeedPool(SEEDS[k], cfg.pool_update) for k in kinds}
    dedup = Deduper()
    done: set[str] = set()
    offset = 0
    if lines is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        prog.write_text(json.dumps({"settings": settings}) + "\n")
        lines = []
    for ln in lines:
        done.update(ln["outcomes"])
        dedup.seen.update(ln["dedup"])
        offset = ln["offset"]
        for k, data in ln.get("pools", {}).items():
            pools[k] = SeedPool.from_json(data, cfg.pool_update)
    with out.open("ab") as f:
        f.truncate(offset)
    dropped_seen = Counter(d["reason"] for ln in lines for d in ln["dropped"])

    todo = [(i, r) for i, r in enumerate(records) if r.id not in done]
    if done and show_progress:
        print(f"resuming {out}: {len(done)} of {len(records)} records done")
    bar = tqdm(total=len(records), initial=len(records) - len(todo), unit="record", desc="curate",
               disable=not show_progress, dynamic_ncols=True)
    with out.open("ab") as fo, prog.open("a") as fp:
        for s in range(0, len(todo), cfg.batch_size):
            batch = todo[s:s + cfg.batch_size]
            t0 = time.time()
            line, recs = _batch(batch, kinds, anns, vocab, pools, dedup, eval_index, generator, cfg, out,
                                dropped_seen)
            append_batch(fo, fp, line, recs, t0)
            lines.append(line)
            bar.update(len(batch))
    bar.close()
    report = _report(cfg, settings, generator, records, lines, pools, kinds, out)
    write_json(rep, report)
    prog.unlink()
    return report


def _batch(batch, kinds, anns, vocab, pools, dedup, eval_index, generator, cfg, out,
           dropped_seen) -> tuple[dict, list[dict]]:
    outcomes: dict[str, dict | str] = {}
    jobs: list[_Job] = []
    for _, r in batch:
        if not r.images:
            outcomes[r.id] = "no_image"
            continue
        outcomes[r.id] = {}
        for kind in kinds:
            rng = random.Random(f"{cfg.seed}/{r.id}/{kind}")
            job = _Job(r, kind, anns[r.id], rng, pools[kind].sample(rng))
            job.instruction = rng.choice(DETAIL_INSTRUCTIONS) if kind == "detail" else ""
            jobs.append(job)
    seed = cfg.seed * 1_000_003 + batch[0][0]

    def run(todo: list[_Job], prompts: list[list[dict]], step: int, prefix: str) -> None:
        if not todo:
            return
        texts = generator.generate(prompts, cfg.max_new_tokens, cfg.temperature, seed + step)
        if len(texts) != len(todo):
            raise VlgraftError(f"generator {generator.name} returned {len(texts)} texts for {len(todo)} prompts")
        for j, t in zip(todo, texts):
            j.raw, j.pairs = t, parse(j.kind, t)
            shown = [joined(p) for p in (parse(j.kind, e.output) for e in j.shots) if p]
            reason, j.detail = check(j.kind, j.pairs, j.ann, vocab, shown)
            j.reason = prefix + reason if reason else None

    run(jobs, [messages(j.kind, j.ann.text, j.shots) for j in jobs], 0, "")
    if cfg.refine:
        keep = [j for j in jobs if j.reason is None]
        run(keep, [refine_messages(j.ann.text, render(j.kind, j.pairs)) for j in keep], 1, "refine:")

    recs, keys, dropped, pooled = [], [], [], {}
    for j in jobs:
        if j.reason is None:
            j.reason, j.detail = eval_overlap(j.pairs, eval_index)
        if j.reason is None:
            ks = dedup.add(j.kind, joined(j.pairs))
            if ks is not None:
                keys += ks
            else:
                j.reason, j.detail = "duplicate", "same text as an earlier kept output"
        outcomes[j.rec.id][j.kind] = j.reason or "kept"
        if j.reason:
            if dropped_seen[j.reason] < EXAMPLES_PER_REASON:
                dropped_seen[j.reason] += 1
                dropped.append({"id": j.rec.id, "kind": j.kind, "reason": j.reason, "detail": j.detail,
                                "text": j.raw[:600]})
            continue
        pairs = [(j.instruction, j.pairs[0][1])] if j.kind == "detail" else j.pairs
        conv = []
        for i, (q, a) in enumerate(pairs):
            conv += [{"from": "human", "value": (f"{IMAGE_PLACEHOLDER}\n" if i == 0 else "") + q},
                     {"from": "gpt", "value": a}]
        recs.append({"id": f"{j.rec.id}-{j.kind}", "image": _image_ref(j.rec.images[0], out), "conversations": conv,
                     "curate": {"source_id": j.rec.id, "kind": j.kind}})
        if pools[j.kind].offer(Example(j.ann.text, render(j.kind, j.pairs)), j.rng):
            pooled[j.kind] = pools[j.kind].to_json()
    line = {"outcomes": outcomes, "dedup": keys, "dropped": dropped}
    if pooled:
        line["pools"] = pooled
    return line, recs


def eval_overlap(pairs: list[tuple[str, str]], eval_index) -> tuple[str | None, str]:
    """("eval_overlap", which item) if a question or answer of ``pairs`` is, or nearly is, an item of the
    text evaluation set (``vlgraft.data.dedup`` rules), else (None, "")."""
    for text in (t for pair in pairs for t in pair if t):
        m = eval_index.find(text)
        if m is not None:
            return "eval_overlap", m.describe()
    return None, ""


def _report(cfg, settings, generator, records, lines, pools, kinds, out) -> dict:
    per = {k: {"generated": 0, "kept": 0, "dropped": Counter()} for k in kinds}
    skipped = 0
    for ln in lines:
        for oc in ln["outcomes"].values():
            if oc == "no_image":
                skipped += 1
                continue
            for kind, o in oc.items():
                per[kind]["generated"] += 1
                if o == "kept":
                    per[kind]["kept"] += 1
                else:
                    per[kind]["dropped"][o] += 1
    for v in per.values():
        v["kept_fraction"] = round(v["kept"] / v["generated"], 4) if v["generated"] else 0.0
        v["dropped"] = dict(v["dropped"].most_common())
    gen = sum(v["generated"] for v in per.values())
    kept = sum(v["kept"] for v in per.values())
    seconds = sum(ln["seconds"] for ln in lines)
    examples: dict[str, list] = {}
    for ln in lines:
        for d in ln["dropped"]:
            examples.setdefault(d["reason"], []).append(d)
    return {
        "spec": cfg.spec, "out": str(out), "generator": generator.name, "settings": settings,
        "records": len(records), "skipped_no_image": skipped,
        "total": {"generated": gen, "kept": kept, "kept_fraction": round(kept / gen, 4) if gen else 0.0},
        "kinds": per, "seconds": round(seconds, 1),
        "seconds_per_record": round(seconds / max(1, len(records) - skipped), 3),
        "filters": {"reasons": list(REASONS), "length": {k: list(LENGTH[k]) for k in kinds}, "min_pairs": MIN_PAIRS,
                    "max_repeat_3gram": MAX_REPEAT, "max_copy_3gram": MAX_COPY, "refine": cfg.refine},
        "seed_pools": {k: [asdict(e) for e in SEEDS[k]] for k in kinds},
        "final_pools": {k: pools[k].to_json() for k in kinds},
        "dropped_examples": examples,
    }


def print_report(report: dict, console=None) -> None:
    """Kept / dropped per kind, with the drop reasons, as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"curate: {report['out']}")
    for c in ("kind", "generated", "kept", "kept %", "dropped (reason: count)"):
        t.add_column(c, justify="right" if c in ("generated", "kept", "kept %") else "left")
    for kind, v in report["kinds"].items():
        t.add_row(kind, str(v["generated"]), str(v["kept"]), f"{100 * v['kept_fraction']:.0f}%",
                  ", ".join(f"{r}: {n}" for r, n in v["dropped"].items()) or "-")
    tot = report["total"]
    t.add_row("all", str(tot["generated"]), str(tot["kept"]), f"{100 * tot['kept_fraction']:.0f}%", "")
    console.print(t)
    extra = f"; {report['skipped_no_image']} records without an image skipped" if report["skipped_no_image"] else ""
    console.print(f"{report['records']} source records, {report['seconds']:.0f} s "
                  f"({report['seconds_per_record']:.2f} s per record) with {report['generator']}{extra}")
