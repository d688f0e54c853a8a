"""Quality filters: one small function per filter, each returning a polars expression.

A filter maps the curation config to an expression over graded-table columns that evaluates to the drop
reason (a `builder.reasons` constant) or null to keep the row, so every filter runs vectorised in one
`select` and the first listed filter that fires names the reason. Add one with `@FILTERS.register("name")`.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from builder import reasons as R
from builder.recipe import CurationConfig
from builder.registry import Registry

Filter = Callable[[CurationConfig], pl.Expr]
FILTERS: Registry[Filter] = Registry("quality filter")

_WORDS = r"[0-9A-Za-z_\x{80}-\x{10FFFF}]+"


def _when(cond: pl.Expr, reason: str) -> pl.Expr:
    return pl.when(cond).then(pl.lit(reason)).otherwise(pl.lit(None, dtype=pl.String))


@FILTERS.register("empty")
def empty(cfg: CurationConfig) -> pl.Expr:
    """Nothing but whitespace: nothing to learn from."""
    return _when(pl.col("rationale").fill_null("").str.strip_chars().str.len_chars() == 0, R.EMPTY)


@FILTERS.register("truncated")
def truncated(cfg: CurationConfig) -> pl.Expr:
    """Hit max_tokens (vLLM finish_reason "length"): the reasoning is cut off."""
    return _when(pl.col("finish_reason") == "length", R.TRUNCATED)


@FILTERS.register("no_answer")
def no_answer(cfg: CurationConfig) -> pl.Expr:
    """The grader found no answer (or could not parse it): "could not parse" is never "wrong"."""
    return _when(pl.col("grade_status") != "ok", R.NO_ANSWER)


@FILTERS.register("length")
def length(cfg: CurationConfig) -> pl.Expr:
    """Outside [min_chars, max_chars] characters (stripped)."""
    n = pl.col("rationale").fill_null("").str.strip_chars().str.len_chars()
    too_long = pl.lit(False) if cfg.max_chars is None else n > cfg.max_chars
    return (pl.when(n < cfg.min_chars).then(pl.lit(R.TOO_SHORT))
            .when(too_long).then(pl.lit(R.TOO_LONG)).otherwise(pl.lit(None, dtype=pl.String)))


@FILTERS.register("degenerate")
def degenerate(cfg: CurationConfig) -> pl.Expr:
    """Repetition loops: few distinct words among many (16+), or one non-empty line repeated max_line_repeats times."""
    words = pl.col("rationale").fill_null("").str.to_lowercase().str.extract_all(_WORDS)
    n = words.list.len()
    low_variety = (n >= 16) & (words.list.n_unique() < cfg.min_distinct_word_ratio * n)
    lines = (pl.col("rationale").fill_null("").str.split("\n")
             .list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != "")))
    repeats = lines.list.eval(pl.element().unique_counts().max()).list.first().fill_null(0)
    return _when(low_variety | (repeats >= cfg.max_line_repeats), R.DEGENERATE)


@FILTERS.register("answer_first")
def answer_first(cfg: CurationConfig) -> pl.Expr:
    """The gold answer stated in the first answer_first_chars characters, before any reasoning (opt-in).

    A gold that is also a token of the question (restating "8 puppies") does not count: only an answer the
    rationale could not have copied from the question is "stated first".
    """
    def tokens(col: str, chars: int | None = None) -> pl.Expr:
        text = pl.col(col).fill_null("").str.to_lowercase()
        if chars:  # one char more, then drop a last token that reaches past the window (a cut word is no token)
            text = text.str.slice(0, chars + 1).str.replace(r"[0-9A-Za-z_.,/$\-]*[0-9A-Za-z_]$", "")
        return text.str.extract_all(r"[0-9A-Za-z_.,/$\-]+").list.eval(
            pl.element().str.strip_chars(".,").str.replace_all(",", "").str.strip_prefix("$"))

    gold = pl.col("gold").str.to_lowercase().str.replace_all(",", "").str.strip_prefix("$")
    stated = tokens("rationale", cfg.answer_first_chars).list.contains(gold)
    return _when(stated & ~tokens("question").list.contains(gold), R.ANSWER_FIRST)


def reason_expr(cfg: CurationConfig) -> pl.Expr:
    """The first firing filter's reason (in cfg.filters order), or null."""
    exprs = [FILTERS.get(name)(cfg) for name in cfg.filters]
    if not exprs:
        return pl.lit(None, dtype=pl.String)
    return pl.coalesce(exprs) if len(exprs) > 1 else exprs[0]
