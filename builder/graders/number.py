"""Number answers (single_eq, addsub, multiarith, gsm8k, svamp, and user tasks with numeric golds).

Parse (vectorised): every number in the answer span (`_common.answer_span`): integers and decimals (".5" too);
thousands separators of every common form ("1,600", "1 000", thin and no-break spaces, "1'000", LaTeX "14{,}916",
"16,\\!386.20", "1\\,000"; European "1.234,5" and "1.000.000"); decimal commas, told apart from thousands groups
by group size ("1,5", "2,74", "1000,99", "0,111" are decimals; "1,600" is not); a sign; currency before ("$5",
"\\$5", "-$3"); units, "%" and `\\text{...}` after (ignored: the paper tasks ask "what percent" with golds like
"25"); fractions "3/4", `\\frac{3}{4}`, `\\dfrac`, `\\tfrac`, `\\cfrac`, `\\frac13`; mixed numbers "3 1/2" and
`3\\frac{1}{2}`; scientific notation "1.5e3", "1.5 \\times 10^{3}". Unicode first (`normalise`): the dashes that
stand for a minus (hyphen, figure and en dash, minus signs) are "-", except an en or figure dash between numbers,
which is a range ("3 \u2013 5" is "3 to 5"); zero-width characters are dropped; vulgar fractions are their value
("5\u00bd" is the mixed number 5 1/2). A span with no digits gets a rare Python fallback for number words ("two
hundred four"). A span left with one plain number is read right here; a calculation ("8 + 9 = 17.") always goes to
`structure`, which reads it by its result.

Structure (Python, each distinct span once): a span with several numbers, brackets, operators, "=", a fraction, a
spelled or spaced sign or LaTeX (`structure.ROUTE`) is read by `structure.read`, which knows the answer phrase from
its explanation (" 8 cookies for 4 people" is 8), evaluates arithmetic exactly (" 2 + 3" is 5, never its first
operand), keeps units with exponents ("25 m^2") and pairs, lists and intervals apart from decimal commas; see its
docstring for the rules. What it cannot evaluate (`\\sqrt{2}`, "3√2/2", nested fractions, `\\pi`, variables, "(3,4)")
goes to math-verify (`builder.graders.latex`), in worker processes; its failures are the statuses `timeout` and
`parse_error`, a non-number is `wrong_format`. Two different values in the span ("7 or 8", "between 3 and 5", a set
"12 and 13") are `ambiguous`, the first is the pred; the same value twice ("3/8 or 0.375") is one answer.

No number (`wrong_format`, pred null): a value float64 cannot hold that is no exact integer (" 1e400", " 5e308",
math-verify's 10^{10^{10}}: infinity would "agree" with any gold), a number of more than `structure.MAX_DIGITS`
digits, and whatever `structure` refuses (too deep, too large); no input raises.

Verify (gold first): two integers compare exactly as digit strings, at any size. Otherwise both sides are finite
float64 and agree when |pred - gold| <= 1e-12 * max(|pred|, |gold|) + 1e-12, which absorbs float noise
("0.6666666666666667" vs "0.6666666666666666", "1/3" vs "0.3333333333333333") and nothing a person would call a
different answer: two values that differ within their first 12 significant digits never agree. One exception, as
datasets round what has no finite decimal form: a gold written with k >= 2 decimals agrees with a prediction written
in closed form by the shared rule of `builder.graders.precision` (one definition with the math worker): an exact
rational that never ends ("1/3", read by `structure`, or math-verify's "p/q") when it is the simplest fraction
rounding to the gold (`precision.matches_rational`: 1/3 for "0.33", not 749/300 for "2.50"); an irrational (a
root, pi, read by math-verify) when it rounds to the gold (`precision.matches_irrational`: "\\sqrt{2}" for "1.41").
A prediction written as a decimal keeps the tight tolerance ("0.3333" is not "0.33", "2.49" is not "2.5").
"""

from __future__ import annotations

import re
from fractions import Fraction

import polars as pl

