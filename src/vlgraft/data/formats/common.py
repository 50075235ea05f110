"""Helpers shared by the format loaders; every failure is a one-line DataError naming the file."""

from __future__ import annotations

from pathlib import Path

from vlgraft.data.records import IMAGE_PLACEHOLDER
from vlgraft.errors import DataError


def existing_file(path: str | Path, what: str = "data file") -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} not found: {p}")
    return p


def check_placeholders(turns: list[tuple[str, str]], n_images: int | bool, where: str) -> None:
    """A record has one ``<image>`` per image (placed by the loader); one without images has none,
    so a literal ``<image>`` in a dataset's text is an error rather than a silently misplaced image."""
    n = sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns)
    if n != int(n_images):
        raise DataError(f"{where}: the text contains a literal {IMAGE_PLACEHOLDER} "
                        f"({n} placeholders for {int(n_images)} image(s))")


def instruction_fields(raw: dict, where: str, keys: tuple[str, str, str], sep: str) -> tuple[str, str]:
    """(user text, answer) of an instruction record ``{instruction, input?, output}`` under the
    format's own key names: the instruction, then the input after ``sep`` when there is one."""
    k_ins, k_in, k_out = keys
    instruction, inp, output = raw.get(k_ins), raw.get(k_in) or "", raw.get(k_out)
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"{where}: '{k_ins}' must be a non-empty string")
    if not isinstance(inp, str):
        raise DataError(f"{where}: '{k_in}' must be a string")
    if not isinstance(output, str) or not output.strip():
        raise DataError(f"{where}: '{k_out}' must be a non-empty string")
    return instruction.strip() + (f"{sep}{inp.strip()}" if inp.strip() else ""), output.strip()


def path_and_split(arg: str) -> dict:
    """The options of the short form ``PATH`` or ``PATH#SPLIT`` (formats whose files hold splits)."""
    path, _, split = arg.rpartition("#") if "#" in arg else (arg, "", "")
    return {"path": path, **({"split": split} if split else {})}
