"""Exact-name registries, one per kind of part, each entry with its typed options.

A part registers itself where it is defined (``@CONNECTOR.register("mlp")``); its options class is the
entry's ``Options`` attribute (or the ``options`` argument). A registry imports the package holding
the built-in parts on first use, so user code only imports what it adds. A duplicate registration
raises; an unknown name raises and lists the known ones, so a typo in a recipe is a one-line fix
rather than a hunt. A *prefix* entry (``hf``) takes every name ``hf:<anything>``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from vlgraft.errors import VlgraftError

T = TypeVar("T")


class UnknownNameError(VlgraftError):
    pass


class RegistrationError(VlgraftError, ValueError):
    """A part registered twice, or asked for options it was registered without (a plugin's mistake,
    reported on one line like any user error)."""


class Registry(Generic[T]):
    def __init__(self, kind: str, packages: tuple[str, ...] = ()):
        self.kind = kind
        self.packages = packages  # imported on first lookup: they register the built-in parts
        self._items: dict[str, T] = {}
        self._options: dict[str, type | None] = {}
        self._prefixes: set[str] = set()
        self._loaded = False

    def register(self, name: str, options: type | None = None, prefix: bool = False) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` with its options class (``options``, else
        ``obj.Options``); ``prefix``: also every name ``<name>:<anything>``."""
        def deco(obj: T) -> T:
            if name in self._items:
                raise RegistrationError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            self._options[name] = options or getattr(obj, "Options", None)
            if prefix:
                self._prefixes.add(name)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (for parts defined by a test or a plugin that is unloaded)."""
        self._items.pop(name, None)
        self._options.pop(name, None)
        self._prefixes.discard(name)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for pkg in self.packages:
                importlib.import_module(pkg)

    def _key(self, name: str) -> str:
        self._load()
        if name in self._items and name not in self._prefixes:
            return name
        head, sep, _ = name.partition(":")
        if sep and head in self._prefixes:
            return head
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; known: {', '.join(known)}")

    def get(self, name: str) -> T:
        return self._items[self._key(name)]

    def options(self, name: str) -> type:
        """The options class of the part ``name``."""
        key = self._key(name)
        if self._options[key] is None:
            raise RegistrationError(f"{self.kind} {key!r} was registered without an options class "
                             "(an Options attribute or options=)")
        return self._options[key]

    def names(self) -> list[str]:
        self._load()
        return sorted(f"{n}:<id>" if n in self._prefixes else n for n in self._items)

    def __contains__(self, name: str) -> bool:
        try:
            self._key(name)
        except UnknownNameError:
            return False
        return True


VISION: Registry = Registry("vision encoder", ("vlgraft.models.vision", "vlgraft.zoo"))
LLM: Registry = Registry("language model", ("vlgraft.models.llm", "vlgraft.zoo"))
CONNECTOR: Registry = Registry("connector", ("vlgraft.connectors",))
METHOD: Registry = Registry("method", ("vlgraft.methods",))
DATASET: Registry = Registry("dataset", ("vlgraft.data.formats",))
