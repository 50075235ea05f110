"""Parameter-efficient methods. Each registered method has a config dataclass and ``apply(vlm)``."""

from __future__ import annotations

from vlgraft.config import from_dict
from vlgraft.methods import lora  # noqa: F401  (registration)
from vlgraft.registry import METHOD


def apply_methods(vlm, specs: list[dict], source: str = "recipe") -> None:
    for i, spec in enumerate(specs):
        spec = dict(spec)
        name = spec.pop("name")
        method_cls = METHOD.get(name)
        cfg = from_dict(method_cls.Config, spec, source, prefix=f"methods[{i}].")
        method_cls(cfg).apply(vlm)
