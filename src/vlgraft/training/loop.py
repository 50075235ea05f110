"""The one training loop, for every recipe, on ``accelerate``: set up the run, build the model, build
the data, fit, save — each step a function below, read top to bottom in ``train``.

Global batch = ``batch_size x grad_accum x processes``. The sample order is a seeded permutation per
epoch over the *global* batch, split into per-process micro-batches (``data.sampler``), and the loss is
normalised by the number of labelled tokens in the whole global batch: one process and two processes
at the same global batch therefore take the same optimizer step, and a resumed run continues the
same sequence.
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from rich.console import Console
from tqdm import tqdm

from vlgraft.config import Recipe, dump_recipe, load_recipe, to_dict, validate
from vlgraft.data.cache import FeatureCache
from vlgraft.data.dataset import ConversationDataset, collate
from vlgraft.data.describe import with_gold_descriptions
from vlgraft.data.images import load_image, set_max_pixels
from vlgraft.data.mixture import Source, load_training_data
from vlgraft.data.packing import PackedDataset, check_packable, plan_rows
from vlgraft.data.sampler import MicroBatches
from vlgraft.data.sources import parse_source
from vlgraft.data.streaming import StreamBatches, StreamDataset, collate_stream, decode_state
from vlgraft.data.streams import open_stream
from vlgraft.errors import ConfigError, DataError, VlgraftError
from vlgraft.files import OutputError, ensure_writable, read_json, remove_leftovers
from vlgraft.models.vlm import VLM
from vlgraft.report import print_split
from vlgraft.training import checkpoint as ckpt
from vlgraft.training.optim import build_optimizer, build_scheduler, resolve_groups
from vlgraft.training.trackers import JSONLTracker, keep_metrics_until

# Settings that may change on --resume (everything else must match the saved recipe); a key ending
# in "." stands for its whole section.
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs",
                     "train.num_workers",  # the order of samples does not depend on the workers
                     "train.save_every", "train.log_every", "train.keep_checkpoints",
                     "train.output_dir",  # a run folder copied or moved elsewhere resumes there
                     "eval.", "chat."}


@dataclass
class Run:
    """Where a run writes, and how it runs (the accelerator, this process's console)."""

    accel: Accelerator
    console: Console
    out: Path
    resume_from: Path | None  # the checkpoint a resumed run continues from
    overwrite: bool  # replace what the output folder holds

    @property
    def main(self) -> bool:
        return self.accel.is_main_process

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"


@dataclass
class Data:
    records: list
    sources: list
    dataset: ConversationDataset | StreamDataset
    total_steps: int
    global_batch: int
    streams: list | None = None  # data.stream: the sources' record streams (records stay empty)
    limits: list | None = None  # data.stream: records per epoch of each stream (its source's limit)


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, source: str = "recipe",
          console: Console | None = None) -> Path:
    """Train ``recipe`` (validated first); returns the run folder, with ``final/`` in it."""
    validate(recipe, source)
    run = setup_run(recipe, resume, overwrite, console)
    vlm, resolved = build_model(recipe, source, run)
    data = build_data(recipe, vlm, run)
    fit(recipe, run, vlm, resolved, data)
    return run.out


def setup_run(recipe: Recipe, resume: bool, overwrite: bool, console: Console | None) -> Run:
    """The accelerator and the run folder: refuse to overwrite a run by accident, find the checkpoint to
    resume and check that its recipe is this one; seed every process alike."""
    tc = recipe.train
    out = Path(tc.output_dir)
    # cpu=True without a GPU: accelerate then runs DDP over gloo when launched as several processes
    # (torchrun, or `accelerate launch --multi_gpu --num_processes N` on a CPU-only machine).
    # find_unused_parameters: a process whose micro-batch is all text-only leaves the connector unused.
    accel = Accelerator(mixed_precision="bf16" if tc.precision == "bf16" else "no", cpu=not torch.cuda.is_available(),
                        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                        log_with=[JSONLTracker(out / "metrics.jsonl"), "tensorboard"], project_dir=str(out))
    run = Run(accel, console or Console(stderr=True, quiet=not accel.is_main_process), out, None, overwrite)
    if not resume and not overwrite and ((out / "final").exists() or run.checkpoints.exists()):
        raise VlgraftError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    ensure_writable(out, "run folder (train.output_dir)")  # before any work, not at the first checkpoint
    if run.main:  # what an interrupted (killed) run's atomic writes left behind
        for folder in (out, run.checkpoints):
            remove_leftovers(folder)
    if resume:
        steps = sorted(run.checkpoints.glob("step-*")) if run.checkpoints.is_dir() else []
        if not steps:
            raise VlgraftError(f"--resume: no checkpoint under {run.checkpoints}")
        run.resume_from = steps[-1]
        diffs = _recipe_diffs(to_dict(load_recipe(run.resume_from / "recipe.yaml", saved=True)), to_dict(recipe))
        if diffs:
            raise VlgraftError(f"--resume: recipe differs from {run.resume_from / 'recipe.yaml'} in {sorted(diffs)}")
    set_seed(tc.seed)  # same initial weights on every process
    return run


