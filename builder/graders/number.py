"""Number answers (single_eq, addsub, multiarith, gsm8k, svamp, and user tasks with numeric golds).

Parse (vectorised): every number in the answer span (`_common.answer_span`): integers and decimals (".5" too);
thousands separators of every common form ("1,600", "1 000", thin and no-break spaces, "1'000", LaTeX "14{,}916",
"16,\\!386.20", "1\\,000"; European "1.234,5" and "1.000.000"); decimal commas, told apart from thousands groups
by group size ("1,5", "2,74", "1000,99", "0,111" are decimals; "1,600" is not); a sign; currency before ("$5",
"\\$5", "-$3"); units, "%" and `\\text{...}` after (ignored: the paper tasks ask "what percent" with golds like
"25"); fractions "3/4", `\\frac{3}{4}`, `\\dfrac`, `\\tfrac`, `\\cfrac`, `\\frac13`; mixed numbers "3 1/2" and
`3\\frac{1}{2}`; scientific notation "1.5e3", "1.5 \\times 10^{3}". A span whose first line starts with a calculation
("8 + 9 = 17.") counts by its result (after the last "=", "equals", "which is"). A span with no digits gets a rare
Python fallback for number words ("two hundred four"). A span left with one plain number is read right here.

Structure (Python, each distinct span once): a span with several numbers, brackets, operators, "=", a fraction, a
spelled or spaced sign or LaTeX (`structure.ROUTE`) is read by `structure.read`, which knows the answer phrase from
its explanation (" 8 cookies for 4 people" is 8), evaluates arithmetic exactly (" 2 + 3" is 5, never its first
operand), keeps units with exponents ("25 m^2") and pairs, lists and intervals apart from decimal commas; see its
docstring for the rules. What it cannot evaluate (`\\sqrt{2}`, "3√2/2", nested fractions, `\\pi`, variables, "(3,4)")
goes to math-verify (`builder.graders.latex`), in worker processes; its failures are the statuses `timeout` and
`parse_error`, a non-number is `wrong_format`. Two different values in the span ("7 or 8", "between 3 and 5", a set
"12 and 13") are `ambiguous`, the first is the pred; the same value twice ("3/8 or 0.375") is one answer.

Verify (gold first): two integers compare exactly as digit strings, at any size. Otherwise both sides are float64
and agree when |pred - gold| <= 1e-12 * max(|pred|, |gold|) + 1e-12, which absorbs float noise
("0.6666666666666667" vs "0.6666666666666666", "1/3" vs "0.3333333333333333") and nothing a person would call a
different answer: two values that differ within their first 12 significant digits never agree. One exception, as
datasets round what has no finite decimal form: a gold written with k >= 2 decimals ("1.41", "0.33", "3.14") agrees
with a prediction written in closed form (a fraction that never ends, a radical, pi: "\\sqrt{2}", "1/3", "\\pi") that
rounds to it at k decimals. A prediction written as a decimal keeps the tight tolerance ("0.3333" is not "0.33"); one
decimal is too coarse ("0.3" would take 1/3 and 2/7).
"""

from __future__ import annotations

import re

import polars as pl

from builder.graders import latex, structure
from builder.graders._common import finish, is_blank, region, status
from builder.graders.base import GRADERS
from builder.graders.structure import MANTISSA, MIXED, SPACES

REL_TOL = 1e-12
ABS_TOL = 1e-12

NUMBER_TOKEN = rf"-?(?:\$\s?)?(?:{MIXED}|{MANTISSA}(?:\s*/\s*{MANTISSA})?)"
EQUALS = r"(?i)=|\bequals\b|\bwhich is\b|\bthat is\b|\bmakes\b|\bgives\b|\bresults in\b"
CALCULATION = r"^[\s:]*\$*-?\(?\d[\d,.]*[a-z]?\)?\s*[-+*/x\u00d7\u00f7]\s*\(?\$*-?\d"
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


def _prepare(text: pl.Expr) -> pl.Expr:
    """LaTeX spellings of plain numbers as plain text. Real structure is left alone."""
    for pattern, repl in _LATEX_REWRITES:
        text = text.str.replace_all(pattern, repl)
    return text


def prepare(frame: pl.DataFrame, col: str) -> pl.DataFrame:
    """`_prepare` on the rows of `col` that hold a backslash, brace or caret (the others have nothing to rewrite);
    the unicode minus as '-' everywhere."""
    frame = frame.with_columns(pl.col(col).str.replace_all("\u2212", "-", literal=True))
    mask = frame.select(pl.col(col).str.contains(r"[\\{^]").fill_null(False)).to_series()
    if not mask.any():
        return frame
    done = frame.filter(mask).select(_prepare(pl.col(col)))
    return frame.with_columns(frame[col].scatter(mask.arg_true(), done.to_series()))


