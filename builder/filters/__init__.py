"""Quality filters: one small function per filter, each returning a polars expression.

A filter maps the curation config to an expression over graded-table columns that evaluates to the drop
reason (a `builder.reasons` constant) or null to keep the row, so every filter runs vectorised in one
`select` and the first listed filter that fires names the reason. Add one with `@FILTERS.register("name")`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from builder import reasons as R
from builder.dedup.minhash import _BYTE_MAP, _njit_par, prange, text_buffers
from builder.recipe import CurationConfig
from builder.registry import Registry

Filter = Callable[[CurationConfig], pl.Expr]
FILTERS: Registry[Filter] = Registry("quality filter")

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


@_njit_par
def _repetition(data, offsets, byte_map):
    """Per row: word count, distinct words (normalised as in dedup) and the top count of one non-empty line."""
    n = len(offsets) - 1
    n_words = np.zeros(n, np.int64)
    n_distinct = np.zeros(n, np.int64)
    top_line = np.zeros(n, np.int64)
    for r in prange(n):
        lo = offsets[r]
        hi = offsets[r + 1]
        words = np.empty(hi - lo + 1, np.uint64)
        lines = np.empty(hi - lo + 1, np.uint64)
        nw = 0
        nl = 0
        h = np.uint64(0xCBF29CE484222325)
        prev = np.uint64(0)
        line = np.uint64(0x84222325CBF29CE4)
        line_len = 0
        for i in range(lo, hi + 1):
            byte = data[i] if i < hi else np.uint8(10)
            cur = byte_map[byte] if i < hi else np.uint64(0)
            if cur == 0:
                if prev != 0:
                    words[nw] = h
                    nw += 1
                    h = np.uint64(0xCBF29CE484222325)
            else:
                h = (h ^ cur) * np.uint64(0x100000001B3)
            prev = cur
            if byte == 10:
                if line_len:
                    lines[nl] = line
                    nl += 1
                line = np.uint64(0x84222325CBF29CE4)
                line_len = 0
            elif byte != 32 and byte != 9 and byte != 13:
                line = (line ^ np.uint64(byte)) * np.uint64(0x100000001B3)
                line_len += 1
            elif line_len:  # inner whitespace counts, leading whitespace does not
                line = (line ^ np.uint64(byte)) * np.uint64(0x100000001B3)
        n_words[r] = nw
        if nw:
            w = np.sort(words[:nw])
            d = 1
            for k in range(1, nw):
                if w[k] != w[k - 1]:
                    d += 1
            n_distinct[r] = d
        if nl:
            ls = np.sort(lines[:nl])
            best = 1
            run = 1
            for k in range(1, nl):
                run = run + 1 if ls[k] == ls[k - 1] else 1
                if run > best:
                    best = run
            top_line[r] = best
    return n_words, n_distinct, top_line


def repetition_stats(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(words, distinct words, most repeated non-empty line's count) per text; trailing spaces on a line count."""
    data, offsets = text_buffers(texts)
    return _repetition(data, offsets, _BYTE_MAP)


@FILTERS.register("degenerate")
def degenerate(cfg: CurationConfig) -> pl.Expr:
    """Repetition loops: few distinct words among many (16+), or one non-empty line repeated max_line_repeats times."""
    def flag(texts: pl.Series) -> pl.Series:
        n, d, top = repetition_stats(texts)
        return pl.Series(((n >= 16) & (d < cfg.min_distinct_word_ratio * n)) | (top >= cfg.max_line_repeats))

    return _when(pl.col("rationale").map_batches(flag, return_dtype=pl.Boolean), R.DEGENERATE)


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
    try:
        exprs = [FILTERS.get(name)(cfg) for name in cfg.filters]
    except ValueError as exc:
        raise ValueError(f"curation.filters: {exc}") from None
    if not exprs:
        return pl.lit(None, dtype=pl.String)
    return pl.coalesce(exprs) if len(exprs) > 1 else exprs[0]
