"""Regression tables for the failure classes of issue 16, in the style of huggingface/Math-Verify's tests/test_all.py:
(gold, output, expected) rows, one table per class, across the five answer types.

Outputs marked "real" are text-davinci-002 answer completions from ../shared/teacher-completions; "mv" rows are the
plain-number and LaTeX cases of Math-Verify's own tables (tests/test_all.py, tests/test_mixed_number_extraction.py);
"pr" rows are the failing outputs quoted in public bug reports (jundot/omlx#3668, google-deepmind/concordia#294);
the rest are written here in the shape of real teacher and student outputs.
"""

from __future__ import annotations

import sys
import textwrap
import time

import polars as pl
import pytest

from builder.grade import grade_frame
from builder.graders import grade_one, latex

DATES = ["09/22/2021", "09/09/2021", "09/08/2006", "09/08/2021", "09/07/2021", "08/11/2021"]
CSQA = ["bank", "library", "department store", "mall", "new york"]  # CommonsenseQA-style options


def check(answer_type, gold, text, expected, choices=None):
    """expected = (pred, correct, status)."""
    v = grade_one(answer_type, gold, text, choices=choices)
    assert (v.pred, v.correct, v.status) == expected


# ---------------------------------------------------------------- hedges: never credited, for all five types
HEDGES = [
    # (answer type, gold, output, choices, pred)
    ("choice", "A", " A or C.", None, "A"),
    ("choice", "B", " either (B) or (C).", None, "B"),
    ("choice", "C", " (C) or (D), depending on the year.", DATES, "C"),  # concordia#294: conflicting letters
    ("choice", "b", " (b) or (c)", None, "B"),
    ("choice", "B", " library or mall.", CSQA, "B"),  # two options named by their text
    ("number", "7", " 7 or 8.", None, "7"),
    ("number", "4", " between 3 and 5.", None, "3"),
    ("number", "37", " 3 and 7, or 37. \n\nI hope this helps!", None, "3"),  # real
    ("number", "30", ": \n\n14\n16", None, "14"),  # real
    ("number", "65", " 30 and 35.", None, "30"),  # real
    ("number", "29", " 29 bananas and 0.66 oranges.", None, "29"),  # real: the reference credited it
    ("number", "0.3333333333333333", " .33 or .3333333333333333", None, "0.33"),  # real: two different values
    ("number", "12", r" $\boxed{12 \text{ and } 13}$", None, None),  # mv: a set, read by math-verify
    ("yesno", "yes", " yes and no.", None, "yes"),
    ("yesno", "no", " No or yes, it depends.", None, "no"),
    ("yesno", "yes", " True or false: it is unclear.", None, "yes"),
    ("date", "D", " 09/08/2021 or 09/07/2021.", DATES, "D"),
    ("date", "09/08/2021", " (D) or (E)", DATES, "D"),
    ("date", "09/08/2021", " 9/8/2021 or 9/9/2021", None, "09/08/2021"),
    ("string", "nent", ' "nent" or "nenl".', None, "nent"),
    ("string", "nent", " nent or nenl.", None, "nent"),
]


@pytest.mark.parametrize(("answer_type", "gold", "text", "choices", "pred"), HEDGES)
def test_hedges_are_ambiguous_and_never_correct(answer_type, gold, text, choices, pred):
    v = grade_one(answer_type, gold, text, choices=choices)
    assert (v.correct, v.status) == (False, "ambiguous")
    if pred is not None:
        assert v.pred == pred


# The same value twice is one answer, and the same candidate repeated is no hedge.
ONE_ANSWER = [
    ("number", "0.375", " 3/8 or .375.", None, ("0.375", True, "ok")),  # real
    ("number", "0.8", " 8/10 or 4/5.", None, ("0.8", True, "ok")),  # real
    ("number", "0.16666666666666666", " 1/6, or 0.166666666666667.", None, ("0.16666666666666666", True, "ok")),
    ("number", "0.5", " \n\n500/1000\n\nor \n\n1/2", None, ("0.5", True, "ok")),  # real
    ("number", "34.72", " 11.08+14.33+9.31=34.72.", None, ("34.72", True, "ok")),  # real: operands are no hedge
    ("number", "48", ": \n\n24 + 24 = 48", None, ("48", True, "ok")),  # real: calculation after ": \n\n"
    ("number", "42", " 42, since 40 + 2 = 42.", None, ("42", True, "ok")),  # the reason is not the answer
    ("choice", "D", " (D) 09/08/2021", DATES, ("D", True, "ok")),
    ("choice", "B", " B. B is the only one left.", None, ("B", True, "ok")),
    ("date", "D", " (D) 09/08/2021.", DATES, ("D", True, "ok")),
    ("yesno", "yes", " Yes, yes.", None, ("yes", True, "ok")),
    ("string", "nent", ' "nent", that is "NENT".', None, ("nent", True, "ok")),
]


