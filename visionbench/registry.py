"""A small name -> builder registry shared by models, datasets, tasks, optimizers, schedules and attribution methods.

Duplicate names raise (as torchvision's `models/_api.py` does); a miss suggests the closest names.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from visionbench.errors import UserError


class Registry:
    """Maps lowercase names to builders."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | Callable[..., Any] | None = None) -> Any:
        """Decorator registering a builder under `name` or the function's own name."""
        if callable(name):  # used bare: @REGISTRY.register
            return self.register(None)(name)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"duplicate {self.kind} name {key!r}")
            self._entries[key] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """Return the builder for `name`; an unknown name raises a UserError naming the closest ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}{self.suggest(name)}") from None

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
        return f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(self._entries))}"

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching an fnmatch pattern."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


MODELS = Registry("model")
DATASETS = Registry("dataset")
TASKS = Registry("task")
OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")
ATTRIBUTIONS = Registry("attribution method")
