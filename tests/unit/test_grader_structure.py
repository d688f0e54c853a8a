"""Regression tables for issue "Graders III" (number part): the structure of an answer span, one table per class.

Each row is (gold, answer region, (pred, correct, status)); the regions are written here in the shape of real teacher
and student answers. A wrong "correct" becomes published data, so every unsure reading is ambiguous or wrong_format.
"""

from __future__ import annotations

import time

import polars as pl
import pytest

from builder.graders import GRADERS, grade_one, structure


def check(gold, text, expected):
    v = grade_one("number", gold, text)
    assert (v.pred, v.correct, v.status) == expected


# 1. structure that is not one number: pairs, intervals and lists never read their comma as a decimal comma; a
#    radical in a numerator belongs to the fraction; LaTeX thousands groups with spacing commands; a bracketed sum.
STRUCTURE = [
    ("3.4", " (3,4)", (None, False, "wrong_format")),  # a pair: math-verify reads no number
    ("3.4", " (3, 4) apples", (None, False, "wrong_format")),
    ("3", " [1,5)", (None, False, "wrong_format")),  # an interval
    ("1.2", " 1,2,3", ("1", False, "ambiguous")),  # a list of three numbers, not 1.2 and 3
    ("1.5", " 1,5", ("1.5", True, "ok")),  # a lone decimal comma still reads
    ("1.618033988749895", r" $\frac{1+\sqrt{5}}{2}$", ("1.618033988749895", True, "ok")),
    ("1.618033988749895", " (1+√5)/2", ("1.618033988749895", True, "ok")),
    ("3", " (1+√5)/2", ("1.618033988749895", False, "ok")),
    ("2.1213203435596424", " 3√2/2", ("2.1213203435596424", True, "ok")),
    ("3", " 3√2/2", ("2.1213203435596424", False, "ok")),  # never the 3 in front of the root
    ("0.8660254037844386", " √3/2", ("0.8660254037844386", True, "ok")),
    ("1.5", " √3/2", ("0.8660254037844386", False, "ok")),
    ("1000000", r" $1\,000\,000$", ("1000000", True, "ok")),
    ("1000", r" $1\;000$", ("1000", True, "ok")),
    ("1000", r" $1\ 000$", ("1000", True, "ok")),
    ("1000000", r" $1{,}000{,}000$", ("1000000", True, "ok")),
    ("16386.2", r" $16,\!386.20$", ("16386.2", True, "ok")),
    ("1000000", r" $\boxed{1\,000\,000}$ dollars", ("1000000", True, "ok")),
    ("20", " (12 + 8) apples", ("20", True, "ok")),
    ("12", " (12 + 8) apples", ("20", False, "ok")),
]


@pytest.mark.parametrize(("gold", "text", "expected"), STRUCTURE)
def test_structure(gold, text, expected):
    check(gold, text, expected)


# 2. an expression is its value, never its first operand; a calculation counts by its result, powers and LaTeX too
EXPRESSIONS = [
    ("5", " 2 + 3", ("5", True, "ok")),
    ("2", " 2 + 3", ("5", False, "ok")),
    ("15", " 5 × 3", ("15", True, "ok")),
    ("5", " 5 × 3", ("15", False, "ok")),
    ("12", r" $3 \times 4$", ("12", True, "ok")),
    ("5", r" $\boxed{2+3}$", ("5", True, "ok")),
    ("2", r" $\boxed{2+3}$", ("5", False, "ok")),
    ("24", " 4*6 dollars", ("24", True, "ok")),
    ("4", " 4*6 dollars", ("24", False, "ok")),
    ("3", " 12 ÷ 4", ("3", True, "ok")),
    ("2.5", " (2 + 3) / 2", ("2.5", True, "ok")),
    ("8", " 2^3 = 8", ("8", True, "ok")),
    ("12", r" $3 \times 4 = 12$", ("12", True, "ok")),
    ("3", r" $\frac{12}{4} = 3$", ("3", True, "ok")),
    ("1024", r" $2^{10} = 1024$", ("1024", True, "ok")),
    ("8", " 2^3 cookies", ("8", True, "ok")),
    ("66", " 35 inches + 31 inches = 66 inches", ("66", True, "ok")),  # real: the terms carry units too
    ("35", " 35 inches + 31 inches = 66 inches", ("66", False, "ok")),
    ("0.001", " 10^-3", ("0.001", True, "ok")),
    ("2", " 2^100000", (None, False, "wrong_format")),  # refused at once, never computed
    ("2", " 0^-1", (None, False, "wrong_format")),  # division by zero
]


