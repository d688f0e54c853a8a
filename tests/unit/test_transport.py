"""The HTTP gate of served and hosted teachers (`builder.teachers.transport`) against a real loopback HTTP server that
answers by a script: 429 storms, outages, Retry-After, refusals, bad credentials, a request that keeps failing, the
adaptive concurrency limit, the rpm bucket and the provider's x-ratelimit-* headers. Times are shrunk (BACKOFF_S and
BACKOFF_MAX_S patched) so the whole file runs in seconds; every request is counted and timed at the server."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("httpx")
pytest.importorskip("aiolimiter")

from builder.errors import EngineError  # noqa: E402
from builder.teachers import transport  # noqa: E402
from builder.teachers.transport import AdaptiveLimit, Refused, Transport, parse_duration  # noqa: E402

PATH = "/v1/chat/completions"
CONTEXT_ERROR = "This model's maximum context length is 1024 tokens. However, you requested 4117 tokens."


# ------------------------------------------------------------------ a scripted loopback server
@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list: JSON; str: text; None: {"ok": true, "i": the request's i}
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    drop: bool = False  # close the connection without an answer


@dataclass
class Hit:
    """One request (a POST, or a GET with body None) as the server saw it."""

    n: int  # 1, 2, ... in order of arrival
    t: float  # seconds since the first request
    at: float  # time.monotonic() at arrival (the same clock as the client's: one process)
    body: Any
    inflight: int  # requests arrived and not yet answered, this one included
    seen: Any = None  # what `on_arrival` returned
    status: int | None = None  # 0: dropped
    answered: float | None = None  # time.monotonic() just before the answer was written


class Server:
    def __init__(self, script: Callable[[Hit], Reply]) -> None:
        self.script = script
        self.hits: list[Hit] = []
        self.inflight = self.max_inflight = 0
        self.t0: float | None = None
        self.on_arrival: Callable[[Hit], Any] | None = None
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                owner._serve(self, raw)

            def do_GET(self) -> None:  # noqa: N802
                owner._serve(self, b"")

            def log_message(self, *args: object) -> None:
                pass

        class HTTPServer(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _serve(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        now = time.monotonic()
        with self._lock:
            if self.t0 is None:
                self.t0 = now
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            hit = Hit(n=len(self.hits) + 1, t=now - self.t0, at=now, body=json.loads(raw or b"null"),
                      inflight=self.inflight)
            if self.on_arrival is not None:
                hit.seen = self.on_arrival(hit)
            self.hits.append(hit)
        done = False
        try:
            reply = self.script(hit)
            if reply.delay:
                time.sleep(reply.delay)
            # no longer in flight before a byte of the answer leaves: the client cannot have seen it yet
            with self._lock:
                self.inflight -= 1
                hit.answered = time.monotonic()
            done = True
            if reply.drop:
                hit.status = 0
                h.close_connection = True
                return
            body = reply.body
            if body is None:
                body = {"ok": True, "i": (hit.body or {}).get("i")}
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            hit.status = reply.status
            h.send_response(reply.status)
            h.send_header("content-type", "text/plain" if isinstance(body, str) else "application/json")
            h.send_header("content-length", str(len(data)))
            for k, v in reply.headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:  # the client gave up (a timeout) before the answer
            pass
        finally:
            if not done:
                with self._lock:
                    self.inflight -= 1

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def first_tries(self) -> set[int]:
        """The hit numbers that are the first attempt of their request (requests carry a distinct "i")."""
        seen: set[Any] = set()
        first = set()
        for h in self.hits:
            if h.body["i"] not in seen:
                seen.add(h.body["i"])
                first.add(h.n)
        return first


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(script: Callable[[Hit], Reply]) -> Server:
        servers.append(Server(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """Backoffs of tens of milliseconds instead of seconds (the logic is the same; the test is quick)."""
    monkeypatch.setattr(transport, "BACKOFF_S", 0.05)
    monkeypatch.setattr(transport, "BACKOFF_MAX_S", 0.2)
    monkeypatch.setattr(transport, "PROBE_POLL_S", 0.01)


def make(url: str, **kw: Any) -> Transport:
    """A Transport (call it inside the coroutine: it belongs to that event loop)."""
    args: dict[str, Any] = dict(concurrency=8, timeout_s=5.0, retry_budget_s=10.0, max_retries=3, rpm=None, tpm=None,
                                headers=lambda: {"authorization": "Bearer test"})
    return Transport(url, **(args | kw))


def drive(work: Callable[[Transport], Coroutine[Any, Any, Any]], url: str, timeout: float = 25.0, **kw: Any) -> Any:
    """Run `work(transport)` on a fresh event loop, closing the transport after; a hang fails within `timeout`."""

    async def main() -> Any:
        tr = make(url, **kw)
        try:
            return await asyncio.wait_for(work(tr), timeout)
        finally:
            await tr.aclose()

    return asyncio.run(main())


def post_many(n: int, body: Callable[[int], dict[str, Any]] = lambda i: {"i": i}):
    async def work(tr: Transport) -> list[Any]:
        return list(await asyncio.gather(*(tr.post(PATH, body(i), tokens=10) for i in range(n)),
                                         return_exceptions=True))
    return work


def ok(i: int) -> dict[str, Any]:
    return {"ok": True, "i": i}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ failures that pass
def test_a_window_of_429s_longer_than_max_retries_allows_is_survived(serve, monkeypatch):
    """20 concurrent requests, 3 s of 429 without Retry-After: with max_retries=1 an attempt-counted give-up would end
    them (the old 12.5 s give-up, shrunk); the wall-clock retry budget (10 s) keeps them all, and each returns the
    server's 200 body."""
    monkeypatch.setattr(transport, "BACKOFF_MAX_S", 0.5)
    srv = serve(lambda h: Reply(429, {"error": {"message": "Rate limit reached"}}) if h.t < 3.0 else Reply())
    t0 = time.monotonic()
    results = drive(post_many(20), srv.url, concurrency=20, retry_budget_s=10.0, max_retries=1)
    assert results == [ok(i) for i in range(20)]
    statuses = Counter(h.status for h in srv.hits)
    assert statuses[200] == 20
    assert max(h.t for h in srv.hits if h.status == 429) > 2.0  # the storm really lasted ~3 s
    attempts = Counter(h.body["i"] for h in srv.hits)
    assert max(attempts.values()) > 1 + 1  # some request failed more than max_retries + 1 times and still came back
    assert time.monotonic() - t0 < 8


