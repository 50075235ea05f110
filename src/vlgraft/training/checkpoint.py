"""Checkpoints: trainable parameters (safetensors) + the resolved recipe, written atomically.

Resumable checkpoints also hold the optimizer state (safetensors), scheduler and trainer state
(JSON) and each process's RNG state (safetensors). Nothing is unpickled when a checkpoint is read.
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlgraft.config import dump_recipe
from vlgraft.data.images import set_max_pixels
from vlgraft.errors import VlgraftError
from vlgraft.files import atomic_path, read_json, read_safetensors

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, model, recipe, optimizer=None, scheduler=None, state: dict | None = None,
                    data_state: dict | None = None) -> None:
    """Write ``path`` (a folder) atomically; ``model`` is the unwrapped VLM. A resumable checkpoint
    (with ``state``) includes this process's RNG state as rank 0; other processes add theirs with
    ``save_rng`` once the folder is committed."""
    with atomic_path(path, folder=True) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in model.trainable_state_dict().items()},
                  tmp / "trainable.safetensors")
        (tmp / "recipe.yaml").write_text(dump_recipe(recipe))
        if optimizer is not None:
            sd = optimizer.state_dict()
            tensors = {f"state.{i}.{k}": v.cpu() for i, st in sd["state"].items() for k, v in st.items()
                       if torch.is_tensor(v)}
            save_file(tensors, tmp / "optimizer.safetensors")
            (tmp / "optimizer.json").write_text(json.dumps(sd["param_groups"]))
        if scheduler is not None:
            sch = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
            (tmp / "scheduler.json").write_text(json.dumps(sch))
        if state is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
            save_rng(tmp, 0)
        if data_state is not None:  # a stream's position and shuffle buffer (data.streaming), as JSON data
            from vlgraft.data.streaming import encode_state

            (tmp / "data_state.json").write_text(json.dumps(encode_state(data_state)))


def save_rng(path: Path, rank: int) -> None:
    """Add this process's RNG state (torch, CUDA, Python) to checkpoint folder ``path``."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, path / f"rng-{rank}.safetensors")
    (path / f"rng-{rank}.json").write_text(json.dumps(random.getstate()))


def restore_rng(path: Path, rank: int) -> None:
    if not (path / f"rng-{rank}.safetensors").is_file():  # a run stopped before this process wrote it
        log.warning("%s has no RNG state for process %d; its random streams restart from the seed", path, rank)
        return
    t = read_safetensors(path / f"rng-{rank}.safetensors")
    torch.set_rng_state(t["torch"])
    if "cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["cuda"])
    py = read_json(path / f"rng-{rank}.json")
    random.setstate((py[0], tuple(py[1]), py[2]))


def copy_weights(params: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor], where: str) -> None:
    """Copy every tensor of ``weights`` into the parameter of the same name (which must exist), after
    checking its shape; ``where`` names the file in errors."""
    with torch.no_grad():
        for n, w in weights.items():
            if w.shape != params[n].shape:
                raise VlgraftError(f"{where}: '{n}' has shape {tuple(w.shape)}, model has {tuple(params[n].shape)}")
            params[n].copy_(w)


def load_trainable(model, path: Path) -> None:
    """Load ``trainable.safetensors`` into ``model``; its keys must equal the trainable parameter names."""
    f = path / "trainable.safetensors"
    if not f.is_file():
        raise VlgraftError(f"{path}: not a checkpoint (no trainable.safetensors)")
    weights = read_safetensors(f)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or extra:
        raise VlgraftError(f"{f}: keys do not match the recipe's trainable parameters "
                           f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                           f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''})")
    copy_weights(params, weights, str(f))


def saved_param_count(path: Path) -> int:
    """Parameters in a checkpoint folder's ``trainable.safetensors`` (exactly the trainable ones), read
    from the header without loading a tensor."""
    from safetensors import safe_open

    f = Path(path) / "trainable.safetensors"
    try:
        with safe_open(str(f), "pt") as st:
            return sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118 (not a dict)
    except Exception:  # damaged or foreign: the reader's error names the file
        read_safetensors(f)
        raise


