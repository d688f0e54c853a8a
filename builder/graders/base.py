"""The grader protocol and registry, apart from the package so the graders can register without importing it back."""

from __future__ import annotations

from typing import Protocol

import polars as pl

from builder.registry import Registry


class Grader(Protocol):
    def __call__(self, frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame: ...


GRADERS: Registry[Grader] = Registry("grader")
