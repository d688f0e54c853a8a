"""The sample stage: prompts, per-sample seeds, sharded resumable sampling on the real vLLM engine, import."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from builder import sample, tasks
from builder.errors import BuilderError, InputError
from builder.prompts import Exemplar, answer_stage_prompt, teacher_prompt
from builder.recipe import Recipe
from builder.schemas import remove_stale_temp_files
from tests.helpers import sample_recipe


# ------------------------------------------------------------------ prompts and seeds (no engine)
def test_zero_shot_cot_prompt_is_the_papers():
    zero_shot = teacher_prompt("What is 2+2?", style="zero_shot_cot", fmt="raw")
    assert zero_shot == "Q: What is 2+2?\nA: Let's think step by step."
    stage2 = answer_stage_prompt("Q: x\nA: Let's think step by step.", " 2 and 2 make 4. \n",
                                 "Therefore, the answer (arabic numerals) is")
    assert stage2 == "Q: x\nA: Let's think step by step. 2 and 2 make 4.\nTherefore, the answer (arabic numerals) is"


def test_few_shot_and_chat_prompts():
    ex = [Exemplar(question="1+1?", rationale="One and one make 2.", answer="2")]
    raw = teacher_prompt("2+2?", style="few_shot_cot", fmt="raw", exemplars=ex)
    assert raw == "Q: 1+1?\nA: One and one make 2. The answer is 2.\n\nQ: 2+2?\nA:"
    chat = teacher_prompt("2+2?", style="few_shot_cot", fmt="chat", exemplars=ex)
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    assert chat[1]["content"] == "One and one make 2. The answer is 2."
    zs = teacher_prompt("2+2?", style="zero_shot_cot", fmt="chat")
    assert zs == [{"role": "user", "content": "2+2?\nLet's think step by step."}]


def test_seeds_are_derived_from_run_seed_qid_and_index():
    base = sample.base_seed(0, "abc")
    assert sample.sample_seed(0, "abc", 5) == base + 5
    assert sample.base_seed(0, "abc") == base
    assert sample.base_seed(1, "abc") != base
    assert sample.base_seed(0, "abd") != base
    assert 0 <= base < 2**31 - 64


def test_missing_requests_groups_consecutive_indices():
    q = pl.DataFrame({"qid": ["a", "b"]})
    done = pl.DataFrame({"qid": ["a", "a", "b"], "sample_idx": [0, 2, 1]}, schema_overrides={"sample_idx": pl.Int32})
    runs = sample.missing_requests(q, done, 4, 0)
    assert runs.select("qid", "first_idx", "count").rows() == [("a", 1, 1), ("a", 3, 1), ("b", 0, 1), ("b", 2, 2)]


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path):
    shards = tmp_path / "samples"
    shards.mkdir()
    stale = shards / ".shard-00003.parquet.x1y2.tmp"
    stale.write_bytes(b"PAR1 half")
    keep = shards / "shard-00000.parquet"
    keep.write_bytes(b"")
    assert remove_stale_temp_files(shards) == [stale]
    assert not stale.exists() and keep.exists()


def test_a_second_sampler_on_the_same_run_is_refused(tmp_path):
    from builder.run import Run

    recipe = sample_recipe(tmp_path, tmp_path / "no-model")
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with Run.of(recipe), pytest.raises(BuilderError, match="another driver holds run t-"):
        sample.run(questions, recipe)


# ------------------------------------------------------------------ import
def import_recipe(tmp_path: Path, benchmarks_dir: Path, path: Path, **teacher) -> Recipe:
    return Recipe.model_validate({
        "name": "imp", "work_dir": str(tmp_path / "runs"),
        "tasks": {"benchmarks_dir": str(benchmarks_dir), "items": [{"name": "multiarith", "split": "train"}]},
        "teacher": {"backend": "import", "model": "text-davinci-002", "import_path": str(path), **teacher},
    })


def test_import_real_teacher_completions_matches_questions_by_qid(tmp_path, benchmarks_dir, teacher_completions_dir):
    path = teacher_completions_dir / "multiarith.jsonl"
    recipe = import_recipe(tmp_path, benchmarks_dir, path)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, stats = sample.run(questions, recipe)
    raw = pl.read_ndjson(path)
    assert stats.extra["imported_rows"] == raw.height
    assert 0 < samples.height < raw.height  # test-split questions are not imported into a train build
    assert stats.extra["unmatched_rows"] == raw.height - samples.height
    assert samples["qid"].is_in(questions["qid"].implode()).all()
    assert (samples["teacher"] == "text-davinci-002").all()
    assert (samples["finish_reason"] == "imported").all()
    by_q = raw.with_columns(qid=pl.col("question").map_elements(lambda q: tasks.make_qid("multiarith", q),
                                                               return_dtype=pl.String))
    joined = samples.join(by_q.select("qid", "answer_completion"), on="qid", suffix="_raw")
    assert (joined["answer_completion"] == joined["answer_completion_raw"]).all()
    assert (recipe.run_dir / "samples" / "shard-00000.parquet").exists()


def test_import_names_missing_column(tmp_path, benchmarks_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"q": "x", "text": "y"}) + "\n")
    recipe = import_recipe(tmp_path, benchmarks_dir, bad, import_columns={"question": "q"})
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(InputError, match=r"bad.jsonl: column 'rationale'"):
        sample.run(questions, recipe)