@pytest.mark.parametrize(("answer_type", "gold", "text", "choices", "expected"), ONE_ANSWER)
def test_one_value_said_twice_is_one_answer(answer_type, gold, text, choices, expected):
    check(answer_type, gold, text, expected, choices)


# ---------------------------------------------------------------- separators and number formats
SEPARATORS = [
    ("14916", r" $14{,}916$", ("14916", True, "ok")),  # mv: LaTeX thousands group
    ("16386.2", r" $16,\!386.20$", ("16386.2", True, "ok")),
    ("1000", " 1 000", ("1000", True, "ok")),  # mv
    ("1000", " 1\u2009000 apples", ("1000", True, "ok")),  # thin space
    ("1000000", " 1\u202f000\u202f000", ("1000000", True, "ok")),  # narrow no-break spaces
    ("1000", r" 1\,000", ("1000", True, "ok")),
    ("7425000", " 7,425,000", ("7425000", True, "ok")),  # mv
    ("1000.99", " 1000,99", ("1000.99", True, "ok")),  # mv: decimal comma
    ("1.22", " 1,22", ("1.22", True, "ok")),  # mv
    ("1.5", " 1,5", ("1.5", True, "ok")),
    ("2.74", " Soucis : 2,74 $ a..", ("2.74", True, "ok")),  # mv
    ("0.111", " 0,111", ("0.111", True, "ok")),  # mv: a leading 0 group is never thousands
    ("1600", " 1,600", ("1600", True, "ok")),  # three digits after the comma: thousands
    ("1234.5", " 1.234,5", ("1234.5", True, "ok")),  # European
    ("1000.99", " the number is not 10 which is 1,000.99\u20ac", ("1000.99", True, "ok")),  # mv
    ("1500", " 1.5e3", ("1500", True, "ok")),  # scientific notation
    ("1500", r" $1.5 \times 10^{3}$", ("1500", True, "ok")),
    ("100000000000000000000", " 100000000000000000001", ("100000000000000000001", False, "ok")),  # exact ints
    ("100000000000000000001", " 100,000,000,000,000,000,001", ("100000000000000000001", True, "ok")),
    ("2", " AZYUK2A", ("2", True, "ok")),  # mv expects 0 there (it reads no number); we read the 2
]


@pytest.mark.parametrize(("gold", "text", "expected"), SEPARATORS)
def test_number_formats(gold, text, expected):
    check("number", gold, text, expected)


# ---------------------------------------------------------------- LaTeX and expressions (math-verify rows)
LATEX = [
    ("0.3333333333333333", r" $\frac13$", ("0.3333333333333333", True, "ok")),  # mv: malformed fraction
    ("0.75", r" $\dfrac{3}{4}$", ("0.75", True, "ok")),  # mv
    ("0.5", r" $\cfrac{1}{2}$", ("0.5", True, "ok")),  # mv
    ("0.3333333333333333", r" $\tfrac{1}{3}$", ("0.3333333333333333", True, "ok")),  # mv
    ("-1.1111111111111112", r" $-\frac{10}{9}$", ("-1.1111111111111112", True, "ok")),  # mv
    ("0.16666666666666666", r" $\frac{\frac{1}{2}}{3}$", ("0.16666666666666666", True, "ok")),  # nested braces
    ("1.4142135623730951", r" $\sqrt{2}$", ("1.4142135623730951", True, "ok")),
    ("1024", " 2^10", ("1024", True, "ok")),
    ("1024", r" $2^{10}$ ways", ("1024", True, "ok")),
    ("3.5", " 3 1/2 cups", ("3.5", True, "ok")),  # mixed number
    ("3.5", r" $3\frac{1}{2}$", ("3.5", True, "ok")),
    ("4.444444444444445", " 4 4/9", ("4.444444444444445", True, "ok")),  # mv: mixed number
    ("4", " 4 4/9", ("4.444444444444445", False, "ok")),  # mv: ... never its whole part
    ("2", r" $\frac{1+\sqrt{5}}{2}$", ("1.618033988749895", False, "ok")),  # the golden ratio is not 2
    ("5.666666666666667", r" $\frac{14}{3}+1$", ("5.666666666666667", True, "ok")),  # arithmetic in LaTeX
    ("0.3333333333333333", r" $k = \frac{1}{3}$", ("0.3333333333333333", True, "ok")),  # mv: last = counts
    ("5", r" $\sqrt{x}+1$", (None, False, "wrong_format")),  # an expression that is not a number
    (r"\frac{1+\sqrt{5}}{2}", " 1.618033988749895", ("1.618033988749895", True, "ok")),  # a LaTeX gold
]