def load_init(model, recipe, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """Load the weights of ``recipe.init_from`` (and, first, of its own ``init_from`` chain) into ``model``.

    Every tensor of the referenced checkpoint must exist in ``model`` with the same shape, and the
    referenced recipe must use the same vision encoder, LLM and connector. Returns the checkpoints
    loaded, oldest first."""
    from vlgraft.config import load_recipe

    if not recipe.init_from:
        return []
    ckpt = find_checkpoint(recipe.init_from)
    if ckpt.resolve() in _seen:
        raise VlgraftError(f"init_from: {ckpt} is referenced twice in one chain (a cycle)")
    ref = load_recipe(ckpt / "recipe.yaml", saved=True)
    for key, a, b in (("vision.name", ref.vision.name, recipe.vision.name), ("llm.name", ref.llm.name, recipe.llm.name),
                      ("connector.name", ref.connector.name, recipe.connector.name)):
        if a != b:
            raise VlgraftError(f"init_from: {ckpt} was trained with {key}={a!r}, this recipe has {b!r}")
    loaded = load_init(model, ref, _seen + (ckpt.resolve(),))
    f = ckpt / "trainable.safetensors"
    weights = read_safetensors(f)
    params = dict(model.named_parameters())
    extra = sorted(set(weights) - set(params))
    if extra:
        raise VlgraftError(f"init_from: {f} holds {extra[0]!r} (and {len(extra) - 1} more), which this recipe's "
                           "model does not have (its methods or connector differ)")
    copy_weights(params, weights, f"init_from: {f}")
    return loaded + [ckpt]


def load_optimizer(optimizer, path: Path) -> None:
    tensors = read_safetensors(path / "optimizer.safetensors")
    state: dict = {}
    for k, v in tensors.items():
        _, i, name = k.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    groups = read_json(path / "optimizer.json")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def load_scheduler(scheduler, path: Path) -> None:
    state = read_json(path / "scheduler.json")
    state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)  # the schedule function is rebuilt from the recipe
    scheduler.load_state_dict(state)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, a ``vlgraft export`` folder, or a run folder (its ``final`` checkpoint, else
    its latest one)."""
    from vlgraft.export.native import is_export

    p = Path(path)
    if (p / "trainable.safetensors").is_file() or is_export(p):
        return p
    if (p / "final" / "trainable.safetensors").is_file():
        return p / "final"
    steps = sorted((p / "checkpoints").glob("step-*")) if (p / "checkpoints").is_dir() else []
    if steps:
        return steps[-1]
    raise VlgraftError(f"no checkpoint found at {p} (expected trainable.safetensors, export.json, final/ or "
                       "checkpoints/step-*)")


def load_vlm(path: str | Path, device: str | torch.device = "cpu", overrides: list[str] | None = None):
    """Rebuild the base parts from the checkpoint's recipe (with ``overrides`` of its data, eval, chat
    or train settings), re-apply methods, load the trained weights; or read a ``vlgraft export``
    folder. Returns (vlm, recipe, checkpoint)."""
    from vlgraft.config import load_recipe
    from vlgraft.export.native import is_export, load_export
    from vlgraft.models.vlm import VLM
    from vlgraft.training.optim import resolve_groups

    ckpt = find_checkpoint(path)
    if is_export(ckpt):
        return load_export(ckpt, device, overrides)
    recipe = load_recipe(ckpt / "recipe.yaml", overrides, saved=True)
    set_max_pixels(recipe.data.max_image_pixels)
    vlm = VLM.from_recipe(recipe, str(ckpt / "recipe.yaml"))
    resolve_groups(vlm, recipe.trainable)
    load_init(vlm, recipe)
    load_trainable(vlm, ckpt)
    return vlm.to(device).eval(), recipe, ckpt
