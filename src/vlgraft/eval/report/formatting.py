"""How figures read in the report: ratios as percentages (100x, two decimals), scores such as CIDEr or a
loss raw with three decimals, counts whole; a value of an unexpected type is shown as it is rather than
breaking the page."""

from __future__ import annotations

import json

MISSING = "—"

# keys (of any block) whose values are ratios in [0, 1]: shown as percentages wherever they turn up
PERCENT_KEYS = {"accuracy", "f1", "precision", "recall", "yes_ratio", "vqa_accuracy", "gold_match", "qa_acc",
                "qa_exact", "circular_accuracy"}


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def pct(v, decimals: int = 2) -> str:
    return f"{100 * v:.{decimals}f}" if is_number(v) else _other(v)


def raw(v, decimals: int = 3) -> str:
    return f"{v:.{decimals}f}" if is_number(v) else _other(v)


def count(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return raw(v, 1) if is_number(v) else _other(v)


def is_percent_key(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last in PERCENT_KEYS or last.endswith(("_accuracy", "_ratio"))


def value(key: str, v) -> str:
    """Any value by its key alone: for blocks and keys the report does not know."""
    if is_number(v):
        return (pct(v) + "%" if is_percent_key(key) else count(v) if isinstance(v, int) else raw(v))
    return _other(v)


def _other(v) -> str:
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 160 else text[:157] + "..."


def flatten(block, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, leaf value) pairs of nested mappings; lists stay whole (shown as JSON)."""
    if not isinstance(block, dict):
        return [(prefix or "value", block)]
    out: list[tuple[str, object]] = []
    for k, v in block.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out += flatten(v, key) if isinstance(v, dict) and v else [(key, v)]
    return out


def key_value_rows(pairs: list[tuple[str, object]]) -> list[list[str]]:
    return [[k, value(k, v)] for k, v in pairs]
