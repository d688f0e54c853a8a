"""HTTP to a served or hosted teacher that survives real traffic: one shared gate in front of every request.

- Rate limits: requests and tokens per minute from the recipe (`teacher.rpm`, `teacher.tpm`, leaky buckets from
  aiolimiter), tightened by the provider's `x-ratelimit-limit-*` headers; `x-ratelimit-remaining-* = 0` pauses
  every request until the header's reset.
- Adaptive concurrency: at most `teacher.concurrency` requests in flight, halved on 429/503 (at most once a second)
  and grown back by one after a window of successes (AIMD).
- A circuit breaker: a failure (429, 5xx, timeout, refused or dropped connection) pauses every request for a
  backoff (Retry-After when the server sends one, else exponential with jitter up to `BACKOFF_MAX_S`); after the
  pause one request probes, the rest wait for it. While nothing succeeds for `teacher.retry_budget_s`, the run stops
  with an error saying so; a request that keeps failing while the server answers others is given up after
  `teacher.max_retries` retries and reported like a refused one.
- Refused requests: a 4xx other than 401/403/404 (credentials, model) and 408/409/429 (transient) is the request's
  own fault (a prompt over the context limit, a content filter): `post` returns it as `Refused` with the server's
  message, so the sample records it and the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from builder.errors import EngineError
from builder.teachers.base import GAVE_UP

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
OVERLOAD_STATUS = frozenset({429, 503})
FATAL_STATUS = frozenset({401, 402, 403, 404})  # credentials, credit, model or endpoint: no prompt's fault
BACKOFF_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 120.0
PROBE_POLL_S = 0.05


@dataclass(frozen=True)
class Refused:
    """A request the server refused for its own content: the status and the server's message."""

    status: int
    message: str


class AdaptiveLimit:
    """An asyncio semaphore whose size follows the server: halved on overload, grown by one per window of
    successes, between 1 and `ceiling`."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = self.limit = ceiling
        self.active = 0
        self._ok = 0
        self._last_cut = 0.0
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.active < self.limit)
            self.active += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify_all()

    def overloaded(self) -> None:
        now = time.monotonic()
        if now - self._last_cut >= 1.0:
            self.limit, self._ok, self._last_cut = max(1, self.limit // 2), 0, now
            log.info("teacher overloaded: concurrency now %d", self.limit)

    def succeeded(self) -> None:
        self._ok += 1
        if self.limit < self.ceiling and self._ok >= self.limit:
            self.limit, self._ok = self.limit + 1, 0


def parse_duration(value: str | None) -> float | None:
    """Seconds of a rate-limit reset header: "1s", "6m0s", "20ms", "0.5", "1h2m"."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value.strip())
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


