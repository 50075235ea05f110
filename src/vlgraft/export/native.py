"""``--format vlgraft``: a self-contained model folder that any recipe can be written to.

    OUT/export.json        format marker, version, what was merged, the checkpoint it came from
    OUT/recipe.yaml        the recipe, with only the methods that stay modules and the parts' new names
    OUT/llm/               the LLM (mergeable methods folded in) + tokenizer, transformers format
    OUT/vision/            a transformers vision tower + its image processor (``vision_hr/`` for a pair)
    OUT/model.safetensors  everything else: connector, unmerged methods' tensors, a bundled tower's weights

``vlgraft chat/eval/serve`` and ``vlgraft.load`` read it like a checkpoint (``load_export``), without
the run folder, the hub or the original parts' files: the recipe names ``hf:llm`` and ``hf:vision``
are resolved inside the folder. Which tensors go to ``model.safetensors`` is computed by one function
(``_extra_keys``) at export and at load, and the load checks the file holds exactly those.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlgraft.config import dump_recipe
from vlgraft.errors import VlgraftError
from vlgraft.files import read_json, read_safetensors

FORMAT_VERSION = 1
MARKER = "export.json"


def check(vlm, recipe) -> None:
    """Every recipe can be written in this format."""


def _towers(vlm) -> list[tuple[str, str, object]]:
    """(recipe key, state-dict prefix, encoder) of each vision encoder: one, or a low/high pair."""
    from vlgraft.models.vision import DualEncoder

    if isinstance(vlm.vision, DualEncoder):
        return [("vision", "vision.low.", vlm.vision.low), ("vision_hr", "vision.high.", vlm.vision.high)]
    return [("vision", "vision.", vlm.vision)]


def _base_keys(model) -> set[str]:
    """The state-dict keys a freshly built transformers model of ``model``'s class and config has: the
    tensors its own folder holds (modules a method put inside it are not among them)."""
    with torch.device("meta"):
        fresh = type(model)(copy.deepcopy(model.config))
    return set(fresh.state_dict())


def _folder_keys(vlm) -> dict[str, tuple[str, object, set[str]]]:
    """Sub-folder -> (state-dict prefix, transformers model, its base keys) for the parts saved in
    transformers format: the LLM and every transformers vision tower."""
    from vlgraft.models.vision import HFVisionEncoder

    out = {"llm": ("llm.model.", vlm.llm.model, _base_keys(vlm.llm.model))}
    for key, prefix, enc in _towers(vlm):
        if isinstance(enc, HFVisionEncoder):
            out[key] = (prefix + "model.", enc.model, _base_keys(enc.model))
    return out


def _located(state_keys, prefix: str, key: str) -> str | None:
    """Where the base weight ``key`` lives in the state dict: ``prefix + key``, or, inside a peft layer
    kept as a module (a LoRA with ``scope: image``), under its ``base_layer`` (one per nesting level)."""
    module, _, param = (prefix + key).rpartition(".")
    for depth in range(4):
        name = ".".join([module] + ["base_layer"] * depth + [param])
        if name in state_keys:
            return name
    return None


def _extra_keys(vlm, folders) -> list[str]:
    """The state-dict keys not held by a transformers sub-folder: they go to ``model.safetensors``. A
    transformers tower is also reachable as ``<prefix>tower.``; those aliases are covered too."""
    from vlgraft.models.vision import HFVisionEncoder

    state_keys = set(vlm.state_dict())
    covered = {_located(state_keys, prefix, k) for prefix, _, keys in folders.values() for k in keys}
    for key, prefix, enc in _towers(vlm):
        if isinstance(enc, HFVisionEncoder) and key in folders:
            sub = "" if enc.tower is enc.model else "vision_model."
            covered |= {f"{prefix}tower.{k[len(sub):]}" for k in folders[key][2] if k.startswith(sub)}
    return sorted(k for k in vlm.state_dict() if k not in covered)


def write(vlm, recipe, folder: Path) -> dict:
    merged = [[m.name, m.merge(vlm)] for m in vlm.methods if m.mergeable]  # a list: a name may repeat
    kept = [m for m in vlm.methods if not m.mergeable]
    folders = _folder_keys(vlm)
    state = vlm.state_dict()
    for sub, (prefix, model, keys) in folders.items():
        weights = {k: state[at] for k in keys if (at := _located(state, prefix, k)) is not None}
        missing = sorted(keys - set(weights))
        if missing:  # a method replaced a base module instead of wrapping it: the folder would be incomplete
            raise VlgraftError(f"export: {sub} weights {missing[:3]} are not in the model (a method renamed them)")
        model.save_pretrained(folder / sub, state_dict=weights)
    vlm.llm.tokenizer.save_pretrained(folder / "llm")
    for key, _, enc in _towers(vlm):
        if key in folders:
            _save_image_processor(enc, folder / key)
    extra = {k: state[k].detach().contiguous().cpu() for k in _extra_keys(vlm, folders)}
    save_file(extra, str(folder / "model.safetensors"))
    out = copy.deepcopy(recipe)
    out.methods = [m.cfg for m in kept]
    out.init_from = None  # its weights are in this folder
    out.llm.name = "hf:llm"
    for key in folders:
        if key != "llm":
            getattr(out, key).name = f"hf:{key}"
    (folder / "recipe.yaml").write_text(dump_recipe(out))
    info = {"format": "vlgraft", "version": FORMAT_VERSION, "parts": sorted(folders),
            "merged": merged, "kept": [m.name for m in kept], "tensors": len(extra)}
    (folder / MARKER).write_text(json.dumps(info, indent=1))
    return info


def _save_image_processor(enc, folder: Path) -> None:
    """The tower's image processor settings beside its weights (mean and std are read from them)."""
    from transformers import AutoImageProcessor, CLIPImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(enc.model_id)
    except (OSError, ValueError):  # the tower had none: write the statistics vlgraft used
        proc = CLIPImageProcessor(image_mean=list(enc.mean), image_std=list(enc.std))
    proc.save_pretrained(folder)


