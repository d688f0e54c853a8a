"""Date answers given as MM/DD/YYYY, alone or as choices (date_understanding, user date tasks).

Parse: the first (or last) choice letter or MM/DD/YYYY date (zero-padding optional) in the region, whichever
comes first (or last). Verify: dates are compared as dates; a letter stands for its choice's date, so "(D)" and
"09/08/2021" agree when choice D is 09/08/2021. Gold: a letter, or a date. Pred is the letter when the date is
one of the choices, else the date as MM/DD/YYYY. An answer span naming two different dates (as dates or letters)
is `ambiguous`; "(D) 09/08/2021" names one.
"""

from __future__ import annotations

import polars as pl

from builder.graders._common import LETTER_TOKEN, finish, letter_index, match_choice_text, region, status
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


def _token_letter(tok: pl.Expr) -> pl.Expr:
    return pl.when(~tok.str.contains("/")).then(tok.str.extract(r"([A-Ja-j])", 1).str.to_uppercase())


def _ambiguous(frame: pl.DataFrame) -> pl.Series:
    """True where the span's tokens stand for more than one date (a letter for its choice's date)."""
    n = frame.height
    many = frame.select(pl.int_range(n, dtype=pl.UInt32).alias("_i"), "_toks", "choices")
    many = many.filter(pl.col("_toks").list.len() > 1)
    flag = pl.Series("_amb", [False] * n)
    if many.height == 0:
        return flag
    ex = many.explode("_toks").with_columns(_token_letter(pl.col("_toks")).alias("_l"))
    ex = ex.with_columns(pl.coalesce(norm_date(pl.col("_toks")), choice_date(pl.col("_l")), pl.col("_l")).alias("_d"))
    rows = ex.group_by("_i").agg(pl.col("_d").drop_nulls().n_unique().alias("_n")).filter(pl.col("_n") > 1)
    return flag.scatter(rows["_i"], True) if rows.height else flag


@GRADERS.register("date")
def grade_date(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade dates against a gold date or a gold choice letter."""
    frame = frame.with_columns(region(last=last).str.extract_all(f"{DATE_TOKEN}|{LETTER_TOKEN}").alias("_toks"))
    tok = pl.col("_toks").list.last() if last else pl.col("_toks").list.first()
    frame = frame.with_columns(
        _token_letter(tok).alias("_pl"),
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
    amb = _ambiguous(frame) if not last else pl.Series("_amb", [False] * frame.height)
    frame = frame.with_columns((amb & frame["anchored"]).alias("_amb"))
    pred = pl.coalesce(pl.col("_pl"), pl.col("_pd"))
    correct = (pl.col("_pl").is_not_null() & (pl.col("_pl") == pl.col("_gl"))) | (pl.col("_date") == pl.col("_gd"))
    gold_ok = pl.col("_gl").is_not_null() | pl.col("_gd").is_not_null()
    n = pl.col("choices").list.len()
    out_of_range = pl.col("_pl").is_not_null() & n.is_not_null() & (letter_index(pl.col("_pl")) >= n)
    return finish(frame, pred, correct.fill_null(False), status(pred, gold_ok, wrong_format=out_of_range,
                                                                ambiguous=pl.col("_amb")))