from builder.graders import latex, precision, structure
from builder.graders._common import WRONG_FORMAT, finish, is_blank, region, status
from builder.graders.base import GRADERS
from builder.graders.structure import MANTISSA, MAX_DIGITS, MIXED, SPACES

REL_TOL = 1e-12
ABS_TOL = 1e-12

NUMBER_TOKEN = rf"-?(?:\$\s?)?(?:{MIXED}|{MANTISSA}(?:\s*/\s*{MANTISSA})?)"
# Left after `_prepare`: structure only math-verify reads; arithmetic too in a LaTeX answer ("\\frac{14}{3}+1").
EXPRESSION = r"\\[A-Za-z]|\^|\{|\u221a|\u03c0"
ARITHMETIC = r"[\d)]\s*[-+*\u00d7\u00f7]\s*[\d(]"

_PLAIN_NUMBER = r"-?[\d.,]+"
_LATEX_REWRITES = (  # (pattern, replacement) in order; each turns a LaTeX spelling of a plain number into text
    (r"\{,\}|,\\!", ","),  # 14{,}916  16,\!386.20
    (r"(\d)(?:\\[,;: !]|~)(\d)", "${1}${2}"),  # 1\,000
    (r"\\([$%])", "$1"),  # \$5  25\%
    (r"\\(?:boxed|fbox)\s*\{", " "),
    (r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}", " $1 "),
    (r"\\(?:left|right|displaystyle|,|;|:|!|quad|qquad)", " "),
    (r"\\(?:\(|\)|\[|\])", " "),
    (r"(\d)\s*\\[dtc]?frac", "$1 \\frac"),  # 3\frac{1}{2}: a mixed number
    (rf"\\[dtc]?frac\s*\{{\s*({_PLAIN_NUMBER})\s*\}}\s*\{{\s*({_PLAIN_NUMBER})\s*\}}", "$1/$2"),
    (r"\\[dtc]?frac\s*(\d)\s*(\d)", "$1/$2"),  # \frac13
    (r"(\d)\s*(?:\\times|\\cdot|[x\u00d7*])\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?", "${1}e$2"),  # 1.5 \times 10^{3}
    (r"\{\s*(-?[\d.,]+)\s*\}", " $1 "),  # a bare {12}
)


# Unicode spellings: dashes that stand for a minus (hyphen, figure and en dash, minus signs; not the em dash, which
# `structure` refuses where it is glued to a number), invisible characters, vulgar fractions ("5\u00bd" is 5 1/2).
MINUS_DASHES = "\u2010\u2011\u2012\u2013\u2212\u02d7\u2796\ufe63\uff0d"
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
VULGAR = {"\u00bd": "1/2", "\u2153": "1/3", "\u2154": "2/3", "\u00bc": "1/4", "\u00be": "3/4", "\u2155": "1/5",
          "\u2156": "2/5", "\u2157": "3/5", "\u2158": "4/5", "\u2159": "1/6", "\u215a": "5/6", "\u2150": "1/7",
          "\u215b": "1/8", "\u215c": "3/8", "\u215d": "5/8", "\u215e": "7/8", "\u2151": "1/9", "\u2152": "1/10",
          "\u2189": "0/3", "\u2044": "/"}


def _prepare(text: pl.Expr) -> pl.Expr:
    """LaTeX spellings of plain numbers as plain text. Real structure is left alone."""
    for pattern, repl in _LATEX_REWRITES:
        text = text.str.replace_all(pattern, repl)
    return text


def _unicode(text: pl.Expr) -> pl.Expr:
    text = text.str.replace_all(f"[{INVISIBLE}]", "")
    text = text.str.replace_all(r"([0-9])(\s*)[\u2012\u2013](\s*[0-9])", "${1}${2} to ${3}")  # 3 \u2013 5: a range
    text = text.str.replace_all(f"[{MINUS_DASHES}]", "-")
    fractions = "".join(VULGAR)[:-1]
    text = text.str.replace_all(f"([0-9])([{fractions}])", "${1} ${2}")  # 5\u00bd: a mixed number
    return text.str.replace_many(list(VULGAR), list(VULGAR.values()))


