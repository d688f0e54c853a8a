"""The in-process vLLM teacher at the model's length limit (issue 25): a rationale cut by the length limit gets no
answer stage, a request the engine refuses (a prompt longer than max_model_len, in stage 1 or stage 2) is recorded
on its samples instead of aborting the stream, and `max_model_len` is the user's and the engine's outside CPU.

The real engine is the shared `vllm_engine` fixture (tiny random model, max_model_len 1024). Stop string "e" makes
the random model stop early on some samples and run to the limit on others, so one question gives both kinds.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from builder import reasons as R
from builder.prompts import teacher_prompt
from builder.recipe import Recipe, TeacherConfig
from tests.helpers import ARITH_QUESTIONS, arith_task

MAX_MODEL_LEN = 1024  # the shared engine's (conftest.vllm_engine)
N = 12  # samples per question: enough that both outcomes of a near-limit question occur
ROOM = 4  # tokens left after the near-limit prompt
ANSWER_PROMPT = "Therefore, the answer (arabic numerals) is"


def make_recipe(tmp_path: Path, model: Path, questions: list[tuple[str, int]] = ARITH_QUESTIONS) -> Recipe:
    return Recipe.model_validate({
        "name": "limits",
        "work_dir": str(tmp_path / "runs"),
        "tasks": {"items": [arith_task(tmp_path, questions)]},
        "teacher": {"model": str(model)},
        "sampling": {"n": N, "max_tokens": 12, "answer_max_tokens": 4, "shard_size": 1, "seed": 3, "stop": ["e"]},
    })


def question_of(engine, tokens: int) -> str:
    """A question whose Zero-shot-CoT prompt is exactly `tokens` tokens long for the engine's tokenizer."""
    tok = engine.get_tokenizer()

    def length(k: int) -> int:
        prompt = teacher_prompt("Count the apples:" + " apples" * k, style="zero_shot_cot", fmt="raw")
        return len(tok(prompt)["input_ids"])

    k = tokens - length(0)
    while length(k) > tokens:
        k -= 1
    while length(k) < tokens:
        k += 1
    assert length(k) == tokens
    return "Count the apples:" + " apples" * k


# ------------------------------------------------------------------ engine arguments (no engine)
class _FakeLLM:
    seen: list[dict] = []

    def __init__(self, **kwargs) -> None:
        _FakeLLM.seen.append(kwargs)


@pytest.mark.parametrize(("cpu", "engine_args", "expected"), [
    (False, {}, None),                                # GPU: the engine derives it from the model
    (False, {"max_model_len": 8192}, 8192),           # GPU: the user's value
    (True, {}, 2048),                                 # CPU: the KV cache (VLLM_CPU_KVCACHE_SPACE) needs a cap
    (True, {"max_model_len": 4096}, 4096),            # CPU: the user's value still wins
])
def test_max_model_len_is_only_defaulted_on_cpu_and_the_users_value_wins(monkeypatch, cpu, engine_args, expected):
    import vllm
    import vllm.platforms

    from builder.teachers import vllm as teacher_vllm

    class Platform:
        @staticmethod
        def is_cpu() -> bool:
            return cpu

    _FakeLLM.seen.clear()
    monkeypatch.setattr(vllm, "LLM", _FakeLLM)
    monkeypatch.setattr(vllm.platforms, "current_platform", Platform())
    teacher_vllm.load_engine(TeacherConfig(model="some-model", engine_args=engine_args))
    (args,) = _FakeLLM.seen
    assert args.get("max_model_len") == expected
    assert ("enable_chunked_prefill" in args) == cpu  # the CPU-only workaround stays CPU-only