@pytest.mark.parametrize(("gold", "text", "expected"), EXPRESSIONS)
def test_expressions(gold, text, expected):
    check(gold, text, expected)


def test_huge_powers_never_hang():
    start = time.monotonic()
    for text in (" 2^100000", " 9^(9^9)", " 10^1001 + 1", " 2^10^10"):
        assert not grade_one("number", "2", text).correct
    assert time.monotonic() - start < 5


# 3. a sign that is spaced or spelled out; a spaced minus between numbers is still a subtraction
SIGNS = [
    ("-5", " - 5", ("-5", True, "ok")),
    ("5", " - 5", ("-5", False, "ok")),
    ("-5", " negative 5", ("-5", True, "ok")),
    ("5", " negative 5", ("-5", False, "ok")),
    ("-5", " minus 5 degrees", ("-5", True, "ok")),
    ("-5", " \u22125", ("-5", True, "ok")),
    ("-5", " $-5$", ("-5", True, "ok")),
    ("5", " 10 - 5 = 5", ("5", True, "ok")),
    ("5", " 10 - 5", ("5", True, "ok")),
    ("10", " 10 - 5", ("5", False, "ok")),
    ("-2", " 3-4-1", ("3", False, "ambiguous")),  # unspaced hyphens between numbers: a range or a code
    ("469", " 3-4-1", ("3", False, "ambiguous")),
    ("2", " 5 -3", ("5", False, "ambiguous")),  # a sign before a value: a second value
    ("999", r" $10^{3}-1$", ("999", True, "ok")),  # ... unless the span has other arithmetic
]


@pytest.mark.parametrize(("gold", "text", "expected"), SIGNS)
def test_signs(gold, text, expected):
    check(gold, text, expected)


# 4. units with exponents are units, not powers
UNITS = [
    ("25", " 25 m^2", ("25", True, "ok")),
    ("625", " 25 m^2", ("25", False, "ok")),
    ("25", " 25 cm²", ("25", True, "ok")),
    ("25", r" $25 \text{ m}^2$", ("25", True, "ok")),
    ("25", r" $25 \mathrm{cm}^{3}$", ("25", True, "ok")),
    ("9.8", " 9.8 m/s^2", ("9.8", True, "ok")),
    ("9.8", r" $9.8 \text{ m/s}^2$", ("9.8", True, "ok")),
    ("25", " 25 square feet", ("25", True, "ok")),
    ("25", " 25 x^2", (None, False, "wrong_format")),  # a variable, not a unit: math-verify reads no number
]


@pytest.mark.parametrize(("gold", "text", "expected"), UNITS)
def test_units(gold, text, expected):
    check(gold, text, expected)


# 5. an explanation after the answer may name other numbers; a hedge between values never counts
CONTEXT = [
    ("5", " 5 apples, which is Tom's 2 and Sue's 3.", ("5", True, "ok")),  # ("3 more than" reads as a bound)
    ("8", " 8 cookies for 4 people.", ("8", True, "ok")),
    ("12", " $12 per hour for 3 hours", ("12", True, "ok")),  # the first value is the answer; the rest context
    ("36", " $12 per hour for 3 hours", ("12", False, "ok")),
    ("20", " 20 (12 from Monday and 8 from Tuesday)", ("20", True, "ok")),
    ("20", " 20 (12 + 8 = 20)", ("20", True, "ok")),
    ("7", " 7 or 8.", ("7", False, "ambiguous")),
    ("4", " between 3 and 5.", ("3", False, "ambiguous")),
    ("37", " 3 and 7, or 37.", ("3", False, "ambiguous")),
    ("65", " 30 and 35.", ("30", False, "ambiguous")),
    ("29", " 29 bananas and 0.66 oranges.", ("29", False, "ambiguous")),
    ("30", ": \n\n14\n16", ("14", False, "ambiguous")),
    ("2.5", " 2 hours and 30 minutes", ("2", False, "ambiguous")),
    ("5", " 5, 5 and 6", ("5", False, "ambiguous")),
    ("7", " 7 (or 8)", ("7", False, "ambiguous")),
    ("20", " 20 (21 if you count Tom)", ("20", False, "ambiguous")),
    ("3.25", " 3 and 1/4 laps", ("3", False, "ambiguous")),  # real: a mixed number spelled with "and"
    ("5", " 5 apples that Tom has, 6 with Sue's", ("5", False, "ambiguous")),  # "that" ends no answer
    ("5", " 5, 5", ("5", True, "ok")),  # the same value twice is one answer
]


