"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an OpenAI-compatible server, driven by a script of faults.

The proxy (aiohttp, on its own event loop in a daemon thread) lives in the test process while the build runs in a
subprocess against `proxy.url`. Every POST gets a number (1, 2, ... since the script was last set) and a time (s
since the first POST after that); the first fault matching either decides its fate, else it is forwarded:

    Fault("429", requests=(1, 30), retry_after=1)   answered 429, with Retry-After: 1 (None: no header)
    Fault("500", ...), Fault("503", ...)            answered 500 / 503 with an OpenAI-style error body
    Fault("slow", window=(5, 10), delay_s=3)        answered delay_s later (forwarded after the wait)
    Fault("drop", ..., when="before")               connection closed, nothing forwarded
    Fault("drop", ..., when="after")                forwarded (the server did the work), connection closed unanswered
    Fault("outage", window=(0, 30), after=150, mode=...)
                                                    every request for 30 s from the arrival of request 150 (`after`:
                                                    a window's clock starts there, not at the first request):
                                                    "503", "close" (accepted, closed), or "refuse" (the listening
                                                    socket is shut: connection refused, so the proxy sees nothing)
    Fault("poison", marker="XYZ")                   any request whose body contains XYZ: HTTP 400, "This model's
                                                    maximum context length is ..." (no range: always)

A request *completes* when the upstream answered it 200 and that answer was handed to the client on a connection
still open. `completed` counts completions per sha256 of the request body; `completed_twice()` lists the bodies
that completed more than once (a request paid twice). `hold_after(k)` stops handing answers out once k requests
completed (the rest wait, unanswered, until `release()` or the client goes away): a test can then kill the client
knowing exactly which answers it had received. `totals` counts what was injected per fault kind; `log` holds one
entry per POST.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

CONTEXT_ERROR = ("This model's maximum context length is 1024 tokens. However, you requested 4117 tokens (4101 in "
                 "the messages, 16 in the completion). Please reduce the length of the messages or completion.")


@dataclass
class Fault:
    kind: str  # 429, 500, 503, slow, drop, outage, poison
    requests: tuple[int, int] | None = None  # request numbers, first..last inclusive
    window: tuple[float, float] | None = None  # seconds since the first request, [start, end)
    retry_after: float | None = None  # 429: the Retry-After header
    delay_s: float = 0.0  # slow
    when: str = "before"  # drop: before or after forwarding
    mode: str = "503"  # outage: 503, close or refuse
    marker: str | None = None  # poison
    after: int | None = None  # the window's clock starts when this request number arrives
    origin: float | None = field(default=None, init=False)  # that moment, s since the first request

    def matches(self, n: int, t: float, body: bytes) -> bool:
        if self.kind == "poison":
            return self.marker is not None and self.marker.encode() in body
        return bool((self.requests and self.requests[0] <= n <= self.requests[1]) or self.open_at(t))

    def open_at(self, t: float) -> bool:
        """Whether the window is open `t` s after the first request (or after request `after`, once it came)."""
        if self.window is None or (self.after is not None and self.origin is None):
            return False
        return self.window[0] <= t - (self.origin or 0.0) < self.window[1]


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status, headers=headers)


