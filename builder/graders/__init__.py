"""Graders: parse-then-verify, gold first, one module per answer type, all vectorised over polars frames.

`GRADERS` maps an answer type to a function `grade(frame, *, last=False) -> frame` (the frame contract is in
`builder.graders._common`). `grade_one` grades a single answer for tests and quick checks; stages use
`builder.grade.grade_frame`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import polars as pl

from builder.registry import Registry


class Grader(Protocol):
    def __call__(self, frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame: ...


GRADERS: Registry[Grader] = Registry("grader")


@dataclass(frozen=True)
class Verdict:
    """One graded answer: what was extracted, whether it matches gold, and why not when it could not be read."""

    pred: str | None
    correct: bool
    status: str


def grade_one(answer_type: str, gold: str, text: str | None, *, choices: list[str] | None = None,
              anchored: bool = True, last: bool = False) -> Verdict:
    """Grade one answer region `text` against `gold` with the `answer_type` grader (no anchor cutting here)."""
    frame = pl.DataFrame(
        {"text": [text], "anchored": [anchored], "gold": [gold], "choices": [choices]},
        schema={"text": pl.String, "anchored": pl.Boolean, "gold": pl.String, "choices": pl.List(pl.String)},
    )
    row = GRADERS.get(answer_type)(frame, last=last).row(0, named=True)
    return Verdict(row["pred"], row["correct"], row["grade_status"])


# Register the built-in graders (import order is registry order; names are what matters).
from builder.graders import choice, date, number, string, yesno  # noqa: E402,F401

__all__ = ["GRADERS", "Grader", "Verdict", "grade_one"]