@pytest.mark.parametrize(("gold", "text", "expected"), LATEX)
def test_latex_and_expressions(gold, text, expected):
    check("number", gold, text, expected)


@pytest.mark.parametrize(("rationale", "pred"), [
    (r"So $\boxed{41}$. Wait, I forgot one: the final answer is 42.", "42"),  # a later final answer beats a box
    (r"The answer is \boxed{42}.", "42"),
    (r"First \boxed{40}, then \boxed{42}.", "42"),
    (r"The answer is 41? No. $\boxed{42}$", "42"),
])
def test_final_answer_phrase_after_a_box_wins(rationale, pred):
    df = pl.DataFrame({"answer_type": ["number"], "gold": ["42"], "rationale": [rationale]})
    assert grade_frame(df, mode="rationale")["pred"].to_list() == [pred]


# ---------------------------------------------------------------- answer cutting, negation, choices parsing
CUTTING = [
    ("number", "6", " not 5, it is 6.", None, ("6", True, "ok")),
    ("number", "6", " The answer is not 5, it is 6.", None, ("6", True, "ok")),
    ("number", "42", " 42. Because 40 + 1 = 41, not 42.", None, ("42", True, "ok")),
    ("number", "9", " 9.\n\nQ: How many apples are left? 4", None, ("9", True, "ok")),  # a new question
    ("string", "abc", ' "abc" because the last letters are a, b and c.', None, ("abc", True, "ok")),
    ("string", "abc", " abc. The answer is abd.", None, ("abc", True, "ok")),
    ("string", "abc", " The answer is abc.", None, ("abc", True, "ok")),
    ("yesno", "yes", " There is no doubt: yes.", None, ("yes", True, "ok")),
    ("yesno", "no", " No, the coin is not heads up.", None, ("no", True, "ok")),
    ("yesno", "yes", " Yes. No one flipped it.", None, ("yes", True, "ok")),
    ("choice", "B", " The answer is B. Note that A is a common distractor.", None, ("B", True, "ok")),  # pr
    ("choice", "C", " C because I computed the integral.", None, ("C", True, "ok")),  # pr: "I" is no letter
    ("choice", "B", " (b)", None, ("B", True, "ok")),
    ("choice", "B", " b) library", CSQA, ("B", True, "ok")),
    ("choice", "D", " 9/8/2021.", DATES, ("D", True, "ok")),  # unpadded date named as a choice
    ("choice", "E", " not (D) but (E).", DATES, ("E", True, "ok")),
]


@pytest.mark.parametrize(("answer_type", "gold", "text", "choices", "expected"), CUTTING)
def test_answer_cutting(answer_type, gold, text, choices, expected):
    check(answer_type, gold, text, expected, choices)


@pytest.mark.parametrize("question", [
    "Where do you keep money? Answer Choices: (A) bank (B) library (C) mall",
    "Where do you keep money? answer choices: (a) bank (b) library (c) mall",
    "Where do you keep money?\nOptions:\n(A) bank\n(B) library\n(C) mall",
    "Where do you keep money? Choices: (A) bank (B) library (C) mall",
])
def test_choices_are_parsed_from_any_spelling(question):
    df = pl.DataFrame({"answer_type": ["choice"] * 2, "gold": ["B"] * 2, "question": [question] * 2,
                       "rationale": ["", ""], "answer_completion": [" the library.", " (D)"]})
    out = grade_frame(df)
    assert out["pred"].to_list() == ["B", "D"]
    assert out["grade_status"].to_list() == ["ok", "wrong_format"]  # D is beyond the 3 parsed choices


# ---------------------------------------------------------------- math-verify failures are statuses
@pytest.fixture
def fresh_workers():
    latex._shutdown()
    yield
    latex._shutdown()


def test_a_stuck_expression_is_a_timeout(fresh_workers, monkeypatch):
    # sympy computes this factorial in C, where math-verify's signal.alarm never fires: the parent's limit does.
    monkeypatch.setattr(latex, "TIMEOUT_S", 1)
    assert grade_one("number", "3", r" $\sqrt{9}$").correct  # the worker has started and imported
    start = time.monotonic()
    v = grade_one("number", "5", r" $(10^{100000})!$")
    assert (v.pred, v.correct, v.status) == (None, False, "timeout")
    assert time.monotonic() - start < 6  # the 1 s limit and the 2 s grace, not the 5 s default or longer
    assert grade_one("number", "4", r" $\sqrt{16}$").status == "ok"  # a fresh worker takes over


