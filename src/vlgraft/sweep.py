"""``vlgraft sweep``: train and evaluate a set of recipe variants, then compare them in one table and
one loss plot.

A sweep file (YAML)::

    base: recipes/git_llm.yaml          # the recipe every variant starts from
    overrides: {train.max_steps: 40}    # applied to every variant (dotted recipe key: value)
    variants:                           # named override sets ...
      Proj: {methods: [{name: select, modules: [proj]}], trainable: [...]}
      Proj+LoRA: {}
    grid:                               # ... and/or axes; variants x every axis = the cartesian product
      train.batch_size: [8, 16]         #   a recipe key with a list of values
      budget: {short: {train.max_steps: 20, train.warmup_ratio: 0.1}, long: {train.max_steps: 80}}
                                        #   or named values: of the key itself, or (any other axis name)
                                        #   override sets
    eval: {limit: 500, loss_records: 50, text: false}
    out: runs/sweeps/git_llm            # default: runs/sweeps/<file stem>

The file is loaded into ``SweepFile`` by the recipe's typed loader (unknown keys named, types checked).
Every variant's recipe is resolved with ``load_recipe(base, overrides)`` before anything trains, so
an unknown key fails by name. Each variant trains and is evaluated in a child process
(``vlgraft.runner``; memory is returned between variants) into ``out/<variant>``; a finished variant
is skipped on the next run
unless its resolved recipe changed or ``--overwrite`` is given; a failing one is recorded with its
one-line error and the sweep goes on. Results: ``out/sweep.json``, ``out/sweep.md``, ``out/loss.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import types
import typing
from pathlib import Path

from vlgraft.errors import ConfigError, VlgraftError
from vlgraft.eval.text import text_cells
from vlgraft.files import read_json, write_json, write_text_atomic
from vlgraft.options import load, option, to_dict
from vlgraft.runner import eval_figures, train_and_evaluate, training_figures


@dataclasses.dataclass
class SweepEval:
    limit: int | None = option(None, "evaluate on the first N questions (eval.limit)", min=1)
    loss_records: int = option(0, "held-out loss over the first N records (eval.loss_records)", min=0)
    batch_size: int | None = option(None, "questions per generation batch (eval.batch_size)", min=1)
    data: str | None = option(None, "eval data, a data source (data.eval)")
    text: bool = option(False, "also the text ability before and after training (eval.text: also)")

    def overrides(self) -> list[str]:
        """The same settings as ``-o`` overrides of the run's recipe."""
        keys = {"limit": "eval.limit", "loss_records": "eval.loss_records", "batch_size": "eval.batch_size",
                "data": "data.eval"}
        out = [f"{key}={json.dumps(getattr(self, k))}" for k, key in keys.items() if getattr(self, k)]
        return out + (['eval.text="also"'] if self.text else [])


@dataclasses.dataclass
class SweepFile:
    base: str = option(dataclasses.MISSING, "the base recipe file (relative to the working folder, else to the "
                       "sweep file)")
    overrides: dict = option(factory=dict, help="{dotted.recipe.key: value} applied to every variant")
    variants: dict | None = option(None, "named override sets {NAME: {dotted.recipe.key: value}}")
    grid: dict = option(factory=dict, help="axes: {recipe.key: [values]} or {name: {value name: overrides}}")
    eval: SweepEval = option(factory=SweepEval, help="how each variant is evaluated")
    out: str | None = option(None, "the sweep's folder (default: runs/sweeps/<file stem>)")


@dataclasses.dataclass
class Variant:
    name: str
    overrides: list[str]  # the variant's own "key=value" (value as JSON, which YAML reads), after the sweep-wide ones
    recipe: typing.Any = None  # the resolved Recipe


@dataclasses.dataclass
class Sweep:
    path: Path
    base: Path
    out: Path
    eval: SweepEval
    common: list[str]  # sweep-wide overrides
    variants: list[Variant]


