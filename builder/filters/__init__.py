"""Quality filters: one small function per filter, each returning a polars expression.

A filter maps the curation config to an expression over graded-table columns that evaluates to the drop
reason (a `builder.reasons` constant) or null to keep the row, so every filter runs vectorised in one
`select` and the first listed filter that fires names the reason. Add one with `@FILTERS.register("name")`.

`teacher_error` is no listed filter: `reason_expr` runs it first on every row, whatever cfg.filters lists (a
request the teacher refused is never data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from builder import reasons as R
from builder.kernels import BYTE_MAP, fmix64, njit, njit_par, prange, text_buffers
from builder.registry import Registry
from builder.teachers.base import FAILED

if TYPE_CHECKING:
    from builder.recipe import CurationConfig

# A filter reads its knobs from the curation config; `builder.bind` checks `curation.filters` against FILTERS.
Filter = Callable[["CurationConfig"], pl.Expr]
FILTERS: Registry[Filter] = Registry("quality filter")

def _when(cond: pl.Expr, reason: str) -> pl.Expr:
    return pl.when(cond).then(pl.lit(reason)).otherwise(pl.lit(None, dtype=pl.String))


def teacher_error(cfg: CurationConfig) -> pl.Expr:
    """The engine refused the sample's request (finish_reason "error": stage 1, or only the answer stage, whose
    rationale is kept; the message is in `error`): always checked first, not a registered filter."""
    return _when(pl.col("finish_reason") == FAILED, R.TEACHER_ERROR)


@FILTERS.register("empty")
def empty(cfg: CurationConfig) -> pl.Expr:
    """Nothing but whitespace: nothing to learn from."""
    return _when(~pl.col("rationale").fill_null("").str.contains(r"\S"), R.EMPTY)  # stops at the first non-space


@FILTERS.register("truncated")
def truncated(cfg: CurationConfig) -> pl.Expr:
    """Hit max_tokens (vLLM finish_reason "length"): the reasoning is cut off."""
    return _when(pl.col("finish_reason") == "length", R.TRUNCATED)


@FILTERS.register("no_answer")
def no_answer(cfg: CurationConfig) -> pl.Expr:
    """The grader found no answer, could not parse it, or read a hedge (status `ambiguous`): "could not parse" is
    never "wrong"."""
    return _when(pl.col("grade_status") != "ok", R.NO_ANSWER)


@FILTERS.register("length")
def length(cfg: CurationConfig) -> pl.Expr:
    """Outside [min_chars, max_chars] characters (leading/trailing whitespace included)."""
    n = pl.col("rationale").fill_null("").str.len_chars()
    too_long = pl.lit(False) if cfg.max_chars is None else n > cfg.max_chars
    return (pl.when(n < cfg.min_chars).then(pl.lit(R.TOO_SHORT))
            .when(too_long).then(pl.lit(R.TOO_LONG)).otherwise(pl.lit(None, dtype=pl.String)))


@njit
def _insert(table, counts, used, nused, h):
    """Open-addressing insert of hash h (never 0); returns (count after insert, nused)."""
    mask = len(table) - 1
    k = np.int64(h & np.uint64(mask))
    while table[k] != 0 and table[k] != h:
        k = (k + 1) & mask
    if table[k] == 0:
        table[k] = h
        used[nused] = k
        nused += 1
    counts[k] += 1
    return counts[k], nused


@njit
def _block_capacity(offsets, r0, r1, slots_per_byte):
    """Power-of-two size of the hash tables a block of rows shares: `slots_per_byte` slots per byte of its longest
    row, plus 2, at least 16."""
    longest = 1
    for r in range(r0, r1):
        longest = max(longest, offsets[r + 1] - offsets[r])
    cap = 16
    while cap < slots_per_byte * longest + 2:
        cap *= 2
    return cap


@njit_par
def _repetition(data, offsets, byte_map, block):
    """Per row: word count, distinct words and the top count of one line (lines compared as normalised words).

    One pass over the bytes; rows are processed in blocks sharing two hash tables (cleared slot by slot), so
    there is no allocation or sort per row.
    """
    n = len(offsets) - 1
    n_words = np.zeros(n, np.int64)
    n_distinct = np.zeros(n, np.int64)
    top_line = np.zeros(n, np.int64)
    n_blocks = (n + block - 1) // block
    for blk in prange(n_blocks):
        r0 = blk * block
        r1 = min(n, r0 + block)
        cap = _block_capacity(offsets, r0, r1, 2)
        wt = np.zeros(cap, np.uint64)
        wc = np.zeros(cap, np.int64)
        wu = np.empty(cap, np.int64)
        lt = np.zeros(cap, np.uint64)
        lc = np.zeros(cap, np.int64)
        lu = np.empty(cap, np.int64)
        for r in range(r0, r1):
            nwu = 0
            nlu = 0
            nw = 0
            best = 0
            h = np.uint64(0xCBF29CE484222325)
            inword = False
            line = np.uint64(0)
            line_words = 0
            end = offsets[r + 1]
            for i in range(offsets[r], end + 1):
                cur = byte_map[data[i]] if i < end else np.uint64(0)
                if cur != 0:
                    h = (h ^ cur) * np.uint64(0x100000001B3)
                    inword = True
                    continue
                if inword:
                    _, nwu = _insert(wt, wc, wu, nwu, h | np.uint64(1))
                    line = fmix64(line ^ h) * np.uint64(0x9E3779B97F4A7C15)
                    line_words += 1
                    nw += 1
                    h = np.uint64(0xCBF29CE484222325)
                    inword = False
                if (i == end or data[i] == 10) and line_words:
                    c, nlu = _insert(lt, lc, lu, nlu, line | np.uint64(1))
                    best = max(best, c)
                    line = np.uint64(0)
                    line_words = 0
            n_words[r] = nw
            n_distinct[r] = nwu
            top_line[r] = best
            for u in range(nwu):
                wt[wu[u]] = 0
                wc[wu[u]] = 0
            for u in range(nlu):
                lt[lu[u]] = 0
                lc[lu[u]] = 0
    return n_words, n_distinct, top_line


def repetition_stats(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(words, distinct words, count of the most repeated line with words) per text; lines compare normalised."""
    data, offsets = text_buffers(texts)
    return _repetition(data, offsets, BYTE_MAP, 4096)


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


