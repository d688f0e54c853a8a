"""What a served teacher costs, against a real `vllm serve` of the tiny model with prices set in the recipe: the
`--dry-run` estimate is what the build then pays (server usage), `teacher.max_cost_usd` stops a build cleanly
(exit 3, shards kept) and a rerun with a higher limit finishes, the run's spent total growing across the resume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from builder.bind import load_recipe
from builder.cli import main
from builder.journal import Journal
from builder.run import Run
from tests.helpers import ARITH_QUESTIONS, arith_task, vllm_serve

N = 4


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path) -> Iterator[str]:
    with vllm_serve(tiny_model_dir) as base:
        yield base


def write_recipe(folder: Path, name: str, model: Path, base_url: str, **teacher) -> Path:
    """One question per shard, one request per question (use_n, one stage: the random tiny model runs every
    rationale to max_tokens, so the estimate's upper bound is what it pays; a rationale cut there gets no answer
    stage, which the estimate cannot know in advance)."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "work_dir": str(folder / "runs"), "tasks": {"items": [arith_task(folder)]},
        "teacher": {"backend": "openai", "model": str(model), "base_url": base_url, "concurrency": 1,
                    "prices": {"input": 1.0, "output": 3.0}, **teacher},
        "prompt": {"two_stage": False},
        "sampling": {"n": N, "max_tokens": 12, "shard_size": 1, "seed": 5},
        # the tiny model is never right: keep what has an answer (the store takes no row without one)
        "curation": {"keep_correct_only": False, "filters": ["no_answer"], "minhash": {"enabled": False}},
        "store": {"root": str(folder / "store")},
    }, sort_keys=False))
    return path


def cli_json(capsys, argv: list[str], code: int = 0) -> dict:
    got = main(argv)
    out, err = capsys.readouterr()
    assert got == code, err[-3000:]
    return json.loads(out) if code == 0 else {"stderr": err}


@pytest.mark.slow
def test_dry_run_estimates_what_the_build_pays(tmp_path, tiny_model_dir, vllm_server, capsys):
    recipe = write_recipe(tmp_path, "estimate", tiny_model_dir, vllm_server)
    estimate = cli_json(capsys, ["build", str(recipe), "--dry-run", "--json"])
    assert estimate["approximate"] is None  # the tiny model's tokenizer is on this machine
    assert not (tmp_path / "runs").exists()  # nothing written, nothing sent

    summary = cli_json(capsys, ["build", str(recipe), "--json"])
    spent = summary["teacher_spent"]
    assert spent == summary["teacher_usage"] and spent["requests"] == estimate["requests"] == len(ARITH_QUESTIONS)
    assert abs(estimate["cost_usd"] - spent["cost_usd"]) <= 0.25 * spent["cost_usd"], (estimate, spent)
    card = (Path(summary["version_path"]) / "README.md").read_text()
    assert f"the run spent {spent['requests']} requests" in card and "$0.00" in card

    # what the run holds now measures the next estimate: nothing is left to sample
    again = cli_json(capsys, ["build", str(recipe), "--dry-run", "--json"])
    assert (again["requests"], again["measured_on"]) == (0, N * len(ARITH_QUESTIONS))


@pytest.mark.slow
def test_a_cost_limit_stops_the_build_and_a_higher_one_resumes_it(tmp_path, tiny_model_dir, vllm_server, capsys):
    per_request = cli_json(capsys, ["build", str(write_recipe(tmp_path, "limited", tiny_model_dir, vllm_server)),
                                    "--dry-run", "--json"])["cost_usd"] / len(ARITH_QUESTIONS)
    # concurrency 1 and one question per shard: the limit stops the build after a request or two
    recipe = write_recipe(tmp_path, "limited", tiny_model_dir, vllm_server, max_cost_usd=1.5 * per_request)
    stopped = cli_json(capsys, ["build", str(recipe)], code=3)
    assert "teacher.max_cost_usd" in stopped["stderr"]
    run = Run.of(load_recipe(recipe))
    partial = Journal(run.journal).spent()
    assert 1 <= len(run.shards()) < len(ARITH_QUESTIONS) and 1 <= partial.requests < len(ARITH_QUESTIONS)
    assert partial.cost_usd >= 1.5 * per_request * 0.75

    write_recipe(tmp_path, "limited", tiny_model_dir, vllm_server, max_cost_usd=1.0)
    summary = cli_json(capsys, ["build", str(recipe), "--json"])
    usage, spent = summary["teacher_usage"], summary["teacher_spent"]
    assert summary["samples"] == N * len(ARITH_QUESTIONS)
    # no request paid twice, and the run's total never reset: what the stopped build paid plus what this one did
    assert usage["requests"] == len(ARITH_QUESTIONS) - partial.requests
    assert spent["requests"] == partial.requests + usage["requests"]
    assert spent["prompt_tokens"] == partial.prompt_tokens + usage["prompt_tokens"]
    assert spent["cost_usd"] == pytest.approx(partial.cost_usd + usage["cost_usd"], abs=2e-6)

    rerun = cli_json(capsys, ["build", str(recipe), "--json"])
    assert rerun["teacher_usage"]["requests"] == 0 and rerun["teacher_spent"] == spent
