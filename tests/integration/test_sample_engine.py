"""The sample stage on the real vLLM engine: recorded seeds, resume, more samples later, regeneration."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from builder import sample, tasks
from builder.errors import BuilderError
from tests.helpers import ARITH_QUESTIONS, sample_recipe


def sorted_samples(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort("qid", "sample_idx")


# ------------------------------------------------------------------ real engine
@pytest.mark.slow
def test_sample_writes_every_key_once_with_recorded_seeds(tmp_path, tiny_model_dir, vllm_engine):
    recipe = sample_recipe(tmp_path, tiny_model_dir)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, stats = sample.run(questions, recipe, engine=vllm_engine)
    assert samples.height == len(ARITH_QUESTIONS) * 4
    assert samples.select("qid", "sample_idx").is_duplicated().sum() == 0
    assert sorted(samples["sample_idx"].unique().to_list()) == [0, 1, 2, 3]
    expected = [sample.sample_seed(3, q, i) for q, i in samples.select("qid", "sample_idx").rows()]
    assert samples["seed"].to_list() == expected
    assert set(samples["finish_reason"]) <= {"stop", "length"}
    # Zero-shot-CoT stage 2 ran for every sample but those cut by the length limit
    assert (samples["answer_completion"].is_null() == (samples["finish_reason"] == "length")).all()
    assert (samples["answer_prompt"] == "Therefore, the answer (arabic numerals) is").all()
    assert (samples["completion_tokens"] > 0).all() and (samples["prompt_tokens"] > 0).all()
    assert stats.shards_written == 3  # 5 questions, 2 per shard
    assert len(list((recipe.run_dir / "samples").glob("shard-*.parquet"))) == 3
    assert not list((recipe.run_dir / "samples").glob(".*tmp"))


@pytest.mark.slow
def test_resume_samples_only_what_is_missing_and_matches_uninterrupted_run(tmp_path, tiny_model_dir, vllm_engine):
    recipe = sample_recipe(tmp_path, tiny_model_dir)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    full, _ = sample.run(questions, recipe, engine=vllm_engine)
    lost = sorted((recipe.run_dir / "samples").glob("shard-*.parquet"))[1]
    lost_rows = pl.read_parquet(lost).height
    lost.unlink()
    resumed, stats = sample.run(questions, recipe, engine=vllm_engine)
    assert stats.new_samples == lost_rows
    assert_frame_equal(sorted_samples(resumed), sorted_samples(full))
    again, stats = sample.run(questions, recipe, engine=vllm_engine)
    assert stats.new_samples == 0 and again.height == full.height


@pytest.mark.slow
def test_more_samples_later_keeps_earlier_ones(tmp_path, tiny_model_dir, vllm_engine):
    recipe = sample_recipe(tmp_path, tiny_model_dir, n=2)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    first, _ = sample.run(questions, recipe, engine=vllm_engine)
    recipe.sampling.n = 4
    more, stats = sample.run(questions, recipe, engine=vllm_engine)
    assert stats.new_samples == len(ARITH_QUESTIONS) * 2
    assert_frame_equal(sorted_samples(more.filter(pl.col("sample_idx") < 2)), sorted_samples(first))


@pytest.mark.slow
def test_regenerate_reproduces_one_sample_exactly(tmp_path, tiny_model_dir, vllm_engine):
    recipe = sample_recipe(tmp_path, tiny_model_dir)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, _ = sample.run(questions, recipe, engine=vllm_engine)
    target = samples.filter(pl.col("sample_idx") == 2).row(1, named=True)
    q = questions.filter(pl.col("qid") == target["qid"]).row(0, named=True)
    again = sample.regenerate(recipe, q["question"], q["task"], q["qid"], 2, engine=vllm_engine)
    row = again.row(0, named=True)
    for col in ("seed", "prompt", "rationale", "answer_completion", "finish_reason"):
        assert row[col] == target[col], col


@pytest.mark.slow
def test_changed_sampling_settings_refuse_an_old_run_dir(tmp_path, tiny_model_dir, vllm_engine):
    recipe = sample_recipe(tmp_path, tiny_model_dir, n=1)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    sample.run(questions, recipe, engine=vllm_engine)
    recipe.sampling.temperature = 0.3
    with pytest.raises(BuilderError, match=r"sampling\.temperature was 0\.7, now 0\.3"):
        sample.run(questions, recipe, engine=vllm_engine)
