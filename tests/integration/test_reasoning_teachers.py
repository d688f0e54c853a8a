"""Reasoning teachers end to end on real engines: a `vllm serve --reasoning-parser deepseek_r1` on 127.0.0.1 and the
in-process engine with the same parser, both made to think in `<think>...</think>` by a structured-outputs regex
(the tiny model emits no tags by itself). The trace lands in `reasoning`, the answer in `rationale`, a trace cut by
max_tokens is unfinished, and both paths split alike (and see the same prompt: one BOS, not two)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from builder import sample
from builder.recipe import Recipe
from tests.helpers import arith_task, vllm_serve

pytestmark = pytest.mark.engine

PARSER = "deepseek_r1"
REGEX = r"<think>[a-z ]{8,24}</think>The answer is [0-9]\."
# the engine applies the regex inside the trace too (by default vLLM starts a grammar after thinking ends)
STRUCTURED = {"enable_in_reasoning": True}


@pytest.fixture(scope="module")
def reasoning_engine(reasoning_model: Path):
    from builder.recipe import TeacherConfig
    from builder.teachers.vllm import load_engine, shutdown_engine

    engine = load_engine(TeacherConfig(model=str(reasoning_model), reasoning_parser=PARSER, engine_args={
        "max_model_len": 1024, "structured_outputs_config": STRUCTURED}))
    yield engine
    shutdown_engine(engine)


@pytest.fixture(scope="module")
def reasoning_server(reasoning_model: Path) -> Iterator[str]:
    """`vllm serve` with the reasoning parser and the same structured-outputs config as the in-process engine."""
    import json

    with vllm_serve(reasoning_model, "--reasoning-parser", PARSER, "--structured-outputs-config",
                    json.dumps(STRUCTURED)) as base:
        yield base


def recipe(tmp_path: Path, model: Path, backend: str, *, fmt: str = "chat", max_tokens: int = 64,
           work: str = "runs", **teacher) -> Recipe:
    return Recipe.model_validate({
        "name": "think", "work_dir": str(tmp_path / work),
        "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": backend, "model": str(model), "reasoning_parser": PARSER, **teacher},
        "prompt": {"format": fmt, "two_stage": False},
        "sampling": {"n": 2, "max_tokens": max_tokens, "stop": [], "shard_size": 2, "seed": 5,
                     "structured_outputs_regex": REGEX},
    })


def served(tmp_path: Path, model: Path, base: str, **kw) -> Recipe:
    return recipe(tmp_path, model, "openai", base_url=base, concurrency=2, timeout_s=120, **kw)


def questions(r: Recipe) -> pl.DataFrame:
    from builder import tasks

    return tasks.run(r.tasks, r.base_dir)


def assert_split(df: pl.DataFrame) -> None:
    """Every sample: the trace (no tags) in `reasoning`, the answer in `rationale`, the trace finished."""
    assert df.height
    assert df["reasoning"].str.contains(r"^[a-z ]{8,24}$").all(), df["reasoning"].to_list()
    assert df["rationale"].str.contains(r"^The answer is [0-9]\.$").all(), df["rationale"].to_list()
    assert df["reasoning_finished"].all()
    assert (df["reasoning_tokens"].fill_null(1) > 0).all()


def test_served_trace_lands_in_reasoning(tmp_path, reasoning_model, reasoning_server, reasoning_engine):
    r = served(tmp_path, reasoning_model, reasoning_server)
    qs = questions(r)
    df, stats = sample.run(qs, r)
    assert df.height == qs.height * 2 and stats.new_samples == df.height
    assert_split(df)
    # resume: nothing left to sample; seeds: one sample regenerated alone is the same sample
    again, stats2 = sample.run(qs, r)
    assert stats2.new_samples == 0 and again.sort("qid", "sample_idx").equals(df.sort("qid", "sample_idx"))
    row = df.sort("qid", "sample_idx").row(1, named=True)
    q = qs.filter(pl.col("qid") == row["qid"]).row(0, named=True)
    one = sample.regenerate(r, q["question"], q["task"], row["qid"], row["sample_idx"])
    assert one.select("reasoning", "rationale").row(0) == (row["reasoning"], row["rationale"])

    # (b) the in-process engine, same parser, same regex, same seeds: the same split of the same prompt
    local = recipe(tmp_path, reasoning_model, "vllm", work="local")
    mine, _ = sample.run(qs, local, engine=reasoning_engine)
    cols = ["qid", "sample_idx", "reasoning", "rationale", "reasoning_finished", "prompt_tokens"]
    assert mine.sort("qid", "sample_idx").select(cols).equals(df.sort("qid", "sample_idx").select(cols))


def test_raw_completions_split_with_the_recipe_parser(tmp_path, reasoning_model, reasoning_server):
    """/completions servers do not split raw text: the teacher does, with the same vLLM parser."""
    r = served(tmp_path, reasoning_model, reasoning_server, fmt="raw")
    df, _ = sample.run(questions(r), r)
    assert_split(df)


def test_trace_cut_by_max_tokens_is_unfinished(tmp_path, reasoning_model, reasoning_server, reasoning_engine):
    for r, engine in ((served(tmp_path, reasoning_model, reasoning_server, max_tokens=5), None),
                      (recipe(tmp_path, reasoning_model, "vllm", max_tokens=5, work="local"), reasoning_engine)):
        df, _ = sample.run(questions(r), r, engine=engine)
        assert (df["finish_reason"] == "length").all()
        assert (~df["reasoning_finished"]).all(), df.select("reasoning", "rationale", "reasoning_finished")
        # the cut trace is kept (whatever part of the regex the model reached), no answer after it
        assert (df["rationale"] == "").all() and df["reasoning"].is_not_null().all()
