"""Bottleneck adapters (down-project, nonlinearity, up-project), attached with forward hooks.

``serial`` (Houlsby): the adapter transforms a sublayer's output, ``y + up(act(down(y)))``.
``parallel`` (He et al.): the adapter reads the sublayer's *input* and its output is added,
``y + up(act(down(x)))``. Up-projections start at zero, so step 0 is the frozen model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlgraft.config import MethodOptions
from vlgraft.errors import ConfigError
from vlgraft.methods.base import Method, active_rows, keep_rows, scope_option
from vlgraft.models.anatomy import attention_of, decoder_layers, ffn_of
from vlgraft.options import option
from vlgraft.registry import METHOD

_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "identity": nn.Identity}


class Bottleneck(nn.Module):
    def __init__(self, dim: int, bottleneck: int, act: str = "relu", scale: float = 1.0, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = _ACTS[act]()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(x.to(self.down.weight.dtype))))) * self.scale


def _first(args, kwargs, key="hidden_states"):
    return kwargs[key] if key in kwargs else args[0]


def _add_to_output(output, delta):
    if isinstance(output, tuple):
        return (output[0] + delta.to(output[0].dtype), *output[1:])
    return output + delta.to(output.dtype)


def _out_tensor(output):
    return output[0] if isinstance(output, tuple) else output


def attach(in_mod: nn.Module, out_mod: nn.Module, adapter: Bottleneck, mode: str, scope: str = "all") -> None:
    """Hook ``adapter`` around the sublayer that starts at ``in_mod`` and ends at ``out_mod``, acting on
    the samples ``active_rows(scope)`` says (the others keep the sublayer's output)."""
    def add(output, x):
        rows = active_rows(scope)
        return output if rows is False else _add_to_output(output, keep_rows(adapter(x), rows))

    if mode == "serial":
        out_mod.register_forward_hook(lambda m, a, o: add(o, _out_tensor(o)))
        return
    if in_mod is out_mod:
        in_mod.register_forward_hook(lambda m, a, kw, o: add(o, _first(a, kw)), with_kwargs=True)
        return
    stash = {}
    in_mod.register_forward_pre_hook(lambda m, a, kw: stash.__setitem__("x", _first(a, kw)), with_kwargs=True)
    out_mod.register_forward_hook(lambda m, a, o: add(o, stash.pop("x")))


@dataclass
class BottleneckOptions(MethodOptions):
    mode: str = option("serial", "serial (Houlsby: on the sublayer's output) | parallel (He et al.: from its input)",
                       choices=("serial", "parallel"))
    placement: list[str] = option(factory=lambda: ["attn", "ffn"], help="the sublayers that get an adapter",
                                  choices=("attn", "ffn"))
    bottleneck: int = option(64, "bottleneck width", min=1)
    act: str = option("relu", "nonlinearity", choices=tuple(_ACTS))
    scale: float = option(1.0, "scale of the adapter's output")
    dropout: float = option(0.0, "dropout inside the adapter", min=0, max=1)
    scope: str = scope_option()


@METHOD.register("bottleneck_adapter")
class BottleneckAdapter(Method):
    Options = BottleneckOptions

    def apply(self, vlm) -> None:
        c = self.cfg
        if not c.placement:
            raise ConfigError("bottleneck_adapter: placement must list 'attn' and/or 'ffn'")
        dim = vlm.llm.hidden_size
        for layer in decoder_layers(vlm.llm.model):
            for where in c.placement:
                ad = Bottleneck(dim, c.bottleneck, c.act, c.scale, c.dropout)
                layer.add_module(f"vlgraft_adapter_{where}", ad)
                if where == "attn":
                    attn = attention_of(layer)
                    attach(attn, attn, ad, c.mode, c.scope)
                else:
                    attach(*ffn_of(layer), ad, c.mode, c.scope)
