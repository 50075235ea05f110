"""Typed options: dataclasses loaded from plain data (YAML, ``-o`` overrides, CLI flags).

Every option is declared once, as a dataclass field made with ``option(default, help, choices=...,
min=..., max=...)``; from that declaration come the loading (types coerced, unknown keys rejected by
their dotted name with a suggestion, choices and ranges checked), the help text (``--help-recipe``)
and CLI flags (``add_arguments``). A field typed as a ``Part`` subclass is an open union: the value's
``name`` picks a registered part, and the part's own options class (a subclass) takes the rest.

Why by hand rather than pydantic / jsonargparse / draccus: the unions are open — a part registered by
user code (a recipe's ``imports``, a test file) joins its kind's union the moment it registers, which
those libraries support only by rebuilding the schema — and errors must name the dotted key
(``methods[0].rank``) and suggest a fix, which would mean re-formatting theirs anyway. What is needed
fits in this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from vlgraft.errors import ConfigError


def option(default: Any = MISSING, help: str = "", *, factory: Any = None, choices: tuple | None = None,
           min: float | None = None, max: float | None = None, gt: float | None = None):
    """A dataclass field with its help text, and optionally its allowed values or numeric range: ``min``
    / ``max`` inclusive, ``gt`` exclusive (checked when loaded; for a list, on every item). A float is
    always checked to be finite."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "gt": gt}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class Part:
    """Base of a part's options (a connector's, a method's, ...): ``name`` picks the part in
    ``registry``; a part's own options class subclasses its kind's base and adds fields."""

    name: str = option(MISSING, "the registered part")
    registry: ClassVar[Any] = None  # the kind's Registry (set on each kind's base class)
    aliases: ClassVar[dict[str, str]] = {}  # other libraries' names for options, suggested on a miss


def type_name(tp: Any) -> str:
    """A type as help and errors name it: ``int | null``, ``list of str``, ``method options``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        names = " | ".join(type_name(a) for a in args if a is not type(None))
        return names + (" | null" if type(None) in args else "")
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if isinstance(tp, type) and issubclass(tp, Part) and tp.registry is not None:
        return f"{tp.registry.kind} options"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _suggest(key: str, known: list[str], aliases: dict[str, str]) -> str | None:
    """A known name close to ``key``: an alias, a close spelling, or a name that one of the two
    abbreviates (``rank`` -> ``r``)."""
    if key in aliases and aliases[key] in known:
        return aliases[key]
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return close[0]
    prefixed = [k for k in known if key.startswith(k) or k.startswith(key)]
    return prefixed[0] if prefixed else None


def _union(value: Any, args: tuple, key: str, source: str) -> Any:
    """The first member type that takes ``value``; if none does, the error of the member whose shape
    the value has (a mapping for a dataclass, a list for a list), else a plain "expects A or B"."""
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    errors = []
    for a in inner:
        try:
            return coerce(value, a, key, source)
        except ConfigError as e:
            errors.append((a, e))
    for a, e in errors:
        structured = dataclasses.is_dataclass(a) or typing.get_origin(a) in (list, dict) or a is dict
        if structured and isinstance(value, (dict, list)):
            raise e
    raise ConfigError(f"{source}: key '{key}' expects {' or '.join(type_name(a) for a in inner)}, got {value!r}")


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` as type ``tp``; errors name ``key`` and ``source``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _union(value, typing.get_args(tp), key, source)
    if isinstance(tp, type) and issubclass(tp, Part) and tp.registry is not None:
        return _choose(value, tp, key, source)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' expects a mapping, got {value!r}")
        return load(tp, value, source, prefix=f"{key}.")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' expects a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        out = [coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if (origin or tp) is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' expects a mapping, got {value!r}")
        args = typing.get_args(tp)
        if not args:
            return dict(value)
        return {k: coerce(v, args[1], f"{key}.{str(k).encode('unicode_escape').decode()}", source)
                for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is Path and isinstance(value, (str, Path)):
        return Path(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{source}: key '{key}' expects {type_name(tp)}, got {value!r}")


def _choose(value: Any, base: type, key: str, source: str) -> Part:
    """A ``Part`` field: the registered part named by ``value['name']`` loads the rest with its options."""
    from vlgraft.registry import UnknownNameError

    if isinstance(value, base):
        return value
    reg = base.registry
    default = base.__dataclass_fields__["name"].default  # the kind's default part, if it has one
    if isinstance(value, dict) and "name" not in value and default is not MISSING:
        value = {"name": default, **value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ConfigError(f"{source}: key '{key}' expects a mapping with a 'name' (the {reg.kind}: one of "
                          f"{', '.join(reg.names())}), got {value!r}")
    try:
        cls = reg.options(value["name"])
    except UnknownNameError as e:
        raise ConfigError(f"{source}: key '{key}.name': {e}") from None
    return load(cls, value, source, prefix=f"{key}.", part=f"{reg.kind} {value['name']!r}")


def _check(value: Any, f: dataclasses.Field, key: str, source: str) -> None:
    """The field's declared choices and range."""
    if value is None:
        return
    choices, lo, hi, gt = (f.metadata.get(k) for k in ("choices", "min", "max", "gt"))
    for k, v in enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]:
        where = key if k is None else f"{key}[{k}]"
        if choices is not None and v not in choices:
            raise ConfigError(f"{source}: key '{where}' must be one of {', '.join(map(str, choices))}; got {v!r}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{source}: key '{where}' must be a finite number; got {v!r}")
            if lo is not None and v < lo:
                raise ConfigError(f"{source}: key '{where}' must be >= {lo}; got {v!r}")
            if gt is not None and v <= gt:
                raise ConfigError(f"{source}: key '{where}' must be > {gt}; got {v!r}")
            if hi is not None and v > hi:
                raise ConfigError(f"{source}: key '{where}' must be <= {hi}; got {v!r}")