@pytest.mark.parametrize("failure", ["502", "drop"])
def test_while_the_server_is_down_one_probe_at_a_time_reaches_it(serve, monkeypatch, failure):
    """An outage of 1.5 s (502, or the connection closed without an answer) against 20 requests in flight: after the
    first wave the server sees one probe per pause (each pause >= 0.1 s here), never 20 x attempts."""
    monkeypatch.setattr(transport, "BACKOFF_S", 0.2)
    monkeypatch.setattr(transport, "BACKOFF_MAX_S", 0.2)  # every pause 0.1..0.2 s
    outage = 1.5

    def script(h: Hit) -> Reply:
        if h.t >= outage:
            return Reply()
        return Reply(drop=True) if failure == "drop" else Reply(502, "<html>502 Bad Gateway</html>")

    srv = serve(script)
    results = drive(post_many(20), srv.url, concurrency=20)
    assert results == [ok(i) for i in range(20)]
    first = srv.first_tries()
    during = [h for h in srv.hits if h.t < outage]
    probes = [h for h in during if h.n not in first]
    assert len(first) == 20
    assert len(probes) <= outage / 0.1 + 1, len(probes)  # without the breaker: ~20 per pause
    assert all(h.inflight == 1 for h in probes), [h.inflight for h in probes]
    gaps = [b.at - a.answered for a, b in zip(probes, probes[1:], strict=False)]
    assert all(g >= 0.1 - 0.005 for g in gaps), gaps  # each after a full pause from the last failure


def test_a_burst_failing_together_is_one_backoff_step(serve, monkeypatch):
    """20 requests in flight together all get 502: that is one failure of the server, so the first probe goes after
    the first backoff step (0.1..0.2 s here), not after 20 doublings (BACKOFF_MAX_S, 2.5..5 s here)."""
    monkeypatch.setattr(transport, "BACKOFF_S", 0.2)
    monkeypatch.setattr(transport, "BACKOFF_MAX_S", 5.0)
    srv = serve(lambda h: Reply(502, "bad gateway") if h.n <= 20 else Reply())
    results = drive(post_many(20), srv.url, concurrency=20)
    assert results == [ok(i) for i in range(20)]
    wave = [h for h in srv.hits if h.n <= 20]
    probe = next(h for h in srv.hits if h.n == 21)
    assert 0.1 - 0.005 <= probe.at - max(h.answered for h in wave) < 0.5, probe.at - max(h.answered for h in wave)


