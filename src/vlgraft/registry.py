"""Exact-name registries, one per kind of part.

A duplicate registration raises; an unknown name raises and lists the known ones, so a typo in a
recipe is a one-line fix rather than a hunt.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from vlgraft.errors import VlgraftError

T = TypeVar("T")


class UnknownNameError(VlgraftError):
    pass


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


VISION: Registry = Registry("vision encoder")
LLM: Registry = Registry("language model")
CONNECTOR: Registry = Registry("connector")
METHOD: Registry = Registry("method")
DATASET: Registry = Registry("dataset")