def _fake_worker(tmp_path, body: str):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(body))
    return script


def test_parser_errors_are_parse_error_never_wrong(fresh_workers, monkeypatch, tmp_path):
    worker = _fake_worker(tmp_path, """
        import json, sys
        print(json.dumps(["ready", None]), flush=True)
        for line in sys.stdin:
            print(json.dumps(["error", "ValueError: boom"]), flush=True)
    """)
    monkeypatch.setattr(latex, "WORKER", worker)
    v = grade_one("number", "1.4142135623730951", r" $\sqrt{2}$")
    assert (v.correct, v.status) == (False, "parse_error")


def test_a_dead_worker_is_parse_error(fresh_workers, monkeypatch, tmp_path):
    monkeypatch.setattr(latex, "WORKER", _fake_worker(tmp_path, "import sys; sys.exit(3)\n"))
    assert grade_one("number", "2", r" $\sqrt{4}$").status == "parse_error"


def test_worker_reads_its_own_errors():
    from builder.graders import _mv_worker

    assert _mv_worker.evaluate_one(r"$\sqrt{4}$", 2) == ["ok", ["2"]]
    assert _mv_worker.evaluate_one(r"$\frac{1}{3}$", 2) == ["ok", ["1/3"]]
    kind, message = _mv_worker.evaluate_one(None, 2)  # a failure inside the call is reported, not swallowed
    assert kind == "error" and "TypeError" in message
    assert sys.modules.get("builder.graders._mv_worker") is _mv_worker


# ---------------------------------------------------------------- several final answers: one rule (issue 26)
def graded(answer_type, gold, rationale=None, completion=None, choices=None, mode="auto"):
    df = pl.DataFrame({"answer_type": [answer_type], "gold": [gold], "rationale": [rationale or ""],
                       "answer_completion": [completion], "choices": [choices]},
                      schema_overrides={"answer_completion": pl.String, "choices": pl.List(pl.String)})
    row = grade_frame(df, mode=mode).row(0, named=True)
    return row["pred"], row["correct"], row["grade_status"]


