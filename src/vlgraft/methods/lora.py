"""LoRA through HF ``peft``: ``W + (alpha/r) B A`` beside frozen linears, B = 0 at start."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlgraft.errors import ConfigError
from vlgraft.registry import METHOD


@dataclass
class LoraOptions:
    r: int = 16
    alpha: float = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    target: str = "llm"  # llm | vision


@METHOD.register("lora")
class LoRA:
    """Injects peft LoRA layers in place, so parameter names stay ``...q_proj.lora_A.default.weight``."""

    Config = LoraOptions

    def __init__(self, cfg: LoraOptions):
        self.cfg = cfg

    def apply(self, vlm) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        if self.cfg.target not in ("llm", "vision"):
            raise ConfigError(f"lora: target must be 'llm' or 'vision', got {self.cfg.target!r}")
        module = vlm.llm.model if self.cfg.target == "llm" else vlm.vision
        conf = LoraConfig(r=self.cfg.r, lora_alpha=self.cfg.alpha, lora_dropout=self.cfg.dropout,
                          target_modules=list(self.cfg.target_modules))
        try:
            inject_adapter_in_model(conf, module)
        except ValueError as e:
            raise ConfigError(f"lora: {str(e).splitlines()[0]}") from None
