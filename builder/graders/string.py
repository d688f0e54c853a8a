"""Free string answers (last_letter_concatenation and short user answers).

Parse: the first (or last) double-quoted string in the region, else its first (or last) non-empty line cut at
the first sentence end. Compare after folding case, accents, spaces, hyphens, quotes and punctuation away on both
sides: '"l-a-h-y".' == 'lahy', '"yaeA"' == 'yaea', '"n a o a"' == 'naoa'. Only anchored regions are read.
"""

from __future__ import annotations

import polars as pl

from builder.graders._common import finish, status, token
from builder.graders.base import GRADERS

QUOTED = r"[\"\u201c\u201d]([^\"\u201c\u201d\n]+)[\"\u201c\u201d]"
LINE = r"[^\n]*[\p{L}\p{N}][^\n]*"


def fold(text: pl.Expr) -> pl.Expr:
    """Case, accents, whitespace and punctuation folded away: the form two answers are compared in."""
    t = text.str.normalize("NFKD").str.replace_all(r"\p{Mn}", "").str.to_lowercase()
    return t.str.replace_all(r"[^\p{L}\p{N}]", "")


@GRADERS.register("string")
def grade_string(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade short string answers compared in folded form."""
    text = pl.col("text")
    quoted = token(text, QUOTED, last=last).str.extract(QUOTED, 1)
    line = token(text, LINE, last=last).str.replace(r"^\s*[:\-]?\s*", "").str.replace(r"[.!?](\s.*)?$", "")
    raw = pl.when(pl.col("anchored")).then(pl.coalesce(quoted, line))  # never guessed from a bare rationale
    folded = fold(raw)
    frame = frame.with_columns(pl.when(folded != "").then(folded).alias("_p"), fold(pl.col("gold")).alias("_g"))
    pred = pl.col("_p")
    gold_ok = pl.col("_g").is_not_null() & (pl.col("_g") != "")
    return finish(frame, pred, pred == pl.col("_g"), status(pred, gold_ok))
