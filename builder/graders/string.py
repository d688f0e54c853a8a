"""Free string answers (last_letter_concatenation and short user answers).

Parse: the first (or last) double-quoted string in the answer span, else its first (or last) non-empty line cut
at the first sentence end (the span already stops at "because" and at a second "the answer is"). Compare after
folding case, accents, spaces, hyphens, quotes and punctuation away on both sides: '"l-a-h-y".' == 'lahy',
'"yaeA"' == 'yaea', '"n a o a"' == 'naoa'. Two different quoted strings, or an unquoted "abc or abd", are
`ambiguous`. Only anchored regions are read.
"""

from __future__ import annotations

import polars as pl

from builder.graders._common import finish, n_distinct, region, status
from builder.graders.base import GRADERS

QUOTED = r"[\"\u201c\u201d]([^\"\u201c\u201d\n]+)[\"\u201c\u201d]"
LINE = r"[^\n]*[\p{L}\p{N}][^\n]*"
_OR = r"(?i)\s+(?:or|and/or)\s+|\s+/\s+"


def fold(text: pl.Expr) -> pl.Expr:
    """Case, accents, whitespace and punctuation folded away: the form two answers are compared in."""
    t = text.str.normalize("NFKD").str.replace_all(r"\p{Mn}", "").str.to_lowercase()
    return t.str.replace_all(r"[^\p{L}\p{N}]", "")


@GRADERS.register("string")
def grade_string(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade short string answers compared in folded form."""
    frame = frame.with_columns(region(last=last).alias("_text"))
    text = pl.col("_text")
    quotes = text.str.extract_all(QUOTED)
    lines = text.str.extract_all(LINE)
    line = (lines.list.last() if last else lines.list.first()).str.replace(r"^\s*[:\-]?\s*", "")
    line = line.str.replace(r"[.!?](\s.*)?$", "")
    frame = frame.with_columns(quotes.alias("_q"), line.str.replace_all(_OR, "\x00").str.split("\x00").alias("_alt"))
    quoted = (pl.col("_q").list.last() if last else pl.col("_q").list.first()).str.extract(QUOTED, 1)
    raw = pl.when(pl.col("anchored")).then(pl.coalesce(quoted, pl.col("_alt").list.first()))  # never from a rationale
    frame = frame.with_columns(
        pl.when(pl.col("_q").list.len() > 0).then(pl.col("_q")).otherwise(pl.col("_alt")).alias("_cands"))
    hedged = n_distinct(frame, "_cands", lambda c: pl.when(fold(c) != "").then(fold(c))) > 1
    folded = fold(raw)
    frame = frame.with_columns(pl.when(folded != "").then(folded).alias("_p"), fold(pl.col("gold")).alias("_g"),
                               (pl.lit(not last) & pl.col("anchored") & hedged).alias("_amb"))
    pred = pl.col("_p")
    gold_ok = pl.col("_g").is_not_null() & (pl.col("_g") != "")
    return finish(frame, pred, pred == pl.col("_g"), status(pred, gold_ok, ambiguous=pl.col("_amb")))
