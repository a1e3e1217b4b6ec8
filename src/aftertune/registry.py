"""Name → implementation registries: one mechanism for every kind of plug-in.

Each registry is filled by `REGISTRY.add(NAME, TARGET, DESCRIPTION)` lines
where the registry is declared, as lm-evaluation-harness registers tasks and
models. TARGET is a lazy ``"package.module:object"`` reference (imported on
first use, so `aftertune list …` and spec validation import no backend they do
not need) or, for data declared on the spot, the object itself. A registered
class takes its `name` from its registration line through `RegisteredName`, so
one line states a name. `get` of an unknown name raises a one-line UserError
that lists the known names.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aftertune.errors import UserError

T = TypeVar("T")


def resolve(target: str) -> Any:
    """`"package.module:attr.attr"` → the object (the module is imported here)."""
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: str | T  # "package.module:object" (lazy) or the object itself
    description: str

    @property
    def obj(self) -> T:
        """The registered object; a lazy target is imported here."""
        return resolve(self.target) if isinstance(self.target, str) else self.target  # type: ignore[return-value]


class Registry(Generic[T]):
    """A named collection; `what` is the noun used in messages ("suite", "judge")."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, target: str | T, description: str) -> None:
        """Register `target` as `name`; a str target must read "package.module:object"."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} registered twice")
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"{self.what} {name!r}: target {target!r} should read 'package.module:object'")
        self._entries[name] = Entry(name, target, description)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UserError(f"unknown {self.what} {name!r}; known {self.what}s: {known}") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def name_of(self, cls: type) -> str | None:
        """The name `cls` (or its nearest registered base class) is registered under."""
        for c in cls.__mro__:
            ref = f"{c.__module__}:{c.__qualname__}"
            for e in self._entries.values():
                if e.target == ref or e.target is c:
                    return e.name
        return None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)


class RegisteredName:
    """A class attribute `name` read from the registry, so the registration line is the one place a name is
    stated. A subclass inherits its registered base's name; an unregistered class gets `default`."""

    def __init__(self, registry: Registry[Any], default: str | None = None) -> None:
        self.registry = registry
        self.default = default

    def __get__(self, obj: object, owner: type) -> str:
        name = self.registry.name_of(owner) or self.default
        if name is None:
            raise AttributeError(
                f"{owner.__qualname__} is not a registered {self.registry.what}; "
                f"add it to the {self.registry.what} registry or give it a `name`"
            )
        return name
