"""builder.eval: grading student outputs, majority vote, paper numbers, report files, real vLLM runs."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from builder.eval import grade, paper_accuracy, paper_student, score, vote
from builder.train_recipe import EvalSpec


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


def test_baseline_and_student_prompts(tiny_model_dir: Path):
    """Zero-shot uses Kojima's direct trigger; Zero-shot-CoT the teacher's stage-1 prompt; a student its training
    prompt. Chat formats go through the teacher's render (the model's chat template)."""
    from transformers import AutoTokenizer

    from builder.eval import stage1_prompts

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def render(prompt):
        if isinstance(prompt, str):
            return prompt
        return tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    q = pl.DataFrame({"task": ["multiarith"], "question": ["Q1?"]})
    answer = {"multiarith": "Therefore, the answer (arabic numerals) is"}

    def prompt(mode: str, fmt: str) -> str:
        return stage1_prompts(render, q, mode=mode, fmt=fmt, answer_prompts=answer)[0]

    assert prompt("zero_shot", "raw") == "Q: Q1?\nA: The answer (arabic numerals) is"
    assert prompt("zero_shot_cot", "raw") == "Q: Q1?\nA: Let's think step by step."
    chat = prompt("zero_shot_cot", "chat")
    assert chat.endswith("<|im_start|>assistant\n") and "Let's think step by step." in chat
    assert prompt("zero_shot", "chat").endswith("<|im_start|>assistant\nThe answer (arabic numerals) is")
    assert prompt("student", "ft_cot") == "Q1? ###"
    assert prompt("student", "chat") == render([{"role": "user", "content": "Q1?"}])
    # an R1-format student is asked exactly what it was trained on (the chat template up to the assistant turn)
    from builder.prompts import r1_completion_text

    assert prompt("student", "r1") == r1_completion_text(tok, "Q1?", "")[0]


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


# ------------------------------------------------------------------ real engine
@pytest.fixture(scope="module")
def questions(benchmarks_dir: Path) -> pl.DataFrame:
    from builder.eval import load_questions

    return load_questions(["multiarith"], "test", benchmarks_dir=str(benchmarks_dir), limit=6)


@pytest.mark.slow
@pytest.mark.engine
def test_student_eval_on_vllm_writes_consistent_report(vllm_engine, tiny_model_dir: Path, questions: pl.DataFrame,
                                                       tmp_path: Path):
    from builder.eval import evaluate

    assert questions.height == 6 and set(questions["split"]) == {"test"}
    spec = EvalSpec(max_tokens=12, self_consistency=[3], compare_to="gpt2-124m")
    run = evaluate(str(tiny_model_dir), questions, spec, engine=vllm_engine, out_dir=tmp_path, name="tiny")
    preds = pl.read_parquet(tmp_path / "predictions.parquet")
    assert preds.height == 6 + 6 * 3
    assert preds.group_by("decoding").len().sort("decoding").rows() == [("greedy", 6), ("sc@3", 18)]
    assert preds["rationale"].null_count() == 0 and preds["grade_status"].null_count() == 0
    assert (preds["completion_tokens"] <= 12).all()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(run.report))
    for row in report["results"]:  # the report's accuracy is the predictions' vote, recomputed here
        sub = preds.filter(pl.col("decoding") == row["decoding"]).unique("qid")
        assert row["n"] == 6 and row["correct"] == int(sub["voted_correct"].sum())
        assert row["accuracy_pct"] == round(100 * row["correct"] / 6, 2)
        assert row["paper_pct"] == 8.33
    md = (tmp_path / "report.md").read_text()
    assert "| tiny | student | multiarith | greedy | 6 |" in md and "8.33% (GPT-2 124M)" in md
    # greedy is deterministic: the same engine gives the same text
    again = evaluate(str(tiny_model_dir), questions, EvalSpec(max_tokens=12), engine=vllm_engine)
    assert again.predictions["rationale"].to_list() == preds.filter(pl.col("decoding") == "greedy")[
        "rationale"].to_list()


@pytest.mark.slow
@pytest.mark.engine
def test_zero_shot_cot_baseline_runs_two_stages(vllm_engine, tiny_model_dir: Path, questions: pl.DataFrame):
    from builder.eval import evaluate

    run = evaluate(str(tiny_model_dir), questions, EvalSpec(max_tokens=8, answer_max_tokens=4),
                   mode="zero_shot_cot", engine=vllm_engine)
    p = run.predictions
    assert p.height == 6 and p["answer_completion"].null_count() == 0 and p["rationale"].null_count() == 0
    assert run.report["results"][0]["mode"] == "zero_shot_cot" and run.report["results"][0]["paper_pct"] is None
    direct = evaluate(str(tiny_model_dir), questions, EvalSpec(answer_max_tokens=4), mode="zero_shot",
                      engine=vllm_engine)
    assert direct.predictions["rationale"].null_count() == 6
    assert direct.predictions["answer_completion"].null_count() == 0


@pytest.mark.slow
def test_hf_backend_generates_and_grades(tiny_model_dir: Path, questions: pl.DataFrame, tmp_path: Path):
    """transformers.generate path (seq2seq students, GPU machines without vLLM)."""
    from builder.eval import evaluate
    from builder.teachers.hf import load_model

    model = load_model(str(tiny_model_dir), batch_size=4)
    run = evaluate(str(tiny_model_dir), questions.head(5), EvalSpec(max_tokens=6, self_consistency=[2]),
                   engine=model, out_dir=tmp_path)
    assert run.predictions.height == 5 + 10
    assert (run.predictions["completion_tokens"] <= 6).all()
    assert {r["decoding"] for r in run.report["results"]} == {"greedy", "sc@2"}


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


@pytest.mark.slow
@pytest.mark.engine
def test_an_engine_evaluate_starts_is_stopped_when_it_returns(tiny_model_dir: Path, questions: pl.DataFrame):
    """Regression: a self-started vLLM engine outlived evaluate() and kept the interpreter from exiting."""
    import time

    import psutil

    from builder.eval import evaluate

    def engine_cores() -> set[int]:  # live engine-core children (an exited, unreaped one does not count)
        live = set()
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and "EngineCore" in " ".join(proc.cmdline()):
                    live.add(proc.pid)
            except psutil.Error:
                continue
        return live

    before = engine_cores()
    run = evaluate(str(tiny_model_dir), questions.head(2), EvalSpec(max_tokens=4, engine_args={"max_model_len": 1024}))
    assert run.predictions.height == 2
    deadline = time.monotonic() + 30
    while engine_cores() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_cores() - before == set()


def test_items_weigh_repeated_questions_like_the_paper():
    graded = pl.DataFrame({"qid": ["a", "b", "c"], "task": "t", "decoding": "greedy", "sample_idx": 0,
                           "pred": ["1", "2", None], "correct": [True, False, False]})
    items = pl.DataFrame({"qid": ["a", "b"], "items": [3, 1]})
    (row,) = score(graded, model="m", mode="student", compare_to=None, items=items)
    assert (row["n"], row["correct"], row["n_distinct"], row["correct_distinct"]) == (5, 3, 3, 1)
    assert row["accuracy_pct"] == 60.0 and row["no_answer"] == 1
    (plain,) = score(graded, model="m", mode="student", compare_to=None)
    assert (plain["n"], plain["correct"]) == (3, 1)
