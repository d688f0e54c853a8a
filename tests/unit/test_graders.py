"""Graders: parametrised (gold, answer, expected) regression rows from real teacher output, and property tests."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from builder.graders import GRADERS, grade_one
from builder.graders.number import words_to_number

DATE_CHOICES = ["09/22/2021", "09/09/2021", "09/08/2006", "09/08/2021", "09/07/2021", "08/11/2021"]


def test_registry_has_every_answer_type():
    assert set(GRADERS.names()) >= {"number", "choice", "yesno", "date", "string"}
    with pytest.raises(ValueError, match="unknown grader 'nope'; valid: choice, date, math, number"):
        GRADERS.get("nope")


# (gold, answer region, expected pred, expected correct, expected status); completions are real text-davinci-002
# stage-2 outputs from ../shared/teacher-completions unless marked.
NUMBER_ROWS = [
    ("1792", " \n\n1792", "1792", True, "ok"),
    ("11", " 11.", "11", True, "ok"),
    ("3220", " 3,220.", "3220", True, "ok"),  # thousands separator
    ("1600", " 1,600", "1600", True, "ok"),
    ("1,600", " 1600.", "1600", True, "ok"),  # gsm8k gold with a comma
    ("0.6666666666666666", " 0.6666666666666667", "0.6666666666666667", True, "ok"),  # float noise
    ("10.333333333333334", " 10.333333333333332.", "10.333333333333332", True, "ok"),
    ("12.3", " 12.30.", "12.3", True, "ok"),  # trailing zero
    ("0.5", " .5", "0.5", True, "ok"),  # leading dot
    ("0.75", " 3/4.", "0.75", True, "ok"),  # fraction
    ("0.375", " 3/8 or .375.", "0.375", True, "ok"),
    ("0.5", " \n\n500/1000\n\nor\n\n1/2", "0.5", True, "ok"),
    ("204", " two hundred four.", "204", True, "ok"),  # number words (rare fallback)
    ("174080", " one hundred seventy-four thousand and eighty.", "174080", True, "ok"),
    ("151", " one hundred and fifty-one dollars.", "151", True, "ok"),
    ("40", " thirty-nine.", "39", False, "ok"),
    ("34.72", " 11.08+14.33+9.31=34.72.", "34.72", True, "ok"),  # a calculation counts by its result
    ("5", " 5 + 5 = 10.", "10", False, "ok"),  # ... so its first operand is not the answer
    ("14", " 26 + 36 - 48 = 14. The answer (words) is fourteen.", "14", True, "ok"),
    ("0.8888888888888888", " 1.", "1", False, "ok"),
    ("469", " 3-4-1", "3", False, "ambiguous"),  # three different numbers
    ("8", ' "none of the above".', None, False, "wrong_format"),
    ("2", " _____.", None, False, "wrong_format"),
    ("2", "   ", None, False, "no_answer"),
    ("2", None, None, False, "no_answer"),
    ("12", " 11 - 3 = 8.\n\nThe answer (in words) is eight.", "8", False, "ok"),
    # written here, not teacher output: currency, units, percent, LaTeX, signs
    ("5", " $5", "5", True, "ok"),
    ("5", " 5 dollars.", "5", True, "ok"),
    ("1600", " $1,600.00", "1600", True, "ok"),
    ("25", " 25%.", "25", True, "ok"),
    ("42", r" \boxed{42}", "42", True, "ok"),
    ("0.5", r" \frac{1}{2}", "0.5", True, "ok"),
    ("-3", " -3.", "-3", True, "ok"),
    ("-3", " \u22123", "-3", True, "ok"),
    ("3", " -3.", "-3", False, "ok"),
    ("1538832", " 1538833", "1538833", False, "ok"),  # big integers compare exactly
    ("abc", " 12", "12", False, "parse_error"),  # a gold we cannot read is a data problem, not a wrong answer
]


@pytest.mark.parametrize(("gold", "text", "pred", "correct", "status"), NUMBER_ROWS)
def test_number(gold, text, pred, correct, status):
    v = grade_one("number", gold, text)
    assert (v.pred, v.correct, v.status) == (pred, correct, status)


def test_number_last_candidate_in_a_rationale():
    v = grade_one("number", "17", "She has 8 apples and 9 pears, 17 fruits in all.", anchored=False, last=True)
    assert (v.pred, v.correct) == ("17", True)
    v = grade_one("number", "17", "No numbers here at all.", anchored=False, last=True)
    assert v.status == "no_answer"


CHOICE_ROWS = [
    ("D", " D.", None, "D", True, "ok"),
    ("F", " (F).", DATE_CHOICES, "F", True, "ok"),
    ("B", " (B)", None, "B", True, "ok"),
    ("B", " B) 21.5", None, "B", True, "ok"),
    ("B", "Answer: B", None, "B", True, "ok"),
    ("F", " D.", DATE_CHOICES, "D", False, "ok"),
    ("D", " 09/08/2021.", DATE_CHOICES, "D", True, "ok"),  # option text matched against the choices
    ("(d)", " D", DATE_CHOICES, "D", True, "ok"),
    ("09/08/2021", " (D)", DATE_CHOICES, "D", True, "ok"),  # gold given as the choice text
    ("B", " A coin is heads up.", None, None, False, "wrong_format"),  # "A coin" is not a letter
    ("A", " G.", DATE_CHOICES, "G", False, "wrong_format"),  # beyond the choices
    ("Z9", " A.", DATE_CHOICES, "A", False, "parse_error"),
    ("A", "", DATE_CHOICES, None, False, "no_answer"),
]


@pytest.mark.parametrize(("gold", "text", "choices", "pred", "correct", "status"), CHOICE_ROWS)
def test_choice(gold, text, choices, pred, correct, status):
    v = grade_one("choice", gold, text, choices=choices)
    assert (v.pred, v.correct, v.status) == (pred, correct, status)


def test_choice_text_needs_whole_words():
    choices = ["ten", "often", "seven"]
    assert grade_one("choice", "A", " ten", choices=choices).pred == "A"
    assert grade_one("choice", "B", " often.", choices=choices).pred == "B"
    assert grade_one("choice", "C", " the seventh", choices=choices).status == "wrong_format"


YESNO_ROWS = [
    ("yes", " Yes.", "yes", True, "ok"),
    ("yes", ":\n\nYes", "yes", True, "ok"),
    ("yes", ' "Yes".', "yes", True, "ok"),
    ("yes", " YES, the coin is still heads up.", "yes", True, "ok"),
    ("no", " No.", "no", True, "ok"),
    ("Yes", " No.", "no", False, "ok"),
    ("True", " yes", "yes", True, "ok"),
    ("no", " false", "no", True, "ok"),
    ("yes", " Nobody knows.", None, False, "wrong_format"),
    ("maybe", " yes", "yes", False, "parse_error"),
]


@pytest.mark.parametrize(("gold", "text", "pred", "correct", "status"), YESNO_ROWS)
def test_yesno(gold, text, pred, correct, status):
    v = grade_one("yesno", gold, text)
    assert (v.pred, v.correct, v.status) == (pred, correct, status)


STRING_ROWS = [
    ("nent", ' "nent".', "nent", True, "ok"),
    ("fnel", ' "fnenl".', "fnenl", False, "ok"),
    ("naey", ' "n-a-e-y".', "naey", True, "ok"),  # hyphens (the reference rejects these)
    ("lrnz", ' "l r n z."', "lrnz", True, "ok"),  # spaces
    ("yaea", ' "yaeA".', "yaea", True, "ok"),  # case
    ("ayea", ' "áyea".', "ayea", True, "ok"),  # accents
    ("wnnf", " wnnf.", "wnnf", True, "ok"),  # no quotes
    ("nlng", ":\n\nnlng", "nlng", True, "ok"),
    ("nlng", "   ", None, False, "no_answer"),
    ("", " abc", "abc", False, "parse_error"),
]


@pytest.mark.parametrize(("gold", "text", "pred", "correct", "status"), STRING_ROWS)
def test_string(gold, text, pred, correct, status):
    v = grade_one("string", gold, text)
    assert (v.pred, v.correct, v.status) == (pred, correct, status)


DATE_ROWS = [
    ("D", " 9/8/2021", DATE_CHOICES, "D", True, "ok"),  # zero padding optional, mapped to its letter
    ("09/08/2021", " (D)", DATE_CHOICES, "D", True, "ok"),  # letter stands for its date
    ("09/08/2021", " 09/08/2021.", None, "09/08/2021", True, "ok"),  # no choices: dates compared
    ("09/08/2021", " 9/8/2021", None, "09/08/2021", True, "ok"),
    ("D", " (E) 09/07/2021", DATE_CHOICES, "E", False, "ok"),
    ("D", " 01/01/1999.", DATE_CHOICES, "01/01/1999", False, "ok"),  # a date that is not a choice
    ("D", " tomorrow", DATE_CHOICES, None, False, "wrong_format"),
    ("soon", " 01/01/1999", None, "01/01/1999", False, "parse_error"),
]


@pytest.mark.parametrize(("gold", "text", "choices", "pred", "correct", "status"), DATE_ROWS)
def test_date(gold, text, choices, pred, correct, status):
    v = grade_one("date", gold, text, choices=choices)
    assert (v.pred, v.correct, v.status) == (pred, correct, status)


@pytest.mark.parametrize(("text", "value"), [
    ("eleven", "11"), ("thirty-nine apples", "39"), ("two hundred four", "204"), ("a thousand and one", "1001"),
    ("one million two hundred thousand", "1200000"), ("no numbers", None), (None, None)])
def test_words_to_number(text, value):
    assert words_to_number(text) == value


# ---------------------------------------------------------------- property tests
# Values with at most 10 significant digits: well inside float64 and the documented 1e-12 relative tolerance.
values = st.builds(lambda m, k: Decimal(m).scaleb(-k), st.integers(-(10**10) + 1, 10**10 - 1), st.integers(0, 4))


def _plain(d: Decimal) -> str:
    return format(d.normalize(), "f") if d != 0 else "0"


def _thousands(d: Decimal) -> str:
    return f"{d:,f}"


def variants(d: Decimal) -> list[str]:
    """Ways a teacher writes the same value."""
    plain = _plain(d)
    out = [plain, f" {plain}.", f"{_thousands(d)}", f": {plain}\n", f"{plain} dollars.", rf"\boxed{{{plain}}}",
           f"{plain}!", f" {plain} cups of oil."]
    if d >= 0:
        out += [f"${_thousands(d)}", f"$ {plain}", f"{plain}%"]
    if d == d.to_integral_value():
        out += [f"{plain}.00", f"{int(d)}/1"]
    else:
        out.append(format(d, "f") + "000")  # trailing zeros
    frac = Fraction(d)
    if frac.denominator <= 10**4 and d >= 0:
        out.append(f"{frac.numerator}/{frac.denominator}")
    return out


def _number_frame(texts: list[str], gold: str) -> pl.DataFrame:
    n = len(texts)
    return pl.DataFrame({"text": texts, "anchored": [True] * n, "gold": [gold] * n, "choices": [None] * n},
                        schema_overrides={"choices": pl.List(pl.String)})


@settings(max_examples=200, deadline=None)
@given(values)
def test_formatting_variants_of_a_value_agree(d):
    texts = variants(d)
    out = GRADERS.get("number")(_number_frame(texts, _plain(d)))
    bad = [(t, p) for t, p, c in zip(texts, out["pred"], out["correct"], strict=True) if not c]
    assert not bad, f"value {d}: variants judged wrong: {bad}"
    assert out["pred"].n_unique() == 1  # one canonical spelling for the majority vote
    # gold side too: a gold written with separators or as a fraction matches the plain answer
    for gold in texts[:3]:
        assert grade_one("number", gold, f" {_plain(d)}.").correct


NEAR_MISSES = {  # a value a teacher gets almost right
    "x10": lambda a, k: a * 10, "div10": lambda a, k: a / 10, "negated": lambda a, k: -a,
    "plus_1e-k": lambda a, k: a + Decimal(1).scaleb(-k), "minus_1e-k": lambda a, k: a - Decimal(1).scaleb(-k),
    "last_digit+1": lambda a, k: a + Decimal(1).scaleb(a.as_tuple().exponent),
}
# half the pairs independent, half a near miss of the gold (independent draws almost never are one)
value_pairs = st.one_of(
    st.tuples(values, values),
    st.builds(lambda a, how, k: (a, NEAR_MISSES[how](a, k)), values, st.sampled_from(sorted(NEAR_MISSES)),
              st.integers(0, 4)))


@settings(max_examples=300, deadline=None)
@given(value_pairs)
def test_different_values_never_agree(pair):
    a, b = pair
    # different beyond the documented 1e-12 relative tolerance (a near miss of 1e-4 on 1e10 is "equal")
    assume(abs(a - b) > Decimal("1e-10") * max(abs(a), abs(b)))
    texts = variants(b)
    out = GRADERS.get("number")(_number_frame(texts, _plain(a)))
    assert out["grade_status"].to_list() == ["ok"] * len(texts)
    wrongly = [t for t, c in zip(texts, out["correct"], strict=True) if c]
    assert not wrongly, f"{wrongly} judged equal to gold {_plain(a)}"