def test_requests_queued_behind_the_concurrency_limit_wait_out_a_pause_too(serve, monkeypatch):
    """The breaker's promise holds for requests waiting for a slot: concurrency 2, 40 requests, the server down for
    1 s: after the first two fail, every request pauses and one probes at a time, so the server sees at most
    2 + (1 s / 0.1 s pauses) + slack requests during the outage, not one more per queued request."""
    monkeypatch.setattr(transport, "BACKOFF_S", 0.2)
    monkeypatch.setattr(transport, "BACKOFF_MAX_S", 0.2)
    outage = 1.0
    srv = serve(lambda h: Reply(502, "bad gateway") if h.t < outage else Reply())
    results = drive(post_many(40), srv.url, concurrency=2)
    assert results == [ok(i) for i in range(40)]
    during = [h for h in srv.hits if h.t < outage]
    assert len(during) <= 2 + outage / 0.1 + 2, (
        f"{len(during)} requests reached the server while it was down: requests queued for a concurrency slot were "
        "sent without waiting for the breaker's pause")


def test_slow_answers_time_out_and_are_retried(serve):
    srv = serve(lambda h: Reply(delay=0.6) if h.t < 0.5 else Reply())
    results = drive(post_many(4), srv.url, concurrency=4, timeout_s=0.2)
    assert results == [ok(i) for i in range(4)]
    assert all(n >= 2 for n in Counter(h.body["i"] for h in srv.hits).values())  # each timed out at least once
    assert sorted(h.body["i"] for h in srv.hits if h.t >= 0.5) == [0, 1, 2, 3]  # then went through once


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(serve, status):
    """The first three requests get Retry-After: 1 (BACKOFF_MAX_S is 0.2 s here): no request reaches the server
    until a full second after those answers, then all succeed."""
    srv = serve(lambda h: Reply(status, {"error": {"message": "busy"}}, headers={"Retry-After": "1"})
                if h.n <= 3 else Reply())
    t0 = time.monotonic()
    results = drive(post_many(3), srv.url, concurrency=3)
    assert results == [ok(i) for i in range(3)]
    refused = [h for h in srv.hits if h.status == status]
    later = [h for h in srv.hits if h.status == 200]
    assert len(refused) == 3 and len(later) == 3
    resume = max(h.answered for h in refused) + 1.0
    assert min(h.at for h in later) >= resume - 0.002, min(h.at for h in later) - resume
    assert time.monotonic() - t0 < 2.0  # and no much longer (a probe, then the rest)


def test_a_200_that_is_not_a_json_object_is_asked_again(serve):
    """A proxy's HTML page or a body cut short with status 200 is no answer: the request is sent again."""
    srv = serve(lambda h: Reply(200, "<html>upstream connect error</html>") if h.n == 1 else
                Reply(200, [1, 2]) if h.n == 2 else Reply())
    assert drive(post_many(1), srv.url, concurrency=1) == [ok(0)]
    assert len(srv.hits) == 3


def test_get_goes_through_the_same_gate(serve):
    """GET /models while the server is still starting (503, then 200) waits for it like a POST."""
    srv = serve(lambda h: Reply(503, "starting") if h.t < 0.3 else Reply(200, {"data": [{"id": "m"}]}))

    async def work(tr: Transport) -> Any:
        return await tr.get("/v1/models")

    assert drive(work, srv.url) == {"data": [{"id": "m"}]}
    assert len(srv.hits) >= 2 and srv.hits[-1].status == 200


# ------------------------------------------------------------------ failures that end
def test_a_redirect_is_a_wrong_base_url(serve):
    srv = serve(lambda h: Reply(301, "moved", headers={"location": "https://api.example.com/v1/chat/completions"}))
    with pytest.raises(EngineError, match=r"HTTP 301.*redirects to 'https://api.example.com/v1/chat/completions'.*"
                                          r"teacher.base_url"):
        drive(lambda tr: tr.post(PATH, {"i": 0}, tokens=1), srv.url)
    assert len(srv.hits) == 1



