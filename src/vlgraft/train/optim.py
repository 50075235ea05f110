"""Parameter groups (asserted disjoint), optimizer and schedule."""

from __future__ import annotations

import fnmatch
import logging
import math

import torch
from torch import nn

from vlgraft.config import ParamGroup, Recipe
from vlgraft.errors import ConfigError

COMPONENTS = ("vision", "connector", "llm")
log = logging.getLogger(__name__)


def _patterns(g: ParamGroup, methods: dict[str, list[str]]) -> list[str]:
    """Group entries -> fnmatch patterns: a component name means all its parameters, a method name
    (or ``method.group``) the parameters that method created or claims."""
    out = []
    for p in g.params:
        if p in COMPONENTS:
            out.append(f"{p}.*")
        elif p in methods:
            out += methods[p]
        else:
            out.append(p)
    return out


def resolve_groups(model: nn.Module, groups: list[ParamGroup]) -> list[tuple[ParamGroup, list[tuple[str, nn.Parameter]]]]:
    """Assign every parameter to at most one group and set ``requires_grad`` accordingly.

    Trainable parameters are kept in fp32. Raises if a parameter matches two groups or a group matches nothing, so the trainable set is
    exactly what the recipe says."""
    members: list[list[tuple[str, nn.Parameter]]] = [[] for _ in groups]
    methods = getattr(model, "method_params", {})
    pats = [_patterns(g, methods) for g in groups]
    for name, p in model.named_parameters():
        hits = [i for i, ps in enumerate(pats) if any(fnmatch.fnmatchcase(name, pat) for pat in ps)]
        if len(hits) > 1:
            raise ConfigError(f"parameter '{name}' matches trainable groups "
                              f"{[groups[i].name for i in hits]}; groups must be disjoint")
        p.requires_grad_(bool(hits))
        if hits:
            p.data = p.data.float()  # fp32 master weights for what trains, whatever the frozen dtype
            members[hits[0]].append((name, p))
    trained = {n for m in members for n, _ in m}
    for mname, names in methods.items():
        idle = [n for n in names if "*" not in n and n not in trained]
        if idle and "." not in mname:
            log.warning("method %s: %d of its %d parameter tensors are in no trainable group (frozen), e.g. %s",
                        mname, len(idle), len(names), idle[0])
    for g, m in zip(groups, members):
        if not m:
            raise ConfigError(f"trainable group '{g.name}' matches no parameter (patterns {g.params})")
    return list(zip(groups, members))


def param_split(model: nn.Module) -> list[tuple[str, int, int]]:
    """(component, trainable, frozen) parameter counts."""
    rows = {}
    for name, p in model.named_parameters():
        comp = name.split(".")[0]
        t, f = rows.get(comp, (0, 0))
        rows[comp] = (t + p.numel(), f) if p.requires_grad else (t, f + p.numel())
    return [(c, t, f) for c, (t, f) in rows.items()]


def mm1_lr(llm: nn.Module) -> float:
    """MM1's peak learning rate for a model of N non-embedding parameters: exp(-0.4214 ln N - 0.5535)."""
    emb = {id(p) for m in (llm.get_input_embeddings(), llm.get_output_embeddings()) if m is not None
           for p in m.parameters()}
    n = sum(p.numel() for p in llm.parameters() if id(p) not in emb)
    return math.exp(-0.4214 * math.log(n) - 0.5535)


def group_lr(g: ParamGroup, llm: nn.Module | None = None) -> tuple[float, float]:
    """(lr, weight decay) of a group; ``lr: mm1`` follows the LLM's size, with weight decay 0.1 x lr."""
    if isinstance(g.lr, str):
        if g.lr != "mm1":
            raise ConfigError(f"trainable group {g.name!r}: lr must be a number or 'mm1', got {g.lr!r}")
        if llm is None:
            raise ConfigError(f"trainable group {g.name!r}: lr: mm1 needs the model")
        lr = mm1_lr(llm)
        return lr, 0.1 * lr
    return g.lr, g.weight_decay


def build_optimizer(resolved, llm: nn.Module | None = None) -> torch.optim.Optimizer:
    groups = []
    for g, m in resolved:
        lr, wd = group_lr(g, llm)
        groups.append({"params": [p for _, p in m], "lr": lr, "weight_decay": wd, "name": g.name})
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)


def build_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, total_steps: int):
    warm = int(recipe.train.warmup_ratio * total_steps)
    kind = recipe.train.schedule

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if kind == "constant":
            return 1.0
        prog = (step - warm) / max(1, total_steps - warm)
        return max(0.0, 1 - prog) if kind == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