def _rewrite(frame: pl.DataFrame, col: str, pattern: str, rewrite) -> pl.DataFrame:
    """`rewrite` on the rows of `col` that contain `pattern` (the others have nothing to rewrite)."""
    mask = frame.select(pl.col(col).str.contains(pattern).fill_null(False)).to_series()
    if not mask.any():
        return frame
    done = frame.filter(mask).select(rewrite(pl.col(col)))
    return frame.with_columns(frame[col].scatter(mask.arg_true(), done.to_series()))


def normalise(frame: pl.DataFrame, col: str) -> pl.DataFrame:
    """The unicode spellings of `col` as plain text (`_unicode`), on the rows with a non-ASCII character."""
    return _rewrite(frame, col, r"[^\x00-\x7f]", _unicode)


def prepare(frame: pl.DataFrame, col: str, *, normalised: bool = False) -> pl.DataFrame:
    """`normalise` (unless done), then `_prepare` on the rows of `col` that hold a backslash, brace or caret."""
    return _rewrite(frame if normalised else normalise(frame, col), col, r"[\\{^]", _prepare)


def _plain(s: pl.Expr) -> pl.Expr:
    """One number (a column, spaces and '$' already gone) without grouping: '1,600' -> '1600', '1,5' -> '1.5',
    '1.234,5' -> '1234.5'."""
    european = s.str.contains(rf"^-?{structure.EUROPEAN}$")
    dotted = s.str.contains(rf"^-?{structure.DOTTED}$")
    decimal_comma = s.str.contains(rf"^-?{structure.DECIMAL_COMMA}$")
    return (
        pl.when(european).then(s.str.replace_all(".", "", literal=True).str.replace(",", ".", literal=True))
        .when(dotted).then(s.str.replace_all(".", "", literal=True))
        .when(decimal_comma).then(s.str.replace(",", ".", literal=True))
        .otherwise(s.str.replace_all(",", "", literal=True))
    )


def values(frame: pl.DataFrame, tok: str, out: str) -> pl.DataFrame:
    """Add `out` (float value), `out`_int (exact integer digits, null unless an integer) and `out`_canon (one
    spelling per value, so majority votes count '1,600' and '1600' together) for the number tokens in `tok`.

    '$1,600' -> (1600.0, '1600', '1600'); '-3/4' -> (-0.75, null, '-0.75'); '3 1/2' -> (3.5, null, '3.5').
    Staged over columns (eager polars would recompute a shared sub-expression for every use).
    """
    t = pl.col(tok)
    mixed = t.str.extract_groups(r"^(-?)\$?\s?(\d+)[ \u00a0]+(\d+)\s*/\s*(\d+)$")
    parts = t.str.replace_all(rf"[\s$'{SPACES}]", "").str.split_exact("/", 1)
    frame = frame.with_columns(mixed.alias("_mx"), parts.struct.field("field_0").alias("_ns"),
                               parts.struct.field("field_1").alias("_ds"))
    frame = frame.with_columns(_plain(pl.col("_ns")).alias("_ns"), _plain(pl.col("_ds")).alias("_ds"))
    m = pl.col("_mx").struct
    sign = pl.when(m.field("1") == "-").then(-1.0).otherwise(1.0)
    mixed_val = sign * (m.field("2").cast(pl.Float64) + m.field("3").cast(pl.Float64) / m.field("4").cast(pl.Float64))
    num, den = pl.col("_ns").cast(pl.Float64, strict=False), pl.col("_ds").cast(pl.Float64, strict=False)
    is_mixed = m.field("2").is_not_null()
    is_int = pl.col("_ds").is_null() & pl.col("_ns").str.contains(r"^-?\d+$") & ~is_mixed
    digits = pl.col("_ns").str.replace(r"^(-?)0+(\d)", "${1}${2}").str.replace(r"^-0$", "0")
    frame = frame.with_columns(
        pl.when(is_mixed).then(mixed_val).when(den.is_null()).then(num).otherwise(num / den).alias(out),
        pl.when(is_int).then(digits).alias(f"{out}_int"),
    )
    val = pl.col(out)
    integral = val.is_finite() & (val == val.floor()) & (val.abs() < 1e15)
    canon = pl.coalesce(pl.col(f"{out}_int"), pl.when(integral).then(val.cast(pl.Int64, strict=False).cast(pl.String)),
                        val.cast(pl.String))
    return frame.with_columns(canon.alias(f"{out}_canon")).drop("_mx", "_ns", "_ds")


