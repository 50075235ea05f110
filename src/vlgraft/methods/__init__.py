"""Parameter-efficient methods. Each registered method has a ``Config`` dataclass and ``apply(vlm)``;
see ``methods/base.py`` for what they share."""

from __future__ import annotations

from vlgraft.config import from_dict
from vlgraft.methods import adapters, llama_adapter, lora, mma, prompts, select  # noqa: F401  (registration)
from vlgraft.registry import METHOD


def apply_methods(vlm, specs: list[dict], source: str = "recipe") -> None:
    """Apply methods in order; record each one's parameters (new tensors, plus claimed existing ones)
    under its name, and its sub-groups under ``name.group``."""
    for i, spec in enumerate(specs):
        spec = dict(spec)
        name = spec.pop("name")
        method_cls = METHOD.get(name)
        cfg = from_dict(method_cls.Config, spec, source, prefix=f"methods[{i}].")
        method = method_cls(cfg)
        method.name = name
        before = {id(p) for p in vlm.parameters()}  # by identity: wrapping renames base weights (peft's base_layer)
        method.apply(vlm)
        created = [n for n, p in vlm.named_parameters() if id(p) not in before]
        if hasattr(method, "split_groups"):
            method.split_groups(created)
        vlm.methods.append(method)
        vlm.method_params.setdefault(name, []).extend(created + [c for c in method.claims if c not in created])
        for g, names in method.groups.items():
            vlm.method_params.setdefault(f"{name}.{g}", []).extend(names)