def _recipe_diffs(saved: dict, now: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in set(saved) | set(now):
        key = f"{prefix}{k}"
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _recipe_diffs(a, b, key + ".")
        elif a != b and key not in RESUMABLE_CHANGES and not any(
                r.endswith(".") and key.startswith(r) for r in RESUMABLE_CHANGES):
            diffs.append(key)
    return diffs


def build_model(recipe: Recipe, source: str, run: Run):
    """The VLM with its methods, the trainable groups resolved, earlier stages' weights (``init_from``)."""
    vlm = VLM.from_recipe(recipe, source)
    resolved = resolve_groups(vlm, recipe.trainable)
    for c in ckpt.load_init(vlm, recipe):
        run.console.print(f"initialised from {c}")
    return vlm, resolved


def build_data(recipe: Recipe, vlm, run: Run) -> Data:
    """Every training record validated and tokenised, every image the run's steps draw checked (or its
    features cached), before any output is written; and the run's length in optimizer steps."""
    accel, console, tc = run.accel, run.console, recipe.train
    set_max_pixels(recipe.data.max_image_pixels)
    if recipe.data.stream:
        return build_stream_data(recipe, vlm, run)
    records, sources = load_training_data(recipe.data)
    eval_path = getattr(parse_source(recipe.data.eval), "path", None)
    if eval_path and not Path(eval_path).exists():
        console.print(f"[yellow]warning[/]: data.eval {eval_path} does not exist (training does not need it; "
                      "vlgraft eval will)")
    if recipe.data.describe_first:
        records, n_desc = with_gold_descriptions(records, recipe.data.describe_first)
        if not n_desc:
            raise ConfigError("data.describe_first is set but no training record has a 'description' to learn "
                              "(give records a 'description' field, or set data.describe_first: null)")
        console.print(f"describe first: {n_desc} of {sum(r.has_image for r in records)} image records carry a "
                      "gold description")
    dataset = ConversationDataset(records, vlm, recipe.data.max_length, None, recipe.data.turns)
    by_epochs = len(sources) > 1 and all(m.epochs is not None for m in recipe.data.mixture)
    if recipe.data.pack:
        check_packable(vlm)
        rows, sources = plan_rows(records, [dataset.num_tokens(i) for i in range(len(dataset))], sources,
                                  recipe.data.max_length, by_epochs)
        dataset = PackedDataset(dataset, rows)
        console.print(f"data.pack: {len(records)} records in {len(rows)} rows of up to {recipe.data.max_length} "
                      f"tokens ({len(records) / len(rows):.2f} records per row)")
    global_batch = tc.batch_size * tc.grad_accum * accel.num_processes
    if len(sources) > 1:  # a mixture: one pass = sum of epochs x size, or every record once (rows when packed)
        per_pass = sum(s.weight for s in sources) if by_epochs else len(dataset)
        total = tc.max_steps or max(1, math.ceil(tc.epochs * per_pass / global_batch))
    else:
        total = tc.max_steps or max(1, math.ceil(tc.epochs * (len(dataset) // global_batch)))
    data = Data(records, sources, dataset, total, global_batch)
    prepare_images(recipe, vlm, run, data)
    return data


def modality_flags(recipe: Recipe, data: Data) -> list[bool] | None:
    """Per sample (a record, or a packed row: one modality each) whether it has an image, when batches
    are grouped by modality; else None."""
    if not recipe.data.group_by_modality:
        return None
    ds = data.dataset
    if isinstance(ds, PackedDataset):
        return [ds.has_image(j) for j in range(len(ds))]
    return [r.has_image for r in data.records]


def sampler_for(recipe: Recipe, data: Data, world: int, rank: int, start: int, whole: bool = False) -> MicroBatches:
    """This process's micro-batches from step ``start``; ``whole``: one whole global batch per step."""
    tc, ds = recipe.train, data.dataset
    batch, accum = (data.global_batch, 1) if whole else (tc.batch_size, tc.grad_accum)
    return MicroBatches([ds.num_tokens(i) for i in range(len(ds))], batch, accum, 1 if whole else world,
                        0 if whole else rank, tc.seed, start, data.total_steps, is_image=modality_flags(recipe, data),
                        sources=data.sources)


def drawn_records(recipe: Recipe, data: Data) -> list[int]:
    """The records the run's steps draw (every process's share), in order of first use: a short run
    over a large set uses a fraction of it. Index arithmetic only: the sampler's own schedule, whose
    global batches do not depend on how they are split across processes."""
    rows = data.dataset.rows if isinstance(data.dataset, PackedDataset) else None
    try:
        sampler = sampler_for(recipe, data, 1, 0, 0, whole=True)
    except VlgraftError:  # no schedule (fewer records than a batch): every record, so each bad image is named
        return list(range(len(data.records)))  # first; the sampler's own error follows
    seen: dict[int, None] = {}
    for batch in sampler:
        for j in batch:
            for i in (rows[j] if rows is not None else (j,)):
                seen.setdefault(i, None)
        if len(seen) == len(data.records):
            break
    return list(seen)


def prepare_images(recipe: Recipe, vlm, run: Run, data: Data) -> None:
    """Every image the run's steps will draw checked — its features cached (``train.feature_cache``) or
    the file decoded — before any output is written, so a bad image fails now, naming its record."""
    accel, console, tc = run.accel, run.console, recipe.train
    used = drawn_records(recipe, data)
    images = [(p, data.records[i].where) for i in used for p in data.records[i].images]
    n_all = sum(len(r.images) for r in data.records)
    if len(images) < n_all:
        console.print(f"the {data.total_steps} steps draw {len(used)} of {len(data.records)} training records: "
                      f"{len(images)} of {n_all} images are prepared")
    cache = FeatureCache(vlm.vision, tc.precision) if tc.feature_cache and vlm.vision_cacheable() else None
    if cache is not None:
        ensure_writable(cache.dir, "feature cache ($VLGRAFT_FEATURE_CACHE, or train.feature_cache: false)")
        cache.fill(images, accel.device, rank=accel.process_index, world=accel.num_processes, show=run.main)
        accel.wait_for_everyone()
        f = cache.last_fill  # this process's share (every world-th image)
        console.print(f"feature cache {cache.dir}: {f['images']} images; this process {f['hits']} of {f['mine']} "
                      f"cached already ({f['hits'] / max(f['mine'], 1):.0%} hits), {f['encoded']} encoded, "
                      f"{f['hashed']} hashed, {f['seconds']:.1f}s")
        base = data.dataset.base if isinstance(data.dataset, PackedDataset) else data.dataset
        base.cache = cache
    else:
        for p, w in images[accel.process_index::accel.num_processes]:
            load_image(p, w)  # fail now, naming the record, not mid-run


def build_stream_data(recipe: Recipe, vlm, run: Run) -> Data:
    """``data.stream``: the sources opened as streams; records are read, checked and tokenised as the
    batches need them (``data.streaming``)."""
    d, tc = recipe.data, recipe.train
    for key, on in [("data.group_by_modality", d.group_by_modality),
                    ("train.modality_groups", tc.modality_groups),
                    ("a mixture given by epochs", any(m.epochs is not None for m in d.mixture))]:
        if on:
            raise ConfigError(f"data.stream: {key} is not supported on streams yet (it needs every record's length "
                              "or modality before training); set data.stream: false to use it")
    parts = ([(m.train, m.image_root or d.image_root, m.limit, 1.0 if m.weight is None else m.weight,
               f"data.mixture[{i}]") for i, m in enumerate(d.mixture)]
             or [(d.train or "easyvqa:train", d.image_root, d.limit, 1.0, "data.train")])
    streams = [open_stream(spec, root, where) for spec, root, _, _, where in parts]
    limits = [limit for _, _, limit, _, _ in parts]
    sources = [Source(s.name, 0, 0, w) for s, (*_, w, _) in zip(streams, parts)]
    global_batch = tc.batch_size * tc.grad_accum * run.accel.num_processes
    total = tc.max_steps
    if total is None:
        counts = [lim if lim is not None else s.count() for s, lim in zip(streams, limits)]
        if any(c is None for c in counts):
            raise ConfigError("data.stream: set train.max_steps (a stream of this format has no cheap record count "
                              "to derive the steps from train.epochs)")
        total = max(1, math.ceil(tc.epochs * sum(counts) / global_batch))
    if tc.feature_cache and vlm.vision_cacheable():
        run.console.print("data.stream: images are encoded in every step (the feature cache needs every image "
                          "before training)")
    if d.pack:
        check_packable(vlm)
    dataset = StreamDataset(streams, vlm, d.max_length, d.turns, d.describe_first)
    run.console.print(f"data.stream: {', '.join(s.name for s in streams)} ({sum(len(s.shards) for s in streams)} "
                      f"shard(s)), shuffle buffer {d.shuffle_buffer}"
                      + (", each micro-batch's records packed into rows" if d.pack else ""))
    return Data([], sources, dataset, total, global_batch, streams, limits)


def check_text_kl(vlm) -> None:
    """``train.text_kl`` compares the model with itself in a base pass (every method off): that is the
    frozen base model only if every method can be switched off and no LLM weight trains directly."""
    from vlgraft.methods.base import match_names

    for m in vlm.methods:
        if not m.switchable(vlm):
            raise ConfigError(f"train.text_kl: method {m.name!r} cannot be switched off for the base pass (it trains "
                              "the LLM's own weights, or rescales inside peft's layers); drop text_kl or the method")
    created = [n for m in vlm.methods for n in m.created]
    direct = [n for n, p in vlm.named_parameters() if p.requires_grad and n.startswith("llm.")
              and not match_names([n], created)]
    if direct:
        raise ConfigError(f"train.text_kl: the LLM's own weights train ({direct[0]}, ...), so a base pass is not the "
                          "base model; train methods (LoRA, adapters, ...) instead, or drop text_kl")


def fit(recipe: Recipe, run: Run, vlm, resolved, data: Data) -> None:
    """The optimizer steps from the start (or the resumed step) to the end, then the final checkpoint."""
    accel, console, tc, main = run.accel, run.console, recipe.train, run.main
    if tc.text_kl:
        check_text_kl(vlm)
    world, total = accel.num_processes, data.total_steps
    mg = recipe.train.modality_groups
    modality = {k: set(v) for k, v in mg.items()} if mg else None
    optimizer = build_optimizer(resolved, vlm.llm.model)
    scheduler = build_scheduler(optimizer, recipe, total)

    start = 0
    if run.resume_from is not None:
        ckpt.load_trainable(vlm, run.resume_from)
        ckpt.load_optimizer(optimizer, run.resume_from)
        ckpt.load_scheduler(scheduler, run.resume_from)
        start = read_json(run.resume_from / "trainer_state.json")["global_step"]
        console.print(f"resuming from {run.resume_from} at step {start}")
        if main:  # the steps logged after that checkpoint are trained again: their records go
            keep_metrics_until(run.out / "metrics.jsonl", start)
    elif run.out.exists() and run.overwrite and main:
        for sub in ("checkpoints", "final", "tb"):
            shutil.rmtree(run.out / sub, ignore_errors=True)
        (run.out / "metrics.jsonl").unlink(missing_ok=True)
    accel.wait_for_everyone()

    model, optimizer = accel.prepare(vlm, optimizer)
    model.train()
    vlm.vision.eval()  # frozen BN statistics; dropout in the LLM follows .train()
    if run.resume_from is not None:
        ckpt.restore_rng(run.resume_from, accel.process_index)

    ds = data.dataset
    if data.streams is not None:
        state = decode_state(read_json(run.resume_from / "data_state.json")) if run.resume_from else None
        sampler = StreamBatches(data.streams, [s.weight for s in data.sources], data.limits, tc.batch_size,
                                tc.grad_accum, world, accel.process_index, tc.seed, start, total,
                                recipe.data.shuffle_buffer, state)
        collate_fn = functools.partial(collate_stream, pack=recipe.data.max_length if recipe.data.pack else None)
    else:
        sampler = sampler_for(recipe, data, world, accel.process_index, start)
        collate_fn = collate
    pad_id = vlm.llm.tokenizer.pad_token_id
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=tc.num_workers,
                                         collate_fn=functools.partial(collate_fn, pad_id=pad_id))
    trainable = [p for p in vlm.parameters() if p.requires_grad]

    if main:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "recipe.yaml").write_text(dump_recipe(recipe))
        print_split(vlm, console)
        if len(data.sources) > 1:
            for src in data.sources:
                console.print(f"  source {src.spec}: {src.size} records, "
                              f"share {src.weight / sum(x.weight for x in data.sources):.1%}")
        unit = ("a stream of conversations" if data.streams is not None else
                f"{len(ds)} {'packed rows' if isinstance(ds, PackedDataset) else 'conversations'}")
        console.print(f"{unit}, global batch {data.global_batch} "
                      f"({tc.batch_size} x {tc.grad_accum} accum x {world} proc), {total} steps, "
                      f"precision {tc.precision}, device {accel.device}")
    accel.init_trackers("tb")

    def save(step: int, final: bool = False) -> None:
        data_state = sampler.state_at(step) if data.streams is not None and not final else None
        save_checkpoints(run, recipe, vlm, optimizer, scheduler, step, total, data.global_batch, final, data_state)

    it = iter(loader)
    bar = tqdm(total=total, initial=start, desc="train", disable=not main, unit="step", dynamic_ncols=True)
    t_last, samples_win, tokens_win, slots_win = time.time(), 0, 0, 0
    loss_win = torch.zeros(4, device=accel.device)  # cross-entropy sum, tokens, KL-to-base sum, its tokens
    kl_args = {"text_kl": tc.text_kl} if tc.text_kl else {}
    step = start
    steps_by_modality = {"image": 0, "text": 0}
    while step < total:
        micro = [next(it) for _ in range(tc.grad_accum)]
        bad = next((m["error"] for m in micro if "error" in m), None)
        if bad is not None:  # a streamed record that does not validate, named (data.streaming)
            raise DataError(f"step {step + 1}: {bad}")
        if modality is not None:
            kind = batch_modality(micro, accel)
            steps_by_modality[kind] += 1
        n_local = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
        n_global = accel.reduce(torch.tensor(float(n_local), device=accel.device), "sum").item()
        step_loss = torch.zeros((), device=accel.device)
        for a, m in enumerate(micro):
            m = {k: (v.to(accel.device) if torch.is_tensor(v) else v) for k, v in m.items()}
            sync = a == len(micro) - 1
            with accel.no_sync(model) if not sync and world > 1 else contextlib.nullcontext():
                out_m = model(**m, **kl_args)
                if not out_m["loss_sum"].requires_grad:
                    raise VlgraftError(f"step {step + 1}: a batch's loss depends on no trainable parameter "
                                       "(e.g. text-only records while only the connector trains, or while every "
                                       "LLM method has scope: image); drop those records or make a language-side "
                                       "group trainable")
                accel.backward(out_m["loss_sum"] / n_global * world)  # DDP averages gradients over processes
            step_loss += out_m["loss_sum"].detach().float()
            kl = out_m.get("kl_sum", torch.zeros((), device=accel.device)).float()
            loss_win += torch.stack([out_m["loss_sum"].detach().float() - tc.text_kl * kl,
                                     torch.tensor(float(out_m["n_tokens"]), device=accel.device), kl,
                                     torch.tensor(float(out_m.get("kl_tokens", 0)), device=accel.device)])
            samples_win += records_in(m)
            tokens_win += int(m["attention_mask"].sum())
            slots_win += m["attention_mask"].numel()
        if modality is not None:  # joint training: the other modality's groups do not move at all
            for grp in optimizer.param_groups:
                if grp["name"] not in modality[kind]:
                    for p in grp["params"]:
                        p.grad = None
        grad_norm = accel.clip_grad_norm_(trainable, tc.max_grad_norm) if tc.max_grad_norm is not None else None
        check_finite(run, step + 1, step_loss, grad_norm)  # before the step: no weight becomes NaN
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % tc.log_every == 0 or step == total:
            tot = accel.reduce(loss_win.clone(), "sum")
            dt = time.time() - t_last
            rec = {"loss": (tot[0] / tot[1].clamp(min=1)).item(),
                   "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
                   "grad_norm": None if grad_norm is None else float(grad_norm),
                   "samples_per_s": samples_win * world / dt, "tokens_per_s": tokens_win * world / dt,
                   "padding": 1 - tokens_win / max(slots_win, 1),  # share of this process's padded positions
                   "time": time.time()}
            if modality is not None:
                rec["steps_by_modality"] = dict(steps_by_modality)
            if tc.text_kl:  # per text-only answer token, in nats
                rec["text_kl"] = (tot[2] / tot[3].clamp(min=1)).item()
            accel.log(rec, step=step)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")
            t_last, samples_win, tokens_win, slots_win = time.time(), 0, 0, 0
            loss_win.zero_()
        if tc.save_every and step % tc.save_every == 0 and step < total:
            save(step)
    bar.close()
    save(step, final=True)
    console.print(f"saved {run.out / 'final'}")
    accel.wait_for_everyone()
    accel.end_training()


def records_in(batch: dict) -> int:
    """Training records in a collated batch: one per row, or a packed row's documents (``data.pack``)."""
    if "document_ids" in batch:
        return int((batch["document_ids"].amax(1) + 1).sum())
    return batch["input_ids"].shape[0]


def check_finite(run: Run, step: int, loss: torch.Tensor, grad_norm) -> None:
    """Stop training, naming the step, when the loss or the gradient norm of any process is NaN or
    infinite: the step is not taken and no checkpoint is written, so the last one stays good."""
    values = torch.stack([loss, torch.as_tensor(0.0 if grad_norm is None else grad_norm, device=loss.device).float()])
    bad = run.accel.reduce((~torch.isfinite(values)).float(), "sum")
    if bool(bad.any()):
        what = "loss" if bad[0] else "gradient norm"
        earlier = sorted(run.checkpoints.glob("step-*"))
        kept = f"the last checkpoint, {earlier[-1]}, is kept" if earlier else "no checkpoint was written"
        raise VlgraftError(f"step {step}: the {what} is not finite ({float(values[0 if bad[0] else 1]):g}); training "
                           f"stopped before taking the step, and {kept}. Lower the learning rate, check the data, or "
                           "train in fp32")


def batch_modality(micro: list[dict], accel) -> str:
    """'image' or 'text' for a global batch that is all one modality (checked across processes)."""
    flags = torch.cat([m["has_image"] for m in micro]).to(accel.device)
    counts = accel.reduce(torch.stack([flags.sum(), torch.tensor(len(flags), device=accel.device)]).float(), "sum")
    n_img, n = int(counts[0]), int(counts[1])
    if 0 < n_img < n:
        raise VlgraftError(f"train.modality_groups: a global batch mixes {n_img} image-text and {n - n_img} text-only "
                           "samples (the modality counts do not fill whole batches; change the batch size or data)")
    return "image" if n_img else "text"


def save_checkpoints(run: Run, recipe: Recipe, vlm, optimizer, scheduler, step: int, total: int, global_batch: int,
                     final: bool, data_state: dict | None = None) -> None:
    """A resumable checkpoint at ``step`` (every process adds its RNG state), the oldest pruned to
    ``train.keep_checkpoints``; at the end also ``final/`` (the trainable weights and the recipe)."""
    accel, main = run.accel, run.main
    state = {"global_step": step, "total_steps": total, "global_batch": global_batch,
             "samples_seen": step * global_batch}
    path = run.checkpoints / f"step-{step:06d}"
    if main:
        opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer  # unwrap accelerate's
        try:
            ckpt.save_checkpoint(path, vlm, recipe, opt, scheduler, state, data_state)
        except OutputError as e:
            earlier = sorted(run.checkpoints.glob("step-*"))
            kept = f"the last complete checkpoint, {earlier[-1]}, is intact (--resume continues from it)" if earlier \
                else "no earlier checkpoint exists"
            raise OutputError(f"training stopped at step {step}: {e}; {kept}") from None
    accel.wait_for_everyone()
    if not main:
        ckpt.save_rng(path, accel.process_index)
    accel.wait_for_everyone()
    if main:
        for old in sorted(run.checkpoints.glob("step-*"))[:-recipe.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        if final:
            ckpt.save_checkpoint(run.out / "final", vlm, recipe)