def load(cls: type, data: dict, source: str = "options", prefix: str = "", part: str | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys are rejected by their dotted name (with a
    suggestion), values coerced to the declared types and checked against declared choices and ranges."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            close = _suggest(str(k), list(fields), getattr(cls, "aliases", {}))
            hint = f" (did you mean '{prefix}{close}'?)" if close else ""
            listing = f"options of {part}" if part else "known keys here"
            shown = str(k).encode("unicode_escape").decode()  # a key with a newline stays on one line
            raise ConfigError(f"{source}: unknown key '{prefix}{shown}'{hint}; {listing}: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], key, source)
            _check(kwargs[name], f, key, source)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{source}: missing required key '{key}'")
    return cls(**kwargs)


def check_values(obj: Any, source: str = "options", prefix: str = "") -> None:
    """The declared choices and ranges of every field of dataclass ``obj`` and of the dataclasses in it
    (for objects built or changed in code, which ``load`` did not see)."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_values(value, source, f"{key}.")
            continue
        if isinstance(value, list) and any(dataclasses.is_dataclass(v) for v in value):
            for i, v in enumerate(value):
                if dataclasses.is_dataclass(v):
                    check_values(v, source, f"{key}[{i}].")
            continue
        _check(value, f, key, source)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is MISSING:
        return "required"
    value = f.default_factory()
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return [to_dict(x) for x in value]
    return value


def _line(f: dataclasses.Field, tp: Any, key: str) -> str:
    extra = ""
    if f.metadata.get("choices"):
        extra += f"; one of {' | '.join(map(str, f.metadata['choices']))}"
    bounds = [f"{op} {f.metadata[k]}" for k, op in (("min", ">="), ("gt", ">"), ("max", "<="))
              if f.metadata.get(k) is not None]
    if bounds:
        extra += "; " + ", ".join(bounds)
    return f"  {key} ({type_name(tp)}, default {_default(f)!r}{extra}): {f.metadata.get('help', '')}"


def _part_bases(tp: Any) -> list[type]:
    """The Part kinds a field's type admits (through Optional / Union / list)."""
    if isinstance(tp, type) and issubclass(tp, Part) and tp.registry is not None:
        return [tp]
    return [b for a in typing.get_args(tp) for b in _part_bases(a)]


def help_lines(cls: type, prefix: str = "") -> list[str]:
    """One line per key — dotted name, type, default, allowed values, help — and, for fields that
    choose a part by name, every registered part's own options."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp) and not _part_bases(tp):
            lines.append(f"{key}:  {f.metadata.get('help', '')}")
            lines += help_lines(tp, f"{key}.")
            continue
        lines.append(_line(f, tp, key))
        for base in _part_bases(tp):
            lines += part_help(base, key + ("[]" if typing.get_origin(tp) is list else ""))
    return lines


def part_help(base: type, key: str) -> list[str]:
    """Every registered part of ``base``'s kind with its options (beyond the base's own)."""
    reg = base.registry
    hints = typing.get_type_hints(base)
    lines = ["  " + _line(f, hints[f.name], f"{key}.{f.name}") for f in dataclasses.fields(base)]
    lines.append(f"    {key}: {reg.kind} options by name ({', '.join(reg.names())})")
    own = {f.name for f in dataclasses.fields(base)}
    for name in reg.names():
        cls = reg.options(name)
        hints = typing.get_type_hints(cls)
        extra = [f for f in dataclasses.fields(cls) if f.name not in own]
        lines.append(f"    {key} {{name: {name}}}" + ("" if extra else ": no options of its own"))
        lines += ["    " + _line(f, hints[f.name], f"{key}.{f.name}") for f in extra]
    return lines


# ----------------------------------------------------------------------------- CLI flags

def _flag_type(tp: Any):
    """The argparse ``type`` of a field (comma-separated items for lists) and whether it is a switch."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if tp is bool:
        return None, True
    if typing.get_origin(tp) in (list, tuple):
        return (lambda s: [x.strip() for x in s.split(",") if x.strip()]), False
    return (tp if tp in (int, float) else str), False


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """``--name`` flags for the fields of ``cls`` (defaults stay the dataclass's: an unset flag is absent)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, switch = _flag_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        text = f"{f.metadata.get('help', '')} (default: {_default(f)})"
        if switch:
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=f.metadata.get("help", ""))
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=text,
                                choices=f.metadata.get("choices"))


def from_arguments(cls: type, args: argparse.Namespace, source: str = "command line", **given) -> Any:
    """``cls`` from the flags ``add_arguments`` declared that were given, plus ``given``; errors name
    the flag (``--batch-size``) rather than the field."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        return load(cls, {**data, **given}, source)
    except ConfigError as e:
        flag = re.sub(r"key '(\w+)'", lambda m: "--" + m.group(1).replace("_", "-"), str(e), count=1)
        raise ConfigError(flag) from None
