"""SIGKILL safety: `rationale sample` killed (whole process group, vLLM's engine processes included) at several
points and resumed ends with exactly the uninterrupted run's samples: every (qid, sample_idx) once, same content."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from builder import sample, tasks
from builder.bind import load_recipe
from builder.run import Run
from tests.helpers import ROOT, arith_task

N_QUESTIONS, N = 24, 3


def write_recipe(tmp_path: Path, model: Path) -> Path:
    questions = [(f"Tom has {i} apples and buys {i + 3} more. How many apples now?", 2 * i + 3)
                 for i in range(N_QUESTIONS)]
    recipe = {
        "name": "kill", "work_dir": str(tmp_path / "runs"),
        "tasks": {"items": [arith_task(tmp_path, questions)]},
        # a small batch: a few shards in flight at once, so every kill point has shards before and after it
        "teacher": {"model": str(model), "engine_args": {"max_model_len": 1024, "max_num_seqs": 4}},
        "sampling": {"n": N, "max_tokens": 24, "answer_max_tokens": 4, "shard_size": 1, "seed": 11},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def shard_count(run_dir: Path) -> int:
    return len(list((run_dir / "samples").glob("shard-*.parquet")))


def temp_files(run_dir: Path) -> list[Path]:
    return list((run_dir / "samples").glob(".*.tmp"))


def run_cli(recipe: Path, kill_at: tuple[str, int] | None = None, timeout: float = 300) -> tuple[int, str]:
    """Run `rationale sample` in its own session; with `kill_at`, it SIGKILLs its whole process group at that point
    (tests/kill_points.py). Fails if any process of the group outlives the run."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    launcher = ["-m", "builder"] if kill_at is None else [str(ROOT / "tests" / "kill_points.py"), kill_at[0],
                                                            str(kill_at[1]), "--"]
    proc = subprocess.Popen([sys.executable, *launcher, "--debug", "sample", str(recipe)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"rationale sample did not finish in {timeout} s:\n{stderr[-3000:]}")
    for _ in range(200):  # the engine's children die with the group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"process group {proc.pid} still alive after the run")
    if kill_at is not None:
        assert "kill_points: SIGKILL" in stderr, f"the run ended before reaching {kill_at}:\n{stderr[-3000:]}"
    return proc.returncode, stderr


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_uninterrupted_run(tmp_path, tiny_model_dir, vllm_engine):
    recipe_path = write_recipe(tmp_path, tiny_model_dir)
    recipe = load_recipe(recipe_path)
    run_dir = recipe.run_dir
    questions = tasks.run(recipe.tasks, recipe.base_dir)

    # 1. killed right after the first shard is renamed into place
    rc, err = run_cli(recipe_path, ("after_shard", 1))
    assert rc == -signal.SIGKILL, err[-3000:]
    assert shard_count(run_dir) == 1 and not temp_files(run_dir)

    # 2. resumed, killed in the middle of writing its third shard: temp file complete, rename not done
    rc, err = run_cli(recipe_path, ("mid_write", 3))
    assert rc == -signal.SIGKILL, err[-3000:]
    assert shard_count(run_dir) == 3
    assert len(temp_files(run_dir)) == 1, "the kill must land between the temp write and the rename"

    # 3. resumed: the half-done shard's temp file is removed at start; killed while an answer stage is in flight
    rc, err = run_cli(recipe_path, ("answer_stage", 2))
    assert rc == -signal.SIGKILL, err[-3000:]
    assert "stale temp file" in err
    assert 5 <= shard_count(run_dir) < N_QUESTIONS and not temp_files(run_dir)

    # 4. resumed to the end
    rc, err = run_cli(recipe_path)
    assert rc == 0, err[-3000:]
    assert not temp_files(run_dir)
    resumed = sample.read_samples(Run.of(recipe))

    keys = resumed.select("qid", "sample_idx")
    assert keys.is_duplicated().sum() == 0
    expected = questions.select("qid").join(pl.DataFrame({"sample_idx": list(range(N))},
                                                         schema={"sample_idx": pl.Int32}), how="cross")
    assert_frame_equal(keys.sort("qid", "sample_idx"), expected.sort("qid", "sample_idx"))

    # the same recipe sampled without interruption (in-process engine, same model, settings and seeds)
    elsewhere = recipe.model_copy(update={"work_dir": str(tmp_path / "reference")})
    reference, _ = sample.run(questions, elsewhere, engine=vllm_engine)
    assert_frame_equal(resumed.sort("qid", "sample_idx"), reference.sort("qid", "sample_idx"))