class Transport:
    """POST JSON to `base_url` through the shared gate; made and used inside one event loop."""

    def __init__(self, base_url: str, *, concurrency: int, timeout_s: float, retry_budget_s: float,
                 max_retries: int, rpm: int | None, tpm: int | None, headers: Callable[[], dict[str, str]],
                 hint: Callable[[int, dict[str, Any], str], str] = lambda status, body, text: "") -> None:
        import httpx

        self.base_url, self.timeout_s = base_url, timeout_s
        self.retry_budget_s, self.max_retries = retry_budget_s, max_retries
        self.headers, self.hint = headers, hint
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s),
                                        limits=httpx.Limits(max_connections=concurrency))
        self.limit = AdaptiveLimit(concurrency)
        self.rpm: Any = None
        self.tpm: Any = None
        self.rpm_limit = self.tpm_limit = 0
        for attr, limit in (("rpm", rpm), ("tpm", tpm)):
            if limit:
                self._bucket(attr, limit)
        self.sent = self.retries = 0
        self._pause_until = 0.0
        self._streak = 0
        self._down_since: float | None = None
        self._last_success = 0.0
        self._probing = False
        self._epoch = 0  # a new pause begins a new epoch
        self._halt = asyncio.Event()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get(self, path: str) -> dict[str, Any] | Refused:
        """GET through the same gate (a server still starting is waited for); any 4xx but a bad key is Refused."""
        return await self._send("GET", path, None, tokens=0, fatal=frozenset({401, 403}))

    # ---------------------------------------------------------------- the gate
    async def _open(self) -> bool:
        """Wait until requests may go; True when this one is the probe of a server that was failing."""
        while True:
            wait = self._pause_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif not self._streak:
                return False
            elif not self._probing:
                self._probing = True
                return True
            else:
                await asyncio.sleep(PROBE_POLL_S)

    def _succeeded(self) -> None:
        if self._streak:
            log.info("teacher %s answers again after %d failure(s)", self.base_url, self._streak)
        self._streak, self._down_since, self._last_success = 0, None, time.monotonic()
        self.limit.succeeded()

    def _failed(self, retry_after: float | None, overload: bool, epoch: int) -> None:
        """One more backoff step, unless the request was sent before the last pause began: a burst of requests in
        flight together failing together is one failure of the server, not one per request."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if overload:
            self.limit.overloaded()
        if epoch == self._epoch:
            self._epoch += 1
            self._streak += 1
        delay = retry_after if retry_after is not None else (
            min(BACKOFF_MAX_S, BACKOFF_S * 2 ** min(self._streak - 1, 16)) * (0.5 + random.random() / 2))
        self._pause_until = max(self._pause_until, now + delay)

    def halt(self) -> None:
        """Wake every request waiting for its rate-limit tokens, so each checks `ready` now (a cost limit reached)."""
        self._halt.set()

    async def _unless_halted(self, wait: Coroutine[Any, Any, Any]) -> None:
        task, halted = asyncio.ensure_future(wait), asyncio.ensure_future(self._halt.wait())
        try:
            await asyncio.wait({task, halted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, halted):
                t.cancel()

    def _bucket(self, attr: str, per_minute: int) -> None:
        """A leaky bucket that lets `per_minute` through in a minute, evenly: one request every 60/rpm s; tokens six
        seconds' worth at a time (a minute's burst at once is what the provider's own limiter answers 429 to)."""
        from aiolimiter import AsyncLimiter

        setattr(self, attr, AsyncLimiter(1, 60 / per_minute) if attr == "rpm" else AsyncLimiter(per_minute / 10, 6))
        setattr(self, f"{attr}_limit", per_minute)

    async def _take_tokens(self, tokens: int) -> None:
        """A request's tokens from the tpm bucket, in pieces no larger than it holds (so none is undercounted)."""
        left = float(tokens)
        while left > 0 and self.tpm is not None:
            piece = min(left, self.tpm.max_rate)
            await self.tpm.acquire(piece)
            left -= piece

    def _limits_from(self, headers: Any) -> None:
        """The provider's own limits: tighten the buckets, pause every request while a window is spent."""
        for kind, attr in (("requests", "rpm"), ("tokens", "tpm")):
            try:
                limit = int(headers.get(f"x-ratelimit-limit-{kind}") or 0)
                remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            except ValueError:
                continue
            current = getattr(self, f"{attr}_limit")
            if limit > 0 and (not current or limit < current):
                self._bucket(attr, limit)
            if remaining is not None and remaining.strip() == "0":
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self._pause_until = max(self._pause_until, time.monotonic() + min(reset, RETRY_AFTER_MAX_S))

    # ---------------------------------------------------------------- a request
    async def post(self, path: str, body: dict[str, Any], *, tokens: int, ready: Callable[[], None] = lambda: None,
                   parse: Callable[[dict[str, Any]], Any] = lambda answer: answer,
                   unreadable: Callable[[dict[str, Any]], None] = lambda answer: None) -> Any:
        """The JSON answer as `parse` reads it, or Refused; raises EngineError for bad credentials, credit or model,
        or once the server has failed every request for `retry_budget_s`. `ready` runs just before each send (a cost
        limit raises there: requests queued at the gate are checked when they go, not when they were queued); an
        answer `parse` refuses (ValueError) is a failed attempt, asked again, never returned (`unreadable` sees it:
        the provider bills it all the same)."""
        return await self._send("POST", path, body, tokens=tokens, ready=ready, parse=parse, unreadable=unreadable)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, *, tokens: int,
                    ready: Callable[[], None] = lambda: None, fatal: frozenset[int] = FATAL_STATUS,
                    parse: Callable[[dict[str, Any]], Any] = lambda answer: answer,
                    unreadable: Callable[[dict[str, Any]], None] = lambda answer: None) -> Any:
        import httpx

        url = f"{self.base_url}{path}"
        started, attempts = time.monotonic(), 0
        while True:
            retry_after, overload, probe = None, False, False
            try:
                async with self.limit:
                    ready()  # a cost limit reached while this request queued: it learns now, not after the buckets
                    if self.rpm and method == "POST":  # generation requests: what the provider's limit counts
                        await self._unless_halted(self.rpm.acquire())
                    await self._unless_halted(self._take_tokens(tokens))
                    ready()
                    probe = await self._open()  # last: a request that waited for its slot still waits out a pause
                    ready()
                    epoch = self._epoch
                    self.sent += method == "POST"
                    self.retries += attempts > 0
                    try:
                        resp = await self.client.request(method, url, json=body, headers=self.headers())
                    except httpx.TimeoutException:
                        last = f"timed out after {self.timeout_s:g} s"
                    except httpx.TransportError as exc:
                        last = utf8(f"{type(exc).__name__}: {exc}".rstrip(": "))
                    else:
                        self._limits_from(resp.headers)
                        last = utf8(f"HTTP {resp.status_code}: {resp.text[:500]}")
                        if resp.status_code < 300:
                            try:
                                answer = resp.json()
                            except ValueError:  # a proxy's page, a body cut short: not an answer, ask again
                                answer = None
                            last = f"HTTP {resp.status_code} without a JSON object: {resp.text[:200]!r}"
                            if isinstance(answer, dict):
                                try:
                                    parsed = parse(answer)
                                except ValueError as exc:
                                    last = f"HTTP {resp.status_code} with an answer that cannot be read: {exc}"
                                    self._last_success = time.monotonic()  # up, answering: give it up in time
                                    unreadable(answer)
                                else:
                                    self._succeeded()
                                    return parsed
                        hint = "" if resp.status_code < 300 else self.hint(resp.status_code, body or {}, resp.text)
                        if 300 <= resp.status_code < 400:
                            hint = (f" (it redirects to {resp.headers.get('location')!r}: set teacher.base_url to the "
                                    "address that answers)")
                        if resp.status_code in fatal or hint:
                            raise EngineError(f"teacher {url}: {last}{hint}")
                        if resp.status_code >= 300 and resp.status_code not in RETRY_STATUS:
                            self._succeeded()  # the server is up: it read the request and refused this one
                            return Refused(resp.status_code, _message(resp))
                        retry_after = _retry_after(resp.headers.get("retry-after"))
                        overload = resp.status_code in OVERLOAD_STATUS
            finally:
                if probe:
                    self._probing = False
            attempts += 1
            self._failed(retry_after, overload, epoch)
            log.debug("teacher %s: %s (attempt %d)", url, last, attempts)
            down = time.monotonic() - (self._down_since or time.monotonic())
            if down >= self.retry_budget_s:
                raise EngineError(
                    f"teacher {url}: every request failed for {down:.0f} s (last: {last}); the finished requests "
                    "are kept in the run's journal and shards: rerun to resume, or raise teacher.retry_budget_s")
            if attempts > self.max_retries and not overload and self._last_success > started:
                # a request that keeps failing while others pass is the problem; a rate limit or an overload is not
                return Refused(0, f"{GAVE_UP}{attempts} attempts while the server answered others: {last}")


def utf8(text: str) -> str:
    """Text that UTF-8 (Parquet, the journal) can hold: a lone surrogate a server sent becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_MAX_S) if value else None
    except ValueError:
        return None


def _message(resp: Any) -> str:
    """The server's error message (OpenAI-style `{"error": {"message": ...}}`, vLLM's `{"message": ...}`)."""
    try:
        data = resp.json()
    except ValueError:
        return utf8(resp.text[:500])
    err = data.get("error", data) if isinstance(data, dict) else data
    msg = err.get("message") if isinstance(err, dict) else err
    return utf8(f"HTTP {resp.status_code}: {str(msg or resp.text)[:500]}")
