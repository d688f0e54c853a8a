"""Symbolic answers (MATH-style golds: `x^2+1`, `\\text{(B)}`, `(-\\infty, 3]`, `\\{1,2\\}`, `(3, 4)`, matrices,
`\\frac{\\sqrt{3}}{2}`, `10\\%`, `\\$5`), graded by huggingface's math-verify: its `parse` of gold and answer and its
`verify`, in the worker processes of `builder.graders.latex` (its time limit needs a main thread), each distinct
(gold, answer) pair once.

Why math-verify and not the number grader: these golds are sets, intervals, tuples, matrices and expressions whose
equality is symbolic (`x^2+1` is `1+x^2`, `\\frac{1}{2}\\sqrt{3}` is `\\frac{\\sqrt{3}}{2}`), which only a
computer-algebra comparison can tell.

Read (simple and strict): an anchored region is cut to its answer span (`_common.region`); each piece of delimited
math in it (`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`, `\\boxed{}`) is a candidate, else the span itself with its
prose words dropped ("12 square units" reads 12; a lone word "Evelyn" reads `\\text{Evelyn}`). A whole rationale
(`last=True`) is read at its last piece of delimited math only; a rationale without one has no answer. Two
candidates with different values are `ambiguous`; the same value twice ("$\\frac{1}{2}$, i.e. $0.5$") is one.

`pred` is a canonical LaTeX spelling of what math-verify parsed (`_mv_worker.canonical`: sympy's printer and order,
so `x^2+1` and `1+x^2` are both `x^{2} + 1`; "0.5" is `\\frac{1}{2}` where that spelling grades the same), so
majority votes count one value once, and the grader reads it back (it becomes a version's `answer`).

Precision (`_mv_worker.float_rounding_for`): a gold given to k decimals compares at k places ("0.33" matches
`\\frac{1}{3}`), but an answer with more decimals than the gold compares at its own ("2.49" is not "2.5").

Statuses: a gold math-verify cannot parse is `parse_error` (the tasks stage refuses such golds when it loads, so
this is only reached by frames built elsewhere); an answer it cannot parse is `wrong_format`; its failures are
`timeout` and `parse_error`, never a silent wrong.
"""

from __future__ import annotations

import polars as pl

from builder.graders import latex
from builder.graders._common import finish, is_blank, region, status
from builder.graders.base import GRADERS

BOXED = r"\\(?:boxed|fbox)\s*\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"
# Delimited math: $$...$$, $...$ (not an escaped \$), \(...\), \[...\], \boxed{...}. Rust regex has no look-behind:
# an inline $ piece takes the character before it, stripped again by `_LEAD`.
PIECE = (rf"(?s)\$\$.+?\$\$|(?:^|[^\\$])\$(?:[^$\\]|\\.)+\$|\\\(.+?\\\)|\\\[.+?\\\]|{BOXED}")
_LEAD = r"^[^$\\]"
# Prose words in an undelimited span: letter runs of two or more not part of a command (\frac) or a group
# (\text{Evelyn}); "and" stays (math-verify reads "3 and 4" as a set).
PROSE = r"(^|[^\\{\p{L}])\p{L}{2,}\b"
_LONE_WORD = r"^[\s(]*(\p{L}+)[\s).]*$"


def _candidates(frame: pl.DataFrame, *, last: bool) -> pl.DataFrame:
    """(_i, _k, _cand): the candidate answer strings of each row, in order."""
    text = pl.col("_text")
    pieces = text.str.extract_all(PIECE).list.eval(pl.element().str.replace(_LEAD, ""))
    if last:
        pieces = pieces.list.slice(-1, 1)
    # An anchored span without delimited math is its own candidate, prose words dropped.
    words = text.str.replace_all(r"\band\b", "\x00").str.replace_all(PROSE, "${1} ").str.replace_all("\x00", "and")
    lone = pl.lit(r"\text{") + text.str.extract(_LONE_WORD, 1) + pl.lit("}")  # "Evelyn" is \text{Evelyn}
    bare = pl.coalesce(lone, words.str.strip_chars(" \t\n.,;:!?"))
    bare = pl.when(pl.col("anchored") & bare.str.contains(r"[\p{L}\p{N}]")).then(pl.concat_list(bare))
    cands = pl.when(pieces.list.len() > 0).then(pieces).otherwise(bare)
    n = frame.height
    return (frame.select(pl.int_range(n, dtype=pl.UInt32).alias("_i"), cands.alias("_cand"))
            .filter(pl.col("_cand").list.len() > 0)
            .with_columns(pl.int_ranges(pl.col("_cand").list.len(), dtype=pl.UInt32).alias("_k"))
            .explode("_cand", "_k"))


@GRADERS.register("math")
def grade_math(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade symbolic answers with math-verify (module docstring)."""
    frame = frame.with_columns(region(last=last).alias("_text"), pl.col("gold").str.strip_chars().alias("_g"))
    n = frame.height
    cands = _candidates(frame, last=last).join(
        frame.select(pl.int_range(n, dtype=pl.UInt32).alias("_i"), "_g"), on="_i", how="left")
    pairs = cands.select("_g", "_cand").unique().filter(pl.col("_g").is_not_null() & (pl.col("_g") != ""))
    replies = latex.verify_pairs(list(pairs.iter_rows()))
    # Golds of rows without a candidate are checked too: a bad gold is parse_error whatever the answer.
    seen = {g for g, _ in replies}
    lone = [g for g in frame["_g"].drop_nulls().unique().to_list() if g and g not in seen]
    gold_replies = latex.parse_golds(lone)

    rows = [(g, c, s, *(p if p else (None, None, None))) for (g, c), (s, p) in replies.items()]
    verdicts = pl.DataFrame(rows, schema={"_g": pl.String, "_cand": pl.String, "_fail": pl.String,
                                          "_gold_ok": pl.Boolean, "_p": pl.String, "_ok": pl.Boolean}, orient="row")
    per = cands.join(verdicts, on=["_g", "_cand"], how="left").sort("_i", "_k")
    pick = pl.col("_p").filter(pl.col("_p").is_not_null())
    agg = per.group_by("_i").agg(
        pl.col("_fail").drop_nulls().first().alias("_failed"),
        pl.col("_gold_ok").drop_nulls().all().alias("_gold_ok"),
        (pick.last() if last else pick.first()).alias("_pred"),
        pl.col("_ok").filter(pl.col("_p").is_not_null()).first().alias("_correct"),
        pl.col("_p").drop_nulls().n_unique().alias("_n"),
        pl.len().alias("_cands"),
    )
    golds = pl.DataFrame([(g, s, p[0] if p else None) for g, (s, p) in gold_replies.items()],
                         schema={"_g": pl.String, "_gfail": pl.String, "_gok": pl.Boolean}, orient="row")
    frame = (frame.with_columns(pl.int_range(n, dtype=pl.UInt32).alias("_i"))
             .join(agg, on="_i", how="left", maintain_order="left")
             .join(golds, on="_g", how="left", maintain_order="left"))
    gold_ok = (~is_blank(pl.col("_g")) & pl.col("_gold_ok").fill_null(True) & pl.col("_gok").fill_null(True)
               & pl.col("_gfail").is_null())
    pred = pl.col("_pred")
    grade_status = status(pred, gold_ok, failed=pl.col("_failed"),
                          wrong_format=pl.col("_cands").fill_null(0).gt(0) & pred.is_null(),
                          ambiguous=pl.col("_n") > 1)
    return finish(frame, pred, pl.col("_correct"), grade_status)
