"""Tables about a model that ``train`` and ``info`` print: trainable / frozen parameters per component,
per method (and module), per trainable group."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from vlgraft.methods.base import match_names


def param_split(model) -> list[tuple[str, int, int]]:
    """(component, trainable, frozen) parameter counts."""
    rows: dict[str, tuple[int, int]] = {}
    for name, p in model.named_parameters():
        comp = name.split(".")[0]
        t, f = rows.get(comp, (0, 0))
        rows[comp] = (t + p.numel(), f) if p.requires_grad else (t, f + p.numel())
    return [(c, t, f) for c, (t, f) in rows.items()]


def print_split(model, console: Console) -> None:
    t = Table(title="parameters")
    for col in ("component", "trainable", "frozen"):
        t.add_column(col, justify="right" if col != "component" else "left")
    rows = param_split(model)
    for c, tr, fr in rows:
        t.add_row(c, f"{tr:,}", f"{fr:,}")
    tt, ff = sum(r[1] for r in rows), sum(r[2] for r in rows)
    t.add_row("total", f"{tt:,} ({100 * tt / max(1, tt + ff):.2f}%)", f"{ff:,}")
    console.print(t)


def print_methods(model, console: Console) -> None:
    """Parameters per method (and per group) and per module: the first two levels under its anchor."""
    if not model.methods:
        return
    params = dict(model.named_parameters())
    t = Table(title="methods")
    for col in ("method", "module", "tensors", "parameters", "trainable"):
        t.add_column(col, justify="left" if col in ("method", "module") else "right")
    for mname, pats in model.method_params.items():
        by_mod: dict[str, list[str]] = {}
        for n in match_names(list(params), pats):
            parts = n.split(".")
            kind = next((x for x in parts if x.startswith(("vlgraft_", "lora_", "ia3_")) or "norm" in x), parts[0])
            where = "vision" if n.startswith("vision.") else "llm" if n.startswith("llm.") else parts[0]
            by_mod.setdefault(f"{where}: {kind}", []).append(n)
        for mod, ns in sorted(by_mod.items()):
            t.add_row(mname, mod, str(len(ns)), f"{sum(params[n].numel() for n in ns):,}",
                      f"{sum(params[n].numel() for n in ns if params[n].requires_grad):,}")
    console.print(t)


def print_groups(resolved, console: Console) -> None:
    """One line per trainable group: its parameters and learning rate."""
    for g, members in resolved:
        console.print(f"group {g.name}: {sum(p.numel() for _, p in members):,} parameters in {len(members)} "
                      f"tensors, lr {g.lr}")
