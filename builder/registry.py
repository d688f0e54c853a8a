"""Plain-dict registries filled by decorators: adding a teacher backend, executor, grader, filter or task loader is
one class or function and one line. `builder.bind` checks a recipe's names against them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F")  # what is registered: a function, a class, or a record such as tasks.PaperTask


class Registry(Generic[F]):
    """A named dict of registered things; unknown names raise a ValueError listing the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return deco

    def unregister(self, name: str) -> None:
        """Remove `name` (tests that register a throwaway entry)."""
        self._items.pop(name, None)

    def get(self, name: str) -> F:
        if name not in self._items:
            raise ValueError(self.problem(name))
        return self._items[name]

    def problem(self, name: str) -> str | None:
        """Why `name` cannot be looked up (it is not registered), or None."""
        if name in self._items:
            return None
        return f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
