"""The run on the real vLLM engine: lowering n, a changed answer prompt, a refused request asked again."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from builder import build, sample, tasks
from builder.errors import BuilderError
from builder.recipe import Recipe
from builder.run import Run
from tests.helpers import arith_task


@pytest.mark.slow
def test_lowering_n_grades_and_stores_exactly_the_first_n(tmp_path, tiny_model_dir, vllm_engine):
    def recipe(n: int) -> Recipe:
        return Recipe.model_validate({
            "name": "lower-n", "work_dir": str(tmp_path / "runs"), "tasks": {"items": [arith_task(tmp_path)]},
            "teacher": {"model": str(tiny_model_dir)},
            "prompt": {"two_stage": False},
            "sampling": {"n": n, "max_tokens": 40, "shard_size": 2, "seed": 1,
                         "structured_outputs_regex": "The answer is [1-9]\\."},
            "grading": {"mode": "rationale"},
            "curation": {"keep_correct_only": False, "dedup_exact": False, "filters": [],
                         "minhash": {"enabled": False}, "selection": {"max_per_question": None}},
            "store": {"root": str(tmp_path / "store")},
        })

    four = build.run(recipe(4), engine=vllm_engine)
    assert four.samples == 4 * 5
    two = build.run(recipe(2), engine=vllm_engine)
    assert two.samples == 2 * 5 and two.created
    manifest = json.loads((Path(two.version_path) / "manifest.json").read_text())
    rows = pl.read_parquet(Path(two.version_path) / "data")
    assert manifest["recipe"]["sampling"]["n"] == 2
    assert rows.height == manifest["rows"] == 2 * 5 and rows["sample_idx"].max() == 1
    graded = pl.read_parquet(recipe(2).run_dir / "graded.parquet")
    assert graded.height == 10 and graded["sample_idx"].max() == 1


# ------------------------------------------------------------------ what a sample was asked with
def engine_recipe(tmp_path: Path, model: Path, **task) -> Recipe:
    return Recipe.model_validate({
        "name": "asked", "work_dir": str(tmp_path / "runs"),
        "tasks": {"items": [{**arith_task(tmp_path), **task}]},
        "teacher": {"model": str(model), "engine_args": {"max_model_len": 1024}},
        "sampling": {"n": 1, "max_tokens": 8, "answer_max_tokens": 4, "shard_size": 8, "seed": 2,
                     "structured_outputs_regex": "[a-z ]{1,6}\\."},
    })


@pytest.mark.slow
def test_samples_asked_with_another_answer_prompt_are_refused_and_an_explicit_default_is_not(
        tmp_path, tiny_model_dir, vllm_engine):
    """answer_type (or answer_prompt) decides the answer stage's prompt, and is not in the run fingerprint (the
    widest choice list can change it as questions are added): each sample's recorded answer prompt is checked."""
    first = engine_recipe(tmp_path, tiny_model_dir)
    questions = tasks.run(first.tasks, first.base_dir)
    _, stats = sample.run(questions, first, engine=vllm_engine)
    assert stats.new_samples == 5
    explicit = engine_recipe(tmp_path, tiny_model_dir, answer_prompt="Therefore, the answer (arabic numerals) is",
                             shuffle_choices=False)  # the defaults, written out
    assert Run.of(explicit).id == Run.of(first).id
    _, again = sample.run(questions, explicit, engine=vllm_engine)
    assert again.new_samples == 0
    as_text = engine_recipe(tmp_path, tiny_model_dir, answer_type="string")
    with pytest.raises(BuilderError, match=r"task 'arith' were asked with the answer prompt 'Therefore, the answer "
                                           r"\(arabic numerals\) is'; this recipe asks 'Therefore, the answer is'"):
        sample.run(tasks.run(as_text.tasks, as_text.base_dir), as_text, engine=vllm_engine)


@pytest.mark.slow
def test_a_refused_request_is_asked_again_on_the_next_run(tmp_path, tiny_model_dir, vllm_engine):
    """A prompt over max_model_len is recorded as an error sample, and the next run asks for it again instead of
    keeping the error forever (a raised limit or a fixed server then fills it in)."""
    long = ("Tom has 3 apples and " + "then he finds one more apple, " * 300 + "How many apples?", 4)
    cfg = engine_recipe(tmp_path, tiny_model_dir)
    cfg.tasks.items[0] = cfg.tasks.items[0].model_copy(update={"path": arith_task(
        tmp_path, [("Tom has 3 apples and eats 1. How many are left?", 2), long], file="two.jsonl")["path"]})
    questions = tasks.run(cfg.tasks, cfg.base_dir)
    samples, first = sample.run(questions, cfg, engine=vllm_engine)
    assert first.new_samples == 2 and samples["finish_reason"].to_list().count("error") == 1
    samples, again = sample.run(questions, cfg, engine=vllm_engine)
    assert again.new_samples == 1  # the refused one, asked again (and refused again by this engine)
    assert samples.height == 2 and samples.select("qid", "sample_idx").is_duplicated().sum() == 0