@pytest.mark.parametrize("failure", ["503", "refused", "timeout"])
def test_the_retry_budget_ends_the_run_naming_the_last_failure(serve, failure):
    """Nothing succeeds for retry_budget_s (1 s): every request raises EngineError saying for how long every request
    failed, what the last failure was and which setting to raise."""
    if failure == "refused":
        url, srv = f"http://127.0.0.1:{free_port()}", None
    else:
        srv = serve(lambda h: Reply(503, {"error": {"message": "overloaded"}}) if failure == "503"
                    else Reply(delay=0.5))
        url = srv.url
    first_error: list[float] = []

    async def work(tr: Transport) -> list[Any]:
        async def one(i: int) -> Any:
            try:
                return await tr.post(PATH, {"i": i}, tokens=10)
            except EngineError:
                first_error.append(time.monotonic())
                raise
        return list(await asyncio.gather(*(one(i) for i in range(5)), return_exceptions=True))

    t0 = time.monotonic()
    results = drive(work, url, concurrency=5, retry_budget_s=1.0, max_retries=1, timeout_s=0.15)
    elapsed = min(first_error) - t0
    assert all(isinstance(r, EngineError) for r in results), results
    last = {"503": "HTTP 503", "refused": "ConnectError", "timeout": "timed out after 0.15 s"}[failure]
    down = []
    for r in results:
        msg = str(r)
        m = re.search(r"every request failed for (\d+) s", msg)
        assert m, msg
        down.append(int(m.group(1)))
        assert f"(last: {last}" in msg, msg
        assert "retry_budget_s" in msg, msg
    assert min(down) in (1, 2), down  # the first to give up says the budget; the others after it more
    assert 1.0 <= elapsed < 2.0, elapsed  # the budget, then at most one more attempt and pause
    if srv is not None:
        assert len(srv.hits) <= 5 + 1.5 / 0.025 + 5  # one probe per pause after the first wave


@pytest.mark.parametrize(("answer", "message"), [
    ({"error": {"message": CONTEXT_ERROR, "type": "invalid_request_error"}}, f"HTTP 400: {CONTEXT_ERROR}"),  # OpenAI
    ({"object": "error", "message": CONTEXT_ERROR, "type": "BadRequestError"}, f"HTTP 400: {CONTEXT_ERROR}"),  # vLLM
    (f"Bad Request: {CONTEXT_ERROR}", f"Bad Request: {CONTEXT_ERROR}"),
])
def test_a_400_is_refused_with_the_servers_message_and_the_run_goes_on(serve, monkeypatch, answer, message):
    monkeypatch.setattr(transport, "BACKOFF_S", 2.0)  # were a refusal a failure, the next request would wait >= 1 s
    monkeypatch.setattr(transport, "BACKOFF_MAX_S", 2.0)
    srv = serve(lambda h: Reply(400, answer) if h.body.get("poison") else Reply())

    async def work(tr: Transport) -> list[Any]:
        out = []
        for i in range(5):  # one after another: the refusal must not pause or stop the next ones
            out.append(await tr.post(PATH, {"i": i, "poison": i == 1}, tokens=10))
        return out

    t0 = time.monotonic()
    results = drive(work, srv.url)
    assert results[1] == Refused(400, message)
    assert [r for i, r in enumerate(results) if i != 1] == [ok(i) for i in (0, 2, 3, 4)]
    assert len(srv.hits) == 5  # the refused request was sent once, never retried
    assert time.monotonic() - t0 < 1.0


def test_a_422_is_refused_too_but_408_409_are_retried(serve):
    tried: set[int] = set()

    def script(h: Hit) -> Reply:
        kind = h.body["kind"]
        if kind == 422:
            return Reply(422, {"error": {"message": "content filter"}})
        if kind in (408, 409) and kind not in tried:  # the first attempt of each
            tried.add(kind)
            return Reply(kind, {"error": {"message": "again"}})
        return Reply()

    srv = serve(script)
    results = drive(post_many(3, lambda i: {"i": i, "kind": (422, 408, 409)[i]}), srv.url, concurrency=3)
    assert results == [Refused(422, "HTTP 422: content filter"), ok(1), ok(2)]
    assert Counter(h.body["kind"] for h in srv.hits) == {422: 1, 408: 2, 409: 2}


