"""Graders: parse-then-verify, gold first, one module per answer type, all vectorised over polars frames.

`GRADERS` maps an answer type to a function `grade(frame, *, last=False) -> frame` (the frame contract is in
`builder.graders._common`). `grade_one` grades a single answer for tests and quick checks; stages use
`builder.grade.grade_frame`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from builder.graders import choice, date, math, number, string, yesno  # noqa: F401 - register the built-in graders
from builder.graders._common import AMBIGUOUS, NO_ANSWER, OK, PARSE_ERROR, STATUSES, TIMEOUT, WRONG_FORMAT
from builder.graders.base import GRADERS, Grader


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


__all__ = ["AMBIGUOUS", "GRADERS", "NO_ANSWER", "OK", "PARSE_ERROR", "STATUSES", "TIMEOUT", "WRONG_FORMAT", "Grader",
           "Verdict", "grade_one"]