def agree(gold: pl.Expr, gold_int: pl.Expr, pred: pl.Expr, pred_int: pl.Expr) -> pl.Expr:
    """Gold-first numeric equality: integers as exact digit strings, anything else within the tolerance, where a
    value float64 cannot hold (inf, nan) agrees with nothing."""
    close = (pred - gold).abs() <= REL_TOL * pl.max_horizontal(pred.abs(), gold.abs()) + ABS_TOL
    close = close & pred.is_finite() & gold.is_finite()
    return pl.when(gold_int.is_not_null() & pred_int.is_not_null()).then(pred_int == gold_int).otherwise(close)


_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_WORD = re.compile(r"[a-z]+")
NUMBER_WORDS = r"(?i)\b(?:" + "|".join([*_UNITS, *_TENS, *_SCALES]) + r")\b"
_WORDS_LIMIT = 10**MAX_DIGITS


def words_to_number(text: str | None, last: bool = False) -> str | None:
    """The first (or last) run of English number words as digits: 'two hundred four' -> '204'; None for a value of
    more than `MAX_DIGITS` digits (" two hundred two hundred ...")."""
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
        if total + current >= _WORDS_LIMIT:
            return None
    return str(total + current)


def _needs_latex(frame: pl.DataFrame, text_col: str, raw_col: str) -> pl.Series:
    """Rows whose prepared `text_col` still has LaTeX/expression structure (the gold's test)."""
    text, raw = pl.col(text_col), pl.col(raw_col)
    return frame.select((text.str.contains(EXPRESSION) | (raw.str.contains("\\", literal=True)
                                                        & text.str.contains(ARITHMETIC))).fill_null(False)).to_series()


def _expressions(frame: pl.DataFrame, need: pl.Series, source: pl.Expr, first_col: str) -> pl.DataFrame:
    """The `need` rows get `first_col` from math-verify on `source` (one call per distinct string); `_mv_status` is
    its failure status, `_mv_amb` whether it read several values, `_mv_closed` whether the value is a closed form
    (`structure.closed_form`) (null / false on the other rows)."""
    frame = frame.with_columns(pl.lit(None, pl.String).alias("_mv_status"), pl.lit(False).alias("_mv_amb"),
                               pl.lit(False).alias("_mv_closed"))
    if not need.any():
        return frame
    asked = frame.filter(need).select(source.alias("_src"))
    results = latex.evaluate(asked["_src"].unique().to_list())
    lookup = pl.DataFrame({"_src": list(results), "_s": [r[0] for r in results.values()],
                           "_v": [r[1] or [] for r in results.values()],
                           "_c": [structure.closed_form((r[1] or [None])[0], t) for t, r in results.items()]},
                          schema={"_src": pl.String, "_s": pl.String, "_v": pl.List(pl.String), "_c": pl.Boolean})
    got = asked.join(lookup, on="_src", how="left", maintain_order="left")
    idx = need.arg_true()
    return frame.with_columns(
        frame[first_col].scatter(idx, got["_v"].list.first()),
        frame["_mv_status"].scatter(idx, got["_s"]),
        frame["_mv_amb"].scatter(idx, got["_v"].list.n_unique() > 1),
        frame["_mv_closed"].scatter(idx, got["_c"]),
    )