def summary(info: dict) -> str:
    merged = ", ".join(f"{n} ({c} layers)" for n, c in info["merged"]) or "nothing"
    kept = ", ".join(info["kept"]) or "none"
    return f"merged {merged}; methods kept as modules: {kept}; parts in transformers format: {', '.join(info['parts'])}"


def is_export(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def load_export(folder: Path, device="cpu", overrides: list[str] | None = None):
    """(vlm, recipe, folder) from an export folder, with ``overrides`` of its data / eval / chat settings."""
    from vlgraft.config import load_recipe
    from vlgraft.data.images import set_max_pixels
    from vlgraft.models.vlm import VLM

    folder = Path(folder)
    info = read_json(folder / MARKER)
    if not isinstance(info, dict) or info.get("format") != "vlgraft" or info.get("version") != FORMAT_VERSION:
        raise VlgraftError(f"{folder / MARKER}: not a vlgraft export of format version {FORMAT_VERSION}")
    recipe = load_recipe(folder / "recipe.yaml", overrides, saved=True)
    for key in info.get("parts", []):
        part = recipe.llm if key == "llm" else getattr(recipe, key)
        if not (folder / key).is_dir():
            raise VlgraftError(f"{folder}: the export lacks its {key}/ folder")
        part.name = f"hf:{folder / key}"
    set_max_pixels(recipe.data.max_image_pixels)
    vlm = VLM.from_recipe(recipe, str(folder / "recipe.yaml"))
    f = folder / "model.safetensors"
    weights = read_safetensors(f)
    expected = set(_extra_keys(vlm, _folder_keys(vlm)))
    missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or extra:
        raise VlgraftError(f"{f}: keys do not match the exported recipe's model (missing {missing[:3]}, "
                           f"unexpected {extra[:3]})")
    state = vlm.state_dict()
    with torch.no_grad():
        for k, w in weights.items():
            if w.shape != state[k].shape:
                raise VlgraftError(f"{f}: '{k}' has shape {tuple(w.shape)}, model has {tuple(state[k].shape)}")
            state[k].copy_(w)
    for p in vlm.parameters():
        p.requires_grad_(False)
    return vlm.to(device).eval(), recipe, folder
