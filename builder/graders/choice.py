"""Multiple-choice answers (aqua, commonsense_qa, date_understanding, tracking_shuffled_objects).

Parse: a standalone letter A-J ("(B)", "B)", "B.", "Answer: B"; "A coin" is not one), else, in an answer region,
the option text matched against the choices as whole words ("09/08/2021", "the blue ball"). A letter beyond the
number of choices is `wrong_format`. Gold: a letter ("B", "(b)") or the text of one choice.
"""

from __future__ import annotations

import polars as pl

from builder.graders._common import LETTER_TOKEN, finish, letter_index, match_choice_text, status, token
from builder.graders.base import GRADERS

GOLD_LETTER = r"^\s*\(?([A-Ja-j])\)?[.:]?\s*$"


def pred_letter(frame: pl.DataFrame, *, last: bool) -> pl.Series:
    """Letter token, else (anchored regions with choices) the choice whose text the region names."""
    letter = frame.select(token(pl.col("text"), LETTER_TOKEN, last=last).str.extract(r"([A-J])", 1))
    letter = letter.to_series()
    need = frame.select(letter.is_null() & pl.col("anchored") & pl.col("choices").is_not_null()).to_series()
    if need.any():
        by_text = match_choice_text(frame, pl.col("text"), last=last)
        letter = pl.select(pl.when(need).then(by_text).otherwise(letter)).to_series()
    return letter.alias("letter")


def gold_letter(frame: pl.DataFrame) -> pl.Series:
    """Gold as a letter: a letter as written, else the choice whose text equals the gold."""
    letter = frame.select(pl.col("gold").str.extract(GOLD_LETTER, 1).str.to_uppercase()).to_series()
    if letter.is_null().any():
        by_text = match_choice_text(frame, pl.col("gold"), exact=True)
        letter = pl.select(pl.when(letter.is_null()).then(by_text).otherwise(letter)).to_series()
    return letter.alias("gold_letter")


@GRADERS.register("choice")
def grade_choice(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade choice letters; option text counts when it names exactly one choice first."""
    frame = frame.with_columns(pred_letter(frame, last=last).alias("_p"), gold_letter(frame).alias("_g"))
    n = pl.col("choices").list.len()
    out_of_range = pl.col("_p").is_not_null() & n.is_not_null() & (letter_index(pl.col("_p")) >= n)
    pred = pl.col("_p")
    return finish(frame, pred, pred == pl.col("_g"), status(pred, pl.col("_g").is_not_null(),
                                                           wrong_format=out_of_range))
