"""The openai teacher against a named fake of a hosted API on loopback (what cannot run here): seeds that tell the
truth (n samples drawn in one request from a server that is not vLLM are written `regenerable` false, and
regenerating one is refused by name; one request per sample keeps every sample regenerable), and a cost limit
checked when a request goes, not when it was queued."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder import sample, tasks
from builder.errors import BuilderError, CostLimit
from builder.recipe import Recipe
from tests.helpers import arith_task


@pytest.fixture
def hosted() -> Iterator[tuple[str, list[dict]]]:
    """A fake hosted completions API: `/models` owned by "openai"; every completion choice says "7"."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, data: dict) -> None:
            raw = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:  # noqa: N802
            self._json({"data": [{"id": "gpt-x", "owned_by": "openai"}]})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            n = body["n"]
            self._json({"choices": [{"index": i, "text": f" so {i} and the answer is 7.", "finish_reason": "stop",
                                     "logprobs": {"tokens": ["a"] * 5}} for i in range(n)],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 5 * n}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def _recipe(tmp_path: Path, url: str, use_n: bool, **teacher) -> Recipe:
    return Recipe.model_validate({
        "name": "hosted", "work_dir": str(tmp_path / f"runs-{use_n}"), "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": "openai", "model": "gpt-x", "base_url": url, "use_n": use_n, **teacher},
        "prompt": {"two_stage": False}, "sampling": {"n": 3, "max_tokens": 8, "seed": 1}})


def test_n_samples_of_one_hosted_request_are_not_regenerable_and_regenerate_says_so(tmp_path, hosted):
    url, seen = hosted
    recipe = _recipe(tmp_path, url, use_n=True)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, _ = sample.run(questions, recipe)
    assert {b["n"] for b in seen} == {3}
    assert samples["regenerable"].to_list() == [False] * samples.height
    qid = samples["qid"][0]
    asked = len(seen)
    with pytest.raises(BuilderError, match=rf"sample {qid}:1 .* cannot be regenerated.*teacher.use_n: false"):
        sample.regenerate(recipe, questions["question"][0], "arith", qid, 1)
    assert len(seen) == asked  # refused before any request


def test_one_request_per_sample_stays_regenerable(tmp_path, hosted):
    url, seen = hosted
    recipe = _recipe(tmp_path, url, use_n=False)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, _ = sample.run(questions, recipe)
    assert {b["n"] for b in seen} == {1}
    assert samples["regenerable"].is_null().all()
    qid = samples.sort("qid", "sample_idx")["qid"][0]
    row = sample.regenerate(recipe, questions.filter(questions["qid"] == qid)["question"][0], "arith", qid, 2)
    assert row["seed"][0] == sample.sample_seed(1, qid, 2) and seen[-1]["seed"] == row["seed"][0]


def test_the_cost_limit_stops_requests_queued_before_it_was_reached_and_the_rerun_buys_only_the_rest(tmp_path, hosted):
    url, seen = hosted
    # every request: 5 completion tokens at $100,000 per million = $0.50; the limit is reached after 2 requests
    limits = {"prices": {"input": 0, "output": 100_000}, "max_cost_usd": 1.0, "concurrency": 1}
    recipe = _recipe(tmp_path, url, use_n=False, **limits)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(CostLimit, match=r"spent \$1\.0000 of teacher.max_cost_usd \$1"):
        sample.run(questions, recipe)
    assert len(seen) == 2  # the 13 requests queued behind the first two were never sent
    recipe = _recipe(tmp_path, url, use_n=False, **{**limits, "max_cost_usd": 100.0})
    samples, stats = sample.run(questions, recipe)
    assert samples.height == 15 and len(seen) == 15
    assert len({json.dumps(b, sort_keys=True) for b in seen}) == 15  # none bought twice
    assert stats.extra["spent"]["cost_usd"] == pytest.approx(7.5) and stats.extra["spent"]["requests"] == 15
