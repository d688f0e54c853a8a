"""builder.eval: grading student outputs, majority vote, paper numbers, report files, real vLLM runs."""

from __future__ import annotations

import polars as pl
import pytest

from builder.eval import grade, paper_accuracy, paper_student, score, vote


def _generated(rows: list[tuple[str, str, int, str]], golds: dict[str, str]) -> pl.DataFrame:
    """A frame shaped like generate_answers' output: (qid, decoding, sample_idx, student text)."""
    return pl.DataFrame({
        "qid": [r[0] for r in rows], "decoding": [r[1] for r in rows],
        "sample_idx": pl.Series([r[2] for r in rows], dtype=pl.Int32), "rationale": [r[3] for r in rows],
        "answer_completion": pl.Series([None] * len(rows), dtype=pl.String),
        "finish_reason": ["stop"] * len(rows), "completion_tokens": [10] * len(rows),
    }).with_columns(
        pl.lit("multiarith").alias("task"), pl.col("qid").alias("question"),
        pl.col("qid").replace_strict(golds).alias("gold"), pl.lit("number").alias("answer_type"),
        pl.lit(None, pl.List(pl.String)).alias("choices"))


GOLDS = {"q1": "7", "q2": "12", "q3": "3", "q4": "5"}
# Hand-checked: the answer is the first number after the last "-->".
STUDENT_OUTPUTS = [
    ("q1", "greedy", 0, " Tom has 3 + 4 = 7 apples. --> 7"),          # right
    ("q2", "greedy", 0, " 6 * 2 = 13 --> 13"),                        # wrong
    ("q3", "greedy", 0, " She has 3 left, so the answer is 3"),        # no "-->": no answer, wrong
    ("q4", "greedy", 0, " 10 - 5 = 5 --> 5."),                         # right
    ("q1", "sc@3", 0, " --> 7"), ("q1", "sc@3", 1, " --> 8"), ("q1", "sc@3", 2, " --> 7"),      # 7 wins: right
    ("q2", "sc@3", 0, " --> 12"), ("q2", "sc@3", 1, " --> 13"), ("q2", "sc@3", 2, " --> 13"),   # 13 wins: wrong
    ("q3", "sc@3", 0, " no arrow"), ("q3", "sc@3", 1, " 3"), ("q3", "sc@3", 2, " 1 --> 3"),     # only 3: right
    ("q4", "sc@3", 0, " --> 4"), ("q4", "sc@3", 1, " --> 5"), ("q4", "sc@3", 2, " nothing"),    # tie: first, 4: wrong
]


def test_student_outputs_grade_as_hand_checked():
    graded = grade(_generated(STUDENT_OUTPUTS, GOLDS), "student")
    greedy = graded.filter(pl.col("decoding") == "greedy").sort("qid")
    assert greedy["pred"].to_list() == ["7", "13", None, "5"]
    assert greedy["correct"].to_list() == [True, False, False, True]
    votes = vote(graded).sort("qid", "decoding")
    sc = votes.filter(pl.col("decoding") == "sc@3")
    assert sc["voted_pred"].to_list() == ["7", "13", "3", "4"]
    assert sc["votes"].to_list() == [2, 2, 1, 1]
    assert sc["voted_correct"].to_list() == [True, False, True, False]
    rows = {r["decoding"]: r for r in score(graded, model="m", mode="student", compare_to="gpt2-124m")}
    assert (rows["greedy"]["n"], rows["greedy"]["correct"], rows["greedy"]["accuracy_pct"]) == (4, 2, 50.0)
    assert rows["greedy"]["no_answer"] == 1
    assert (rows["sc@3"]["correct"], rows["sc@3"]["accuracy_pct"]) == (2, 50.0)
    assert rows["greedy"]["paper_pct"] == 8.33 and rows["greedy"]["paper_student"] == "GPT-2 124M"


@pytest.mark.parametrize(("model", "key"), [
    ("openai-community/gpt2", "gpt2-124m"), ("gpt2", "gpt2-124m"), ("gpt2-medium", "gpt2-355m"),
    ("openai-community/gpt2-large", "gpt2-774m"), ("google/flan-t5-base", "flan-t5-base"),
    ("outputs/ftcot-multiarith-d1-gpt2-124m", None), ("HuggingFaceTB/SmolLM2-135M-Instruct", None),
])
def test_paper_student_guess(model: str, key: str | None):
    assert paper_student(model) == key


def test_paper_numbers_only_where_known():
    assert paper_accuracy("multiarith", "gpt2-124m") == 8.33
    assert paper_accuracy("multiarith", None) is None
    assert paper_accuracy("gsm8k", "gpt2-124m") is None


# Hand-checked: an R1-format student's answer is read after its trace, like a teacher's rationale, never inside it.
R1_OUTPUTS = [
    ("q1", "greedy", 0, "<think>\nMaybe 5? No: 3 + 4 = 7.\n</think>\n\nTom has 7 apples. The answer is 7."),  # right
    ("q2", "greedy", 0, "<think>\n6 * 2 = 12, the answer is 12.\n</think>\n\nSo the answer is \\boxed{13}."),  # wrong
    ("q3", "greedy", 0, "<think>\nShe has 3 left, so the answer is 3"),  # the trace never closed: no answer
    ("q4", "greedy", 0, "<think>\nfirst</think>\n<think>\n5?</think>\n\nThe answer is 5."),  # the last close counts
]


def test_r1_student_outputs_grade_after_the_trace():
    graded = grade(_generated(R1_OUTPUTS, GOLDS), "student", "r1").sort("qid")
    assert graded["pred"].to_list() == ["7", "13", None, "5"]
    assert graded["correct"].to_list() == [True, False, False, True]
    assert graded["grade_status"][2] == "no_answer"
    assert graded["rationale"].to_list() == [r[3] for r in R1_OUTPUTS]  # the predictions keep the whole output


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "some-model", "--mode", "few_shot"], "--mode 'few_shot': use one of student, zero_shot, zero_shot_cot"),
    (["eval", "--task", "multiarith"], "give a MODEL"),
    (["eval", "some-model"], "give --task TASK"),
])
def test_cli_eval_errors_are_one_line(argv: list[str], message: str, capsys):
    from builder.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_items_weigh_repeated_questions_like_the_paper():
    graded = pl.DataFrame({"qid": ["a", "b", "c"], "task": "t", "decoding": "greedy", "sample_idx": 0,
                           "pred": ["1", "2", None], "correct": [True, False, False]})
    items = pl.DataFrame({"qid": ["a", "b"], "items": [3, 1]})
    (row,) = score(graded, model="m", mode="student", compare_to=None, items=items)
    assert (row["n"], row["correct"], row["n_distinct"], row["correct_distinct"]) == (5, 3, 3, 1)
    assert row["accuracy_pct"] == 60.0 and row["no_answer"] == 1
    (plain,) = score(graded, model="m", mode="student", compare_to=None)
    assert (plain["n"], plain["correct"]) == (3, 1)
