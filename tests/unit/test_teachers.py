"""Teacher backends: a new backend is one class and one decorator, and builds through the same lock, run
fingerprint and resume path as the built-in ones; an unknown backend is a one-line recipe error."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from builder.bind import load_recipe
from builder.cli import main
from builder.run import Run
from builder.teachers import TEACHERS, Completion, Teacher, TeacherSetup, make_teacher, sequential_stream
from tests.helpers import ARITH_QUESTIONS, arith_task

GOLD = {q: a for q, a in ARITH_QUESTIONS}


@pytest.fixture
def echo_requests() -> list[tuple[str, int, int]]:
    """Register an `echo` backend that answers every question right; yields the (qid, first_idx, n) it was asked."""
    asked: list[tuple[str, int, int]] = []

    @TEACHERS.register("echo")
    class EchoTeacher(Teacher):
        fingerprint_fields = ("backend", "model")

        def __init__(self, setup, *, engine=None):
            self.model = setup.teacher.model

        def render(self, prompt):
            return prompt

        def rationales(self, requests):
            asked.extend((r.qid, r.first_idx, r.n) for r in requests)
            gold = {r.qid: GOLD[r.prompt.split("\n")[0].removeprefix("Q: ")] for r in requests}
            return [Completion(r.qid, r.first_idx + i, r.seed + i, f" Sample {r.first_idx + i} gets {gold[r.qid]}.",
                               "stop", 10, 5) for r in requests for i in range(r.n)]

        def answers(self, items, max_tokens):
            return [(f" {rationale.split()[-1]}", 2) for _, rationale, _ in items]

        def stream(self, shards, answer_max_tokens):
            return sequential_stream(self, shards, answer_max_tokens)

    yield asked
    TEACHERS.unregister("echo")


def write_recipe(folder: Path, backend: str) -> Path:
    path = folder / "echo.yaml"
    path.write_text(yaml.safe_dump({
        "name": "echo-build", "work_dir": str(folder / "runs"),
        "tasks": {"items": [arith_task(folder)]},
        "teacher": {"backend": backend, "model": "echo-1"},
        "sampling": {"n": 2, "shard_size": 2},
        "store": {"root": str(folder / "store")},
    }))
    return path


def build(recipe: Path, capsys) -> dict:
    assert main(["build", str(recipe), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_registered_backend_builds_resumes_and_keeps_its_fingerprint(tmp_path, echo_requests, capsys):
    recipe = write_recipe(tmp_path, "echo")
    first = build(recipe, capsys)
    assert first["created"] and first["version"] == "v1" and first["samples"] == 2 * len(ARITH_QUESTIONS)
    assert sum(n for _, _, n in echo_requests) == 2 * len(ARITH_QUESTIONS)

    run_dir = tmp_path / "runs" / "echo-build"
    marker = json.loads((run_dir / "run.json").read_text())
    config = {"run_id": marker["run_id"], **marker["fingerprint"]}
    assert config["teacher"] == {"backend": "echo", "model": "echo-1"}  # the backend's own fingerprint fields
    samples = pl.read_parquet(run_dir / "samples" / "shard-*.parquet")
    assert samples["run_id"].unique().to_list() == [config["run_id"]]
    assert config["run_id"].startswith("echo-build-")
    assert len(list((run_dir / "samples").glob("shard-*.parquet"))) == 3  # 5 questions, 2 per shard

    asked = len(echo_requests)
    again = build(recipe, capsys)  # resumes: every (qid, sample_idx) is on disk, nothing is asked again
    assert len(echo_requests) == asked
    assert again["content_hash"] == first["content_hash"] and again["created"] is False

    with Run.of(load_recipe(recipe)):  # the run's lease guards this backend's run too
        assert main(["build", str(recipe)]) == 2
    assert "another driver holds run echo-build-" in capsys.readouterr().err


def test_an_unknown_backend_is_a_one_line_error_listing_the_valid_ones(tmp_path, capsys):
    assert main(["build", str(write_recipe(tmp_path, "echoo"))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "teacher.backend" in err and "unknown teacher backend 'echoo'" in err
    assert "valid: hf, import, openai, openai_batch, vllm" in err


def test_sampling_time_excludes_the_teachers_start_up(tmp_path, echo_requests):
    """tokens/s is the engine's rate: `Teacher.start` (engine load) runs before the sample stage's clock."""
    from builder import sample, tasks

    class SlowStart:
        started = 0.0

    recipe = load_recipe(write_recipe(tmp_path, "echo"))
    teacher = make_teacher(TeacherSetup.of(recipe))
    teacher.start = lambda: (time.sleep(1.0), setattr(SlowStart, "started", time.perf_counter()))
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    t0 = time.perf_counter()
    _, stats = sample.run(questions, recipe, teacher=teacher)
    assert SlowStart.started - t0 >= 1.0  # it did start, before sampling
    assert 0 < stats.seconds < 0.5 and stats.tokens_per_s > 0


def test_a_teacher_is_made_from_its_own_sections_without_a_recipe(echo_requests):
    """What a student under evaluation is (builder.eval): teacher, prompt and sampling sections, no recipe."""
    from builder.recipe import PromptConfig, SamplingConfig, TeacherConfig
    from builder.teachers import Request, ShardWork

    setup = TeacherSetup(TeacherConfig(backend="echo", model="echo-1"), PromptConfig(), SamplingConfig(n=2))
    teacher = make_teacher(setup)
    q = ARITH_QUESTIONS[0][0]
    (_, completions, answers), = teacher.stream([ShardWork([Request("q0", f"Q: {q}", 0, 2, 7)], {"q0": "A:"})], 8)
    assert [c.sample_idx for c in completions] == [0, 1] and all(a is not None for a in answers)