SEVERAL = [
    # (answer type, gold, rationale, completion, choices, expected (pred, correct, status))
    ("number", "42", r"So \boxed{41}. Then \boxed{42}.", None, None, ("42", False, "ambiguous")),  # two boxes
    ("number", "42", r"So \boxed{42}. In short, \boxed{42}.", None, None, ("42", True, "ok")),  # one value twice
    ("number", "0.375", r"So \boxed{3/8}, that is \boxed{0.375}.", None, None, ("0.375", True, "ok")),
    ("number", "42", "The answer is 41. Looking again, the answer is 42.", None, None, ("42", False, "ambiguous")),
    ("number", "42", "The answer is 41. Rechecking, the answer is 42.", None, None, ("42", True, "ok")),
    ("number", "42", r"The answer is 42, so \boxed{42}.", None, None, ("42", True, "ok")),
    ("number", "42", "The answer is 41. Actually, it should be 42.", None, None, ("42", True, "ok")),  # revision
    ("number", "42", r"\boxed{41}. Wait, I dropped a 1: the answer is 42.", None, None, ("42", True, "ok")),
    ("number", "42", "", " 41. Correction: 42.", None, ("42", True, "ok")),
    ("number", "41", "", " 41. Actually, it should be 42.", None, ("42", False, "ok")),  # the first is revised
    ("number", "42", "", " 42.\n\nThe answer is 43.", None, ("43", False, "ambiguous")),  # completion restated
    ("number", "42", "", " 42. Wait, let me check. 40 + 2 = 42. The answer is 42.", None, ("42", True, "ok")),
    ("number", "42", "Wait, 6 * 7 is 42. The answer is 42.", None, None, ("42", True, "ok")),  # before any answer
    # revision words in ordinary prose (an outside attack): never a way to credit a value only mentioned
    ("choice", "C", "The answer is (B).\n\nWait, let me reconsider option (C)... No, (B) is correct.", None, None,
     ("C", False, "ambiguous")),
    ("yesno", "no", "So the answer is yes. Actually, no flips happened after Bob, so heads stays.", None, None,
     ("no", False, "ambiguous")),
    ("yesno", "no", "The answer is yes. Wait, no one flipped it.", None, None, ("no", False, "ambiguous")),
    ("yesno", "no", "The answer is yes. Wait, no.", None, None, ("no", True, "ok")),  # ... a restated answer is one
    ("number", "5", "The answer is 6. It should be noted that 5 of them are red.", None, None,
     ("5", False, "ambiguous")),
    ("number", "5", "The answer is 6 apples. She had to wait 5 minutes for them.", None, None, ("6", False, "ok")),
    ("number", "5", "The answer is 6. Wait, could it be 5? No, it's 6.", None, None, ("5", False, "ambiguous")),
    ("number", "5", "The answer is 6. Actually, 5 is a common mistake here.", None, None, (None, False, "no_answer")),
    ("number", "5", "So the answer is 6.\nCorrection of units: 5 km is not needed.", None, None,
     (None, False, "no_answer")),
    ("date", "A", "So the answer is (B). Wait, (A) is 09/08/2021 which is a Wednesday.", None, DATES,
     ("A", False, "ambiguous")),
    ("number", "6", "The answer is 6. Actually, that makes sense because 2 * 3 = 6.", None, None, ("6", True, "ok")),
    ("number", "6", "**Answer: 6**\n\nActually, let me reconsider... no, 6 is correct.", None, None,
     ("6", True, "ok")),
    ("number", "6", "The answer is 6.\nWait, let me verify. 5 + 1 = 6.", None, None, ("6", True, "ok")),
    ("number", "7", "The answer is 5. Actually, it's 6 or 7.", None, None, ("6", False, "ambiguous")),
    ("number", "36", r"So the answer is 36. The answer is $2\pi r$.", None, None, (None, False, "ambiguous")),  # a
    # final answer the grader cannot read is still a rival
    ("number", "42", "The answer is that we need more data. So the answer is 42.", None, None, ("42", True, "ok")),
    ("choice", "B", "The answer is (G). The answer is (B).", None, ["a", "b", "c"], ("B", False, "ambiguous")),
    ("number", "42", "The answer is 41.\n\x00R 42", None, None, ("41", False, "ok")),  # a NUL forges no revision
    ("choice", "B", "The answer is (A). Looking again, the answer is (B).", None, None, ("B", False, "ambiguous")),
    ("choice", "B", "The answer is (A). Actually, the answer is (B).", None, None, ("B", True, "ok")),
    ("choice", "C", "", " A/C.", None, ("A", False, "ambiguous")),  # letters offered together
    ("choice", "C", "", " A & C", None, ("A", False, "ambiguous")),
    ("choice", "C", "", " both (A) and (C).", None, ("A", False, "ambiguous")),
    ("yesno", "yes", "The answer is yes. On reflection, the answer is no.", None, None, ("no", False, "ambiguous")),
    ("yesno", "yes", "So the answer is no. Wait, it was flipped twice: the answer is yes.", None, None,
     ("yes", True, "ok")),
    ("date", "09/08/2021", "The answer is 09/07/2021. Hence the answer is 09/08/2021.", None, None,
     ("09/08/2021", False, "ambiguous")),
    ("string", "nent", 'The answer is "nenl". So the answer is "nent".', None, None, ("nent", False, "ambiguous")),
]


@pytest.mark.parametrize(("answer_type", "gold", "rationale", "completion", "choices", "expected"), SEVERAL)
def test_several_final_answers_are_one_answer_or_ambiguous(answer_type, gold, rationale, completion, choices,
                                                           expected):
    assert graded(answer_type, gold, rationale, completion, choices) == expected


# ---------------------------------------------------------------- open bounds and conditions: never credited
QUALIFIED = [
    # (answer type, gold, output, choices, pred)
    ("number", "5", " at least 5.", None, "5"),
    ("number", "5", " 5 or more.", None, "5"),
    ("number", "5", " more than 5 apples.", None, "5"),
    ("number", "5", " up to 5", None, "5"),
    ("number", "10", " 10+ people", None, "10"),
    ("number", "5", " > 5", None, "5"),
    ("number", "5", r" $\geq 5$", None, None),
    ("number", "5", " 5, if we count the broken one.", None, "5"),
    ("number", "5", " It depends: 5 on weekdays.", None, "5"),
    ("yesno", "yes", " Yes, if the coin was flipped an even number of times.", None, "yes"),
    ("yesno", "no", " No, unless Ka flipped it.", None, "no"),
    ("yesno", "yes", " It depends on whether it rained: yes.", None, "yes"),
    ("choice", "B", " (B), assuming the store is open.", CSQA, "B"),
    ("date", "09/08/2021", " 09/08/2021 at the latest.", None, "09/08/2021"),
    ("date", "09/08/2021", " no later than 09/08/2021.", None, "09/08/2021"),
    ("string", "nent", ' "nent", if we ignore case.', None, "nent"),
    # found by an outside attack: more bounds and conditions, and bounds whose value is a choice's text
    ("number", "5", " over 5", None, "5"),
    ("number", "5", " under 5", None, "5"),
    ("number", "5", " almost 5", None, "5"),
    ("number", "5", " a minimum of 5", None, "5"),
    ("number", "5", " 5 at minimum", None, "5"),
    ("number", "5", " not less than 5", None, "5"),
    ("number", "5", " \u2a7e5", None, "5"),
    ("yesno", "yes", " yes, when it rains", None, "yes"),
    ("yesno", "yes", " yes, but only on Sundays", None, "yes"),
    ("yesno", "yes", " yes in case 1, no in case 2", None, "yes"),
    ("choice", "A", " at least 5", ["5", "6", "7", "8"], "A"),
    ("choice", "A", " (A) 5 or more", ["5", "6", "7", "8"], "A"),
    ("date", "A", " 09/08/2021 at the latest", DATES[3:], "A"),
    ("date", "A", " no later than 09/08/2021", DATES[3:], "A"),
    ("choice", "C", " B,C", None, "B"),  # letters offered together
    ("choice", "C", " B\nC", None, "B"),
]