@pytest.mark.parametrize("status", [401, 403, 404])
def test_bad_credentials_or_model_raise_at_once_without_a_retry(serve, status):
    srv = serve(lambda h: Reply(status, {"error": {"message": "Incorrect API key provided"}}))
    t0 = time.monotonic()
    results = drive(post_many(3), srv.url, concurrency=3, retry_budget_s=10.0, max_retries=5)
    assert all(isinstance(r, EngineError) for r in results), results
    assert all(f"HTTP {status}" in str(r) and "Incorrect API key provided" in str(r) for r in results)
    assert len(srv.hits) == 3, [(h.n, h.status) for h in srv.hits]  # one each, no retry
    assert time.monotonic() - t0 < 2.0


def test_a_hint_turns_an_answer_into_an_error_that_says_what_to_do(serve):
    srv = serve(lambda h: Reply(400, {"error": {"message": "unknown parameter: seed"}}))

    def hint(status: int, body: dict[str, Any], text: str) -> str:
        return " (remove teacher.seed)" if "seed" in text else ""

    async def work(tr: Transport) -> Any:
        tr.hint = hint
        return await tr.post(PATH, {"i": 0}, tokens=1)

    with pytest.raises(EngineError, match=r"HTTP 400: .*unknown parameter: seed.* \(remove teacher.seed\)"):
        drive(work, srv.url)
    assert len(srv.hits) == 1


def test_a_request_that_keeps_failing_while_others_succeed_is_given_up_after_max_retries(serve):
    srv = serve(lambda h: Reply(500, {"error": {"message": "boom"}}) if h.body.get("bad") else Reply())
    max_retries = 2
    results = drive(post_many(12, lambda i: {"i": i, "bad": i == 5}), srv.url, concurrency=4,
                    max_retries=max_retries, retry_budget_s=10.0)
    bad = results[5]
    assert isinstance(bad, Refused) and bad.status == 0, bad
    assert f"gave up after {max_retries + 1} attempts" in bad.message and "HTTP 500" in bad.message, bad.message
    assert [r for i, r in enumerate(results) if i != 5] == [ok(i) for i in range(12) if i != 5]
    assert Counter(h.body["i"] for h in srv.hits)[5] == max_retries + 1


# ------------------------------------------------------------------ adaptive concurrency
def test_adaptive_limit_halves_at_most_once_a_second_and_grows_back_by_one_per_window(monkeypatch):
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(transport, "time", SimpleNamespace(monotonic=lambda: clock.now))
    lim = AdaptiveLimit(8)
    assert (lim.limit, lim.ceiling) == (8, 8)
    lim.overloaded()
    assert lim.limit == 4
    clock.now += 0.5
    lim.overloaded()
    assert lim.limit == 4  # within a second of the last cut: no second cut
    clock.now += 0.5
    lim.overloaded()
    assert lim.limit == 2
    clock.now += 1.0
    lim.overloaded()
    clock.now += 1.0
    lim.overloaded()
    assert lim.limit == 1  # never below one
    grown = []
    for _ in range(1 + 2 + 3 + 4 + 5 + 6 + 7 + 50):
        lim.succeeded()
        grown.append(lim.limit)
    # one success at 1 -> 2, two at 2 -> 3, ...: a window of `limit` successes per step
    assert grown[:10] == [2, 2, 3, 3, 3, 4, 4, 4, 4, 5]
    assert max(grown) == 8 and grown[-1] == 8  # never above the ceiling
    assert all(b - a in (0, 1) for a, b in zip(grown, grown[1:], strict=False))
    # a cut starts a new window
    clock.now += 1.0
    lim.overloaded()
    assert lim.limit == 4
    for _ in range(3):
        lim.succeeded()
    assert lim.limit == 4
    lim.succeeded()
    assert lim.limit == 5


def test_the_server_never_sees_more_in_flight_than_the_limit(serve):
    """Concurrency 8; the first 8 requests get 503 (the limit halves to 4), the rest succeed slowly: at every arrival
    the requests in flight at the server are within the limit, which grows back one by one to 8 and no further."""
    holder: dict[str, Transport] = {}
    srv = serve(lambda h: Reply(503, {"error": {"message": "overloaded"}}) if h.n <= 8 else Reply(delay=0.05))
    srv.on_arrival = lambda h: holder["tr"].limit.limit if "tr" in holder else None

    async def work(tr: Transport) -> list[Any]:
        holder["tr"] = tr
        return await post_many(40)(tr)

    results = drive(work, srv.url, concurrency=8)
    assert results == [ok(i) for i in range(40)]
    assert srv.max_inflight <= 8
    after = [h for h in srv.hits if h.n > 8]
    assert all(h.inflight <= h.seen for h in after), [(h.inflight, h.seen) for h in after]
    limits = [h.seen for h in after]
    assert limits[0] == 4 and max(limits) <= 8
    assert all(b - a in (0, 1) for a, b in zip(limits, limits[1:], strict=False)), limits  # grows by one at a time
    assert 4 in [h.inflight for h in after]  # the limit was used, not just respected
    assert holder["tr"].limit.limit == 8  # 32 successes: back to the ceiling (4 + 5 + 6 + 7 = 22 needed)


