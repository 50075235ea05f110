"""The one training loop, for every recipe, on ``accelerate``.

Global batch = ``batch_size x grad_accum x processes``. The sample order is a seeded permutation per
epoch over the *global* batch, split into per-process micro-batches, and the loss is normalised by
the number of labelled tokens in the whole global batch: one process and two processes at the same
global batch therefore take the same optimizer step, and a resumed run continues the same sequence.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from vlgraft.config import Recipe, dump_recipe, load_recipe, to_dict
from vlgraft.data.cache import FeatureCache
from vlgraft.data.mixture import SourceStreams, load_training_data, pools_for, sorted_batches
from vlgraft.data.dataset import ConversationDataset, collate
from vlgraft.data.describe import with_gold_descriptions
from vlgraft.data.images import load_image
from vlgraft.errors import ConfigError, VlgraftError
from vlgraft.models.vlm import VLM
from vlgraft.train import checkpoint as ckpt
from vlgraft.train.optim import build_optimizer, build_scheduler, param_split, resolve_groups

log = logging.getLogger(__name__)
# Settings that may change on --resume (everything else must match the saved recipe).
RESUMABLE_CHANGES = {"train.max_steps", "train.epochs", "train.save_every", "train.log_every", "train.keep_checkpoints"}


class MicroBatches(torch.utils.data.Sampler):
    """Yields this process's micro-batches (index lists) from optimizer step ``start`` on.

    One source, no grouping: each epoch is a seeded permutation. Several ``sources`` (a mixture) or
    grouping by modality (``is_image``): blocks of ``group`` global batches drawn by
    ``data.mixture.SourceStreams`` — per sample for a mixture, per whole global batch from one
    modality's pool when grouped, so every batch is one modality. Within a window of ``group``
    global batches the samples are sorted by length (little padding) and the batches' order is
    shuffled again. All of it happens at the global-batch level, before the split across processes,
    so the same global batch holds the same samples whatever the number of processes.
    """

    def __init__(self, lengths: list[int], batch: int, accum: int, world: int, rank: int, seed: int,
                 start: int, total: int, group: int = 32, is_image: list[bool] | None = None,
                 sources: list | None = None):
        self.lengths = torch.tensor(lengths)
        self.n, self.b, self.a, self.w, self.r = len(lengths), batch, accum, world, rank
        self.seed, self.start, self.total, self.group = seed, start, total, group
        self.global_batch = batch * accum * world
        self.grouped = is_image is not None
        self.streams = None
        if self.grouped or (sources and len(sources) > 1):
            pools, weights = pools_for(self.n, sources, None if is_image is None else torch.tensor(is_image, dtype=torch.bool))
            self.streams = SourceStreams(pools, weights, seed, unit=self.global_batch if self.grouped else 1)
            self.steps_per_epoch = group  # one block
        else:
            self.steps_per_epoch = self.n // self.global_batch
            if self.steps_per_epoch == 0:
                raise VlgraftError(f"{self.n} training records are fewer than one global batch ({self.global_batch})")
        self._next_block = (0, None)  # streams: (next block, draws per pool before it)

    def _block(self, block: int) -> list[tuple[int, list[int]]]:
        nxt, counts = self._next_block
        if counts is None or block < nxt:
            nxt, counts = 0, np.zeros(len(self.streams.pools), dtype=np.int64)
        units = self.group * self.global_batch // self.streams.unit
        while nxt < block:  # replay earlier blocks' draws (index arithmetic only)
            counts += self.streams.unit * np.bincount(self.streams.choices(nxt, units), minlength=len(counts))
            nxt += 1
        draws = self.streams.block(block, units, counts)
        self._next_block = (block + 1, counts)
        return draws

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """``[steps_per_epoch, global_batch]`` sample indices for one epoch (one block with streams)."""
        g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        if self.streams is None:
            perm = torch.randperm(self.n, generator=g)[: self.steps_per_epoch * self.global_batch]
            chunks = [perm]
        else:
            draws = self._block(epoch)
            if self.grouped:  # each pool's batches stay its own: one modality per batch
                chunks = [torch.tensor([i for k, idx in draws if k == pool for i in idx], dtype=torch.long)
                          for pool in sorted({k for k, _ in draws})]
            else:
                chunks = [torch.tensor([i for _, idx in draws for i in idx], dtype=torch.long)]
        batches = []
        window = self.group * self.global_batch
        for chunk in chunks:
            for s in range(0, len(chunk), window):
                batches += sorted_batches(chunk[s: s + window], self.lengths, self.global_batch)
        order = torch.randperm(len(batches), generator=g)
        return torch.stack([batches[i] for i in order])

    def __iter__(self):
        step, cached = self.start, (None, None)
        while step < self.total:
            epoch, k = divmod(step, self.steps_per_epoch)
            if cached[0] != epoch:
                cached = (epoch, self.epoch_batches(epoch))
            chunk = cached[1][k].view(self.a, self.w, self.b)
            for a in range(self.a):
                yield chunk[a, self.r].tolist()
            step += 1

    def __len__(self) -> int:
        return (self.total - self.start) * self.a


def print_split(model, console: Console) -> None:
    t = Table(title="parameters")
    for col in ("component", "trainable", "frozen"):
        t.add_column(col, justify="right" if col != "component" else "left")
    rows = param_split(model)
    for c, tr, fr in rows:
        t.add_row(c, f"{tr:,}", f"{fr:,}")
    tt, ff = sum(r[1] for r in rows), sum(r[2] for r in rows)
    t.add_row("total", f"{tt:,} ({100 * tt / max(1, tt + ff):.2f}%)", f"{ff:,}")
    console.print(t)


def print_methods(model, console: Console) -> None:
    """Parameters per method and per module (the first two levels under the method's anchor)."""
    from vlgraft.methods.base import match_names

    if not getattr(model, "method_params", None):
        return
    params = dict(model.named_parameters())
    t = Table(title="methods")
    for col in ("method", "module", "tensors", "parameters", "trainable"):
        t.add_column(col, justify="left" if col in ("method", "module") else "right")
    for mname, pats in model.method_params.items():
        names = match_names(list(params), pats)
        by_mod: dict[str, list[str]] = {}
        for n in names:
            parts = n.split(".")
            kind = next((x for x in parts if x.startswith(("vlgraft_", "lora_", "ia3_")) or "norm" in x), parts[0])
            where = "vision" if n.startswith("vision.") else "llm" if n.startswith("llm.") else parts[0]
            by_mod.setdefault(f"{where}: {kind}", []).append(n)
        for mod, ns in sorted(by_mod.items()):
            t.add_row(mname, mod, str(len(ns)), f"{sum(params[n].numel() for n in ns):,}",
                      f"{sum(params[n].numel() for n in ns if params[n].requires_grad):,}")
    console.print(t)


def modality_groups(recipe: Recipe, group_names: list[str]) -> dict[str, set[str]] | None:
    """``train.modality_groups`` checked: keys image/text, known and disjoint group names."""
    mg = recipe.train.modality_groups
    if mg is None:
        return None
    if set(mg) != {"image", "text"}:
        raise VlgraftError(f"train.modality_groups needs exactly the keys 'image' and 'text', got {sorted(mg)}")
    if not recipe.data.group_by_modality:
        raise VlgraftError("train.modality_groups needs data.group_by_modality: true (one modality per batch)")
    out = {}
    for k, names in mg.items():
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in group_names]
        if unknown:
            raise VlgraftError(f"train.modality_groups.{k}: unknown trainable group(s) {unknown}; groups: {group_names}")
        out[k] = set(names)
    if out["image"] & out["text"]:
        raise VlgraftError(f"train.modality_groups: {sorted(out['image'] & out['text'])} in both image and text")
    return out


