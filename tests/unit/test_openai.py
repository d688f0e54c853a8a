"""The openai teacher against a named fake of a hosted API on loopback (what cannot run here): seeds that tell the
truth (n samples drawn in one request from a server that is not vLLM are written `regenerable` false, and
regenerating one is refused by name; one request per sample keeps every sample regenerable), and a cost limit
checked when a request goes, not when it was queued."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from builder import sample, tasks
from builder.errors import BuilderError, CostLimit, EngineError
from builder.recipe import Recipe
from builder.teachers import TeacherSetup, make_teacher, transport
from tests.helpers import arith_task

POISON = "POISON"
# What the fake does wrong: refuse every request ("refuse_all"), redirect, send HTML, answer 402, 429 each request
# thrice ("busy"), junk answers (one per character of "junk"), no usage, identical choices ("same"), or claim vLLM.
BROKEN: dict[str, str] = {}


@pytest.fixture
def hosted() -> Iterator[tuple[str, list[dict]]]:
    """A fake hosted completions API: `/models` owned by "openai"; every completion choice says "7"; a prompt holding
    POISON is refused as too long (HTTP 400, OpenAI's error shape); `BROKEN` switches on whole-server faults."""
    seen: list[dict] = []
    busy: dict[str, int] = {}
    BROKEN.clear()

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
            if BROKEN.get("down"):
                return self._send(503, b'{"error": "loading"}')
            self._json({"data": [{"id": "gpt-x", "owned_by": "vllm" if BROKEN.get("vllm") else "openai"}]})

        def _send(self, status: int, raw: bytes, **headers: str) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if BROKEN.get("html"):
                BROKEN["html"] = BROKEN["html"][1:]  # one page per character
                return self._send(200, b"<html>gateway</html>", Content_Type="text/html")
            if BROKEN.get("redirect"):
                return self._send(302, b"", Location="https://elsewhere.test/v1/completions")
            if BROKEN.get("surrogate") and POISON in body["prompt"]:
                return self._send(400, b'{"error": {"message": "too long \\ud800 here"}}')
            if BROKEN.get("refuse_all") or POISON in body["prompt"]:
                return self._send(400, json.dumps({"error": {
                    "message": "This model's maximum context length is 16 tokens.", "type": "invalid_request_error",
                    "code": "context_length_exceeded"}}).encode(), Content_Type="application/json")
            if BROKEN.get("flaky") and "FLAKY" in body["prompt"] and "Therefore" in body["prompt"]:
                return self._send(500, b'{"error": "internal error"}')  # its answer stage fails, the rest pass
            if BROKEN.get("down"):
                return self._send(503, b'{"error": "loading"}')
            if BROKEN.get("402"):
                return self._send(402, b'{"error": {"message": "You exceeded your current quota."}}')
            key = json.dumps(body, sort_keys=True)
            if BROKEN.get("busy") and busy.setdefault(key, 3) > 0:  # each request: 429 three times, then answered
                busy[key] -= 1
                return self._send(429, b'{"error": "slow down"}', Retry_After="0")
            n = body["n"]
            text = " so 3 + 4 = 7." if BROKEN.get("same") else " so {} and the answer is 7."
            choices = [{"index": i, "text": text.format(i),
                        "finish_reason": "content_filter" if "FILTER" in body["prompt"] else (
                            "stop\ud800" if BROKEN.get("surrogate") else "stop"),
                        "logprobs": {"tokens": ["a"] * 5}} for i in range(n)]
            if BROKEN.get("junk"):  # each next answer broken another way, then good ones
                kind, BROKEN["junk"] = BROKEN["junk"][0], BROKEN["junk"][1:]
                choices = {"n": choices[1:], "i": [{**c, "index": None, "logprobs": []} for c in choices],
                           "t": [{**c, "text": 7} for c in choices], "c": choices[0]}.get(kind, choices)
                if kind == "s":
                    choices = [{**c, "text": " so \ud83d 7."} for c in choices]
            usage = None if BROKEN.get("no_usage") else {"prompt_tokens": 9, "completion_tokens": 5 * n}
            self._json({"choices": choices, "usage": usage})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def _recipe(tmp_path: Path, url: str, use_n: bool, questions: list[str] | None = None, **teacher) -> Recipe:
    task = arith_task(tmp_path, [(q, 7) for q in questions]) if questions else arith_task(tmp_path)
    return Recipe.model_validate({
        "name": "hosted", "work_dir": str(tmp_path / f"runs-{use_n}"), "tasks": {"items": [task]},
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


def test_a_refused_prompt_becomes_an_error_on_its_samples_and_the_run_goes_on(tmp_path, hosted):
    url, seen = hosted
    recipe = _recipe(tmp_path, url, True, ["What is 3 + 4?", f"{POISON} What is 1 + 1?", "What is 2 + 5?"])
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, stats = sample.run(questions, recipe)
    poisoned = samples.join(questions.filter(pl.col("question").str.contains(POISON)).select("qid"), on="qid")
    assert poisoned.height == 3 and (poisoned["finish_reason"] == "error").all()
    assert poisoned["error"].str.contains("HTTP 400: This model's maximum context length is 16 tokens.").all()
    others = samples.join(poisoned.select("qid"), on="qid", how="anti")
    assert others.height == 6 and (others["finish_reason"] == "stop").all() and others["error"].is_null().all()
    assert stats.extra["refused"] == 3


def test_a_server_that_refuses_everything_stops_the_run_instead_of_writing_errors(tmp_path, hosted):
    url, seen = hosted
    BROKEN["refuse_all"] = "yes"
    recipe = _recipe(tmp_path, url, False, [f"What is {i} + 1?" for i in range(8)])
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(EngineError, match=r"the first 16 requests were all refused.*the recipe"):
        sample.run(questions, recipe)
    assert not list((recipe.run_dir / "samples").glob("shard-*.parquet"))


def test_a_redirect_is_a_wrong_base_url_and_a_page_that_is_not_json_is_asked_again(tmp_path, hosted, monkeypatch):
    url, seen = hosted
    monkeypatch.setattr(transport, "BACKOFF_S", 0.01)
    BROKEN["redirect"] = "yes"
    recipe = _recipe(tmp_path, url, use_n=True)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(EngineError, match=r"HTTP 302.*redirects to 'https://elsewhere.test/v1/completions'"):
        sample.run(questions, recipe)
    BROKEN.clear()
    BROKEN["html"] = "xx"
    samples, _ = sample.run(questions, recipe)
    assert samples.height == 15 and (samples["finish_reason"] == "stop").all()
    assert BROKEN["html"] == ""  # both pages were answers to requests that were then asked again



def test_a_malformed_answer_is_asked_again_never_journaled_and_a_lone_surrogate_is_replaced(tmp_path, hosted,
                                                                                           monkeypatch):
    url, seen = hosted
    monkeypatch.setattr(transport, "BACKOFF_S", 0.01)
    BROKEN["junk"] = "nitcs"  # a choice missing, null indexes and list logprobs (readable), a number as text, a dict
    recipe = _recipe(tmp_path, url, use_n=True, concurrency=1, max_retries=8)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, _ = sample.run(questions, recipe)
    assert samples.height == 15 and (samples["finish_reason"] == "stop").all()
    assert len(seen) == 5 + 3  # the three unreadable answers were asked again; the surrogate one was kept
    assert samples.filter(pl.col("rationale").str.contains("\ufffd")).height == 3
    lines = [json.loads(x) for f in (recipe.run_dir / "journal").glob("*.jsonl") for x in f.read_text().splitlines()]
    answers = [e for e in lines if e["samples"]]
    assert len(answers) == 5 and all(len(e["response"]["choices"]) == 3 for e in answers)
    assert len(lines) - len(answers) == 3  # the unreadable ones were billed: their usage is journaled as spent


def test_a_content_filtered_completion_is_a_refused_sample(tmp_path, hosted):
    url, _ = hosted
    recipe = _recipe(tmp_path, url, True, ["What is 3 + 4?", "FILTER what is 1 + 1?"])
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, _ = sample.run(questions, recipe)
    cut = samples.join(questions.filter(pl.col("question").str.contains("FILTER")).select("qid"), on="qid")
    assert (cut["finish_reason"] == "error").all() and cut["error"].str.contains("content filter").all()
    assert (samples.join(cut.select("qid"), on="qid", how="anti")["finish_reason"] == "stop").all()


def test_rate_limits_never_give_a_request_up_and_402_stops_the_run(tmp_path, hosted, monkeypatch):
    url, seen = hosted
    BROKEN["busy"] = "yes"  # every request is answered 429 three times first, while others pass
    recipe = _recipe(tmp_path, url, use_n=True, max_retries=1)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, _ = sample.run(questions, recipe)
    assert (samples["finish_reason"] == "stop").all() and len(seen) == 5 * 4
    BROKEN.clear()
    BROKEN["402"] = "yes"
    (tmp_path / "b").mkdir()
    other = _recipe(tmp_path / "b", url, use_n=True)
    with pytest.raises(EngineError, match=r"HTTP 402.*quota"):
        sample.run(questions, other)


def test_a_rerun_left_with_only_refused_prompts_is_not_taken_for_a_refused_recipe(tmp_path, hosted):
    url, seen = hosted
    questions = ["What is 3 + 4?", *(f"{POISON} what is {i} + 1?" for i in range(17))]
    recipe = _recipe(tmp_path, url, True, questions, concurrency=1)
    qs = tasks.run(recipe.tasks, recipe.base_dir)
    first, _ = sample.run(qs, recipe)
    assert (first["finish_reason"] == "error").sum() == 17 * 3
    again, stats = sample.run(qs, recipe)  # only the 17 refused prompts are asked again, and refused again
    assert stats.extra["refused"] == 17 * 3 and again.height == 18 * 3


def test_usage_a_server_does_not_send_is_counted_as_its_upper_bound(tmp_path, hosted):
    url, seen = hosted
    BROKEN["no_usage"] = "yes"
    limits = {"prices": {"input": 0, "output": 100_000}, "max_cost_usd": 1.0, "concurrency": 1}
    recipe = _recipe(tmp_path, url, False, **limits)
    with pytest.raises(CostLimit):
        sample.run(tasks.run(recipe.tasks, recipe.base_dir), recipe)
    assert len(seen) == 2  # 5 tokens counted from logprobs, $0.50 a request: stopped at the limit


def test_identical_requests_in_flight_are_sent_once_and_a_reused_teacher_counts_once(tmp_path, hosted):
    url, seen = hosted
    BROKEN["same"] = "yes"  # the 3 rationales of a question are one text: its 3 answer-stage requests are one
    recipe = _recipe(tmp_path, url, use_n=True, prices={"input": 0, "output": 100_000})
    recipe.prompt.two_stage = True
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    teacher = make_teacher(TeacherSetup.of(recipe))
    try:
        samples, stats = sample.run(questions, recipe, teacher=teacher)
        assert samples["answer_completion"].is_not_null().all() and len(seen) == 5 + 5
        assert stats.extra["spent"]["requests"] == 10
        again, stats = sample.run(questions, recipe, teacher=teacher)  # nothing to ask: the same teacher again
        assert len(seen) == 10 and stats.extra["spent"]["requests"] == 10 and stats.extra["usage"]["requests"] == 0
    finally:
        teacher.close()


def test_samples_keep_the_seed_truth_of_the_server_that_drew_them(tmp_path, hosted):
    url, seen = hosted
    limits = {"prices": {"input": 0, "output": 50_000}, "max_cost_usd": 1.0, "concurrency": 1}
    recipe = _recipe(tmp_path, url, True, **limits)  # 2 requests of n=3 journaled ($0.75 each), then the cost limit
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(CostLimit):
        sample.run(questions, recipe)
    BROKEN["vllm"] = "yes"  # the same base_url now answers as a vLLM server
    samples, stats = sample.run(questions, _recipe(tmp_path, url, True, **{**limits, "max_cost_usd": 100.0}))
    assert stats.extra["journal_hits"] == 2
    assert (samples["regenerable"] == False).sum() == 2 * 3  # noqa: E712 - the journaled ones, drawn by the other
    assert samples["regenerable"].is_null().sum() == 3 * 3


def test_a_journaled_answer_that_cannot_be_read_is_asked_again(tmp_path, hosted):
    url, seen = hosted
    limits = {"prices": {"input": 0, "output": 100_000}, "max_cost_usd": 1.0, "concurrency": 1}
    recipe = _recipe(tmp_path, url, False, **limits)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(CostLimit):
        sample.run(questions, recipe)
    segment = next((recipe.run_dir / "journal").glob("*.jsonl"))
    first, second = segment.read_text().splitlines()
    segment.write_text(json.dumps({**json.loads(first), "response": {"choices": [{}]}}) + "\n" + second + "\n")
    samples, stats = sample.run(questions, _recipe(tmp_path, url, False, **{**limits, "max_cost_usd": 100.0}))
    assert samples.height == 15 and (samples["finish_reason"] == "stop").all()
    assert stats.extra["usage"]["requests"] == 14 and len(seen) == 2 + 14  # the unreadable one bought again


def test_an_answer_stage_given_up_is_asked_again_and_its_rationale_comes_from_the_journal(tmp_path, hosted,
                                                                                         monkeypatch):
    url, seen = hosted
    monkeypatch.setattr(transport, "BACKOFF_S", 0.01)
    BROKEN["flaky"] = "yes"
    questions = ["FLAKY what is 1 + 1?", *(f"What is {i} + 4?" for i in range(8))]
    recipe = _recipe(tmp_path, url, True, questions, concurrency=2, max_retries=1, retry_budget_s=30)
    recipe.prompt.two_stage = True
    qs = tasks.run(recipe.tasks, recipe.base_dir)
    first, _ = sample.run(qs, recipe)
    flaky = qs.filter(pl.col("question").str.contains("FLAKY"))["qid"][0]
    failed = first.filter(pl.col("qid") == flaky)
    assert (failed["finish_reason"] == "error").all()
    assert failed["error"].str.starts_with("answer stage: gave up after 2 attempts").all()
    BROKEN.clear()
    asked = len(seen)
    again, stats = sample.run(qs, recipe)
    assert again.filter(pl.col("qid") == flaky)["answer_completion"].is_not_null().all()
    assert (again["finish_reason"] != "error").all()
    sent = seen[asked:]
    assert len(sent) == 3 and all("Therefore" in b["prompt"] for b in sent)  # only the answers: rationales replayed


def test_ctrl_c_while_the_server_is_still_down_at_start_is_felt_at_once(tmp_path, hosted):
    url, _ = hosted
    BROKEN["down"] = "yes"
    teacher = make_teacher(TeacherSetup.of(_recipe(tmp_path, url, True, retry_budget_s=60)))
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            teacher.start()  # /models answers 503: the gate waits for the server, up to retry_budget_s
    finally:
        timer.cancel()
        teacher.close()
    assert time.monotonic() - t0 < 3


def test_lone_surrogates_in_a_finish_reason_or_a_refusal_are_written_replaced(tmp_path, hosted):
    url, _ = hosted
    BROKEN["surrogate"] = "yes"
    recipe = _recipe(tmp_path, url, True, ["What is 3 + 4?", f"{POISON} what is 1 + 1?"])
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    samples, _ = sample.run(questions, recipe)
    assert samples.height == 6
    assert set(samples["finish_reason"]) == {"stop\ufffd\ufffd\ufffd", "error"}  # its three bytes replaced
    assert samples.filter(pl.col("finish_reason") == "error")["error"].str.contains("too long \ufffd").all()


def test_the_cost_limit_reaches_requests_waiting_for_the_rate_limit_at_once(tmp_path, hosted):
    url, seen = hosted
    limits = {"prices": {"input": 0, "output": 100_000}, "max_cost_usd": 0.5, "concurrency": 4, "rpm": 12}
    recipe = _recipe(tmp_path, url, False, **limits)  # one request every 5 s; the first one reaches the limit
    t0 = time.monotonic()
    with pytest.raises(CostLimit):
        sample.run(tasks.run(recipe.tasks, recipe.base_dir), recipe)
    assert len(seen) == 1 and time.monotonic() - t0 < 4