@pytest.mark.parametrize(("answer_type", "gold", "text", "choices", "pred"), QUALIFIED)
def test_open_bounds_and_conditional_answers_are_ambiguous(answer_type, gold, text, choices, pred):
    v = grade_one(answer_type, gold, text, choices=choices)
    assert (v.correct, v.status) == (False, "ambiguous")
    if pred is not None:
        assert v.pred == pred


# ... but a qualifier outside the answer, or inside a choice's own text, is no hedge.
NOT_QUALIFIED = [
    ("number", "5", " 5. If she eats 3 a day, they last 2 days.", None, ("5", True, "ok")),
    ("choice", "B", " (B) only if it rains", ["always", "only if it rains", "never"], ("B", True, "ok")),
    ("yesno", "no", " No. If it had been flipped, it would be tails.", None, ("no", True, "ok")),
    ("number", "42", " 42<|endoftext|>", None, ("42", True, "ok")),  # an end-of-text token is no "<"
    ("number", "5", " 5 apples, which is 3 more than Tom's 2.", None, ("5", True, "ok")),  # no bound on the answer
    ("string", "ifte", ' "ifte".', None, ("ifte", True, "ok")),
]


@pytest.mark.parametrize(("answer_type", "gold", "text", "choices", "expected"), NOT_QUALIFIED)
def test_a_qualifier_outside_the_answer_is_no_hedge(answer_type, gold, text, choices, expected):
    check(answer_type, gold, text, expected, choices)