def batch_modality(micro: list[dict], accel) -> str:
    """'image' or 'text' for a global batch that is all one modality (checked across processes)."""
    flags = torch.cat([m["has_image"] for m in micro]).to(accel.device)
    counts = accel.reduce(torch.stack([flags.sum(), torch.tensor(len(flags), device=accel.device)]).float(), "sum")
    n_img, n = int(counts[0]), int(counts[1])
    if 0 < n_img < n:
        raise VlgraftError(f"train.modality_groups: a global batch mixes {n_img} image-text and {n - n_img} text-only "
                           "samples (the modality counts do not fill whole batches; change the batch size or data)")
    return "image" if n_img else "text"


def _check_resume_recipe(saved: dict, now: dict, prefix: str = "") -> list[str]:
    diffs = []
    for k in set(saved) | set(now):
        key = f"{prefix}{k}"
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _check_resume_recipe(a, b, key + ".")
        elif a != b and key not in RESUMABLE_CHANGES:
            diffs.append(key)
    return diffs


def train(recipe: Recipe, resume: bool = False, overwrite: bool = False, source: str = "recipe",
          console: Console | None = None) -> Path:
    tc = recipe.train
    # cpu=True without a GPU: accelerate then runs DDP over gloo when launched as several processes
    # (torchrun, or `accelerate launch --multi_gpu --num_processes N` on a CPU-only machine).
    # find_unused_parameters: a process whose micro-batch is all text-only leaves the connector unused.
    accel = Accelerator(mixed_precision="bf16" if tc.precision == "bf16" else "no", cpu=not torch.cuda.is_available(),
                        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    main = accel.is_main_process
    console = console or Console(stderr=True, quiet=not main)
    out = Path(tc.output_dir)
    ckpt_root = out / "checkpoints"
    if not resume and not overwrite and ((out / "final").exists() or ckpt_root.exists()):
        raise VlgraftError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    resume_from = None
    if resume:
        steps = sorted(ckpt_root.glob("step-*")) if ckpt_root.is_dir() else []
        if not steps:
            raise VlgraftError(f"--resume: no checkpoint under {ckpt_root}")
        resume_from = steps[-1]
        saved = to_dict(load_recipe(resume_from / "recipe.yaml"))
        diffs = _check_resume_recipe(saved, to_dict(recipe))
        if diffs:
            raise VlgraftError(f"--resume: recipe differs from {resume_from / 'recipe.yaml'} in {sorted(diffs)}")

    set_seed(tc.seed)  # same initial weights on every process
    vlm = VLM.from_recipe(recipe, source)
    resolved = resolve_groups(vlm, recipe.trainable)
    for c in ckpt.load_init(vlm, recipe):
        console.print(f"initialised from {c}")

    # Data: validate and tokenise everything before any output is written.
    records, sources = load_training_data(recipe.data)
    if recipe.data.describe_first:
        records, n_desc = with_gold_descriptions(records, recipe.data.describe_first)
        if not n_desc:
            raise ConfigError("data.describe_first is set but no training record has a 'description' to learn "
                              "(give records a 'description' field, or set data.describe_first: null)")
        console.print(f"describe first: {n_desc} of {sum(r.has_image for r in records)} image records carry a "
                      "gold description")
    use_cache = tc.feature_cache and vlm.vision_cacheable()
    cache = FeatureCache(vlm.vision, tc.precision) if use_cache else None
    images = [(p, r.where) for r in records for p in r.images]
    if cache is not None:
        t0 = time.time()
        n_new = cache.fill(images, accel.device, rank=accel.process_index, world=accel.num_processes, show=main)
        accel.wait_for_everyone()
        console.print(f"feature cache {cache.dir}: {len(set(p for p, _ in images))} images, "
                      f"{n_new} encoded by this process in {time.time() - t0:.1f}s")
    else:
        for p, w in images[accel.process_index::accel.num_processes]:
            load_image(p, w)  # fail now, naming the record, not mid-run
    dataset = ConversationDataset(records, vlm, recipe.data.max_length, cache, recipe.data.turns)

    world = accel.num_processes
    global_batch = tc.batch_size * tc.grad_accum * world
    if len(sources) > 1:  # a mixture: one pass = sum of epochs x size, or every record once
        by_epochs = all(m.epochs is not None for m in recipe.data.mixture)
        per_pass = sum(s.weight for s in sources) if by_epochs else len(dataset)
        total = tc.max_steps or max(1, math.ceil(tc.epochs * per_pass / global_batch))
    else:
        total = tc.max_steps or max(1, math.ceil(tc.epochs * (len(dataset) // global_batch)))
    modality = modality_groups(recipe, [g.name for g, _ in resolved])
    optimizer = build_optimizer(resolved, vlm.llm.model)
    scheduler = build_scheduler(optimizer, recipe, total)

    start = 0
    if resume_from is not None:
        ckpt.load_trainable(vlm, resume_from)
        ckpt.load_optimizer(optimizer, resume_from)
        ckpt.load_scheduler(scheduler, resume_from)
        start = json.loads((resume_from / "trainer_state.json").read_text())["global_step"]
        console.print(f"resuming from {resume_from} at step {start}")
    elif out.exists() and overwrite and main:
        for sub in ("checkpoints", "final", "tb"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    accel.wait_for_everyone()

    model, optimizer = accel.prepare(vlm, optimizer)
    model.train()
    vlm.vision.eval()  # frozen BN statistics; dropout in the LLM follows .train()
    if resume_from is not None:
        ckpt.restore_rng(resume_from, accel.process_index)

    is_image = [r.has_image for r in records] if recipe.data.group_by_modality else None
    sampler = MicroBatches([dataset.num_tokens(i) for i in range(len(dataset))], tc.batch_size, tc.grad_accum, world,
                           accel.process_index, tc.seed, start, total, is_image=is_image, sources=sources)
    pad_id = vlm.llm.tokenizer.pad_token_id
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=tc.num_workers,
                                         collate_fn=functools.partial(collate, pad_id=pad_id))
    trainable = [p for p in vlm.parameters() if p.requires_grad]

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(dump_recipe(recipe))
        print_split(vlm, console)
        if len(sources) > 1:
            for src in sources:
                console.print(f"  source {src.spec}: {src.size} records, share {src.weight / sum(x.weight for x in sources):.1%}")
        console.print(f"{len(dataset)} conversations, global batch {global_batch} "
                      f"({tc.batch_size} x {tc.grad_accum} accum x {world} proc), {total} steps, "
                      f"precision {tc.precision}, device {accel.device}")
    writer = metrics_f = None
    if main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))
        metrics_f = (out / "metrics.jsonl").open("a")

    def save(step: int, final: bool = False) -> None:
        state = {"global_step": step, "total_steps": total, "global_batch": global_batch,
                 "samples_seen": step * global_batch}
        path = ckpt_root / f"step-{step:06d}"
        if main:
            opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer  # unwrap accelerate's
            ckpt.save_checkpoint(path, vlm, recipe, opt, scheduler, state)
        accel.wait_for_everyone()
        if not main:
            ckpt.save_rng(path, accel.process_index)
        accel.wait_for_everyone()
        if main:
            for old in sorted(ckpt_root.glob("step-*"))[:-tc.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            if final:
                ckpt.save_checkpoint(out / "final", vlm, recipe)

    it = iter(loader)
    bar = tqdm(total=total, initial=start, desc="train", disable=not main, unit="step", dynamic_ncols=True)
    t_last, samples_win, tokens_win = time.time(), 0, 0
    loss_win = torch.zeros(2, device=accel.device)
    step = start
    steps_by_modality = {"image": 0, "text": 0}
    while step < total:
        micro = [next(it) for _ in range(tc.grad_accum)]
        if modality is not None:
            kind = batch_modality(micro, accel)
            steps_by_modality[kind] += 1
        n_local = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
        n_global = accel.reduce(torch.tensor(float(n_local), device=accel.device), "sum").item()
        for a, m in enumerate(micro):
            m = {k: (v.to(accel.device) if torch.is_tensor(v) else v) for k, v in m.items()}
            sync = a == len(micro) - 1
            ctx = accel.no_sync(model) if not sync and world > 1 else contextlib.nullcontext()
            with ctx:
                out_m = model(**m)
                if not out_m["loss_sum"].requires_grad:
                    raise VlgraftError(f"step {step + 1}: a batch's loss depends on no trainable parameter "
                                       "(e.g. text-only records while only the connector trains); drop those records "
                                       "or make a language-side group trainable")
                loss = out_m["loss_sum"] / n_global * world  # DDP averages gradients over processes
                accel.backward(loss)
            loss_win += torch.stack([out_m["loss_sum"].detach().float(), torch.tensor(float(out_m["n_tokens"]), device=accel.device)])
            samples_win += m["input_ids"].shape[0]
            tokens_win += int(m["attention_mask"].sum())
        if modality is not None:  # joint training: the other modality's groups do not move at all
            for grp in optimizer.param_groups:
                if grp["name"] not in modality[kind]:
                    for p in grp["params"]:
                        p.grad = None
        grad_norm = None
        if tc.max_grad_norm is not None:
            grad_norm = accel.clip_grad_norm_(trainable, tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % tc.log_every == 0 or step == total:
            tot = accel.reduce(loss_win.clone(), "sum")
            dt = time.time() - t_last
            rec = {"step": step, "loss": (tot[0] / tot[1].clamp(min=1)).item(),
                   "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
                   "grad_norm": None if grad_norm is None else float(grad_norm),
                   "samples_per_s": samples_win * world / dt, "tokens_per_s": tokens_win * world / dt,
                   "time": time.time()}
            if modality is not None:
                rec["steps_by_modality"] = dict(steps_by_modality)
            if main:
                metrics_f.write(json.dumps(rec) + "\n")
                metrics_f.flush()
                writer.add_scalar("train/loss", rec["loss"], step)
                writer.add_scalar("train/samples_per_s", rec["samples_per_s"], step)
                for name, lr in rec["lr"].items():
                    writer.add_scalar(f"lr/{name}", lr, step)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", sps=f"{rec['samples_per_s']:.1f}")
            t_last, samples_win, tokens_win = time.time(), 0, 0
            loss_win.zero_()
        if tc.save_every and step % tc.save_every == 0 and step < total:
            save(step)
    bar.close()
    save(step, final=True)
    if main:
        metrics_f.close()
        writer.close()
        console.print(f"saved {out / 'final'}")
    accel.wait_for_everyone()
    accel.end_training()
    return out