@pytest.mark.parametrize(("gold", "text", "expected"), CONTEXT)
def test_context_and_hedges(gold, text, expected):
    check(gold, text, expected)


# 6. a gold given to k >= 2 decimals matches a closed form (a non-terminating fraction, a radical, pi) at k decimals;
#    a prediction written as a decimal keeps the tight tolerance
CLOSED_FORM = [
    ("1.41", r" $\sqrt{2}$", ("1.4142135623730951", True, "ok")),
    ("0.33", " 1/3", ("0.3333333333333333", True, "ok")),
    ("0.33", r" $\frac{1}{3}$", ("0.3333333333333333", True, "ok")),
    ("3.14", r" $\pi$", ("3.141592653589793", True, "ok")),
    ("0.67", " 2/3", ("0.6666666666666666", True, "ok")),
    ("0.66", " 2/3", ("0.6666666666666666", False, "ok")),  # rounded, never truncated
    ("1.42", r" $\sqrt{2}$", ("1.4142135623730951", False, "ok")),
    ("0.3", " 1/3", ("0.3333333333333333", False, "ok")),  # one decimal is too coarse (2/7 rounds to 0.3 too)
    ("2.5", " 2.49", ("2.49", False, "ok")),
    ("0.33", " 0.3333", ("0.3333", False, "ok")),
    ("1.41", " 1.414", ("1.414", False, "ok")),
    ("0.33", " 0.33 + 0.0033", ("0.3333", False, "ok")),  # decimals in the expression: not a closed form
    ("0.25", " 1/4", ("0.25", True, "ok")),
]


@pytest.mark.parametrize(("gold", "text", "expected"), CLOSED_FORM)
def test_closed_form_against_a_rounded_gold(gold, text, expected):
    check(gold, text, expected)


def test_each_distinct_string_is_read_once(monkeypatch):
    calls = []
    real = structure.read

    def counting(text):
        calls.append(text)
        return real(text)

    monkeypatch.setattr(structure, "read", counting)
    texts = [" 2 + 3", " 2 + 3", " 7 or 8", " 5", " 5 apples."] * 50
    n = len(texts)
    frame = pl.DataFrame({"text": texts, "anchored": [True] * n, "gold": ["5"] * n, "choices": [None] * n},
                         schema_overrides={"choices": pl.List(pl.String)})
    out = GRADERS.get("number")(frame)
    assert out["correct"].to_list()[:5] == [True, True, False, True, True]
    assert sorted(calls) == [" 2 + 3", " 7 or 8"]  # plain numbers stay on the vectorised path


# 7. a value float64 cannot hold (and that is no exact integer) is no answer: wrong_format, never "equal" to a gold
NON_FINITE = [
    ("5", " 1e400", (None, False, "wrong_format")),
    ("5", " 5e308", (None, False, "wrong_format")),
    ("5", " -1e400", (None, False, "wrong_format")),
    ("5", r" $10^{10^{10}}$", (None, False, "wrong_format")),  # math-verify's value overflows float64
    ("5", r" $2^{2^{2^{2^{2}}}}$", (None, False, "wrong_format")),
    ("1" + "0" * 400, " 1" + "0" * 400, ("1" + "0" * 400, True, "ok")),  # an exact integer still compares exactly
    ("5", " 1" + "0" * 400, ("1" + "0" * 400, False, "ok")),
]


@pytest.mark.parametrize(("gold", "text", "expected"), NON_FINITE)
def test_non_finite_values_never_match(gold, text, expected):
    check(gold, text, expected)