# ------------------------------------------------------------------ rate limits
def test_the_rpm_bucket_spaces_requests(serve):
    """rpm=120 is 2 requests a second: 6 requests take at least ~2.5 s (0, 0.5, ..., 2.5 s), never a burst. A bucket
    that lets `rpm` requests through at once and then refills at rpm/60 a second sends up to 2 x rpm requests in the
    first minute, over the provider's limit."""
    srv = serve(lambda h: Reply())
    t0 = time.monotonic()
    results = drive(post_many(6), srv.url, concurrency=6, rpm=120)
    assert results == [ok(i) for i in range(6)]
    arrivals = sorted(h.at for h in srv.hits)
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 2.0, f"6 requests at rpm=120 arrived within {spread:.3f} s"
    assert time.monotonic() - t0 < 6


@pytest.mark.parametrize(("limits", "tokens", "most"), [({"rpm": 60}, 1, 60), ({"tpm": 1000}, 100, 10)])
def test_the_buckets_hold_requests_back(serve, limits, tokens, most):
    """rpm=60 (or tpm=1000 at 100 tokens a request): in the first second no more than 60 (10) of 70 requests reach
    the server, however the bucket is shaped."""
    srv = serve(lambda h: Reply())

    async def work(tr: Transport) -> None:
        tasks = [asyncio.ensure_future(tr.post(PATH, {"i": i}, tokens=tokens)) for i in range(70)]
        await asyncio.sleep(1.0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    drive(work, srv.url, concurrency=16, **limits)
    assert 1 <= len(srv.hits) <= most, len(srv.hits)


def test_the_providers_limit_header_tightens_the_rpm_bucket_never_loosens_it(serve):
    srv = serve(lambda h: Reply(headers={"x-ratelimit-limit-requests": str(h.body["limit"]),
                                         "x-ratelimit-remaining-requests": "55"}))

    async def work(tr: Transport) -> list[float | None]:
        seen = []
        for limit in (60, 600, 30):
            await tr.post(PATH, {"i": 0, "limit": limit}, tokens=1)
            seen.append(tr.rpm_limit or None)
        return seen

    assert drive(work, srv.url) == [60, 60, 30]
    assert drive(work, srv.url, rpm=45) == [45, 45, 30]


@pytest.mark.parametrize(("kind", "reset", "pause"), [("requests", "1s", 1.0), ("tokens", "500ms", 0.5)])
def test_a_spent_rate_limit_window_pauses_every_request_until_its_reset(serve, kind, reset, pause):
    srv = serve(lambda h: Reply(headers={f"x-ratelimit-remaining-{kind}": "0", f"x-ratelimit-reset-{kind}": reset})
                if h.n == 1 else Reply())

    async def work(tr: Transport) -> list[Any]:
        first = await tr.post(PATH, {"i": 0}, tokens=10)
        rest = await asyncio.gather(*(tr.post(PATH, {"i": i}, tokens=10) for i in range(1, 6)))
        return [first, *rest]

    results = drive(work, srv.url)
    assert results == [ok(i) for i in range(6)]
    resume = srv.hits[0].answered + pause
    later = srv.hits[1:]
    assert min(h.at for h in later) >= resume - 0.002, min(h.at for h in later) - resume
    assert max(h.at for h in later) < resume + 0.5


@pytest.mark.parametrize(("value", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("0.5", 0.5), ("1h2m", 3720.0), ("17.5s", 17.5), ("2", 2.0),
    ("1m30s", 90.0), ("250ms", 0.25), (" 3s ", 3.0),
    ("", None), (None, None), ("soon", None), ("abc", None), ("ms", None), ("-", None),
])
def test_parse_duration(value, seconds):
    got = parse_duration(value)
    assert got == (pytest.approx(seconds) if seconds is not None else None), got
