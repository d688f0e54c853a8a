r"""The `math` grader (math-verify's parse and verify in worker processes): (gold, output, expected) tables in the
style of huggingface/Math-Verify's tests/test_all.py, the precision rule, and the load-time gold check.

Rows marked "mv" are taken from Math-Verify's tests/test_all.py (github.com/huggingface/Math-Verify, commit 5d148cf:
test_latex_notation_math, test_sets_handling, test_matrix_extraction, test_percent_notation,
test_complex_math_expressions, test_relations_math, test_float_precision), with their `$...$` golds written bare as
MATH golds are; the rest are written here in the shape of MATH golds and teacher answers.
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from builder import tasks
from builder.cli import main
from builder.errors import InputError
from builder.grade import grade_frame
from builder.graders import Verdict, grade_one, latex
from builder.recipe import TaskSpec


def check(gold, text, expected, *, anchored=True, last=False):
    """expected = (correct, status) or (pred, correct, status)."""
    v = grade_one("math", gold, text, anchored=anchored, last=last)
    got = (v.correct, v.status) if len(expected) == 2 else (v.pred, v.correct, v.status)
    assert got == expected, v


# ---------------------------------------------------------------- kinds of gold: (gold, answer region, correct)
EXPRESSIONS = [
    ("x^2+1", "x^2+1", True),
    ("x^2+1", "$1 + x^2$", True),  # equivalent forms
    ("x^2+1", "x^2-1", False),
    (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}", True),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{2}}{2}", False),
    (r"\frac{1}{2}", "0.5", True),
    (r"\frac{1}{2}", r"$\dfrac12$", True),
    (r"3\sqrt{13}", r"\sqrt{117}", True),
    (r"2\pi - 1", r"-1+2\pi", True),
    (r"\frac{x+2}{7}", r"$\frac{x}{7}+\frac{2}{7}$", True),  # mv test_complex_math_expressions
    ("x+2n+1", "$x+1$", False),  # mv
    ("2", r"$\frac{1+\sqrt{5}}{2}$", False),  # mv
    (r"\sqrt{2}+\sqrt{5}", r"\sqrt 2+\sqrt 5", True),  # mv test_latex_notation_math
    (r"\frac{9}{4}\pi", r"\frac94\pi", True),  # mv
    ("11", "$x=11$", True),  # mv test_relations_math: a bare number matches an assignment
    ("x > 5", r"$x \gt 5$", True),  # mv
    ("x > 5", "$x < 5$", False),  # mv
]
INTERVALS = [
    (r"(-\infty, 3]", r"(-\infty,3]", True),
    (r"(-\infty, 3]", r"$(-\infty, 3)$", False),  # open vs closed end
    ("[0,9)", "[0,1)", False),  # mv test_sets_handling
    ("(0,9)", "[0,9)", False),  # mv
    (r"[-1, -\frac{1}{2}) \cup (-\frac{1}{2}, 0) \cup (0, 1) \cup (1, \infty)",
     r"[-1, -\tfrac12) \cup (-\tfrac12, 0) \cup (0, 1) \cup (1, \infty)", True),  # mv
]
SETS_AND_TUPLES = [
    (r"\{1,2\}", r"\{2, 1\}", True),  # a set has no order
    (r"\{1,2\}", r"\{1, 3\}", False),
    ("(3, 4)", "$(3,4)$", True),
    ("(3, 4)", "(4, 3)", False),  # a pair has an order
    ("(6,31,-1)", "(6,31,-1)", True),  # mv
    ("(6,31,-1)", "(6,31,1)", False),
    (r"(1,\frac{9}{2})", "$(1,4.5)$", True),  # mv test_complex_math_expressions
    # A set is not a pair: braces and parentheses must agree (math-verify's verify compares a FiniteSet with a Tuple
    # or an open interval elementwise whatever its `strict` flag; `_mv_worker.kinds_differ` refuses that); a bare
    # list "1, 2" reads as a set, so it matches a set gold and not a pair.
    (r"\{1,2\}", " (1, 2)", False),
    ("(1,2)", r" \{1,2\}", False),
    ("(1,2)", " 1, 2", False),
    (r"\{1,2\}", "1, 2", True),
    ("-2, 1", r"\{1, -2\}", True),
    ("(1,2,3)", r"\{1,2,3\}", False),
    (r"\{(1,2),(3,4)\}", r"\{(3,4),(1,2)\}", True),
    (r"\{(1,2),(3,4)\}", r"\{\{1,2\},\{3,4\}\}", False),
]
MATRICES = [
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", True),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}", False),
    (r"\begin{bmatrix}0 & 0 \\0 & 0\end{bmatrix}", r"$ \begin{pmatrix}0 & 0 \\0 & 0\end{pmatrix} $", True),  # mv
    (r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}", r"$\begin{pmatrix}1 & 2 \\ 3 & 5\end{pmatrix}$", False),  # mv
]
CHOICES_AND_TEXT = [
    (r"\text{(B)}", "(B)", True),
    (r"\text{(B)}", r"\text{(B)}", True),
    (r"\text{(B)}", "B", True),
    (r"\text{(B)}", r"$\text{(C)}$", False),
    (r"\text{Evelyn}", r"\text{Evelyn}", True),  # mv test_latex_notation_math
    (r"\text{Evelyn}", "Evelyn", True),  # a lone word reads as \text{}
    (r"\text{Evelyn}", r"\text{Carla}", False),
]
PERCENT_AND_DOLLAR = [
    (r"10\%", r"10\%", True),
    (r"10\%", "10", True),
    (r"10\%", "0.1", True),
    (r"10\%", r"20\%", False),
    (r"28\%", "28", True),  # mv test_percent_notation
    ("0.28", "28", False),  # mv
    ("28", "28/100", False),  # mv
    (r"\$5", r"\$5", True),
    (r"\$5", "5", True),
    (r"\$5", r"\$5.00", True),
    (r"\$5", r"\$6", False),
    (r"\$1.50", "1.5", True),
]
# The precision rule (builder/graders/precision.py, shared with the number grader): an answer written with decimals
# compares at max(gold places, its own places), so a decimal that only rounds to the gold stays wrong; a closed form
# (no decimals) against a plain decimal gold is right when exactly equal, or when it is the simplest fraction that
# rounds to the gold (`matches_rational`), or an irrational number that rounds to it (`matches_irrational`), at 2 to
# 12 places; an exact gold keeps math-verify's 6 places.
PRECISION = [
    ("0.33", r"\frac{1}{3}", True),
    ("0.33", "0.33", True),
    ("0.33", "0.3", False),
    ("0.33", "0.333", False),
    ("2.5", "2.49", False),
    ("2.5", "2.51", False),
    ("2.5", "2.50", True),
    ("2.5", r"\frac{5}{2}", True),
    ("1.5", "3/2", True),
    (r"\frac{1}{3}", "0.333333", True),  # math-verify's own 6 places
    (r"\frac{1}{3}", "0.33", False),
    (r"2.5\%", r"2.49\%", False),  # a percentage compares as a fraction of 100: 2 more places
    (r"2.5\%", r"2.5\%", True),
    # mv test_float_precision has this True; at 15 places the shared rule no longer applies (precision.MAX_PLACES
    # is 12, beyond a float's digits), so an irrational closed form is not credited
    (f"{math.sqrt(17):.15f}", r"$\sqrt{17}$", False),
    (f"{math.sqrt(17):.12f}", r"$\sqrt{17}$", True),
    # closed forms that merely round to the gold are not credited (the attack's rows)
    ("2.5", r" \frac{249}{100}", False),
    ("0.3", r" \frac{2}{7}", False),  # one place says too little (precision.MIN_PLACES)
    ("0.3", r"\frac{3}{10}", True),  # exactly equal
    ("1.5", r" 1 + \frac{10}{21}", False),
    ("0.33", r" \frac{33}{101}", False),  # not the simplest fraction that rounds to 0.33
    ("0.33", r"\frac{33}{101} \cdot 1^{1}", False),  # math-verify parses unevaluated: still 33/101, not an irrational
    ("0.33", r"\frac{1}{3} \cdot 2^{0}", True),
    ("0.33", r" \frac{1}{3}", True),
    ("-0.33", r"-\frac{1}{3}", True),
    ("0.67", r"x = \frac{2}{3}", True),  # an assignment is read at its value, as math-verify does
    ("1.41", r" \sqrt{2}", True),
    ("1.41", r"\sqrt{3}", False),
    ("0.05", " 1/19", False),  # one significant digit says too little (precision.MIN_DIGITS)
    ("0.05", r"\frac{1}{20}", True),
]


@pytest.mark.parametrize(("gold", "text", "correct"),
                         EXPRESSIONS + INTERVALS + SETS_AND_TUPLES + MATRICES + CHOICES_AND_TEXT + PERCENT_AND_DOLLAR)
def test_kinds_of_gold(gold, text, correct):
    check(gold, text, (correct, "ok"))


@pytest.mark.parametrize(("gold", "text", "correct"), PRECISION)
def test_precision_rule(gold, text, correct):
    check(gold, text, (correct, "ok"))


# ---------------------------------------------------------------- pred: one canonical spelling per value
@pytest.mark.parametrize(("gold", "a", "b"), [
    (r"\frac{1}{2}", "0.5", r"\frac{1}{2}"),
    ("x^2+1", "x^2+1", "1+x^2"),
    (r"\{1,2\}", r"\{1,2\}", r"\{2,1\}"),
    (r"\text{(B)}", "(B)", r"\text{(B)}"),
    ("2.5", "2.50", r"\frac{5}{2}"),
])
def test_two_spellings_of_one_value_have_one_pred(gold, a, b):
    assert grade_one("math", gold, a).pred == grade_one("math", gold, b).pred is not None


KINDS = EXPRESSIONS + INTERVALS + SETS_AND_TUPLES + MATRICES + CHOICES_AND_TEXT + PERCENT_AND_DOLLAR + PRECISION


@pytest.mark.parametrize(("gold", "text"), [(g, t) for g, t, ok in KINDS if ok])
def test_pred_reads_back_as_the_same_answer(gold, text):
    """The pred is LaTeX the grader reads again: it becomes a version's `answer` and a student's target."""
    pred = grade_one("math", gold, text).pred
    assert grade_one("math", gold, pred) == grade_one("math", gold, text)


# ---------------------------------------------------------------- reading and statuses
READING = [
    # (gold, region, anchored, last, (pred, correct, status))
    ("12", "12 square units.", True, False, ("12", True, "ok")),  # prose words dropped
    ("12", "The final", True, False, (None, False, "wrong_format")),  # "Final Answer: The final answer is $12$"
    ("5", r"\frac{", True, False, (None, False, "wrong_format")),  # the answer does not parse
    (r"\frac{", "5", True, False, (None, False, "parse_error")),  # the gold does not parse
    ("5", "", True, False, (None, False, "no_answer")),
    (r"\frac12", r"$\frac{1}{2}$ or $0.5$", True, False, (r"\frac{1}{2}", True, "ok")),  # one value twice
    (r"\frac12", r"$\frac{1}{2}$ or $\frac13$", True, False, (r"\frac{1}{2}", False, "ambiguous")),
    # a decimal keeps its spelling where the fraction would grade differently (it compares at its own places)
    ("2.5", "2.49", True, False, ("2.49", False, "ok")),
    (r"\frac{1}{3}", "0.333333", True, False, ("0.333333", True, "ok")),
    # a whole rationale: its last piece of delimited math, nothing else
    ("5", r"First $x = 3$, then $y = 5$.", False, True, ("y = 5", True, "ok")),
    ("5", r"First $x = 3$, then $y = 5$ so it is done", False, True, (None, False, "no_answer")),
    ("5", "First x = 3, then y = 5, so it is done", False, True, (None, False, "no_answer")),
    ("5", r"So $y = \frac{$", False, True, (None, False, "wrong_format")),
]
# Values side by side in an undelimited span are never fused (math-verify reads "3 4" as 3 + 4): prose words
# between values separate candidates (two values: ambiguous), prose words at the ends are dropped, and numbers
# separated by a space alone do not parse (wrong_format).
SIDE_BY_SIDE = [
    ("7", " 3 or 4", True, False, ("3", False, "ambiguous")),
    ("7", " 3 to 4", True, False, ("3", False, "ambiguous")),
    ("7", " 3 hours 4 minutes", True, False, ("3", False, "ambiguous")),
    ("11", " 5 or 6", True, False, ("5", False, "ambiguous")),
    ("12", r"$3 \text{ or } 4$", True, False, (r"\left\{3, 4\right\}", False, "ok")),  # a set, never 12 or 7
    ("7", " 3 4", True, False, (None, False, "wrong_format")),
    ("12", " 3 4", True, False, (None, False, "wrong_format")),
    ("7", "$3 4$", True, False, (None, False, "wrong_format")),
    ("7", r"$3\ 4$", True, False, (None, False, "wrong_format")),  # LaTeX spacing is spacing too
    ("7", r"$3\quad 4$", True, False, (None, False, "wrong_format")),
    ("1000", r"1{,}000", True, False, ("1000", True, "ok")),  # a thousands group is not two numbers
    ("3", "3 hours", True, False, ("3", True, "ok")),
    ("3", "3 hours in all", True, False, ("3", True, "ok")),
    (r"\{3,4\}", "3 and 4", True, False, (r"\left\{3, 4\right\}", True, "ok")),  # "and" lists a set
    (r"\text{Evelyn Smith}", r"\text{Evelyn Smith}", True, False, (True, "ok")),  # words in a group stay
]
# A whole rationale (no anchor) is read at its last piece of delimited math only when that piece ends the text.
LAST_PIECE = [
    ("6", "Step: $6$. Final: 5.", False, True, (None, False, "no_answer")),
    ("6", r"We compute $2\cdot 3 = 6$. Adding one, the total is 7 apples.", False, True, (None, False, "no_answer")),
    ("5", "Hence $x=5$ is rejected since it is extraneous, and the solution is x = 3.", False, True,
     (None, False, "no_answer")),
    ("7", r"Adding one, the total is $7$.", False, True, ("7", True, "ok")),
    ("7", "The total is $7$ **.** \n", False, True, ("7", True, "ok")),
]


@pytest.mark.parametrize(("gold", "text", "anchored", "last", "expected"), READING + SIDE_BY_SIDE + LAST_PIECE)
def test_reading_and_statuses(gold, text, anchored, last, expected):
    check(gold, text, expected, anchored=anchored, last=last)


def test_rationales_graded_through_grade_frame():
    """The build's path: the \\boxed{} of a chat teacher's rationale, and its "The final answer is $...$"."""
    rows = [  # (gold, rationale, correct): mv test_latex_notation_math rows, then written ones
        (r"3\sqrt{13}", r"\sqrt{(2 - (-4))^2 + ((-6) - 3)^2} = \sqrt{117} = \boxed{3\sqrt{13}}.", True),
        ("(6,31,-1)", r"Then solving the system of equations, we find $(p,q,r) = \boxed{(6,31,-1)}.$", True),
        (r"\frac{9}{4}\pi", r"Therefore $\boxed{\frac94\pi}$.", True),
        (r"(-\infty, 3]", "Final Answer: The final answer is $(-\\infty, 3]$. I hope it is correct.", True),
        (r"\$5", r"Each costs $\$5$, so the answer is $\boxed{\$6}$.", False),
    ]
    df = pl.DataFrame({"answer_type": ["math"] * len(rows), "gold": [r[0] for r in rows],
                       "rationale": [r[1] for r in rows]})
    out = grade_frame(df, mode="rationale")
    assert out["correct"].to_list() == [r[2] for r in rows]
    assert set(out["grade_status"]) == {"ok"}


# ---------------------------------------------------------------- the worker protocol and its failures
def test_worker_request_forms():
    from builder.graders import _mv_worker

    assert _mv_worker.answer(["verify", "0.33", r"\frac{1}{3}", 2]) == ["ok", [True, r"\frac{1}{3}", True]]
    assert _mv_worker.answer(["verify", "5", r"\frac{", 2]) == ["ok", [True, None, False]]  # the answer: no parse
    assert _mv_worker.answer(["verify", "}{", "5", 2]) == ["ok", [False, None, False]]  # the gold: no parse
    assert _mv_worker.answer(["gold", r"(-\infty, 3]", 2]) == ["ok", [True, r"\left(-\infty, 3\right]", None]]
    assert _mv_worker.answer(["gold", "0/0", 2])[1][0] is False  # undefined: the third item says why
    assert _mv_worker.answer([r"$\sqrt{4}$", 2]) == ["ok", ["2"]]  # the number grader's form is unchanged


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    """A worker that answers every request with `reply` (fresh workers before and after)."""
    def start(reply):
        script = tmp_path / "worker.py"
        script.write_text("import json, sys\nprint(json.dumps(['ready', None]), flush=True)\n"
                          f"for line in sys.stdin:\n    print(json.dumps({reply!r}), flush=True)\n")
        monkeypatch.setattr(latex, "WORKER", script)
    latex._shutdown()
    yield start
    latex._shutdown()


@pytest.mark.parametrize(("reply", "status"), [(["timeout", None], "timeout"),
                                               (["error", "ValueError: boom"], "parse_error")])
def test_parser_failures_are_statuses_never_wrong(fake_worker, reply, status):
    fake_worker(reply)
    assert grade_one("math", r"\frac{1}{2}", r"\frac{1}{2}") == Verdict(None, False, status)


# ---------------------------------------------------------------- golds at load
def test_a_bad_gold_stops_the_load_naming_file_row_and_value(tmp_path):
    path = tmp_path / "math.jsonl"
    rows = [{"problem": "p1", "answer": r"\frac{1}{2}"}, {"problem": "p2", "answer": r"(-\infty, 3]"},
            {"problem": "p3", "answer": r"\frac{"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TaskSpec(name="m", source="file", path=str(path), answer_type="math",
                    columns={"question": "problem", "gold": "answer"})
    with pytest.raises(InputError, match=r"math\.jsonl line 3: field 'answer': gold '\\\\frac\{' is not a math "
                                         "expression"):
        tasks.load_task(spec)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert tasks.load_task(spec).questions["gold"].to_list() == [r"\frac{1}{2}", r"(-\infty, 3]"]  # kept as written


def test_a_bad_gold_is_exit_code_2_from_the_cli(tmp_path, capsys):
    qfile = tmp_path / "m.jsonl"
    qfile.write_text(json.dumps({"question": "q1", "gold": "5"}) + "\n" + json.dumps({"question": "q2", "gold": "}{"})
                     + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: m\ntasks: {{items: [{{name: m, source: file, path: {qfile}, answer_type: math}}]}}\n"
                      "teacher: {model: m}\n")
    assert main(["tasks", "load", str(recipe), "--output", str(tmp_path / "q.parquet")]) == 2
    err = capsys.readouterr().err
    assert "m.jsonl line 2" in err and "'}{'" in err


def _load_golds(tmp_path, golds):
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps({"problem": f"p{i}", "answer": g}) + "\n" for i, g in enumerate(golds)))
    spec = TaskSpec(name="m", source="file", path=str(path), answer_type="math",
                    columns={"question": "problem", "gold": "answer"})
    return tasks.load_task(spec).questions["gold"].to_list()


@pytest.mark.parametrize(("gold", "why"), [
    ("0/0", "undefined"),  # math-verify reads nan: no answer could ever match
    (r"\frac{1}{0}", "undefined"),  # zoo
    ("10^{10^{10^{10}}}", "timed out"),  # parses, but every comparison with it runs out of time
    ("12:30", "':'"),  # math-verify reads 12/30 = 2/5; a clock time is a string
    ("2:30", "':'"),
])
def test_golds_that_can_never_grade_or_mean_something_else_stop_the_load(tmp_path, monkeypatch, gold, why):
    monkeypatch.setattr(latex, "TIMEOUT_S", 1)
    with pytest.raises(InputError) as err:
        _load_golds(tmp_path, [r"\frac{1}{2}", gold])
    msg = str(err.value)
    assert "math.jsonl line 2: field 'answer': gold " + repr(gold) in msg and why in msg, msg


def test_golds_normalised_at_load(tmp_path):
    """A plain number in scientific notation means its value (math-verify reads "1.5e3" as 1.5 * e * 3); a ratio
    a:b of integers (the right side not two digits, which would read as a clock time) is kept; a gold made only of
    words is read as \text{} (math-verify reads "yes" as the product y*e*s)."""
    golds = ["1.5e3", "2.5E-3", "3:4", "yes", "no solution", r"\text{odd}", "x", "2.50"]
    assert _load_golds(tmp_path, golds) == ["1500", "0.0025", "3:4", r"\text{yes}", r"\text{no solution}",
                                            r"\text{odd}", "x", "2.50"]


@pytest.mark.parametrize(("gold", "text", "correct"), [
    ("1.5e3", "1500", True),  # a frame built elsewhere: the worker reads the plain number too
    ("1500", "1.5e3", True),
    ("1500", r"\frac{9e}{2}", False),
    (r"\text{yes}", "yes", True),
    (r"\text{yes}", "no", False),
])
def test_plain_numbers_and_words_read_as_meant(gold, text, correct):
    check(gold, text, (correct, "ok"))


def test_an_undefined_gold_is_parse_error_at_grading():
    assert grade_one("math", "0/0", "5").status == "parse_error"
    assert grade_one("math", r"\frac{1}{0}", r"\frac{1}{0}").status == "parse_error"
