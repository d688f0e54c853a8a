"""builder.eval on real students: vLLM and HF backends, the two-stage baseline, report files, engine cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from builder.train_recipe import EvalSpec


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
