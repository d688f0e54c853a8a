"""Number answers (single_eq, addsub, multiarith, gsm8k, svamp, and user tasks with numeric golds).

Parse: the first (or last) number in the region: integers, decimals (".5" too), thousands separators ("1,600"),
a leading sign, currency before it ("$5", "-$3") and any unit or "%" after it (ignored: "5 dollars", "25%" is
25, since the paper tasks ask "what percent" with golds like "25"), simple fractions "3/4", LaTeX `\\frac{3}{4}`,
trailing punctuation. When the first line of an answer starts with a calculation ("The answer is 8 + 9 = 17."), its
result (after the last "=", "equals", "which is") is the answer. A region with no digits gets a rare Python
fallback for number words ("two hundred four").

Verify (gold first): both sides as float64. Two integers must be equal exactly; otherwise they agree when
|pred - gold| <= 1e-12 * max(|pred|, |gold|) + 1e-12, which absorbs float noise ("0.6666666666666667" vs
"0.6666666666666666", "1/3" vs "0.3333333333333333") and nothing a person would call a different answer: two
values that differ within their first 12 significant digits never agree.
"""

from __future__ import annotations

import re

import polars as pl

from builder.graders._common import finish, is_blank, status, token
from builder.graders.base import GRADERS

REL_TOL = 1e-12
ABS_TOL = 1e-12

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
EQUALS = r"(?i)=|\bequals\b|\bwhich is\b|\bthat is\b|\bmakes\b|\bgives\b|\bresults in\b"
CALCULATION = r"^[\s:]*\$*-?\(?\d[\d,.]*[a-z]?\)?\s*[-+*/x\u00d7\u00f7]\s*\(?\$*-?\d"
NUMBER_TOKEN = rf"-?(?:\$\s?)?(?:{_DIGITS})(?:\s*/\s*(?:{_DIGITS}))?"


def _prepare(text: pl.Expr) -> pl.Expr:
    """LaTeX fractions to a/b, unicode minus to '-', thousands-separator spaces kept as they are."""
    text = text.str.replace_all(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", "($1)/($2)")
    text = text.str.replace_all(r"\(\s*(-?[\d.,]+)\s*\)\s*/\s*\(\s*([\d.,]+)\s*\)", "$1/$2")
    return text.str.replace_all("\u2212", "-", literal=True)


def _result_of_expression(text: pl.Expr) -> pl.Expr:
    """'23 + 18 + 28, which equals 69.' -> ' 69.': when the answer's first line starts with a calculation, its
    result is what follows the last '=' / 'equals' / 'which is' on that line (' 41, as 40 + 2 = 42' stays 41)."""
    line = text.str.extract(r"^\s*([^\n]*)", 1)
    parts = line.str.replace_all(EQUALS, "\x00").str.split("\x00")
    calc = line.str.contains(CALCULATION) & (parts.list.len() > 1)
    return pl.when(calc).then(parts.list.last()).otherwise(text)


def value(tok: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """(float value, is_integer) of a number token: '$1,600' -> 1600.0; '-3/4' -> -0.75."""
    clean = tok.str.replace_all(r"[\s$,]", "")
    parts = clean.str.split("/")
    num = parts.list.first().cast(pl.Float64, strict=False)
    den = parts.list.get(1, null_on_oob=True).cast(pl.Float64, strict=False)
    val = pl.when(den.is_null()).then(num).otherwise(num / den)
    is_int = den.is_null() & ~clean.str.contains(r"\.", literal=False)
    return val, is_int


def canonical(val: pl.Expr) -> pl.Expr:
    """One spelling per value ('1600', '0.75', '-5'), so majority votes count '1,600' and '1600' together."""
    integral = val.is_finite() & (val == val.floor()) & (val.abs() < 1e15)
    return pl.when(integral).then(val.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(val.cast(pl.String))


def agree(gold: pl.Expr, gold_int: pl.Expr, pred: pl.Expr, pred_int: pl.Expr) -> pl.Expr:
    """Gold-first numeric equality with the documented tolerance."""
    close = (pred - gold).abs() <= REL_TOL * pl.max_horizontal(pred.abs(), gold.abs()) + ABS_TOL
    return pl.when(gold_int & pred_int).then(pred == gold).otherwise(close)


_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_WORD = re.compile(r"[a-z]+")
NUMBER_WORDS = r"(?i)\b(?:" + "|".join([*_UNITS, *_TENS, *_SCALES]) + r")\b"


def words_to_number(text: str | None, last: bool = False) -> str | None:
    """The first (or last) run of English number words as digits: 'two hundred four' -> '204'."""
    if not text:
        return None
    runs: list[list[str]] = []
    cur: list[str] = []
    for w in _WORD.findall(text.lower()):
        if w in _UNITS or w in _TENS or w in _SCALES or (w == "and" and cur):
            cur.append(w)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    runs = [[w for w in r if w != "and"] for r in runs]
    runs = [r for r in runs if r]
    if not runs:
        return None
    total = current = 0
    for w in runs[-1] if last else runs[0]:
        if w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        else:
            total += max(current, 1) * _SCALES[w]
            current = 0
    return str(total + current)


@GRADERS.register("number")
def grade_number(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade numeric answers; see the module docstring for what parses and the tolerance."""
    text = _prepare(pl.col("text"))
    if not last:  # an anchored answer: a calculation counts by its result
        text = _result_of_expression(text)
    frame = frame.with_columns(token(text, NUMBER_TOKEN, last=last).alias("_tok"))
    # Rare fallback: a non-empty region without digits may spell the number out.
    need = frame.select(pl.col("_tok").is_null() & ~is_blank(pl.col("text"))
                        & pl.col("text").str.contains(NUMBER_WORDS)).to_series()
    if need.any():  # Python only on those rows
        words = frame.filter(need).select(pl.col("text").map_batches(
            lambda s: pl.Series([words_to_number(t, last) for t in s], dtype=pl.String), return_dtype=pl.String))
        frame = frame.with_columns(frame["_tok"].scatter(need.arg_true(), words.to_series()))
    gold_tok = token(_prepare(pl.col("gold")), NUMBER_TOKEN, last=False)
    frame = frame.with_columns(gold_tok.alias("_gtok"))
    g, g_int = value(pl.col("_gtok"))
    p, p_int = value(pl.col("_tok"))
    frame = frame.with_columns(g.alias("_g"), g_int.alias("_gi"), p.alias("_p"), p_int.alias("_pi"))
    gold_ok = pl.col("_g").is_not_null() & pl.col("_g").is_finite()
    pred = canonical(pl.col("_p"))
    correct = agree(pl.col("_g"), pl.col("_gi"), pl.col("_p"), pl.col("_pi"))
    return finish(frame, pred, correct, status(pred, gold_ok))
