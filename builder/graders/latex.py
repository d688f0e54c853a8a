"""LaTeX and expression answers through huggingface's math-verify, in worker processes.

The number grader reads plain numbers itself (vectorised); only answers left with LaTeX structure or an expression
(`\\sqrt{2}`, nested `\\frac`, `2^{10}`, `\\pi`) come here, each distinct string once. `evaluate` maps each string
to `(status, values)`: the numeric values math-verify parsed (an exact integer "1024", a rational "1/3", else 30
significant digits; several for a set such as "12 and 13"), and `status` None, `timeout` or `parse_error`.
The `math` grader (`builder.graders.math`) uses the same workers for math-verify's own comparison: `verify_pairs`
parses each distinct (gold, answer) pair and runs `verify` on it, and `parse_golds` checks golds when a `math` task
loads (the request forms are in `_mv_worker`).

Why worker processes: math-verify bounds its time with `signal.alarm`, which only works in a main thread, and by
default swallows errors into `[]` (a silent "wrong"). Each worker (`_mv_worker.py`, a plain script that imports
math-verify and nothing of ours) runs calls in its own main thread, so math-verify's timeout works there, and
reports errors. The parent still bounds every call, since a sympy call stuck in C ignores the alarm: a worker
silent for `timeout_s` + 2 s is killed, restarted, and its string graded `timeout`.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
from pathlib import Path

from builder.graders._common import PARSE_ERROR, TIMEOUT

log = logging.getLogger(__name__)

TIMEOUT_S = 5
"""Seconds math-verify may spend on one string (its own alarm, in the worker); the parent waits 2 s longer."""
GRACE_S = 2
IMPORT_S = 60
"""Seconds a new worker may take to import math-verify and sympy (a loaded machine), outside any call's limit."""
WORKER = Path(__file__).with_name("_mv_worker.py")
MAX_WORKERS = 2
"""Workers kept between calls; a batch of `BATCH` or more strings starts up to `max_workers()` for its time."""
BATCH = 256
_STATUS = {"ok": None, "timeout": TIMEOUT}  # worker reply kind -> grade status ("error" is logged: parse_error)


class _Worker:
    """One worker process, restarted when it has to be killed."""

    def __init__(self) -> None:
        self.proc = self._start()

    @staticmethod
    def _start() -> subprocess.Popen:
        # -I: the script's folder is not put on sys.path (our string.py and math.py would shadow the standard
        # library's).
        return subprocess.Popen([sys.executable, "-I", "-W", "ignore", str(WORKER)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def _ready(self) -> bool:
        """Wait (once per process, up to `IMPORT_S`) for the worker's imports: not part of any call's limit."""
        if not self.ready:
            got, _, _ = select.select([self.proc.stdout], [], [], IMPORT_S)
            self.ready = bool(got) and self.proc.stdout.readline().startswith('["ready"')
        return self.ready

    def request(self, req: list, wait_s: int, label: str) -> tuple[str | None, list | None]:
        """Send one request (`_mv_worker` protocol) and wait up to `wait_s` + `GRACE_S` for its reply."""
        if self.proc.poll() is not None:
            self.proc, self.ready = self._start(), False
        if not self._ready():
            self.kill()
            log.warning("math-verify worker did not start (code %s): %s", self.proc.returncode, PARSE_ERROR)
            return PARSE_ERROR, None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        got, _, _ = select.select([self.proc.stdout], [], [], wait_s + GRACE_S)
        line = self.proc.stdout.readline() if got else None
        if not line:
            self.kill()
            if line is None:
                log.warning("math-verify gave no answer within %ss on %r: %s", wait_s + GRACE_S, label[:80], TIMEOUT)
                return TIMEOUT, None
            log.warning("math-verify worker exited (code %s) on %r: %s", self.proc.returncode, label[:80],
                        PARSE_ERROR)
            return PARSE_ERROR, None
        kind, payload = json.loads(line)
        if kind == "error":
            log.warning("math-verify failed on %r: %s", label[:80], payload)
            return PARSE_ERROR, None
        return _STATUS[kind], payload

    ready = False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


_WORKERS: list[_Worker] = []
_LOCK = threading.Lock()


def max_workers() -> int:
    """Workers for a large batch (a MATH split's golds, a build's answers): one per core, 2 to 8."""
    return max(MAX_WORKERS, min(8, os.cpu_count() or 1))


def warm(n: int = 1, *, cap: int = MAX_WORKERS) -> None:
    """Start `n` workers (at most `cap`) now: they import math-verify in the background, so the first call does not
    wait."""
    with _LOCK:
        while len(_WORKERS) < min(n, cap):
            _WORKERS.append(_Worker())


@atexit.register
def _shutdown() -> None:
    with _LOCK:
        for w in _WORKERS:
            w.kill()
        _WORKERS.clear()


def _run(requests: dict, wait_s: int) -> dict:
    """Reply (status, payload) per key of `requests` (key -> (request, label)), fed to the workers by one thread
    each; a batch of `BATCH` or more uses up to `max_workers()` workers, the extra ones stopped after it."""
    if not requests:
        return {}
    n = 1 if len(requests) < 32 else MAX_WORKERS if len(requests) < BATCH else max_workers()
    warm(n, cap=n)
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    for key in requests:
        jobs.put(key)
    out: dict = {}

    def feed(worker: _Worker) -> None:
        while True:
            try:
                key = jobs.get_nowait()
            except queue.Empty:
                return
            req, label = requests[key]
            out[key] = worker.request(req, wait_s, label)

    with _LOCK:
        threads = [threading.Thread(target=feed, args=(w,), daemon=True) for w in _WORKERS[:n]]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        while len(_WORKERS) > MAX_WORKERS:  # the batch's extra workers
            _WORKERS.pop().kill()
    return out


def evaluate(texts: list[str], *, timeout_s: int | None = None) -> dict[str, tuple[str | None, list[str] | None]]:
    """(status, values) for each distinct string in `texts`, computed by the worker processes (one thread each
    here feeds its worker and enforces the per-call limit, `timeout_s`, default `TIMEOUT_S`)."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    return _run({t: ([t, timeout_s], t) for t in dict.fromkeys(texts)}, timeout_s)


def verify_pairs(pairs: list[tuple[str, str]], *, timeout_s: int | None = None
                 ) -> dict[tuple[str, str], tuple[str | None, list | None]]:
    """(status, [gold_ok, pred, correct]) for each distinct (gold, answer) pair: math-verify's parse of both and its
    `verify` (the math grader). A pair runs up to five steps of up to `timeout_s` each (gold and answer parse,
    verify, and for a decimal answer the read-back of its fraction spelling); the parent waits that long plus the
    grace."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    reqs = {p: (["verify", p[0], p[1], timeout_s], p[1]) for p in dict.fromkeys(pairs)}
    return _run(reqs, 5 * timeout_s)


def parse_golds(golds: list[str], *, timeout_s: int | None = None) -> dict[str, tuple[str | None, list | None]]:
    """(status, [gold_ok, canonical, problem]) for each distinct gold string: whether math-verify parses it to a
    defined value, and why not (the load-time check of `math` golds, one batch). A gold runs two steps of up to
    `timeout_s` each (its parse, then one evaluation, so a gold every comparison would time out on is `timeout`)."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    return _run({g: (["gold", g, timeout_s], g) for g in dict.fromkeys(golds)}, 2 * timeout_s)