def _read_structure(frame: pl.DataFrame) -> pl.DataFrame:
    """Answer spans with structure (`structure.ROUTE`, or several numbers) are read by `structure.read`, each
    distinct string once: `_first` becomes the first value it read, `_read_amb` whether it read two different ones,
    `_refused` a refusal's status, `_closed` whether the value is a closed form, `_to_mv` whether the span is
    math-verify's, `_read` whether the row was read."""
    route = frame.select((pl.col("_span") & ((pl.col("_toks").list.len() > 1)
                                             | pl.col("_text").str.contains(structure.ROUTE))).fill_null(False))
    route = route.to_series()
    frame = frame.with_columns(pl.lit(None, pl.String).alias("_refused"), pl.lit(False).alias("_closed"),
                               pl.lit(False).alias("_to_mv"), pl.lit(False).alias("_read_amb"),
                               route.alias("_read"))
    if not route.any():
        return frame
    texts = frame.filter(route)["_text"].unique().to_list()
    read = [structure.read(t) for t in texts]
    lookup = pl.DataFrame({"_text": texts, "_k": [r[0] for r in read], "_v": [r[1] for r in read],
                           "_c": [r[2] for r in read]},
                          schema={"_text": pl.String, "_k": pl.String, "_v": pl.List(pl.String), "_c": pl.Boolean})
    lookup = values(lookup.with_columns(pl.col("_v").list.first().alias("_f")), "_f", "_fv")
    lookup = lookup.with_columns(_ambiguous(lookup, "_v", "_fv", pl.lit(True)).alias("_a"),
                                 pl.when(pl.col("_k") == structure.WRONG_FORMAT).then(pl.col("_k")).alias("_r"))
    got = frame.filter(route).select("_text").join(lookup, on="_text", how="left", maintain_order="left")
    idx = route.arg_true()
    return frame.with_columns(
        frame["_first"].scatter(idx, got["_f"]),
        frame["_read_amb"].scatter(idx, got["_a"]),
        frame["_refused"].scatter(idx, got["_r"]),
        frame["_closed"].scatter(idx, got["_c"]),
        frame["_to_mv"].scatter(idx, got["_k"] == structure.MATH_VERIFY),
    )


def _ambiguous(frame: pl.DataFrame, toks: str, first: str, mask: pl.Expr) -> pl.Series:
    """True where `mask` holds and the list `toks` holds a value other than `first` (with `first`_int from
    `values`)."""
    n = frame.height
    many = frame.select(pl.int_range(n, dtype=pl.UInt32).alias("_i"), toks, first, f"{first}_int", mask.alias("_m"))
    many = many.filter(pl.col("_m") & (pl.col(toks).list.len() > 1))
    flag = pl.Series("_amb", [False] * n)
    if many.height == 0:
        return flag
    ex = values(many.explode(toks), toks, "_v")
    differs = ~agree(pl.col(first), pl.col(f"{first}_int"), pl.col("_v"), pl.col("_v_int")).fill_null(False)
    rows = ex.group_by("_i").agg(differs.any().alias("_a")).filter("_a")
    return flag.scatter(rows["_i"], True) if rows.height else flag


def _precise(gold: str | None, value: str | None) -> bool:
    """The shared precision rule (`precision`) for a closed-form prediction `value` (exact "p/q" for a rational,
    decimals for an irrational) against the gold token."""
    if not gold or not value:
        return False
    gold = gold.replace("$", "").strip()
    try:
        if "/" in value:
            return precision.matches_rational(gold, Fraction(value))
        return precision.matches_irrational(gold, float(value))
    except (ValueError, ZeroDivisionError, OverflowError):
        return False


def _closed_form_match(frame: pl.DataFrame) -> pl.Series:
    """Whether each row's closed-form prediction matches its gold by the precision rule (Python, closed rows only)."""
    mask = frame.select(pl.col("_closed").fill_null(False) & pl.col("_first").is_not_null()).to_series()
    flag = pl.Series("_precise", [False] * frame.height)
    if not mask.any():
        return flag
    rows = frame.filter(mask)
    return flag.scatter(mask.arg_true(), [_precise(g, v) for g, v in zip(rows["_gfirst"], rows["_first"],
                                                                          strict=True)])


