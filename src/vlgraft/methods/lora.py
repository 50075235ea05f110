"""LoRA (and DoRA) and IA3 through HF ``peft``, injected in place into the LLM or the vision tower.

LoRA: ``W + (alpha/r) B A`` beside frozen linears, B = 0 at start; ``use_dora`` adds DoRA's learned
magnitude. IA3: learned rescaling vectors (ones at start) on keys, values and the feed-forward.
Both merge into the base weights (``merge``, for export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from vlgraft.config import MethodOptions
from vlgraft.errors import ConfigError
from vlgraft.methods.base import Method, active_rows, keep_rows, scope_option
from vlgraft.models.anatomy import decoder_layers
from vlgraft.options import option
from vlgraft.registry import METHOD


def _target(vlm, target: str) -> nn.Module:
    return vlm.llm.model if target == "llm" else vlm.vision


def _transposed(root: nn.Module, targets) -> bool:
    """Whether the targeted layers store their weight as (in, out), as GPT-2's ``Conv1D`` does (peft's
    ``fan_in_fan_out``; it would otherwise switch it itself, with a warning)."""
    return any(type(m).__name__ == "Conv1D" for n, m in root.named_modules() if n.rsplit(".", 1)[-1] in targets)


def _inject(conf, module: nn.Module, method: str) -> None:
    from peft import inject_adapter_in_model

    try:
        inject_adapter_in_model(conf, module)
    except ValueError as e:
        raise ConfigError(f"{method}: {str(e).splitlines()[0]}") from None


_TARGETS = ("llm", "vision")


@dataclass
class LoraOptions(MethodOptions):
    aliases: ClassVar[dict[str, str]] = {"rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
                                         "layers_to_transform": "layers"}  # peft's names
    r: int = option(16, "rank of the update B A", min=1)
    alpha: float = option(32, "scale alpha: the update is (alpha / r) B A", min=0)
    dropout: float = option(0.0, "dropout on the LoRA input", min=0, max=1)
    target_modules: list[str] = option(factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                       help="names of the linear layers that get an update")
    target: str = option("llm", "which model: the LLM or the vision tower", choices=_TARGETS)
    use_dora: bool = option(False, "DoRA: a learned magnitude per output (weight-decomposed LoRA)")
    layers: list[int] | None = option(None, "only these block indices (negative: from the top); null: all")
    scope: str = scope_option()


def _scoped(scope: str):
    """A forward hook on a ``lora_B``: its output (the update, before scaling) zeroed for the samples the
    method does not act on, so that the layer returns its base output for them."""
    def hook(module, args, output):
        rows = active_rows(scope)
        if rows is True:
            return None
        return output.new_zeros(()).expand_as(output) if rows is False else keep_rows(output, rows)
    return hook


@METHOD.register("lora")
class LoRA(Method):
    """Parameter names stay peft's: ``...q_proj.lora_A.default.weight``."""

    Options = LoraOptions

    @property
    def mergeable(self) -> bool:  # merged weights would act on text-only input too
        return self.cfg.scope == "all"

    def switchable(self, vlm) -> bool:
        return not self.cfg.use_dora and self.cfg.target == "llm"

    def apply(self, vlm) -> None:
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        c = self.cfg
        if c.scope != "all" and (c.use_dora or c.target != "llm"):
            raise ConfigError(f"lora: scope {c.scope!r} needs plain LoRA on the LLM (not DoRA, not the vision tower)")
        layers = None
        if c.layers is not None:
            n = len(decoder_layers(vlm.llm.model)) if c.target == "llm" else len(vlm.vision.transformer_layers())
            bad = [i for i in c.layers if not -n <= i < n]
            if bad or not n:
                raise ConfigError(f"lora: layers {bad or c.layers} out of range for {n} blocks")
            layers = sorted({i % n for i in c.layers})
        root = _target(vlm, c.target)
        conf = LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout, target_modules=list(c.target_modules),
                          use_dora=c.use_dora, layers_to_transform=layers,
                          fan_in_fan_out=_transposed(root, c.target_modules))
        _inject(conf, root, "lora")
        if c.target == "llm" and not c.use_dora:
            for mod in root.modules():  # the layers this method created (an earlier LoRA's are hooked already)
                if isinstance(mod, LoraLayer) and not getattr(mod, "vlgraft_scoped", False):
                    for b in mod.lora_B.values():
                        b.register_forward_hook(_scoped(c.scope))
                    mod.vlgraft_scoped = True

    def merge(self, vlm) -> int:
        from peft.tuners.lora import LoraLayer

        return merge_adapters(_target(vlm, self.cfg.target), LoraLayer)


@dataclass
class IA3Options(MethodOptions):
    target_modules: list[str] = option(factory=lambda: ["k_proj", "v_proj", "down_proj"],
                                       help="layers whose outputs (or, for feed-forward ones, inputs) are rescaled")
    feedforward_modules: list[str] | None = option(factory=lambda: ["down_proj"],
                                                   help="those of target_modules rescaled on their input")
    target: str = option("llm", "which model: the LLM or the vision tower", choices=_TARGETS)


@METHOD.register("ia3")
class IA3(Method):
    Options = IA3Options
    mergeable = True

    def switchable(self, vlm) -> bool:
        return False  # peft's IA3 rescales inside the layer: no output to zero per sample

    def apply(self, vlm) -> None:
        from peft import IA3Config

        c = self.cfg
        ff = list(c.feedforward_modules or [])
        if not set(ff) <= set(c.target_modules):
            raise ConfigError(f"ia3: feedforward_modules {ff} must be a subset of target_modules {c.target_modules}")
        root = _target(vlm, c.target)
        _inject(IA3Config(target_modules=list(c.target_modules), feedforward_modules=ff,
                          fan_in_fan_out=_transposed(root, c.target_modules)), root, "ia3")

    def merge(self, vlm) -> int:
        from peft.tuners.ia3 import IA3Layer

        return merge_adapters(_target(vlm, self.cfg.target), IA3Layer)


def merge_adapters(root: nn.Module, kind: type) -> int:
    """Fold every peft layer of ``kind`` (LoraLayer: LoRA and DoRA; IA3Layer) under ``root`` into its
    base weights and put its own base layer back in its place. Returns how many layers were merged.

    Two methods on one linear layer nest (the later one wraps the earlier); peft's merge writes into
    the innermost weight, so merging in application order (the export's order) folds the inner one
    first, and the outer one then scales or adds to weights that already hold it — what the nested
    forward computes. Only the immediate ``base_layer`` replaces a merged layer, so an outer wrapper
    stays in place for its own merge."""
    merged = 0
    for name, mod in list(root.named_modules()):
        if isinstance(mod, kind) and name:
            mod.merge()
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            setattr(parent, child, mod.base_layer)
            merged += 1
    return merged