def _result_of_expression(text: pl.Expr) -> pl.Expr:
    """'23 + 18 + 28, which equals 69.' -> ' 69.': when the answer's first line starts with a calculation, its
    result is what follows the last '=' / 'equals' / 'which is' on that line (' 41, as 40 + 2 = 42' stays 41)."""
    line = text.str.extract(r"^[\s:]*([^\n]*)", 1)
    parts = line.str.replace_all(EQUALS, "\x00").str.split("\x00")
    calc = line.str.contains(CALCULATION) & (parts.list.len() > 1)
    return pl.when(calc).then(parts.list.last()).otherwise(text)


def _plain(s: pl.Expr) -> pl.Expr:
    """One number (a column, spaces and '$' already gone) without grouping: '1,600' -> '1600', '1,5' -> '1.5',
    '1.234,5' -> '1234.5'."""
    european = s.str.contains(r"^-?\d{1,3}(?:\.\d{3})+,\d+$")
    dotted = s.str.contains(r"^-?\d{1,3}(?:\.\d{3}){2,}$")
    decimal_comma = s.str.contains(r"^-?(?:\d+,\d{1,2}|0,\d+)(?:[eE][+-]?\d+)?$")
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
    """Gold-first numeric equality: integers as exact digit strings, anything else within the tolerance."""
    close = (pred - gold).abs() <= REL_TOL * pl.max_horizontal(pred.abs(), gold.abs()) + ABS_TOL
    return pl.when(gold_int.is_not_null() & pred_int.is_not_null()).then(pred_int == gold_int).otherwise(close)


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


def _rounded_gold(gold_tok: pl.Expr, gold: pl.Expr, gold_int: pl.Expr, pred: pl.Expr) -> pl.Expr:
    """A gold written with k >= 2 decimals ("1.41") agrees with `pred` rounded to k decimals (used only for a
    closed-form prediction: "\\sqrt{2}", "1/3", "\\pi")."""
    k = gold_tok.str.extract(r"^[^/eE]*\.(\d+)$", 1).str.len_chars()
    half_unit = pl.lit(10.0).pow(-k.cast(pl.Float64)) / 2
    return gold_int.is_null() & (k >= 2) & ((pred - gold).abs() <= half_unit)


@GRADERS.register("number")
def grade_number(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade numeric answers; see the module docstring for what parses, the statuses and the tolerance."""
    frame = frame.with_columns(region(last=last).alias("_raw"))
    frame = prepare(frame.with_columns(pl.col("_raw").alias("_text"), pl.col("gold").alias("_gold")), "_text")
    frame = prepare(frame, "_gold")
    if not last:  # an anchored answer: a calculation counts by its result
        frame = frame.with_columns(_result_of_expression(pl.col("_text")).alias("_text"))
    frame = frame.with_columns(
        pl.col("_text").str.extract_all(NUMBER_TOKEN).alias("_toks"),
        pl.col("_gold").str.extract_all(NUMBER_TOKEN).alias("_gtoks"),
    )
    frame = frame.with_columns(
        (pl.col("_toks").list.last() if last else pl.col("_toks").list.first()).alias("_first"),
        pl.col("_gtoks").list.first().alias("_gfirst"),
        (pl.col("anchored") & pl.lit(not last)).alias("_span"),  # hedges count in answer spans only
    )
    frame = _expressions(frame, _needs_latex(frame, "_gold", "gold"), pl.col("gold"), "_gfirst")
    frame = frame.rename({"_mv_status": "_gfailed"}).drop("_mv_amb", "_mv_closed")
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
    frame = values(values(frame, "_first", "_p"), "_gfirst", "_g")
    amb = _ambiguous(frame, "_toks", "_p", pl.col("_span") & ~pl.col("_read"))  # the read rows' hedges are known
    frame = frame.with_columns((amb | frame["_mv_amb"] | frame["_read_amb"]).alias("_amb"))
    gold_ok = pl.col("_g").is_not_null() & pl.col("_g").is_finite() & pl.col("_gfailed").is_null()
    pred = pl.col("_p_canon")
    correct = agree(pl.col("_g"), pl.col("_g_int"), pl.col("_p"), pl.col("_p_int")) | (
        pl.col("_closed") & _rounded_gold(pl.col("_gfirst"), pl.col("_g"), pl.col("_g_int"), pl.col("_p")))
    return finish(frame, pred, correct, status(pred, gold_ok, ambiguous=pl.col("_amb"), failed=pl.col("_failed")))