def _golds(frame: pl.DataFrame) -> pl.DataFrame:
    """Each distinct gold read once (a question's samples share it): `_gfirst` (its number token), `_g`, `_g_int`,
    `_g_canon` (`values`) and `_gfailed` (math-verify's failure on a LaTeX gold), keyed by `gold`."""
    golds = prepare(frame.select("gold").unique().with_columns(pl.col("gold").alias("_gold")), "_gold")
    golds = golds.with_columns(pl.col("_gold").str.extract_all(NUMBER_TOKEN).list.first().alias("_gfirst"))
    golds = _expressions(golds, _needs_latex(golds, "_gold", "gold"), pl.col("gold"), "_gfirst")
    golds = values(golds.rename({"_mv_status": "_gfailed"}), "_gfirst", "_g")
    return golds.select("gold", "_gfirst", "_g", "_g_int", "_g_canon", "_gfailed")


@GRADERS.register("number")
def grade_number(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade numeric answers; see the module docstring for what parses, the statuses and the tolerance."""
    frame = normalise(frame.with_columns(region(last=last).alias("_raw")), "_raw")
    frame = prepare(frame.with_columns(pl.col("_raw").alias("_text")), "_text", normalised=True)
    frame = frame.with_columns(pl.col("_text").str.extract_all(NUMBER_TOKEN).alias("_toks"))
    frame = frame.with_columns(
        (pl.col("_toks").list.last() if last else pl.col("_toks").list.first()).alias("_first"),
        (pl.col("anchored") & pl.lit(not last)).alias("_span"),  # hedges count in answer spans only
    )
    frame = frame.join(_golds(frame), on="gold", how="left", maintain_order="left", nulls_equal=True)
    # Structure is read in answer spans only, never in whole rationales (their last number is the answer).
    frame = _read_structure(frame)
    frame = _expressions(frame, frame["_to_mv"], structure.for_math_verify(pl.col("_raw")), "_first")
    frame = frame.with_columns(pl.coalesce("_mv_status", "_refused").alias("_failed"),
                               pl.col("_closed") | pl.col("_mv_closed"))
    # Rare fallback: a non-empty region without digits may spell the number out.
    need = frame.select(pl.col("_first").is_null() & pl.col("_failed").is_null() & ~is_blank(pl.col("text"))
                        & pl.col("_text").str.contains(NUMBER_WORDS)).to_series()
    if need.any():  # Python only on those rows
        words = frame.filter(need).select(pl.col("_text").map_batches(
            lambda s: pl.Series([words_to_number(t, last) for t in s], dtype=pl.String), return_dtype=pl.String))
        frame = frame.with_columns(frame["_first"].scatter(need.arg_true(), words.to_series()))
    frame = values(frame, "_first", "_p")
    amb = _ambiguous(frame, "_toks", "_p", pl.col("_span") & ~pl.col("_read"))  # the read rows' hedges are known
    frame = frame.with_columns((amb | frame["_mv_amb"] | frame["_read_amb"]).alias("_amb"))
    # No number: a value float64 cannot hold that is no exact integer ("1e400"), or more than MAX_DIGITS digits.
    unreadable = pl.col("_first").is_not_null() & (
        (~pl.col("_p").is_finite().fill_null(True) & pl.col("_p_int").is_null())
        | ((pl.col("_first").str.len_bytes() > MAX_DIGITS) & (pl.col("_first").str.count_matches(r"\d") > MAX_DIGITS)))
    failed = pl.coalesce("_failed", pl.when(unreadable).then(pl.lit(WRONG_FORMAT)))
    gold_ok = (pl.col("_g").is_not_null() & (pl.col("_g").is_finite() | pl.col("_g_int").is_not_null())
               & pl.col("_gfailed").is_null())
    pred = pl.when(unreadable).then(None).otherwise(pl.col("_p_canon"))
    correct = agree(pl.col("_g"), pl.col("_g_int"), pl.col("_p"), pl.col("_p_int")) | _closed_form_match(frame)
    return finish(frame, pred, correct, status(pred, gold_ok, ambiguous=pl.col("_amb"), failed=failed))