# ------------------------------------------------------------------ reasoning traces
# These read the trace columns (`reasoning`, `reasoning_tokens`, `reasoning_finished`); a row without a trace
# (reasoning null) never fires them, so they are safe to list for mixed or trace-free data.
@FILTERS.register("unfinished_thinking")
def unfinished_thinking(cfg: CurationConfig) -> pl.Expr:
    """The trace never closed (cut by max_tokens or the thinking budget): there is no conclusion to learn."""
    return _when(pl.col("reasoning_finished").not_().fill_null(False), R.UNFINISHED_THINKING)


@FILTERS.register("no_final_answer")
def no_final_answer(cfg: CurationConfig) -> pl.Expr:
    """A trace but nothing after it that states an answer: blank text after the trace, or no extracted answer."""
    after = pl.col("rationale").fill_null("")
    return _when(pl.col("reasoning").is_not_null() & (~after.str.contains(r"\S") | pl.col("pred").is_null()),
                 R.NO_FINAL_ANSWER)


@FILTERS.register("reasoning_length")
def reasoning_length(cfg: CurationConfig) -> pl.Expr:
    """A trace outside [min, max] reasoning tokens (when counted) or characters (reasoning_* bounds)."""
    has = pl.col("reasoning").is_not_null()
    chars = pl.col("reasoning").str.len_chars()
    tokens = pl.col("reasoning_tokens")

    def outside(lo: int | None, hi: int | None, value: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
        short = pl.lit(False) if lo is None else (value < lo).fill_null(False)
        long = pl.lit(False) if hi is None else (value > hi).fill_null(False)
        return short, long

    ts, tl = outside(cfg.min_reasoning_tokens, cfg.max_reasoning_tokens, tokens)
    cs, cl = outside(cfg.min_reasoning_chars, cfg.max_reasoning_chars, chars)
    return (pl.when(has & (ts | cs)).then(pl.lit(R.REASONING_TOO_SHORT))
            .when(has & (tl | cl)).then(pl.lit(R.REASONING_TOO_LONG)).otherwise(pl.lit(None, dtype=pl.String)))


@njit
def _mix_word(h):
    return fmix64(h) | np.uint64(1)  # never 0: 0 marks an empty slot of the n-gram table


@njit_par
def _loop_share(data, offsets, byte_map, ngram, block):
    """Per row: the share of its word n-grams that already occurred earlier in the same row (0 under n words).

    One pass over the bytes: words are FNV-hashed as in MinHash shingling, n-grams are a rolling polynomial hash
    of the last n word hashes, counted in an open-addressing table shared by a block of rows (cleared slot by
    slot), so a 32k-token trace costs no sort and no allocation.
    """
    n = len(offsets) - 1
    share = np.zeros(n, np.float64)
    base = np.uint64(0x100000001B3)
    top = np.uint64(1)  # base ** (ngram - 1), to drop the oldest word from the rolling hash
    for _ in range(ngram - 1):
        top *= base
    n_blocks = (n + block - 1) // block
    for blk in prange(n_blocks):
        r0 = blk * block
        r1 = min(n, r0 + block)
        cap = _block_capacity(offsets, r0, r1, 1)  # one n-gram per 2 bytes at most: table half full
        table = np.zeros(cap, np.uint64)
        used = np.empty(cap, np.int64)
        ring = np.zeros(ngram, np.uint64)
        mask = cap - 1
        for r in range(r0, r1):
            nused = 0
            words = 0
            repeats = 0
            roll = np.uint64(0)
            h = np.uint64(0xCBF29CE484222325)
            inword = False
            end = offsets[r + 1]
            for i in range(offsets[r], end + 1):
                cur = byte_map[data[i]] if i < end else np.uint64(0)
                if cur != 0:
                    h = (h ^ cur) * np.uint64(0x100000001B3)
                    inword = True
                    continue
                if not inword:
                    continue
                w = _mix_word(h)
                h = np.uint64(0xCBF29CE484222325)
                inword = False
                slot = words % ngram
                if words >= ngram:
                    roll -= ring[slot] * top
                roll = roll * base + w
                ring[slot] = w
                words += 1
                if words < ngram:
                    continue
                g = fmix64(roll) | np.uint64(1)
                k = np.int64(g & np.uint64(mask))
                while table[k] != 0 and table[k] != g:
                    k = (k + 1) & mask
                if table[k] == g:
                    repeats += 1
                else:
                    table[k] = g
                    used[nused] = k
                    nused += 1
            if words >= ngram:
                share[r] = repeats / (words - ngram + 1)
            for u in range(nused):
                table[used[u]] = 0
    return share


def loop_share(texts: pl.Series, ngram: int) -> np.ndarray:
    """Share of repeated word n-grams per text (normalised words, as MinHash shingles them); 0 for null."""
    data, offsets = text_buffers(texts)
    return _loop_share(data, offsets, BYTE_MAP, np.int64(ngram), 16)


@FILTERS.register("repeated_loop")
def repeated_loop(cfg: CurationConfig) -> pl.Expr:
    """A trace that repeats itself: more than max_loop_share of its loop_ngram-word n-grams seen before in it.

    Long verbatim n-grams (16 words by default) rarely recur in a trace that makes progress; a model stuck in a
    loop ("Wait, let me recompute ...") repeats whole paragraphs.
    """
    def flag(texts: pl.Series) -> pl.Series:
        return pl.Series(loop_share(texts, cfg.loop_ngram) > cfg.max_loop_share)

    return _when(pl.col("reasoning").map_batches(flag, return_dtype=pl.Boolean), R.REPEATED_LOOP)


def reason_expr(cfg: CurationConfig) -> pl.Expr:
    """The first firing filter's reason: `teacher_error` first, always, then cfg.filters in order; or null."""
    try:
        exprs = [teacher_error(cfg)] + [FILTERS.get(name)(cfg) for name in cfg.filters]
    except ValueError as exc:
        raise ValueError(f"curation.filters: {exc}") from None
    return pl.coalesce(exprs) if len(exprs) > 1 else exprs[0]
