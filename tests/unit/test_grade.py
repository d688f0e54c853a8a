"""Grade stage: extraction modes, run() on real tables, question_stats, the audit on real teacher output, the CLI."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from builder.cli import main
from builder.errors import InputError
from builder.grade import TASK_ANSWER_TYPES, grade_frame, question_stats, run
from builder.recipe import GradingConfig
from builder.schemas import validate


def frame(rows: list[dict]) -> pl.DataFrame:
    base = {"answer_type": "number", "gold": "42", "rationale": "", "answer_completion": None}
    return pl.DataFrame([{**base, **r} for r in rows],
                        schema_overrides={"answer_completion": pl.String, "rationale": pl.String})


# ---------------------------------------------------------------- modes
def test_answer_completion_mode_takes_the_first_candidate():
    df = frame([{"answer_completion": " 42. Because 40 + 1 = 41, not 42."}, {"answer_completion": " 41, as 40+2=42"}])
    out = grade_frame(df, mode="answer_completion").select("pred", "correct", "grade_status", "grader")
    assert out.rows() == [("42", True, "ok", "number"), ("41", False, "ok", "number")]


@pytest.mark.parametrize(("rationale", "pred", "status"), [
    ("6 times 7 is 42. The answer is 42.", "42", "ok"),
    ("First 40. Then 2 more. So the answer is 40 + 2 = 42 apples.", "42", "ok"),
    (r"We add them: $40 + 2$. The final answer is $\boxed{42}$.", "42", "ok"),
    (r"Maybe \boxed{41}? No: recount gives \boxed{\frac{84}{2}}", "42", "ambiguous"),  # two final answers
    (r"Maybe \boxed{41}? Actually, recounting gives \boxed{\frac{84}{2}}", "42", "ok"),  # ... one revised
    ("The answer is 41. Wait, recount. The answer is 42.", "42", "ok"),  # the last anchor
    ("We have 40 and then 2 more, 42 in all", "42", "ok"),  # no anchor: last number
    ("Answer: forty-two", "42", "ok"),
    ("The answer is unclear.", None, "wrong_format"),
    ("I cannot tell.", None, "no_answer"),
])
def test_rationale_mode(rationale, pred, status):
    row = grade_frame(frame([{"rationale": rationale}]), mode="rationale").row(0, named=True)
    assert (row["pred"], row["grade_status"]) == (pred, status)
    assert row["correct"] is (pred == "42" and status == "ok")


def test_rationale_mode_choice_and_yesno():
    df = pl.DataFrame({
        "answer_type": ["choice", "choice", "yesno", "yesno"],
        "gold": ["B", "D", "yes", "no"],
        "rationale": ["Option B fits best.\nAnswer: (B)", "A week later is 09/08/2021. So the answer is (D).",
                      "It was flipped twice, so the answer is yes.", "No one flipped it... "],
        "answer_completion": [None, "", None, None],
    })
    out = grade_frame(df, mode="auto")
    assert out["pred"].to_list() == ["B", "D", "yes", None]
    assert out["correct"].to_list() == [True, True, True, False]
    assert out["grade_status"][3] == "no_answer"  # yes/no is never guessed from a bare rationale


def test_auto_mode_prefers_a_non_empty_answer_completion():
    df = frame([
        {"rationale": "The answer is 41.", "answer_completion": " 42."},
        {"rationale": "The answer is 42.", "answer_completion": "  "},
        {"rationale": "The answer is 42.", "answer_completion": None},
    ])
    out = grade_frame(df)
    assert out["pred"].to_list() == ["42", "42", "42"]


def test_student_mode_reads_after_the_last_arrow():
    df = frame([
        {"rationale": " 40 + 2 = 42 --> 42"},
        {"rationale": " x --> y --> 42<|endoftext|>"},
        {"rationale": " 40 + 2 = 42, so 42"},  # never wrote the separator
        {"rationale": " 40 + 2 --> "},
    ])
    out = grade_frame(df, mode="student")
    assert out["pred"].to_list() == ["42", "42", None, None]
    assert out["grade_status"].to_list() == ["ok", "ok", "no_answer", "no_answer"]


def test_choices_come_from_the_question_when_absent():
    q = "What is 2+2? Answer Choices: (A) three (B) four apples (C) five"
    df = pl.DataFrame({"answer_type": ["choice", "choice", "choice"], "gold": ["B", "B", "B"], "question": [q] * 3,
                       "rationale": ["", "", ""], "answer_completion": [" four apples.", " (B)", " D."]})
    out = grade_frame(df)
    assert out["pred"].to_list() == ["B", "B", "D"]
    assert out["grade_status"].to_list() == ["ok", "ok", "wrong_format"]  # D is beyond the 3 choices


def test_grade_frame_keeps_rows_in_order_across_answer_types():
    df = pl.DataFrame({
        "answer_type": ["yesno", "number", "string", "number", "choice", "yesno"],
        "gold": ["yes", "3", "ab", "4", "A", "no"],
        "rationale": ["", "", "", "the answer is 4", "", ""],
        "answer_completion": [" Yes.", " 3.", ' "ab".', None, " (A)", " Yes."],
    })
    out = grade_frame(df)
    assert out["correct"].to_list() == [True, True, True, True, True, False]
    assert out["grader"].to_list() == df["answer_type"].to_list()
    assert_frame_equal(out.select(df.columns), df)


@pytest.mark.parametrize(("df", "mode", "message"), [
    (frame([{}]), "vibes", "unknown grading mode 'vibes'"),
    (frame([{}]).drop("gold"), "auto", "grading needs column 'gold'"),
    (pl.DataFrame({"answer_type": ["number", "number"], "gold": ["1", None], "rationale": ["", ""]}), "auto",
     "row 1: field 'gold' is null"),
    (frame([{}, {"answer_type": "poetry"}]), "auto", "row 1: field 'answer_type' is 'poetry'; valid: choice"),
])
def test_grade_frame_errors_name_the_row_and_field(df, mode, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        grade_frame(df, mode=mode)


# ---------------------------------------------------------------- run + question_stats
def _questions() -> pl.DataFrame:
    return validate(pl.DataFrame({
        "qid": ["q1", "q2"], "task": ["multiarith", "date_understanding"], "split": ["train", "train"],
        "source_idx": [0, 1], "question": ["How many?", "When? Answer Choices: (A) 01/02/2020 (B) 01/03/2020"],
        "gold": ["1,600", "B"], "answer_type": ["number", "choice"], "choices": [None, ["01/02/2020", "01/03/2020"]],
    }), "questions")


def _samples(completions: list[tuple[str, int, str]]) -> pl.DataFrame:
    n = len(completions)
    return validate(pl.DataFrame({
        "qid": [c[0] for c in completions], "sample_idx": [c[1] for c in completions], "seed": list(range(n)),
        "teacher": ["davinci"] * n, "teacher_revision": [None] * n, "prompt": ["Q: ...\nA:"] * n,
        "rationale": ["Let's see."] * n, "answer_prompt": ["\nTherefore, the answer is"] * n,
        "answer_completion": [c[2] for c in completions], "finish_reason": ["stop"] * n,
        "prompt_tokens": [10] * n, "completion_tokens": [20] * n, "run_id": ["r1"] * n,
    }), "samples")


def test_run_joins_questions_and_returns_the_graded_table(tmp_path: Path):
    samples = _samples([("q1", 0, " 1600."), ("q1", 1, " 1,600"), ("q1", 2, " 16."), ("q2", 0, " 01/03/2020"),
                        ("q2", 1, " (A)"), ("q2", 2, "")])
    graded = run(samples, _questions(), GradingConfig())
    assert graded.columns[: len(samples.columns)] == samples.columns
    assert graded["correct"].to_list() == [True, True, False, True, False, False]
    assert graded["pred"].to_list() == ["1600", "1600", "16", "B", "A", None]
    assert graded["grade_status"].to_list() == ["ok"] * 5 + ["no_answer"]
    validate(graded, "graded")


def test_run_names_samples_without_a_question():
    samples = _samples([("q1", 0, " 1600."), ("q9", 0, " 3.")])
    with pytest.raises(InputError, match=r"samples row 1: field 'qid' = 'q9' is not in the questions table"):
        run(samples, _questions(), GradingConfig())


def test_question_stats():
    samples = _samples([("q1", 0, " 1600."), ("q1", 1, " 1,600"), ("q1", 2, " 16."), ("q1", 3, ""),
                        ("q2", 0, " (A)"), ("q2", 1, " B"), ("q2", 2, "?"), ("q2", 3, "(A)")])
    samples = pl.concat([samples, _samples([("q3", 0, "nothing")]).with_columns(qid=pl.lit("q3"))])
    questions = pl.concat([_questions(), _questions().head(1).with_columns(qid=pl.lit("q3"))])
    stats = question_stats(run(samples, questions, GradingConfig()))
    expected = pl.DataFrame({
        "qid": ["q1", "q2", "q3"], "task": ["multiarith", "date_understanding", "multiarith"],
        "n_samples": [4, 4, 1], "n_correct": [2, 1, 0], "pass_rate": [0.5, 0.25, 0.0],
        "majority": ["1600", "A", None], "majority_correct": [True, False, False], "agreement": [0.5, 0.5, 0.0],
    })
    assert_frame_equal(stats, expected)


def test_question_stats_breaks_ties_by_smallest_pred():
    samples = _samples([("q1", 0, " 17."), ("q1", 1, " 1600.")])
    stats = question_stats(run(samples, _questions(), GradingConfig()))
    assert stats.row(0, named=True)["majority"] == "1600"
    assert stats.row(0, named=True)["majority_correct"] is True


# ---------------------------------------------------------------- audit on real teacher output
def _kind(row: dict) -> str | None:
    """Why a disagreement with the reference is a case where we are right (an independent check), else None."""
    gold, ac = row["gold"], row["answer_completion"]
    if row["correct"]:  # we accept what the reference rejected: the teacher's answer must really equal gold
        if row["task"] == "last_letter_concatenation":
            quoted = re.search(r'"([^"]+)"', ac).group(1)
            letters = re.sub(r"[^a-z]", "", quoted.lower().replace("á", "a"))
            return "string spelled with hyphens/accents" if letters == gold else None
        if re.search(r"[a-z]", ac) and not re.search(r"\d", ac):
            return "number in words"
        line = ac.strip(" :\n").splitlines()[0]
        if "=" in line:
            result = re.match(r"\s*([\d.]+?)\.?(?:\s|$)", line.split("=")[-1]).group(1)
            return "calculation whose result is gold" if Fraction(result) == Fraction(gold) else None
        first = re.search(r"\d+/\d+|\d*\.\d+|\d+", ac).group(0)
        if Fraction(first) == Fraction(gold):
            return "fraction / trailing zero / leading dot"
        if abs(float(Fraction(first)) - float(gold)) <= 1e-12 * abs(float(gold)):
            return "float noise in the last digit" if "/" not in first else "fraction / trailing zero / leading dot"
        return None
    # we reject what the reference accepted: its answer is the first operand of a calculation, not the result
    if "=" in ac and ac.strip().split("=")[0].strip().startswith(("5 +", "89 +", "7c", "$$")):
        return "reference took the first operand of a calculation"
    # ... or the answer names two different values (a hedge): never credited
    sentence = re.split(r"[.!?](?:\s|$)|\n\s*\n", ac.strip())[0]
    if row["grade_status"] == "ambiguous" and len({float(x) for x in re.findall(r"\d*\.?\d+", sentence)}) > 1:
        return "answer names two different values (ambiguous)"
    return None


def test_audit_on_all_teacher_completions(teacher_completions_dir: Path):
    files = sorted(teacher_completions_dir.glob("*.jsonl"))
    assert len(files) == 6
    df = pl.concat([pl.read_ndjson(f) for f in files], how="diagonal_relaxed")
    df = df.with_columns(pl.col("task").replace_strict(TASK_ANSWER_TYPES).alias("answer_type"))
    graded = grade_frame(df)
    assert graded.height == 3364
    diff = graded.filter(pl.col("correct") != pl.col("reference_correct"))
    kinds = {}
    for row in diff.iter_rows(named=True):
        kind = _kind(row)
        assert kind is not None, f"unexplained disagreement: {row}"
        kinds[kind] = kinds.get(kind, 0) + 1
    # Where the reference says right we agree, except where the reference graded a calculation's first operand.
    rejected = diff.filter(pl.col("reference_correct"))
    assert kinds.get("reference took the first operand of a calculation", 0) <= 4
    assert rejected.height == (kinds.get("reference took the first operand of a calculation", 0)
                               + kinds.get("answer names two different values (ambiguous)", 0))
    assert diff.height < 0.02 * graded.height
    assert {"string spelled with hyphens/accents", "number in words", "fraction / trailing zero / leading dot",
            "float noise in the last digit", "calculation whose result is gold",
            "answer names two different values (ambiguous)"} <= set(kinds)
    # Every completion yields a prediction except the few that never state a number, and the hedges
    # ("30 and 35.", "14\n16", "3 and 7, or 37.": 26 rows, all answers that were wrong or named two values).
    statuses = dict(graded.group_by("grade_status").len().rows())
    assert statuses.get("wrong_format", 0) + statuses.get("no_answer", 0) <= 15
    assert 20 <= statuses.get("ambiguous", 0) <= 30
    assert graded.filter(pl.col("grade_status") == "ambiguous")["correct"].sum() == 0


def test_rationale_mode_on_real_rationales_agrees_with_the_answer_stage(teacher_completions_dir: Path):
    df = pl.read_ndjson(teacher_completions_dir / "date_understanding.jsonl")
    df = df.with_columns(answer_type=pl.lit("choice"))
    a = grade_frame(df, mode="answer_completion")
    r = grade_frame(df, mode="rationale")
    answered = r["grade_status"] == "ok"
    assert answered.sum() > 150
    differ = r.filter(answered & (a["pred"] != r["pred"]))
    # Where they differ, the rationale ends on an unpadded date ("The answer is 8/7/2003.") that is the choice
    # the rationale-mode pred names ("08/07/2003"); the answer stage said another letter.
    assert differ.height <= 2
    for row in differ.iter_rows(named=True):
        m, d, y = re.findall(r"(\d{1,2})/(\d{1,2})/(\d{4})", row["rationale"])[-1]
        choice = re.search(rf"\({row['pred']}\) (\S+)", row["question"]).group(1)
        assert choice == f"{int(m):02d}/{int(d):02d}/{y}"


# ---------------------------------------------------------------- CLI
def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_grades_jsonl_and_writes_the_audit(tmp_path: Path, capsys):
    rows = [
        {"task": "gsm8k", "question": "How many?", "rationale": "...", "answer_completion": " 1,600.",
         "gold": "1600", "reference_pred": "1", "reference_correct": False},
        {"task": "coin_flip", "question": "Heads?", "rationale": "...", "answer_completion": " No.", "gold": "no",
         "reference_pred": "no", "reference_correct": True},
        {"task": "aqua", "question": "Which? Answer Choices: (A) 1 (B) 2", "rationale": "So the answer is (B).",
         "gold": "B", "reference_pred": "B", "reference_correct": True},
    ]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "graded.parquet"
    assert main(["grade", "--input", str(src), "--output", str(out), "--compare-with", "reference_correct"]) == 0
    graded = pl.read_parquet(out)
    assert graded.columns[:7] == ["task", "question", "rationale", "answer_completion", "gold", "reference_pred",
                                  "reference_correct"]
    assert graded["pred"].to_list() == ["1600", "no", "B"]
    assert graded["correct"].to_list() == [True, True, True]
    audit = pl.read_ndjson(tmp_path / "graded.audit.jsonl")
    assert audit.select("row", "gold", "pred", "reference_pred").rows() == [(0, "1600", "1600", "1")]
    out_text = " ".join(capsys.readouterr().out.split())  # the audit is the command's result: stdout
    assert "2 agree, 1 disagree (1 we accept / reference rejects, 0 we reject / reference accepts)" in out_text


def test_cli_parquet_with_answer_type_and_mode(tmp_path: Path):
    src = tmp_path / "in.parquet"
    pl.DataFrame({"task": ["mine"], "question": ["q"], "rationale": [" 2 + 2 = 4 --> 4"], "gold": ["4"]}
                 ).write_parquet(src)
    out = tmp_path / "out.parquet"
    assert main(["grade", "-i", str(src), "-o", str(out), "--answer-type", "number", "--mode", "student"]) == 0
    assert pl.read_parquet(out).select("pred", "correct", "grade_status", "grader").row(0) == ("4", True, "ok",
                                                                                                "number")


@pytest.mark.parametrize(("rows", "args", "message"), [
    ([{"task": "mine", "question": "q", "rationale": "r", "gold": "1"}], [],
     "in.jsonl line 1: field 'task' is 'mine', not one of the 12 paper tasks; pass --answer-type"),
    ([{"task": "gsm8k", "question": "q", "gold": "1"}], [], "missing column(s) ['rationale']"),
    ([{"task": "gsm8k", "question": "q", "rationale": "r", "gold": "1"},
      {"task": "gsm8k", "question": "q", "rationale": "r", "gold": None}], [],
     "in.jsonl line 2: field 'gold' is null"),
    ([{"task": "gsm8k", "question": "q", "rationale": "r", "gold": "1"}], ["--answer-type", "poem"],
     "unknown grader 'poem'; valid: choice, date, math, number, string, yesno"),
    ([{"task": "gsm8k", "question": "q", "rationale": "r", "gold": "1"}], ["--compare-with", "ref"],
     "--compare-with column 'ref' not found"),
])
def test_cli_errors_name_file_row_and_field(tmp_path: Path, capsys, rows, args, message):
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["grade", "-i", str(src), "-o", str(tmp_path / "o.parquet"), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err
    if "unknown grader" not in message:
        assert str(src) in err