# ------------------------------------------------------------------ the teacher's stream (real engine)
@pytest.mark.slow
def test_the_stream_survives_refused_and_length_cut_requests(tmp_path, tiny_model_dir, vllm_engine):
    from builder.teachers import Request, ShardWork, TeacherSetup, make_teacher

    recipe = make_recipe(tmp_path, tiny_model_dir)
    teacher = make_teacher(TeacherSetup.of(recipe), engine=vllm_engine)
    prompt = {
        "too_long": teacher_prompt(question_of(vllm_engine, MAX_MODEL_LEN + 40), style="zero_shot_cot", fmt="raw"),
        # stage 1 fits; a rationale either reaches max_model_len (length) or stops before it, and then its
        # answer prompt (rationale + 13 trigger tokens) does not fit
        "near_limit": teacher_prompt(question_of(vllm_engine, MAX_MODEL_LEN - ROOM), style="zero_shot_cot", fmt="raw"),
        "short": teacher_prompt(ARITH_QUESTIONS[0][0], style="zero_shot_cot", fmt="raw"),
    }
    shards = [ShardWork([Request(qid, prompt[qid], 0, N, 100 + i)], {qid: ANSWER_PROMPT})
              for i, qid in enumerate(["too_long", "near_limit", "short"])]
    results = {work.requests[0].qid: (completions, answers)
               for work, completions, answers in teacher.stream(shards, recipe.sampling.answer_max_tokens)}
    assert sorted(results) == ["near_limit", "short", "too_long"]  # every shard came back

    completions, answers = results["too_long"]  # stage 1 refused: every sample recorded, none answered
    assert [c.sample_idx for c in completions] == list(range(N))
    assert [c.seed for c in completions] == [100 + i for i in range(N)]
    for c, a in zip(completions, answers, strict=True):
        assert (c.finish_reason, c.text, a) == ("error", "", None)
        assert "maximum context length is 1024" in c.error

    completions, answers = results["near_limit"]
    reasons = {c.finish_reason for c in completions}
    assert reasons == {"length", "error"}, reasons  # both cases happen with these seeds
    for c, a in zip(completions, answers, strict=True):
        assert a is None
        if c.finish_reason == "length":  # cut by max_model_len: no answer stage at all
            assert c.error is None and c.completion_tokens == ROOM
        else:  # stopped in time, but its answer prompt does not fit: the rationale is kept, the refusal named
            assert c.error.startswith("answer stage: ") and "maximum context length is 1024" in c.error

    completions, answers = results["short"]  # the stream went on: stopped rationales answered, cut ones not
    assert {c.finish_reason for c in completions} == {"stop", "length"}
    for c, a in zip(completions, answers, strict=True):
        assert c.error is None
        assert (a is None) == (c.finish_reason == "length")



@pytest.mark.slow
def test_a_shard_may_still_ask_cut_rationales_for_an_answer(tmp_path, tiny_model_dir, vllm_engine):
    """Evaluation baselines follow the paper's Zero-shot-CoT protocol (`ShardWork.answer_truncated`): every
    rationale gets the answer stage, and one whose answer prompt does not fit is recorded, not raised."""
    from builder.teachers import Request, ShardWork, TeacherSetup, make_teacher

    recipe = make_recipe(tmp_path, tiny_model_dir)
    teacher = make_teacher(TeacherSetup.of(recipe), engine=vllm_engine)
    short = teacher_prompt(ARITH_QUESTIONS[0][0], style="zero_shot_cot", fmt="raw")
    near = teacher_prompt(question_of(vllm_engine, MAX_MODEL_LEN - ROOM), style="zero_shot_cot", fmt="raw")
    shards = [ShardWork([Request(qid, p, 0, N, 200)], {qid: ANSWER_PROMPT}, answer_truncated=True)
              for qid, p in (("near", near), ("short", short))]
    results = {work.requests[0].qid: (completions, answers)
               for work, completions, answers in teacher.stream(shards, recipe.sampling.answer_max_tokens)}
    completions, answers = results["short"]
    assert "length" in {c.finish_reason for c in completions}
    assert all(a is not None for a in answers)
    completions, answers = results["near"]
    assert all(a is None and c.finish_reason == "error" and c.error.startswith("answer stage: ")
               for c, a in zip(completions, answers, strict=True))


# ------------------------------------------------------------------ the sample stage and curation (real engine)
def sample_and_curate(tmp_path: Path, model: Path, engine, questions: list[tuple[str, int]]):
    from builder import curate, grade, sample, tasks

    recipe = make_recipe(tmp_path, model, questions)
    qtable = tasks.run(recipe.tasks, recipe.base_dir)
    samples, stats = sample.run(qtable, recipe, engine=engine)  # today: vLLM's error aborts the stage
    assert samples.height == len(questions) * N and stats.new_samples == len(questions) * N
    # every sample recorded: a rerun asks again only those whose rationale request was refused (a refused answer
    # stage keeps its rationale; asking again would pay for the same seeded rationale)
    _, again = sample.run(qtable, recipe, engine=engine)
    stage1_refused = (pl.col("finish_reason") == "error") & ~pl.col("error").str.starts_with("answer stage: ")
    assert again.new_samples == samples.filter(stage1_refused).height
    ledger, _ = curate.run(grade.run(samples, qtable, recipe.grading), recipe.curation)
    qid = dict(zip(qtable["question"], qtable["qid"], strict=True))
    return samples, ledger, stats, qid


def assert_dropped_with_reasons(samples: pl.DataFrame, ledger: pl.DataFrame) -> None:
    cut = samples.filter(pl.col("finish_reason") == "length")
    assert cut["answer_completion"].null_count() == cut.height  # no answer stage after a cut rationale
    assert samples.filter(pl.col("finish_reason") == "stop")["answer_completion"].null_count() == 0
    assert (ledger.filter(pl.col("finish_reason") == "length")["reason"] == R.TRUNCATED).all()
    failed = ledger.filter(pl.col("finish_reason") == "error")
    assert (failed["state"] == R.DROPPED).all() and failed["reason"].null_count() == 0
    assert not failed["correct"].any()


