"""Name -> class registries: how a sheet row's `dataset`, `method` or an operator name is found.

Why one small class: physics, datasets and methods are each looked up by name from params.yaml,
and each lookup must fail the same way, naming the unknown name and the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes registered under a name with `@registry.register(name)` (sets `cls.name`)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def wrap(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return wrap

    def lookup(self, name: str) -> type[T]:
        if name not in self._classes:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._classes)}")
        return self._classes[name]

    def all(self) -> dict[str, type[T]]:
        return dict(self._classes)