# 8. hostile spans: no input raises or hangs; deep nesting and very long numbers are wrong_format
HOSTILE = [
    " " + "(" * 198 + "5" + ")" * 198,
    " " + "1^" * 492 + "1",
    " " + "- " * 986 + "5",
    " " + "-" * 3000 + "5",
    " " + "9" * 4400 + " apples or 5",
    " " + "9" * 5000 + " + 1",
    " " + "9" * 5000,
    " two hundred " * 10000,
    " " + "(" * 5000 + "5",
    " 6 (" + "for " * 20000 + ")",
    " 6 (" + "= " * 20000 + ")",
    " 5 " + "+ 5 " * 20000,
    " 5 " + "or 6 " * 20000,
    " 1" + "0" * 1200 + "/3",
    " 5 " + "thousand " * 2000,
    " 5 " + "squared " * 200,
    " 5" + "½" * 3000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_spans_never_raise(text):
    from builder.grade import grade_frame

    df = pl.DataFrame({"answer_type": ["number"] * 3, "gold": ["5", "1", "200"], "rationale": ["x"] * 3,
                       "answer_completion": [text] * 3})
    start = time.monotonic()
    out = grade_frame(df, mode="answer_completion")
    assert time.monotonic() - start < 2
    assert not out["correct"].any()
    assert (v := grade_one("number", "5", text)).status == "wrong_format" or not v.correct


# 9. several clauses with "=": each clause counts by its result; two different results are a hedge. Lines are
#    clauses too, so a worked solution on several lines ("x + y = 38 \n29 + y = 38 \ny = 9") is ambiguous.
CLAUSES = [
    ("6", " x = 5 or x = 6", ("5", False, "ambiguous")),
    ("5", " x = 5 or x = 6", ("5", False, "ambiguous")),
    ("6", " x = 5, or maybe x = 6", ("5", False, "ambiguous")),
    ("6", " x=5, y=6", ("5", False, "ambiguous")),
    ("7", " 5 + 1 = 6 or 5 + 2 = 7", ("6", False, "ambiguous")),
    ("17", " 8 + 9 = 17\n18", ("17", False, "ambiguous")),
    ("9", "x + y = 38 \n29 + y = 38 \ny = 9", ("38", False, "ambiguous")),
    ("34.72", "11.08+14.33+9.31=34.72", ("34.72", True, "ok")),
    ("17", " 8 + 9 = 17.", ("17", True, "ok")),
    ("8", "2^3 = 8", ("8", True, "ok")),
    ("5", " x = 5", ("5", True, "ok")),
    ("5", " 2 + 3 = 5, so 5", ("5", True, "ok")),
    ("5", " x = 5 and y = 5", ("5", True, "ok")),
    ("3", " 2x + 3 = ", (None, False, "wrong_format")),  # no result: math-verify would read the 3
    ("14", " \n\n7c + 60 - 6c / 14 = \n\n7 + 4", (None, False, "wrong_format")),  # real
]


@pytest.mark.parametrize(("gold", "text", "expected"), CLAUSES)
def test_each_clause_counts_by_its_result(gold, text, expected):
    check(gold, text, expected)


# 10. words after a number that change its value: scale words multiply, "squared"/"cubed" raise, a variable or i
#     makes no plain number, vulgar fractions are their value; units stay units
VALUE_WORDS = [
    ("5", " 5 thousand", ("5000", False, "ok")),
    ("5000", " 5 thousand", ("5000", True, "ok")),
    ("5", " 5k", ("5000", False, "ok")),
    ("5000", " 5k", ("5000", True, "ok")),
    ("2500000", " 2.5 million", ("2500000", True, "ok")),
    ("5", " 5 million", ("5000000", False, "ok")),
    ("5", " 5 dozen", ("60", False, "ok")),
    ("500", " 5 hundred", ("500", True, "ok")),
    ("5", " 5 squared", ("25", False, "ok")),
    ("25", " 5 squared", ("25", True, "ok")),
    ("5", " 5 cubed", ("125", False, "ok")),
    ("5", " 5x", (None, False, "wrong_format")),
    ("5", " 5i", (None, False, "wrong_format")),
    ("5", " 5½", ("5.5", False, "ok")),
    ("5.5", " 5½", ("5.5", True, "ok")),
    ("0.5", " ½ cup", ("0.5", True, "ok")),
    ("-5.75", " -5¾", ("-5.75", True, "ok")),
    ("5", " 5 sqrt(2)", ("7.0710678118654755", False, "ok")),
    ("5", " 5 apples", ("5", True, "ok")),
    ("5", " 5 m", ("5", True, "ok")),
    ("5", " 5m", ("5", True, "ok")),
    ("5", " 5 times", ("5", True, "ok")),
]


@pytest.mark.parametrize(("gold", "text", "expected"), VALUE_WORDS)
def test_words_that_change_a_value(gold, text, expected):
    check(gold, text, expected)


# 11. dashes that stand for a minus are a minus; zero-width characters are nothing. An em dash glued to a number
#     ("is—5") may be punctuation or a sign: wrong_format, never a guess.
DASHES = [
    ("-5", " \u20135", ("-5", True, "ok")),  # en dash
    ("5", " \u20135", ("-5", False, "ok")),
    ("-5", " \u20105", ("-5", True, "ok")),  # hyphen
    ("-5", " \u20125", ("-5", True, "ok")),  # figure dash
    ("-5", " \ufe635", ("-5", True, "ok")),  # small hyphen-minus
    ("-5", " -\u200b5", ("-5", True, "ok")),  # a zero-width space
    ("5", " -\u200b5", ("-5", False, "ok")),
    ("-5", " \u2060-5\ufeff", ("-5", True, "ok")),
    ("1600", " 1\u200b600", ("1600", True, "ok")),
    ("5", " \u20145", (None, False, "wrong_format")),  # em dash
    ("-5", " \u20145", (None, False, "wrong_format")),
    ("3", " 3\u20135", ("3", False, "ambiguous")),  # a range
    ("-2", " 3 \u2013 5", ("3", False, "ambiguous")),  # a range too, never a subtraction
    ("5", " 10 \u2212 5", ("5", True, "ok")),  # the minus sign subtracts
]


@pytest.mark.parametrize(("gold", "text", "expected"), DASHES)
def test_dashes_and_invisible_characters(gold, text, expected):
    check(gold, text, expected)


# 12. the explanation cut never hides a rival value given in parallel
PARALLEL = [
    ("5", " 5 for Alice, 6 for Bob", ("5", False, "ambiguous")),
    ("5", " 5, which might be 6", ("5", False, "ambiguous")),
    ("5", " 5 for Alice and 6 for Bob", ("5", False, "ambiguous")),
    ("5", " 5 for Alice, or maybe 6", ("5", False, "ambiguous")),
    ("5", " 5 for Alice, x = 6 for Bob", ("5", False, "ambiguous")),
    ("5", " 5 for Alice, 5 for Bob", ("5", True, "ok")),
    ("69", " 23 + 18 + 28, which equals 70.", ("69", False, "ambiguous")),  # the stated result is a rival
    ("69", " 23 + 18 + 28, which equals 69.", ("69", True, "ok")),
    ("8", " 8 cookies for 4 people.", ("8", True, "ok")),
    ("12", " $12 per hour for 3 hours", ("12", True, "ok")),
    ("5", " 5 apples, which is Tom's 2 and Sue's 3.", ("5", True, "ok")),
]


@pytest.mark.parametrize(("gold", "text", "expected"), PARALLEL)
def test_parallel_values_after_an_explanation(gold, text, expected):
    check(gold, text, expected)


# 13. the shared precision rule (`builder.graders.precision`): the simplest fraction that rounds to the gold, or an
#     irrational that rounds to it; never a fraction that merely rounds to it
PRECISION = [
    ("0.33", " 1/3", ("0.3333333333333333", True, "ok")),
    ("0.67", " 2/3", ("0.6666666666666666", True, "ok")),
    ("0.66", " 2/3", ("0.6666666666666666", False, "ok")),
    ("-0.33", " -1/3", ("-0.3333333333333333", True, "ok")),
    ("2.50", " 749/300", ("2.4966666666666666", False, "ok")),
    ("0.50", " 101/201", ("0.5024875621890548", False, "ok")),
    ("1.41", " 7/5 + 1/99", ("1.41010101010101", False, "ok")),
    ("0.14", r" $\frac{1}{7}+\frac{1}{1000}$", ("0.14385714285714285", False, "ok")),
    ("0.05", " 1/19", ("0.05263157894736842", False, "ok")),
    ("1.41", r" $\sqrt{2}$", ("1.4142135623730951", True, "ok")),
    ("3.14", r" $\pi$", ("3.141592653589793", True, "ok")),
    ("2.5", " 2.49", ("2.49", False, "ok")),
]


@pytest.mark.parametrize(("gold", "text", "expected"), PRECISION)
def test_precision_rule(gold, text, expected):
    check(gold, text, expected)
