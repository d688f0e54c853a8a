"""Multiple-choice answers (aqua, commonsense_qa, date_understanding, tracking_shuffled_objects).

Parse: a standalone letter A-J ("(B)", "(b)", "b)", "B)", "B.", "Answer: B"; "A coin" is not one), else, in an
answer region, the option text matched against the choices as whole words ("09/08/2021", "5/12/2021" for
"05/12/2021", "the blue ball"). A letter beyond the number of choices is `wrong_format`; an answer span naming two
different letters ("A or C", "either (B) or (C)") or two different choices' texts is `ambiguous`. Gold: a letter
("B", "(b)") or the text of one choice.
"""

from __future__ import annotations

import polars as pl

from builder.graders._common import (
    LETTER_PAIR,
    LETTER_TOKEN,
    choice_text_count,
    finish,
    letter_index,
    match_choice_text,
    n_distinct,
    region,
    status,
)
from builder.graders.base import GRADERS

GOLD_LETTER = r"^\s*\(?([A-Ja-j])\)?[.:]?\s*$"


def _letter(token: pl.Expr) -> pl.Expr:
    return token.str.extract(r"([A-Ja-j])", 1).str.to_uppercase()


def pred_letter(frame: pl.DataFrame, *, last: bool) -> pl.DataFrame:
    """`_p` (letter token, else for anchored regions with choices the choice whose text the region names) and `_amb`
    (the answer span names two different letters, or, without a letter, two different choices)."""
    frame = frame.with_columns(region(last=last).str.replace_all(LETTER_PAIR, "$1 or $2").alias("_text"))
    frame = frame.with_columns(pl.col("_text").str.extract_all(LETTER_TOKEN).alias("_letters"))
    first = pl.col("_letters").list.last() if last else pl.col("_letters").list.first()
    frame = frame.with_columns(
        _letter(first).alias("_p"),
        ((n_distinct(frame, "_letters", _letter) > 1) & pl.col("anchored") & (not last)).alias("_amb"),
    )
    need = frame.select(pl.col("_p").is_null() & pl.col("anchored") & pl.col("choices").is_not_null()).to_series()
    if need.any():
        by_text = match_choice_text(frame, pl.col("_text"), last=last)
        many = choice_text_count(frame, pl.col("_text")) > 1
        frame = frame.with_columns(pl.when(need).then(by_text).otherwise(pl.col("_p")).alias("_p"),
                                   (pl.col("_amb") | (need & many & (not last))).alias("_amb"))
    return frame


def gold_letter(frame: pl.DataFrame) -> pl.Series:
    """Gold as a letter: a letter as written, else the choice whose text equals the gold."""
    letter = frame.select(pl.col("gold").str.extract(GOLD_LETTER, 1).str.to_uppercase()).to_series()
    if letter.is_null().any():
        by_text = match_choice_text(frame, pl.col("gold"), exact=True)
        letter = pl.select(pl.when(letter.is_null()).then(by_text).otherwise(letter)).to_series()
    return letter.alias("gold_letter")


@GRADERS.register("choice")
def grade_choice(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade choice letters; option text counts when no letter is given."""
    frame = pred_letter(frame.with_columns(gold_letter(frame).alias("_g")), last=last)
    n = pl.col("choices").list.len()
    out_of_range = pl.col("_p").is_not_null() & n.is_not_null() & (letter_index(pl.col("_p")) >= n)
    pred = pl.col("_p")
    return finish(frame, pred, pred == pl.col("_g"), status(pred, pl.col("_g").is_not_null(),
                                                           wrong_format=out_of_range, ambiguous=pl.col("_amb")))