@pytest.mark.slow
def test_a_rationale_cut_at_max_model_len_does_not_abort_sampling(tmp_path, tiny_model_dir, vllm_engine):
    """The issue's case: a rationale runs into max_model_len, so its answer prompt cannot fit; a stopped one next
    to it whose answer prompt does not fit either is recorded as refused."""
    near_q = question_of(vllm_engine, MAX_MODEL_LEN - ROOM)
    samples, ledger, stats, qid = sample_and_curate(tmp_path, tiny_model_dir, vllm_engine,
                                                    [(near_q, 7), *ARITH_QUESTIONS[:2]])
    near = samples.filter(pl.col("qid") == qid[near_q])
    assert set(near["finish_reason"]) == {"length", "error"} and near["answer_completion"].null_count() == N
    assert stats.extra["failed_samples"] == near.filter(pl.col("finish_reason") == "error").height
    assert set(samples.filter(pl.col("qid") != qid[near_q])["finish_reason"]) == {"stop", "length"}
    assert ledger.filter(pl.col("finish_reason") == "length").height
    assert_dropped_with_reasons(samples, ledger)
    # the engine's message is kept on the sample (sample._shard_frame maps Completion.error to column `error`)
    failed = near.filter(pl.col("finish_reason") == "error")["error"]
    assert failed.null_count() == 0 and failed.str.starts_with("answer stage: ").all()
    assert samples["error"].null_count() == samples.height - failed.len()


@pytest.mark.slow
def test_a_prompt_longer_than_max_model_len_is_recorded_not_raised(tmp_path, tiny_model_dir, vllm_engine):
    long_q = question_of(vllm_engine, MAX_MODEL_LEN + 40)
    samples, ledger, stats, qid = sample_and_curate(tmp_path, tiny_model_dir, vllm_engine,
                                                    [*ARITH_QUESTIONS[:1], (long_q, 7), *ARITH_QUESTIONS[1:2]])
    refused = samples.filter(pl.col("qid") == qid[long_q])
    assert refused["finish_reason"].to_list() == ["error"] * N and stats.extra["failed_samples"] == N
    assert (refused["rationale"] == "").all() and refused["answer_completion"].null_count() == N
    assert set(samples.filter(pl.col("qid") != qid[long_q])["finish_reason"]) == {"stop", "length"}
    assert ledger.filter(pl.col("finish_reason") == "error").height == N
    assert_dropped_with_reasons(samples, ledger)
    # the engine's message is kept on the sample (sample._shard_frame maps Completion.error to column `error`)
    assert refused["error"].null_count() == 0 and refused["error"].str.contains("maximum context length is 1024").all()
    assert samples["error"].null_count() == samples.height - N


def test_a_refused_sample_is_never_graded_correct_and_is_dropped_with_a_reason(tmp_path):
    """A stage-2 refusal keeps a finished rationale that may well state the right answer: it has no answer stage
    and must never count as correct, whatever the grading mode or the filters."""
    from builder import curate, grade

    questions = pl.DataFrame({"qid": ["q1", "q1"], "task": ["arith"] * 2, "question": ["3 + 4?"] * 2,
                              "gold": ["7"] * 2, "answer_type": ["number"] * 2}).unique("qid")
    samples = pl.DataFrame({
        "qid": ["q1", "q1"], "sample_idx": [0, 1], "seed": [1, 2], "teacher": "tiny", "teacher_revision": None,
        "prompt": "Q: 3 + 4?\nA: Let's think step by step.", "rationale": " 3 and 4 make 7. The answer is 7.",
        "answer_prompt": ANSWER_PROMPT, "answer_completion": [" 7.", None], "finish_reason": ["stop", "error"],
        "prompt_tokens": 10, "completion_tokens": 12, "run_id": "r",
    }, schema_overrides={"sample_idx": pl.Int32, "prompt_tokens": pl.Int32, "completion_tokens": pl.Int32,
                         "teacher_revision": pl.String})
    recipe = make_recipe(tmp_path, tmp_path)
    for mode in ("auto", "rationale", "answer_completion"):
        recipe.grading.mode = mode
        graded = grade.run(samples, questions, recipe.grading).sort("sample_idx")
        assert graded["correct"].to_list()[1] is False, mode
    recipe.grading.mode = "auto"
    graded = grade.run(samples, questions, recipe.grading)
    for filters in (recipe.curation.filters, []):
        recipe.curation.filters = filters
        ledger = curate.run(graded, recipe.curation)[0].sort("sample_idx")
        assert ledger.row(0, named=True)["state"] == R.KEPT
        row = ledger.row(1, named=True)
        assert row["state"] == R.DROPPED and row["reason"] is not None, filters
