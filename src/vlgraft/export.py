"""``vlgraft export``: a trained model out of its run folder.

Every method that says it is ``mergeable`` folds itself into the base weights (LoRA / DoRA / IA3;
``select``'s tensors are base weights already); the others stay modules and their tensors are kept
beside the LLM. The folder holds ``llm/`` (the LLM with merged weights, in transformers format,
loadable as ``hf:<folder>/llm``), ``trainable.safetensors`` (every trained tensor that is not a base
LLM weight: connector, unmerged methods, ...) and ``recipe.yaml``; it is written atomically.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from vlgraft.config import dump_recipe
from vlgraft.errors import VlgraftError
from vlgraft.files import atomic_path, ensure_writable


def export(run: str | Path, out: Path, overwrite: bool = False, overrides: list[str] | None = None) -> dict:
    """Export ``run`` (a run or checkpoint folder) to ``out``; returns what was merged and kept."""
    from vlgraft.training.checkpoint import load_vlm

    if out.exists() and not overwrite:
        raise VlgraftError(f"{out} exists; pass --overwrite to replace it")
    ensure_writable(out.parent, "export's parent folder")
    vlm, recipe, ckpt = load_vlm(run, overrides=overrides)
    kept = [m for m in vlm.methods if not m.mergeable]
    kept_keys = {m.name: m.checkpoint_keys(vlm) for m in kept}  # before any merge renames a module
    merged = [(m.name, m.merge(vlm)) for m in vlm.methods if m.mergeable]
    own = {n for m in kept for n in m.created}  # the kept methods' modules are not base LLM weights
    llm_weights = {k: v for k, v in vlm.llm.model.state_dict().items() if f"llm.model.{k}" not in own}
    rest = {k: v.contiguous() for k, v in vlm.trainable_state_dict().items()
            if not (k.startswith("llm.model.") and k[len("llm.model."):] in llm_weights)}
    with atomic_path(out, folder=True) as tmp:
        vlm.llm.model.save_pretrained(tmp / "llm", state_dict=llm_weights)
        vlm.llm.tokenizer.save_pretrained(tmp / "llm")
        save_file(rest, str(tmp / "trainable.safetensors"))
        (tmp / "recipe.yaml").write_text(dump_recipe(recipe))
    n = sum(count for _, count in merged)
    kept_text = ", ".join(f"{name} ({len(keys)} tensors)" for name, keys in kept_keys.items())
    print(f"exported {ckpt} -> {out}: {n} adapter layers merged into the LLM weights"
          + (f"; methods kept as modules (not mergeable): {kept_text}" if kept else ""))
    return {"merged": merged, "kept": kept_keys, "trainable_keys": sorted(rest)}
