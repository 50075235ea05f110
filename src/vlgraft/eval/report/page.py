"""What a report holds, independent of how it is rendered: the HTML and markdown renderers read the same
``Page``, so the two files cannot disagree."""

from __future__ import annotations

import dataclasses
import re

_FIGURE = re.compile(r"^[+-]?\d[\d,]*(\.\d+)?%?( |$)")  # "99.20", "1,000", "-6.67 pts", "+0.750 (x1.136)"
DEFAULT_EXAMPLES = 8  # right and wrong examples shown per task, each


@dataclasses.dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]  # cells already formatted (renderers only escape them)
    title: str = ""

    def numeric_columns(self) -> list[bool]:
        """Which columns hold only figures (right-aligned, so that digits line up)."""
        def figure(cell: str) -> bool:
            return bool(_FIGURE.match(cell))

        return [all(figure(r[k]) or r[k] == "—" for r in self.rows if k < len(r))
                and any(figure(r[k]) for r in self.rows if k < len(r)) for k in range(len(self.columns))]


@dataclasses.dataclass
class Figure:
    asset: str  # the PNG's name in Page.assets, e.g. "figures/loss.png" (its relative path in the markdown)
    alt: str


@dataclasses.dataclass
class Example:
    correct: bool | None  # green or red; None: not right or wrong (a caption), shown neutral
    mark: str  # "right", "wrong", "CIDEr 0.812"
    fields: list[tuple[str, str]]  # (label, text): question, prediction, reference, ...
    tag: str = ""  # answer type, POPE setting, id
    image: str | None = None  # the thumbnail's name in Page.assets
    image_note: str | None = None  # why there is no thumbnail ("image not found: PATH")


@dataclasses.dataclass
class ExampleGroup:
    heading: str  # "right: 8 of 992 shown"
    examples: list[Example]


@dataclasses.dataclass
class Section:
    title: str
    notes: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[Figure] = dataclasses.field(default_factory=list)
    groups: list[ExampleGroup] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Page:
    title: str
    sections: list[Section] = dataclasses.field(default_factory=list)
    assets: dict[str, bytes] = dataclasses.field(default_factory=dict)  # relative path -> PNG bytes

    def add_asset(self, folder: str, stem: str, png: bytes) -> str:
        """Store ``png`` as ``folder/<stem>.png`` (a safe, unused file name) and return that name."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "figure"
        name, k = f"{folder}/{safe}.png", 2
        while name in self.assets:
            name, k = f"{folder}/{safe}-{k}.png", k + 1
        self.assets[name] = png
        return name
