"""Pieces every grader shares: the grader frame contract, the status rules and candidate extraction.

A grader gets a frame with one row per sample and these columns:

- `text` (str | null): the region to search, already cut by `builder.grade` (the stage-2 answer completion, the
  text after the last "answer is" / `\\boxed{}` anchor, a student's answer part (`builder.prompts.student_answer`),
  or the whole rationale);
- `anchored` (bool): the region is meant to hold the answer (so a region without a candidate is `wrong_format`),
  rather than a whole rationale searched as a fallback (then it is `no_answer`);
- `gold` (str) and `choices` (list[str] | null).

It returns a frame of the same height and order with `pred` (str | null), `correct` (bool) and `grade_status`
(one of `STATUSES`). `last=True` takes the last candidate in the region instead of the first (used for un-anchored
rationales, where the final answer comes last).

An anchored region is first cut to its final answer (`answer_span`): the first sentence, stopping at "because" or a
new question, with "not X" phrases removed ("The answer is not 5, it is 6." reads 6). Every candidate left in that
span counts: two different ones ("A or C", "7 or 8", "yes and no", two dates) make the answer `ambiguous`, which is
never correct; the same value twice ("3/8 or 0.375") is one answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import polars as pl

from builder.prompts import LETTERS
from builder.readers import is_blank

OK = "ok"
NO_ANSWER = "no_answer"
WRONG_FORMAT = "wrong_format"
PARSE_ERROR = "parse_error"
AMBIGUOUS = "ambiguous"
TIMEOUT = "timeout"
STATUSES = (OK, NO_ANSWER, WRONG_FORMAT, AMBIGUOUS, PARSE_ERROR, TIMEOUT)
"""Every grade_status: ok (a candidate was read), no_answer (nothing to read), wrong_format (an answer region with no
valid candidate), ambiguous (two different candidates), parse_error (gold unreadable, or the expression parser
failed), timeout (the expression parser ran out of time)."""

# A choice letter standing alone: "(B)", "(b)", "b)", "B)", "B.", "B" at the end, "Answer: B", "A or"
# ("A coin" is not a letter).
LETTER_TOKEN = (r"\([A-Ja-j]\)|(?:^|[\s:\"'*])[A-J](?:[).:,\"'*]|\s*$|\s*\n)|(?:^|\s)[a-j]\)"
                r"|(?:^|\s)[A-J]\s+(?:or|and)\b")  # "A or C": a hedge names letters too
LETTER_PAIR = r"\b([A-J])[ \t]*[/&+,\n][ \t]*([A-J])\b"  # "A/C", "A & C", "B,C", "B\nC": read as "A or C"



def _braced(depth: int) -> str:
    """Text with balanced braces nested up to `depth` levels (Rust regex has no recursion)."""
    inner = r"[^{}]*"
    for _ in range(depth):
        inner = rf"(?:[^{{}}]|\{{{inner}\}})*"
    return inner


BRACED = _braced(6)
"""A \\boxed{} content: `\\frac{1}{\\sqrt{x^{2}+1}}` is three levels deep, so six leave room."""
BOXED = rf"\\(?:boxed|fbox)\s*\{{{BRACED}\}}"

# Where a final answer ends: a sentence end, a reason ("because", "since", ", as"), a new question, a blank line,
# a second "answer is".
_SPAN_END = (r"[.!?](?:\s|$)|\b(?:because|since)\b|,\s*as\b|\bQ(?:uestion)?\s*:|\n[ \t]*\n"
             r"|\b(?:the\s+)?(?:final\s+)?answer\s+(?:is|was)\b")
_LEADING_ANCHOR = r"(?i)^[\s:,]*(?:so,?\s+)?(?:therefore,?\s+)?(?:the\s+)?(?:final\s+)?answer\s*(?:is|was|:)"
# "not 5", "isn't (A)": the negated candidate and the word itself go ("not 5.5," loses "5.5", keeps ",").
_NEGATED = r"(?i)(?:\bnot|n't)\s+\S*?([,;:](?:\s|$)|[.!?](?:\s|$)|\s|$)"


def answer_span(text: pl.Expr, *, negations: bool = True) -> pl.Expr:
    """The final answer inside an answer region: a leading "the answer is" dropped, negated candidates removed, then
    cut at the first sentence end after the first letter or digit (`_SPAN_END`). Decimal points, "3/8 or .375"
    and quoted "l r n z." are not sentence ends (a sentence end is followed by a space or the end)."""
    text = text.str.replace(_LEADING_ANCHOR, "")
    if negations:
        text = text.str.replace_all(_NEGATED, "$1")
    cut = text.str.extract(rf"(?si)^(.*?[\p{{L}}\p{{N}}].*?)(?:{_SPAN_END})", 1)
    return pl.coalesce(cut, text)


def region(*, last: bool) -> pl.Expr:
    """The text a grader reads: the answer span of an anchored region, the whole text of a rationale fallback."""
    if last:
        return pl.col("text")
    return pl.when(pl.col("anchored")).then(answer_span(pl.col("text"))).otherwise(pl.col("text"))


def n_distinct(frame: pl.DataFrame, col: str, normalize: Callable[[pl.Expr], pl.Expr]) -> pl.Series:
    """How many different `normalize`d values the list column `col` holds, per row; only rows with two or more
    items are exploded (most answers hold one candidate)."""
    n = frame.height
    counts = frame.select(pl.col(col).list.len().fill_null(0).clip(0, 1).cast(pl.UInt32)).to_series()
    many = frame.select(pl.int_range(n, dtype=pl.UInt32).alias("_i"), col).filter(pl.col(col).list.len() > 1)
    if many.height == 0:
        return counts
    per_row = (many.explode(col).with_columns(normalize(pl.col(col)).alias("_v"))
               .group_by("_i").agg(pl.col("_v").drop_nulls().n_unique().cast(pl.UInt32).alias("_n")))
    return counts.scatter(per_row["_i"], per_row["_n"])


def status(pred: pl.Expr, gold_ok: pl.Expr, *, wrong_format: pl.Expr | None = None,
           ambiguous: pl.Expr | None = None, failed: pl.Expr | None = None) -> pl.Expr:
    """The shared status rules: a bad gold is `parse_error` (a data problem, never the model's fault); an empty
    region is `no_answer`; `failed` (a status string from the expression parser, null when it did not fail) comes
    next; an anchored region without a candidate (or with an out-of-range one) is `wrong_format`; two different
    candidates are `ambiguous`; a candidate found is `ok`."""
    text, anchored = pl.col("text"), pl.col("anchored")
    expr = pl.when(~gold_ok).then(pl.lit(PARSE_ERROR)).when(is_blank(text)).then(pl.lit(NO_ANSWER))
    if failed is not None:
        expr = expr.when(failed.is_not_null()).then(failed)
    if wrong_format is not None:
        expr = expr.when(wrong_format.fill_null(False)).then(pl.lit(WRONG_FORMAT))
    if ambiguous is not None:
        expr = expr.when(pred.is_not_null() & ambiguous.fill_null(False)).then(pl.lit(AMBIGUOUS))
    return (
        expr.when(pred.is_null() & anchored).then(pl.lit(WRONG_FORMAT))
        .when(pred.is_null()).then(pl.lit(NO_ANSWER))
        .otherwise(pl.lit(OK))
    )


# An answer that commits to no value, in every answer type: an open bound next to its value ("at least 5", "5 or
# more", "10+", "max 5", "09/08/2021 at the latest"; "5, which is 3 more than 2" names no bound) or a condition
# ("yes, if it rained", "it depends", "sometimes"). Comparison signs count only where the gold has none (an
# inequality). Searched in the answer span with markdown and LaTeX wrappers blanked (`_PLAIN`): "at least **5**",
# "at least \(5\)". Patterns valid in both polars (Rust) and Python regex, and linear in both.
_NUM = r"\d[\d.,/%]*"
_AFTER = r"[\s,;:\u2013\u2014-]+"  # between a value and the bound after it: "5, at least", "5 - or more"
QUALIFIED = (r"(?i)\b(?:at\s+(?:least|most)|(?:not\s+|no\s+)?(?:more|less|fewer|greater|lower|higher)\s+than"
             r"(?:\s+or\s+equal\s+to)?|up\s+to|upwards?\s+of|over|above|under|below|nearly|almost|beyond|exceeding"
             r"|in\s+excess\s+of|max(?:imum)?|min(?:imum)?|a\s+(?:minimum|maximum)\s+of"
             r"|no\s+(?:later|earlier)\s+than)[\s:]+\$?-?\d"
             rf"|{_NUM}{_AFTER}(?:[^\W\d_]+\s+)?(?:or\s+(?:more|less|fewer|greater|higher|lower|above|below|so|later"
             r"|earlier)|at\s+(?:the\s+(?:very\s+)?|a\s+)?(?:latest|earliest|minimum|maximum|most|least)"
             r"|max(?:imum)?|minimum|and\s+(?:up|above|over|more|higher|greater))\b"
             rf"|{_NUM}\s+plus\s*(?:$|[^\s\d])|\d\+(?:\s*$|\s*[.,;!)\]]|\s+[^\W\d_])|\d\s*\^\s*\+"
             r"|\b(?:if|unless|depends|depending|provided|assuming|whether|when|except|in\s+case|but\s+only"
             r"|as\s+long\s+as|so\s+long\s+as|given\s+that|on\s+the\s+condition|not\s+(?:necessarily|always)"
             r"|sometimes|usually|generally|typically|maybe|perhaps|probably)\b")
# "> 5", "\geq 2", "\geqq 2", "⩾5"; not "<|endoftext|>"
BOUND_SIGNS = r"[<>\u2264\u2265\u2a7d\u2a7e]=?\s*-?\$?\d|\\(?:geq?q?|leq?q?|gt|lt|geqslant|leqslant)\b"
_PLAIN = r"\\(?:boxed|fbox|text|textbf|textit|emph|mathrm|mathbf|left|right)\s*\{?|\\[()\[\]]|[*_${}()]"
_LONG_AS = r"(?i),?\s*\b(?:as|so)\s+long\s+as\b"
_PY_QUALIFIED = re.compile(QUALIFIED.removeprefix("(?i)"), re.IGNORECASE)
_PY_BOUND_SIGNS = re.compile(BOUND_SIGNS)
_PY_PLAIN = re.compile(_PLAIN)
SPAN_LIMIT = 2000
"""Characters of an answer span searched for a qualifier in Python (an answer is short; a hostile one is not)."""


def qualified(frame: pl.DataFrame) -> pl.Series:
    """True where an anchored answer span holds an open bound or a condition (`QUALIFIED`) that is not part of the
    gold or of a choice's text ("(B) only if it rains"). `frame` has text, anchored, gold and choices."""
    flag = frame["anchored"].fill_null(False)
    if not flag.any():  # a whole rationale (long text) is never searched
        return flag
    plain = pl.col("text").str.replace_all(_PLAIN, " ")
    named = frame.filter(flag).select(plain.str.contains(f"{QUALIFIED}|{BOUND_SIGNS}").fill_null(False))
    flag = flag.scatter(flag.arg_true(), named.to_series())
    if not flag.any():
        return flag
    text = pl.col("text").str.replace_all(_LONG_AS, " provided ")  # before the span cuts at ", as"
    rows = frame.filter(flag).select(answer_span(text, negations=False).alias("span"), "gold", "choices")
    hits = []
    for span, gold, choices in rows.iter_rows():  # only the few rows that name a qualifier at all
        span = _PY_PLAIN.sub(" ", span[:SPAN_LIMIT])
        for choice in choices or []:  # a choice whose own text holds a qualifier: "(B) only if it rains"
            if choice.strip() and _PY_QUALIFIED.search(choice):
                span = re.sub(re.escape(choice.strip()), " ", span, flags=re.IGNORECASE)
        words = bool(_PY_QUALIFIED.search(span)) and not _PY_QUALIFIED.search(gold)
        signs = bool(_PY_BOUND_SIGNS.search(span)) and not _PY_BOUND_SIGNS.search(gold)
        hits.append(words or signs)
    return flag.scatter(flag.arg_true(), pl.Series(hits, dtype=pl.Boolean))


def finish(frame: pl.DataFrame, pred: pl.Expr, correct: pl.Expr, grade_status: pl.Expr) -> pl.DataFrame:
    """Select the grader output columns; `correct` is only ever true when the status is ok. An ok answer that is an
    open bound or conditional (`QUALIFIED`) is `ambiguous`."""
    out = frame.select(pred.cast(pl.String).alias("pred"), grade_status.alias("grade_status"), correct.alias("_c"))
    hedged = qualified(frame)
    return out.select(
        "pred",
        ((pl.col("grade_status") == OK) & pl.col("_c").fill_null(False) & ~hedged).alias("correct"),
        pl.when(hedged & (pl.col("grade_status") == OK)).then(pl.lit(AMBIGUOUS)).otherwise("grade_status")
        .alias("grade_status"),
    )


def letter_index(letter: pl.Expr) -> pl.Expr:
    """0-based index of a choice letter (A=0), null for null or a non-letter."""
    return pl.lit(LETTERS).str.find(letter, literal=True).cast(pl.Int64)


def index_letter(idx: pl.Expr) -> pl.Expr:
    """Choice letter for a 0-based index."""
    return pl.lit(LETTERS).str.slice(idx, 1)


def norm_text(text: pl.Expr) -> pl.Expr:
    """Lower-case, accents stripped, punctuation as spaces, single-spaced and padded: ' a b c ' for word matching."""
    t = text.str.normalize("NFKD").str.replace_all(r"\p{Mn}", "").str.to_lowercase()
    t = t.str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars().str.replace_all(r"\b0+(\d)", "$1")
    return pl.lit(" ") + t + pl.lit(" ")  # zero padding dropped: "5/12/2021" names the choice "05/12/2021"


def _choice_hits(frame: pl.DataFrame, text: pl.Expr, *, exact: bool,
                 normalize: Callable[[pl.Expr], pl.Expr]) -> pl.DataFrame:
    """(_i row, _k choice index, _pos, _len) of every choice whose text appears in `text` as whole words."""
    n = frame.height
    work = frame.select(pl.int_range(n, dtype=pl.UInt32).alias("_i"), normalize(text).alias("_t"), pl.col("choices"))
    work = work.filter(pl.col("choices").is_not_null() & pl.col("_t").is_not_null()
                       & (pl.col("_t").str.strip_chars() != ""))
    schema = {"_i": pl.UInt32, "_k": pl.Int64, "_pos": pl.UInt32, "_len": pl.UInt32}
    if work.height == 0:
        return pl.DataFrame(schema=schema)
    ex = (
        work.with_columns(pl.int_ranges(pl.col("choices").list.len(), dtype=pl.Int64).alias("_k"))
        .explode("choices", "_k")
        .with_columns(normalize(pl.col("choices")).alias("_c"))
        .filter(pl.col("_c").is_not_null() & (pl.col("_c").str.strip_chars() != ""))
    )
    if exact:
        ex = ex.filter(pl.col("_c") == pl.col("_t")).with_columns(pl.lit(0, dtype=pl.UInt32).alias("_pos"))
    else:
        ex = ex.with_columns(pl.col("_t").str.find(pl.col("_c"), literal=True).alias("_pos"))
        ex = ex.filter(pl.col("_pos").is_not_null())
    return ex.select("_i", "_k", pl.col("_pos").cast(pl.UInt32), pl.col("_c").str.len_bytes().alias("_len"))


def match_choice_text(frame: pl.DataFrame, text: pl.Expr, *, last: bool = False, exact: bool = False,
                      normalize: Callable[[pl.Expr], pl.Expr] = norm_text) -> pl.Series:
    """Letter of the choice whose text appears (as whole words) in `text`: earliest (or latest) hit wins.

    Explodes only the rows that have choices; the find is a literal substring search of padded, normalised
    strings, so "ten" never matches inside "often". `exact` wants the whole text to equal the choice;
    `normalize` maps text and choices before comparing (null choices never match).
    """
    n = frame.height
    ex = _choice_hits(frame, text, exact=exact, normalize=normalize)
    empty = pl.Series("letter", [None] * n, dtype=pl.String)
    if ex.height == 0:
        return empty
    # Longest choice first at the same position, so "10 apples" beats "10".
    ex = ex.sort(["_i", "_pos", "_len"], descending=[False, last, True])
    best = ex.group_by("_i", maintain_order=True).first().select("_i", index_letter(pl.col("_k")).alias("letter"))
    return (
        pl.DataFrame({"_i": pl.int_range(n, dtype=pl.UInt32, eager=True)})
        .join(best, on="_i", how="left", maintain_order="left")["letter"]
    )


def choice_text_count(frame: pl.DataFrame, text: pl.Expr) -> pl.Series:
    """How many different choices `text` names; a choice inside a longer one named there ("10" in "10 apples")
    does not count."""
    n = frame.height
    ex = _choice_hits(frame, text, exact=False, normalize=norm_text)
    counts = pl.Series("n", [0] * n, dtype=pl.UInt32)
    if ex.height == 0:
        return counts
    pairs = ex.join(ex, on="_i", suffix="_o").filter(
        (pl.col("_len_o") > pl.col("_len")) & (pl.col("_pos_o") <= pl.col("_pos"))
        & (pl.col("_pos_o") + pl.col("_len_o") >= pl.col("_pos") + pl.col("_len")))
    kept = ex.join(pairs.select("_i", "_k").unique(), on=["_i", "_k"], how="anti")
    per_row = kept.group_by("_i").agg(pl.col("_k").n_unique().cast(pl.UInt32).alias("n"))
    return counts.scatter(per_row["_i"], per_row["n"])
