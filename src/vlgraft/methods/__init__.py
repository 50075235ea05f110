"""Parameter-efficient methods, one file per family, registered by name; ``methods/base.py`` is the
protocol they share and ``apply_methods`` applies a recipe's list in order."""

from __future__ import annotations

from vlgraft.config import MethodOptions
from vlgraft.methods import adapters, llama_adapter, lora, mma, prompts, select  # noqa: F401  (registration)
from vlgraft.options import coerce
from vlgraft.registry import METHOD


def apply_methods(vlm, specs: list, source: str = "recipe") -> None:
    """Apply methods in order (typed options, or plain mappings validated here), recording the
    parameters each one creates."""
    for i, spec in enumerate(specs):
        opts = coerce(spec, MethodOptions, f"methods[{i}]", source)
        method = METHOD.get(opts.name)(opts)
        before = {id(p) for p in vlm.parameters()}  # by identity: wrapping renames base weights (peft's base_layer)
        method.apply(vlm)
        method.created = [n for n, p in vlm.named_parameters() if id(p) not in before]
        vlm.methods.append(method)