def is_recipe_key(dotted: str) -> bool:
    """Whether ``dotted`` names a recipe key (a free-form mapping or list's inside counts as the key; a
    part's section admits the options of any part of its kind)."""
    from vlgraft.config import Recipe
    from vlgraft.options import Part

    classes: list = [Recipe]
    for part in dotted.split("."):
        if not all(dataclasses.is_dataclass(c) for c in classes):  # inside a list or mapping value
            return all(c is dict or typing.get_origin(c) in (list, dict) for c in classes)
        nxt = []
        for cls in classes:
            hints = typing.get_type_hints(cls)
            if part in hints:
                tp = hints[part]
                if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[X] -> X
                    tp = next(a for a in typing.get_args(tp) if a is not type(None))
                nxt.append(tp)
        if not nxt:
            return False
        classes = []
        for tp in nxt:  # a part's section: its kind's base and every registered part's options
            is_part = isinstance(tp, type) and issubclass(tp, Part) and tp.registry is not None
            classes += [tp] + [tp.registry.options(n) for n in tp.registry.names()] if is_part else [tp]
    return True


def _mapping(value, key: str, src: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{src}: key '{key}' expects a mapping, got {value!r}")
    return value


def _as_overrides(d: dict, key: str, src: str) -> list[str]:
    """``{dotted.key: value}`` -> ``["dotted.key=<value as JSON>"]`` (JSON is YAML, as ``-o`` parses it)."""
    out = []
    for k, v in _mapping(d, key, src).items():
        if not isinstance(k, str) or not k or "=" in k:
            raise ConfigError(f"{src}: key '{key}' has an invalid recipe key {k!r}")
        out.append(f"{k}={json.dumps(v, default=str)}")
    return out


def _label(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _axis(name: str, values, src: str) -> list[tuple[str, list[str]]]:
    """One grid axis -> [(value name, overrides)]."""
    key = f"grid.{name}"
    if isinstance(values, list):
        if not is_recipe_key(name):
            raise ConfigError(f"{src}: key '{key}': '{name}' is not a recipe key; give named override sets "
                              f"instead ({name}: {{NAME: {{recipe.key: value}}}})")
        short = name.split(".")[-1]
        pairs = [(f"{short}={_label(v)}" if isinstance(v, (str, int, float, bool)) or v is None else f"{short}#{i}",
                  {name: v}) for i, v in enumerate(values)]
    elif isinstance(values, dict):
        if is_recipe_key(name):
            pairs = [(str(n), {name: v}) for n, v in values.items()]
        else:
            pairs = [(str(n), _mapping(v, f"{key}.{n}", src)) for n, v in values.items()]
    else:
        raise ConfigError(f"{src}: key '{key}' expects a list of values or a mapping of named values, got {values!r}")
    if not pairs:
        raise ConfigError(f"{src}: key '{key}' has no values")
    return [(n, _as_overrides(o, f"{key}.{n}", src)) for n, o in pairs]


def safe_name(name: str) -> str:
    """A variant name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._+=@#-]", "-", name)


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; resolve every variant's recipe (errors name the key and variant)."""
    from vlgraft.config import load_recipe, read_yaml_mapping

    p = Path(path)
    src = str(p)
    f = load(SweepFile, read_yaml_mapping(p, "sweep"), src)
    base = Path(f.base)
    if not base.is_file() and (p.parent / base).is_file():  # relative to the working folder, else to the sweep file
        base = p.parent / base
    if not base.is_file():
        raise ConfigError(f"{src}: key 'base': recipe file not found: {base}")
    common = _as_overrides(f.overrides, "overrides", src)
    axes = []
    if f.variants is not None:
        if not f.variants:
            raise ConfigError(f"{src}: key 'variants' has no variants")
        axes.append([(str(n), _as_overrides(o, f"variants.{n}", src)) for n, o in f.variants.items()])
    for name, values in f.grid.items():
        axes.append(_axis(str(name), values, src))
    if not axes:
        raise ConfigError(f"{src}: give 'variants' (named override sets) and/or 'grid' (axes)")
    out = Path(f.out or Path("runs/sweeps") / p.stem)
    variants, seen = [], {}
    for combo in itertools.product(*axes):
        name = "_".join(n for n, _ in combo)
        if safe_name(name) in seen:
            raise ConfigError(f"{src}: variants {seen[safe_name(name)]!r} and {name!r} get the same folder name")
        seen[safe_name(name)] = name
        ovs = [o for _, os_ in combo for o in os_]
        try:
            recipe = load_recipe(base, common + ovs + [f"train.output_dir={json.dumps(str(out / safe_name(name)))}"])
        except ConfigError as e:
            raise ConfigError(f"{src}: variant {name!r}: {e}") from None
        variants.append(Variant(name, ovs, recipe))
    return Sweep(p, base, out, f.eval, common, variants)


def _variant_key(v: Variant, ev: SweepEval) -> str:
    """Identity of a variant's work: its resolved recipe and the evaluation settings."""
    from vlgraft.config import dump_recipe

    return hashlib.sha1((dump_recipe(v.recipe) + json.dumps(to_dict(ev), sort_keys=True)).encode()).hexdigest()


def trainable_count(recipe, source: str = "recipe") -> int:
    """Trainable parameters of ``recipe``'s model (builds it; nothing trains)."""
    from vlgraft.models.vlm import VLM
    from vlgraft.training.optim import resolve_groups

    vlm = VLM.from_recipe(recipe, source)
    resolve_groups(vlm, recipe.trainable)
    return sum(p.numel() for p in vlm.parameters() if p.requires_grad)


def run_variant(sweep: Sweep, v: Variant, console) -> dict:
    """Train and evaluate one variant in a child process; its result (ok or failed) is written to
    ``out/results/<variant>.json``."""
    from vlgraft.config import dump_recipe

    run = sweep.out / safe_name(v.name)
    recipe_file = sweep.out / "recipes" / f"{safe_name(v.name)}.yaml"
    write_text_atomic(recipe_file, dump_recipe(v.recipe))
    log = sweep.out / "logs" / f"{safe_name(v.name)}.log"
    console.print(f"[bold]{v.name}[/]: training and evaluating (log: {log})")
    job = train_and_evaluate(recipe_file, run, [(run / "eval.json", sweep.eval.overrides())], log)
    res = {"name": v.name, "overrides": v.overrides, "key": _variant_key(v, sweep.eval), "run": str(run),
           "log": str(log), "wall_s": job["wall_s"], "status": job["status"]}
    if job["status"] == "ok":
        try:
            res.update(**training_figures(run), **eval_figures(run / "eval.json"))
        except (OSError, KeyError, ValueError, IndexError, VlgraftError) as e:
            res.update(status="failed", error=f"results unreadable in {run}: {e}")
    else:
        res["error"] = job["error"]
    if res["status"] == "failed":
        console.print(f"[red]{v.name} failed[/]: {res['error']}")
    write_json(sweep.out / "results" / f"{safe_name(v.name)}.json", res)
    return res


def _previous(sweep: Sweep, v: Variant) -> dict | None:
    """The variant's recorded result, if it was run with the same recipe and evaluation settings."""
    f = sweep.out / "results" / f"{safe_name(v.name)}.json"
    res = read_json(f) if f.is_file() else None
    return res if res is not None and res.get("key") == _variant_key(v, sweep.eval) else None


def _fmt_params(n) -> str:
    return f"{n:,}" if isinstance(n, int) else "-"


def table_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (one row per variant)."""
    types = sorted({k for r in results for k in r.get("by_type", {})})
    text = any("text_ability" in r for r in results)
    head = ["variant", "status", "trainable params", "samples/s", "final train loss", "held-out loss", "accuracy",
            *types, *(["text ppl before → after [95% CI]", "text QA before → after [95% CI]"] if text else [])]
    rows = []
    for r in results:
        ok = r.get("status") == "ok"

        def num(k, f="{:.4f}", r=r, ok=ok):
            return f.format(r[k]) if ok and r.get(k) is not None else "-"
        row = [r["name"], r.get("status", "not run"), _fmt_params(r.get("trainable_params")),
               num("samples_per_s", "{:.2f}"), num("final_train_loss"), num("val_loss"), num("accuracy", "{:.2%}"),
               *(f"{r['by_type'][t]:.1%}" if ok and t in r["by_type"] else "-" for t in types)]
        if text:
            t = r.get("text_ability")
            row += list(text_cells(t)) if t else ["-", "-"]
        rows.append(row)
    return head, rows


def markdown(sweep: Sweep, results: list[dict]) -> str:
    head, rows = table_rows(results)
    lines = [f"# Sweep {sweep.path}", "", f"Base recipe `{sweep.base}`, overrides for every variant: "
             f"`{' '.join(sweep.common) or '(none)'}`; evaluation {json.dumps(to_dict(sweep.eval))}.", "",
             "| " + " | ".join(head) + " |", "|---|---" + "|---:" * (len(head) - 2) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:
        lines += ["", "Failed:", ""] + [f"- {r['name']}: {r['error']}" for r in failed]
    lines += ["", "Overrides per variant:", ""]
    lines += [f"- {r['name']}: `{' '.join(r['overrides']) or '(none)'}`" for r in results]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, title: str, console) -> bool:
    import matplotlib  # a core dependency (the report pages draw with it too)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if r.get("status") == "ok" and r.get("curve"):
            steps, losses = zip(*r["curve"])
            ax.plot(steps, losses, label=r["name"], marker="." if len(steps) < 20 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _print_table(head: list[str], rows: list[list[str]], title: str, console) -> None:
    from rich.table import Table

    t = Table(title=title)
    for h in head:
        t.add_column(h, justify="left" if h in ("variant", "status", "overrides") else "right")
    for row in rows:
        t.add_row(*row)
    console.print(t)


def run_sweep(path: str | Path, only: list[str] | None = None, overwrite: bool = False, dry_run: bool = False,
              console=None) -> list[dict]:
    """Run (or, ``dry_run``, only resolve) a sweep; returns one result per variant."""
    from rich.console import Console

    console = console or Console()
    sweep = load_sweep(path)
    names = [v.name for v in sweep.variants]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"--only: unknown variant(s) {unknown}; variants: {', '.join(names)}")
    chosen = [v for v in sweep.variants if not only or v.name in only]
    chosen_names = {v.name for v in chosen}
    if dry_run:
        plan = [{"name": v.name, "trainable_params": trainable_count(v.recipe, f"{sweep.path}: variant {v.name}"),
                 "steps": v.recipe.train.max_steps or f"{v.recipe.train.epochs} epochs",
                 "batch": v.recipe.train.batch_size, "overrides": v.overrides} for v in chosen]
        rows = [[p["name"], _fmt_params(p["trainable_params"]), str(p["steps"]), str(p["batch"]),
                 " ".join(p["overrides"]) or "(none)"] for p in plan]
        if sweep.common:
            console.print(f"every variant: {' '.join(sweep.common)}")
        _print_table(["variant", "trainable params", "steps", "batch", "overrides"], rows,
                     f"{len(chosen)} variants of {sweep.base} -> {sweep.out} (dry run)", console)
        return plan
    results = []
    for v in sweep.variants:
        prev = _previous(sweep, v)
        if v.name not in chosen_names:  # shown as last recorded
            results.append(prev or {"name": v.name, "status": "not run", "overrides": v.overrides})
        elif prev is not None and prev["status"] == "ok" and not overwrite:
            console.print(f"{v.name}: finished earlier, skipped (--overwrite to redo)")
            results.append({**prev, "reused": True})
        else:
            results.append(run_variant(sweep, v, console))
    write_json(sweep.out / "sweep.json", {"sweep": str(sweep.path), "base": str(sweep.base), "overrides": sweep.common,
                                          "eval": to_dict(sweep.eval), "variants": results})
    write_text_atomic(sweep.out / "sweep.md", markdown(sweep, results))
    plotted = plot(results, sweep.out / "loss.png", f"training loss: {sweep.path.name}", console)
    head, rows = table_rows(results)
    _print_table(head, rows, f"sweep {sweep.path}", console)
    console.print(f"wrote {sweep.out / 'sweep.json'}, {sweep.out / 'sweep.md'}"
                  + (f", {sweep.out / 'loss.png'}" if plotted else ""))
    return results


def cmd_sweep(args) -> None:
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    run_sweep(args.sweep, only=only, overwrite=args.overwrite, dry_run=args.dry_run)


def register(subparsers) -> None:
    """Add ``vlgraft sweep`` to the CLI."""
    s = subparsers.add_parser("sweep", help="train and evaluate a grid of recipe variants; one table and loss plot")
    s.add_argument("sweep", help="sweep YAML (base recipe + variants and/or grid)")
    s.add_argument("--dry-run", action="store_true", help="resolve every variant and print its trainable parameters")
    s.add_argument("--only", metavar="NAME,...", help="run only these variants (comma-separated names)")
    s.add_argument("--overwrite", action="store_true", help="redo variants that already finished")
    s.set_defaults(func=cmd_sweep)
