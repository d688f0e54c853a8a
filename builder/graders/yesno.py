"""Yes/no answers (coin_flip, strategy_qa): yes, no, true or false as an answer; true is yes, false is no.

A word counts when it stands as an answer: at the start of the answer span, or followed by punctuation or the end
("No.", "yes, the coin...", "There is no doubt: yes." reads yes, not the "no" of "no doubt"). A span with both yes
and no ("yes and no", "Yes or no") is `ambiguous`. Only anchored regions are read (never a bare rationale).
"""

from __future__ import annotations

import polars as pl

from builder.graders._common import finish, n_distinct, region, status
from builder.graders.base import GRADERS

_WORD = r"(?:yes|no|true|false)"
YESNO_TOKEN = rf"(?i)^[\s\p{{P}}]*{_WORD}\b|\b{_WORD}\s*(?:[^\s\p{{L}}\p{{N}}]|$)"


def canonical(word: pl.Expr) -> pl.Expr:
    w = word.str.extract(r"(?i)(yes|no|true|false)", 1).str.to_lowercase()
    return pl.when(w.is_in(["yes", "true"])).then(pl.lit("yes")).when(w.is_in(["no", "false"])).then(pl.lit("no"))


@GRADERS.register("yesno")
def grade_yesno(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade yes/no answers; a region without an answer word has no prediction."""
    # Only an answer region counts: "no" is too common a word to guess from a whole rationale.
    words = pl.when(pl.col("anchored")).then(region(last=last).str.extract_all(YESNO_TOKEN))
    frame = frame.with_columns(words.alias("_w"), canonical(pl.col("gold")).alias("_g"))
    first = pl.col("_w").list.last() if last else pl.col("_w").list.first()
    frame = frame.with_columns(canonical(first).alias("_p"),
                               ((n_distinct(frame, "_w", canonical) > 1) & (not last)).alias("_amb"))
    pred = pl.col("_p")
    gold_ok = pl.col("_g").is_not_null()
    return finish(frame, pred, pred == pl.col("_g"), status(pred, gold_ok, ambiguous=pl.col("_amb")))
