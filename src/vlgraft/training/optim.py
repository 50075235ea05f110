"""Parameter groups (asserted disjoint and non-empty), optimizer and schedule."""

from __future__ import annotations

import fnmatch
import logging
import math

import torch
from torch import nn

from vlgraft.config import ParamGroup, Recipe, check_lr
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


def resolve_groups(model: nn.Module,
                   groups: list[ParamGroup]) -> list[tuple[ParamGroup, list[tuple[str, nn.Parameter]]]]:
    """Assign every parameter to at most one group and set ``requires_grad`` accordingly.

    Trainable parameters are kept in fp32. Raises if a parameter matches two groups or a group matches
    nothing, so the trainable set is exactly what the recipe says."""
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


def mm1_lr(llm: nn.Module) -> float:
    """MM1's peak learning rate for a model of N non-embedding parameters: exp(-0.4214 ln N - 0.5535)."""
    emb = {id(p) for m in (llm.get_input_embeddings(), llm.get_output_embeddings()) if m is not None
           for p in m.parameters()}
    n = sum(p.numel() for p in llm.parameters() if id(p) not in emb)
    return math.exp(-0.4214 * math.log(n) - 0.5535)


def group_lr(g: ParamGroup, llm: nn.Module | None = None) -> tuple[float, float]:
    """(lr, weight decay) of a group; ``lr: mm1`` follows the LLM's size, with weight decay 0.1 x lr."""
    if isinstance(g.lr, str):
        check_lr(g, "trainable")
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


# recipe train.schedule -> transformers' schedule (each with linear warm-up from 0)
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def build_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, total_steps: int):
    """``train.schedule`` after ``train.warmup_ratio`` of the steps of linear warm-up."""
    from transformers import get_scheduler

    warmup = int(recipe.train.warmup_ratio * total_steps)
    return get_scheduler(_SCHEDULES[recipe.train.schedule], opt, num_warmup_steps=warmup,
                         num_training_steps=total_steps)