# ---------------------------------------------------------------- a second outside attack on the rules above
SECOND_ATTACK = [
    # (answer type, gold, rationale, completion, expected (correct, status))
    # a final answer that names nothing readable is still the final answer
    ("number", "42", "The answer is 42.\n\nFinal answer: cannot be determined.", None, (False, "ambiguous")),
    ("yesno", "yes", "The answer is yes.\n\nFinal answer: I don't know.", None, (False, "ambiguous")),
    ("choice", "A", "The answer is (A).\n\nFinal answer: none of the choices.", None, (False, "ambiguous")),
    ("number", "42", "The answer is that we need the total. So the answer is 42.", None, (True, "ok")),
    # bounds and conditions in markdown, LaTeX, or around a box
    ("number", "5", "So the answer is at least **5**.", None, (False, "ambiguous")),
    ("number", "5", "The answer: **at least** 5.", None, (False, "ambiguous")),
    ("number", "5", r"So the answer is at least \(5\).", None, (False, "ambiguous")),
    ("number", "5", r"The answer is \boxed{5 \text{ or more}}.", None, (False, "ambiguous")),
    ("number", "5", r"So the answer is at least $\boxed{5}$.", None, (False, "ambiguous")),
    ("number", "5", "Answer: 5 (or more)", None, (False, "ambiguous")),
    ("number", "5", r"The answer is \boxed{5} if it rains.", None, (False, "ambiguous")),
    ("number", "5", "So the answer is 5 max.", None, (False, "ambiguous")),
    ("number", "5", "So the answer is 5 and up.", None, (False, "ambiguous")),
    ("number", "5", "So the answer is more than or equal to 5.", None, (False, "ambiguous")),
    ("number", "5", "So the answer is 5 min.", None, (True, "ok")),  # five minutes, not a minimum
    ("yesno", "yes", "So the answer is yes, as long as it rains.", None, (False, "ambiguous")),
    ("yesno", "yes", "So the answer is: sometimes yes.", None, (False, "ambiguous")),
    ("yesno", "yes", "So the answer is: not necessarily yes.", None, (False, "ambiguous")),
    # a revision's words that are no answer
    ("yesno", "no", "The answer is yes. Actually, no doubt.", None, (False, "ambiguous")),
    ("yesno", "no", "The answer is yes. Wait, no kidding!", None, (False, "ambiguous")),
    ("number", "2", "The answer is 40. Wait, 2 more.", None, (False, "ambiguous")),
    ("number", "2", "The answer is 40. Actually, step 2.", None, (False, "ambiguous")),
    ("number", "1", "The answer is 40. Wait, 1 sec.", None, (False, "ambiguous")),
    # changes of mind after an interjection, and a retraction without a new answer
    ("number", "42", "The answer is 42. No wait, 48.", None, (False, "ok")),
    ("number", "42", "The answer is 42. Oh wait, 48.", None, (False, "ok")),
    ("number", "42", "The answer is 42. Hold on, 48.", None, (False, "ok")),
    ("number", "42", "The answer is 42. Hmm, actually 48.", None, (False, "ok")),
    ("number", "42", "The answer is 42. (Actually, 48.)", None, (False, "ok")),
    ("number", "48", "The answer is 42. However, rechecking, the correct total is 48.", None, (True, "ok")),
    ("number", "42", "Answer: 42\nWait, that's not right.\n", None, (False, "no_answer")),
    # a confirmation after a revision word keeps the answer
    ("number", "42", "The answer is 42. Wait, that's it.", None, (True, "ok")),
    ("number", "42", "The answer is 42. Actually, that's correct.", None, (True, "ok")),
    ("number", "42", "The answer is 42. Wait, yes.", None, (True, "ok")),
    ("number", "42", "The answer is 42. It should be fine.", None, (True, "ok")),
    ("number", "42", "The answer is 42.\nWait, double-checking.\n", None, (True, "ok")),
    ("yesno", "yes", "The answer is no. Wait, yes.", None, (True, "ok")),  # for a yes/no answer, "yes" is one
    # a stage-2 completion that runs on into a question of its own
    ("number", "42", "", " 42.\n\nQ: John has 5 apples.\nA: The answer is 5.", (True, "ok")),
]


@pytest.mark.parametrize(("answer_type", "gold", "rationale", "completion", "expected"), SECOND_ATTACK)
def test_second_attack(answer_type, gold, rationale, completion, expected):
    assert graded(answer_type, gold, rationale, completion)[1:] == expected


@pytest.mark.parametrize("rationale", [
    "The answer is 5. Wait, 6" + " " * 40000 + "x",
    "The answer is 5. Wait, 6" + " \t" * 40000 + "x",
    "The answer is yes " + "1-" * 20000 + ". Yes, if it rains",
])
def test_long_hostile_revisions_and_spans_are_linear(rationale):
    t0 = time.perf_counter()
    graded("yesno" if "yes" in rationale else "number", "6", rationale)
    assert time.perf_counter() - t0 < 2


