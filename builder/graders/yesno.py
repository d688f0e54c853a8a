"""Yes/no answers (coin_flip, strategy_qa): the first (or last) yes, no, true or false; true is yes, false is no.

Only anchored regions are read (never a bare rationale).
"""

from __future__ import annotations

import polars as pl

from builder.graders._common import finish, status, token
from builder.graders.base import GRADERS

YESNO_TOKEN = r"(?i)\b(?:yes|no|true|false)\b"


def canonical(word: pl.Expr) -> pl.Expr:
    w = word.str.strip_chars(" .\"'").str.to_lowercase()
    return pl.when(w.is_in(["yes", "true"])).then(pl.lit("yes")).when(w.is_in(["no", "false"])).then(pl.lit("no"))


@GRADERS.register("yesno")
def grade_yesno(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade yes/no answers; a region without yes/no/true/false has no prediction."""
    # Only an answer region counts: "no" is too common a word to guess from a whole rationale.
    found = pl.when(pl.col("anchored")).then(token(pl.col("text"), YESNO_TOKEN, last=last))
    frame = frame.with_columns(canonical(found).alias("_p"),
                               canonical(pl.col("gold")).alias("_g"))
    pred = pl.col("_p")
    return finish(frame, pred, pred == pl.col("_g"), status(pred, pl.col("_g").is_not_null()))