class FaultProxy:
    """`with FaultProxy(upstream_base_url, faults) as proxy:` point the client at `proxy.url` (see the module)."""

    def __init__(self, upstream: str, faults: Sequence[Fault] = ()) -> None:
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.lock = threading.Lock()
        self.completed: Counter[str] = Counter()  # body sha256 -> completions (all scripts, all runs)
        self.bodies: dict[str, dict[str, Any]] = {}  # body sha256 -> the request body (parsed)
        self.totals: Counter[str] = Counter()  # fault kind (and "forwarded", "held") -> requests
        self.log: list[dict[str, Any]] = []
        self.set_faults(faults)
        self._hold_at: int | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fault-proxy")
        self._site: web.TCPSite | None = None
        self.port = 0
        self._refusing = False

    # ---------------------------------------------------------------- control (any thread)
    def set_faults(self, faults: Sequence[Fault]) -> None:
        """A new script; request numbers and the clock start again (the counts of completions do not)."""
        with self.lock:
            self.faults, self.n, self.t0 = list(faults), 0, None

    def hold_after(self, k: int | None) -> None:
        """Hand out no answer once `k` requests completed in all (None: no hold)."""
        with self.lock:
            self._hold_at = k
        self._call(self._wake)

    def release(self) -> None:
        self.hold_after(None)

    @property
    def completed_total(self) -> int:
        with self.lock:
            return sum(self.completed.values())

    def completed_twice(self) -> dict[str, int]:
        with self.lock:
            return {k: c for k, c in self.completed.items() if c > 1}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> FaultProxy:
        logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # dropped connections are the point here
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _call(self, fn: Any) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(fn)

    async def _start(self) -> None:
        self._gate = asyncio.Event()
        self._gate.set()
        self.session = ClientSession(timeout=ClientTimeout(total=600))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # a client that goes away cancels its handler (a held or slow answer is then never handed out)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2)
        await self.runner.setup()
        await self._listen()
        self._watch = asyncio.create_task(self._outages())

    async def _listen(self) -> None:
        self._site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - port 0: the one bound

    async def _stop(self) -> None:
        self._watch.cancel()
        self._gate.set()
        await self.runner.cleanup()
        await self.session.close()

    def _wake(self) -> None:
        self._gate.set()

    async def _outages(self) -> None:
        """Shut the listening socket while a `refuse` outage's window is open (checked every 50 ms)."""
        while True:
            await asyncio.sleep(0.05)
            with self.lock:
                t = time.monotonic() - self.t0 if self.t0 is not None else -1.0
                down = any(f.kind == "outage" and f.mode == "refuse" and f.open_at(t) for f in self.faults)
            if down and not self._refusing:
                self._refusing = True
                await self._site.stop()
            elif not down and self._refusing:
                self._refusing = False
                await self._listen()

    # ---------------------------------------------------------------- requests
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method != "POST":
            return await self._forward(request, body)
        key = hashlib.sha256(body).hexdigest()
        with self.lock:
            now = time.monotonic()
            self.t0 = now if self.t0 is None else self.t0
            self.n += 1
            n, t = self.n, now - self.t0
            for f in self.faults:
                if f.after is not None and f.origin is None and n >= f.after:
                    f.origin = t  # seconds since the first request
            fault = next((f for f in self.faults if f.matches(n, t, body)), None)
            kind = fault.kind if fault else "forwarded"
            self.totals[kind] += 1
            entry = {"n": n, "t": round(t, 3), "path": request.path, "key": key, "fault": kind, "status": None,
                     "completed": False}
            self.log.append(entry)
        if fault is None or fault.kind == "slow" or (fault.kind == "drop" and fault.when == "after"):
            if fault and fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
            resp = await self._forward(request, body)
            entry["status"] = resp.status
            if fault and fault.kind == "drop":
                return self._drop(request)
            if resp.status == 200:
                return await self._deliver(request, resp, key, body, entry)
            return resp
        if fault.kind == "drop" or (fault.kind == "outage" and fault.mode in ("close", "refuse")):
            return self._drop(request)
        if fault.kind == "poison":
            entry["status"] = 400
            return _error(400, CONTEXT_ERROR, "BadRequestError")
        status = 503 if fault.kind == "outage" else int(fault.kind)
        entry["status"] = status
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
        return _error(status, f"injected {fault.kind}", "ServiceUnavailableError", headers)

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        try:
            async with self.session.request(request.method, self.upstream + request.path_qs, data=body,
                                            headers=headers) as up:
                return web.Response(status=up.status, body=await up.read(), content_type="application/json")
        except (OSError, asyncio.TimeoutError) as exc:
            return _error(502, f"upstream: {exc!r}", "BadGateway")

    async def _deliver(self, request: web.Request, resp: web.Response, key: str, body: bytes,
                       entry: dict[str, Any]) -> web.StreamResponse:
        """Hand a 200 out (counted as a completion), unless a hold is on: then wait until it is lifted."""
        while True:
            with self.lock:
                held = self._hold_at is not None and sum(self.completed.values()) >= self._hold_at
                if not held:
                    if request.transport is None or request.transport.is_closing():
                        return resp  # the client went away: not handed out
                    self.completed[key] += 1
                    self.bodies.setdefault(key, json.loads(body))
                    entry["completed"] = True
                    return resp
                self._gate.clear()
                if not entry.get("held"):
                    entry["held"] = True
                    self.totals["held"] += 1
            await self._gate.wait()  # cancelled when the client disconnects (handler_cancellation)

    def _drop(self, request: web.Request) -> web.Response:
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing is written: the client sees the connection close