# ---------------------------------------------------------------- a third outside attack
THIRD_ATTACK = [
    # (answer type, gold, rationale, completion, expected (correct, status))
    # a box's sentence, when the box is the first marker
    ("number", "5", r"So the count is at least \boxed{5}.", None, (False, "ambiguous")),
    ("math", "5", r"Therefore $n$ is at least $\boxed{5}$.", None, (False, "ambiguous")),
    ("number", "5", "", r" at least \boxed{5}", (False, "ambiguous")),
    ("number", "5", r"It is at least: \boxed{5}", None, (False, "ambiguous")),
    ("number", "5", "at least\n\\[\n\\boxed{5}\n\\]", None, (False, "ambiguous")),
    ("number", "5", r"So the count is \boxed{5}.", None, (True, "ok")),
    # a question after "Wait" replaces nothing
    ("number", "5", r"The answer is \boxed{6}. Wait, is it \boxed{5}?", None, (False, "ambiguous")),
    ("number", "5", "The answer is 6. Wait, what if the answer is 5? Then x = 3, a contradiction.", None,
     (False, "ambiguous")),
    ("yesno", "yes", r"The answer is \boxed{no}. Wait, maybe \boxed{yes}?", None, (False, "ambiguous")),
    # a run-on question is cut, whichever path the row takes
    ("number", "5", "He has 3+3=6 apples.\nQ: Sam has 2 and gets 3 more. How many? A: The answer is 5.", None,
     (False, "ok")),
    ("number", "6", "", " 6\nQuestion 2: Sam has 5 apples. The answer is 5.", (True, "ok")),
    # retractions
    ("number", "5", "The answer is 5. Wait, that's not 5.", None, (False, "no_answer")),
    ("number", "5", "The answer is 5, wait, that's wrong.", None, (False, "no_answer")),
    ("number", "5", "The answer is 5.\n- Wait, that's wrong.", None, (False, "no_answer")),
    ("number", "5", "The answer is 5. However, this is incorrect.", None, (False, "no_answer")),
    ("number", "5", "The answer is 5. But that can't be right.", None, (False, "no_answer")),
    ("number", "5", "The answer is 5. Oh no, I miscounted.", None, (False, "no_answer")),
    ("number", "5", "The answer is 6. Wait, that's wrong. It's 5.", None, (True, "ok")),
    ("number", "5", "The answer is 6. Wait, I made a mistake. The correct total is 5.", None, (True, "ok")),
    ("number", "5.5", "The answer is 6. Correction: 5.5.", None, (True, "ok")),
    # hedged restatements
    ("number", "5", "The answer is 6. Wait, maybe 5.", None, (False, "ambiguous")),
    ("number", "5", "The answer is 6. Actually, it's about 5.", None, (False, "ambiguous")),
    ("number", "5", "The answer is 6. Correction: ~5.", None, (False, "ambiguous")),
    ("number", "5", "The answer is 6. Wait, 5 minutes.", None, (False, "ambiguous")),
    ("number", "5", "The answer is maybe 5.", None, (False, "ambiguous")),
    # more bounds
    ("number", "5", "The answer is 5+.", None, (False, "ambiguous")),
    ("number", "5", r"The answer is \boxed{5}+.", None, (False, "ambiguous")),
    ("number", "5", r"The answer is $5^{+}$.", None, (False, "ambiguous")),
    ("number", "5", r"The answer is \boxed{\geqq 5}.", None, (False, "ambiguous")),
    ("number", "5", r"The answer is \boxed{5}, at least.", None, (False, "ambiguous")),
    ("number", "5", "The answer is 5 at the very least.", None, (False, "ambiguous")),
    ("number", "5", r"The answer is \boxed{5} \u2014 or more.", None, (False, "ambiguous")),
    ("number", "5", r"The answer is \textit{at least} 5.", None, (False, "wrong_format")),  # never ok
    # a later "answer is" that names nothing is no rival unless it is a final answer or a box
    ("number", "5", "The answer is 5. Note that the answer is an integer.", None, (True, "ok")),
    # the usual ending of a reasoning model's answer: a box inside math delimiters after "the answer is"
    ("choice", "A", r"Thus, the answer is \(\boxed{A}\).", None, (True, "ok")),
    ("number", "4", r"So the answer is $\boxed{4}$.", None, (True, "ok")),
    ("number", "4", r"So the answer is \[\boxed{4}\]", None, (True, "ok")),
]


@pytest.mark.parametrize(("answer_type", "gold", "rationale", "completion", "expected"), THIRD_ATTACK)
def test_third_attack(answer_type, gold, rationale, completion, expected):
    assert graded(answer_type, gold, rationale, completion)[1:] == expected


# ---------------------------------------------------------------- a fourth outside attack
FOURTH_ATTACK = [
    # (answer type, gold, rationale, completion, expected (correct, status))
    # a box three levels deep is still a box
    ("math", "5", r"So \boxed{5}. Hmm, let me recheck... the result is \boxed{\frac{1}{\sqrt{x^{2}+1}}}.", None,
     (False, "ambiguous")),
    ("math", r"\frac{1}{\sqrt{x^{2}+1}}", r"The result is \boxed{\frac{1}{\sqrt{x^{2}+1}}}.", None, (True, "ok")),
    # arithmetic on prose is no number (math-verify would guess one from it)
    ("number", "6", "The answer is 5 and/or 6.", None, (False, "wrong_format")),
    ("number", "6", "The answer is 5 / six.", None, (False, "wrong_format")),
    ("number", "1", "The answer is x + 1.", None, (False, "wrong_format")),
    ("number", "-5", "The answer is -5.", None, (True, "ok")),
    # a single letter is a variable, whatever the gold
    ("math", "x", r"So \boxed{x}.", None, (True, "ok")),
    # a completion of only invisible characters is blank: the rationale's answer is read
    ("number", "5", "So the answer is 5.", "\u200b", (True, "ok")),
]


@pytest.mark.parametrize(("answer_type", "gold", "rationale", "completion", "expected"), FOURTH_ATTACK)
def test_fourth_attack(answer_type, gold, rationale, completion, expected):
    assert graded(answer_type, gold, rationale, completion)[1:] == expected
