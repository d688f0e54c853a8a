"""Date answers given as MM/DD/YYYY, alone or as choices (date_understanding, user date tasks).

Parse: the first (or last) choice letter or MM/DD/YYYY date (zero-padding optional) in the region, whichever
comes first (or last). Verify: dates are compared as dates; a letter stands for its choice's date, so "(D)" and
"09/08/2021" agree when choice D is 09/08/2021. Gold: a letter, or a date. Pred is the letter when the date is
one of the choices, else the date as MM/DD/YYYY.
"""

from __future__ import annotations

import polars as pl

from builder.graders._common import LETTER_TOKEN, finish, letter_index, match_choice_text, status, token
from builder.graders.base import GRADERS
from builder.graders.choice import GOLD_LETTER

DATE_TOKEN = r"\b\d{1,2}/\d{1,2}/\d{4}\b"


def norm_date(text: pl.Expr) -> pl.Expr:
    """First MM/DD/YYYY in `text`, zero-padded; null when there is none."""
    g = text.str.extract_groups(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")
    return pl.when(g.struct.field("1").is_not_null()).then(pl.concat_str(
        g.struct.field("1").str.zfill(2), pl.lit("/"), g.struct.field("2").str.zfill(2), pl.lit("/"),
        g.struct.field("3")))


def choice_date(letter: pl.Expr) -> pl.Expr:
    """The date of choice `letter`, null when out of range or not a date."""
    return norm_date(pl.col("choices").list.get(letter_index(letter), null_on_oob=True))


@GRADERS.register("date")
def grade_date(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade dates against a gold date or a gold choice letter."""
    tok = token(pl.col("text"), f"{DATE_TOKEN}|{LETTER_TOKEN}", last=last)
    frame = frame.with_columns(
        pl.when(~tok.str.contains("/")).then(tok.str.extract(r"([A-J])", 1)).alias("_pl"),
        norm_date(tok).alias("_pd"),
        pl.col("gold").str.extract(GOLD_LETTER, 1).str.to_uppercase().alias("_gl"),
        norm_date(pl.col("gold")).alias("_gd0"),
    )
    # A predicted date that is one of the choices is reported as its letter.
    has_date = frame["_pd"].is_not_null() & frame["choices"].is_not_null()
    if has_date.any():
        as_letter = match_choice_text(frame, pl.col("_pd"), exact=True, normalize=norm_date)
        frame = frame.with_columns(pl.when(pl.col("_pl").is_null()).then(as_letter).otherwise("_pl").alias("_pl"))
    frame = frame.with_columns(
        pl.coalesce(pl.col("_pd"), choice_date(pl.col("_pl"))).alias("_date"),
        pl.coalesce(pl.col("_gd0"), choice_date(pl.col("_gl"))).alias("_gd"),
    )
    pred = pl.coalesce(pl.col("_pl"), pl.col("_pd"))
    correct = (pl.col("_pl").is_not_null() & (pl.col("_pl") == pl.col("_gl"))) | (pl.col("_date") == pl.col("_gd"))
    gold_ok = pl.col("_gl").is_not_null() | pl.col("_gd").is_not_null()
    n = pl.col("choices").list.len()
    out_of_range = pl.col("_pl").is_not_null() & n.is_not_null() & (letter_index(pl.col("_pl")) >= n)
    return finish(frame, pred, correct.fill_null(False), status(pred, gold_ok, wrong_format=out_of_range))
