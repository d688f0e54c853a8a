"""Adaptive budget: rounds until k correct or N samples, graded between rounds, resumable; per-question stats."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from builder import grade, sample, tasks
from builder.recipe import Recipe
from tests.helpers import arith_task

QUESTIONS = [f"Mia has {i} pens and gets {i + 2} more. How many pens does she have?" for i in range(6)]
ROUND, K, MAX = 2, 1, 6
NEVER = 987654321  # a gold the tiny random model never says


def make_recipe(tmp_path: Path, model: Path, golds: list[int | str], name: str, **adaptive) -> Recipe:
    return Recipe.model_validate({
        "name": name, "work_dir": str(tmp_path / "runs"),
        "tasks": {"items": [arith_task(tmp_path, zip(QUESTIONS, golds, strict=True), f"{name}.jsonl")]},
        "teacher": {"model": str(model)},
        "grading": {"mode": "rationale"},  # the sampled rationale's last number (greedy answers rarely have one)
        "sampling": {"n": 1, "max_tokens": 24, "answer_max_tokens": 8, "shard_size": 4, "seed": 7,
                     "adaptive": {"enabled": True, "round_size": ROUND, "target_correct": K, "max_samples": MAX,
                                  **adaptive}},
    })


def test_round_targets_cover_max_samples():
    r = Recipe.model_validate({"name": "x", "tasks": {"items": [{"name": "multiarith"}]}, "teacher": {"model": "m"},
                               "sampling": {"n": 3, "adaptive": {"enabled": True, "round_size": 4,
                                                                 "max_samples": 10}}})
    assert sample.round_targets(r) == [4, 8, 10]
    r.sampling.adaptive.enabled = False
    assert sample.round_targets(r) == [3]


def test_missing_requests_with_per_question_targets():
    q = pl.DataFrame({"qid": ["a", "b"], "target": [2, 4]})
    done = pl.DataFrame({"qid": ["a", "b"], "sample_idx": [0, 0]}, schema_overrides={"sample_idx": pl.Int32})
    runs = sample.missing_requests(q, done, pl.col("target"))
    assert runs.select("qid", "first_idx", "count").rows() == [("a", 1, 1), ("b", 1, 3)]


@pytest.mark.slow
def test_adaptive_stops_solved_questions_and_resumes(tmp_path, tiny_model_dir, vllm_engine):
    # Probe: round 1 of any run is samples 0..ROUND-1 of each question (seeds do not depend on the gold), so the
    # answers the teacher gives there decide which golds make a question 'solved' after one round.
    probe = make_recipe(tmp_path, tiny_model_dir, [NEVER] * len(QUESTIONS), "probe")
    pq = tasks.run(probe.tasks, probe.base_dir)
    probe.sampling.adaptive.enabled, probe.sampling.n = False, ROUND
    first_round, _ = sample.run(pq, probe, engine=vllm_engine)
    preds = grade.run(first_round, pq, probe.grading).filter(pl.col("pred").is_not_null())
    solvable = preds.group_by("qid", maintain_order=True).agg(pl.col("pred").first())
    assert solvable.height >= 1, "the tiny teacher should give a number in some first-round answers"
    solvable = solvable.head(max(1, len(QUESTIONS) // 2))
    gold_by_qid = dict(solvable.rows())
    golds = [gold_by_qid.get(qid, str(NEVER)) for qid in pq["qid"]]

    recipe = make_recipe(tmp_path, tiny_model_dir, golds, "adaptive")
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    assert questions["qid"].to_list() == pq["qid"].to_list()
    seen = []
    samples, stats = sample.run(questions, recipe, engine=vllm_engine, progress=seen.append)

    per_q = samples.group_by("qid").agg(pl.len().alias("n"), pl.col("sample_idx").max().alias("top"))
    n_by_qid = dict(per_q.select("qid", "n").rows())
    for qid in questions["qid"]:
        want = ROUND if qid in gold_by_qid else MAX
        assert n_by_qid[qid] == want, (qid, n_by_qid[qid], want)
    assert (per_q["top"] == per_q["n"] - 1).all()  # indices are 0..n-1, nothing skipped
    assert stats.rounds == MAX // ROUND
    assert stats.extra["adaptive"]["solved"] == len(gold_by_qid)
    assert stats.extra["adaptive"]["capped"] == len(QUESTIONS) - len(gold_by_qid)
    assert [p.round for p in seen] == sorted(p.round for p in seen) and seen[-1].round == MAX // ROUND
    assert seen[-1].questions_done == len(gold_by_qid)  # after round 2, only the solved ones are finished

    # round 1 of the adaptive run is exactly the probe's samples
    drop = ["run_id"]
    assert_frame_equal(samples.filter(pl.col("sample_idx") < ROUND).drop(drop).sort("qid", "sample_idx"),
                       first_round.drop(drop).sort("qid", "sample_idx"))

    # per-question stats on disk and in the returned stats
    qs = pl.read_parquet(recipe.run_dir / "question_stats.parquet")
    assert_frame_equal(qs, stats.question_stats)
    solved = qs.filter(pl.col("qid").is_in(list(gold_by_qid)))
    assert solved["solved"].all() and (solved["n_correct"] >= K).all()
    assert (solved["pass_rate"] == solved["n_correct"] / solved["n_samples"]).all()
    assert qs.filter(~pl.col("qid").is_in(list(gold_by_qid)))["pass_rate"].eq(0).all()
    assert {"majority", "agreement"} <= set(qs.columns)

    # resume after losing the last-written shard: same decisions, same samples, nothing more
    shards = sorted((recipe.run_dir / "samples").glob("shard-*.parquet"))
    lost_rows = pl.read_parquet(shards[-1]).height
    shards[-1].unlink()
    again, stats2 = sample.run(questions, recipe, engine=vllm_engine)
    assert stats2.new_samples == lost_rows
    assert_frame_equal(again.sort("qid", "sample_idx"), samples.sort("qid", "sample_idx"))
    done, stats3 = sample.run(questions, recipe, engine=vllm_engine)
    assert stats3.new_samples == 0 and done.height == samples.height
