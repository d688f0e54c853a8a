"""LaTeX and expression answers through huggingface's math-verify, in worker processes.

The number grader reads plain numbers itself (vectorised); only answers left with LaTeX structure or an expression
(`\\sqrt{2}`, nested `\\frac`, `2^{10}`, `\\pi`) come here, each distinct string once. `evaluate` maps each string
to `(status, values)`: the numeric values math-verify parsed (an exact integer "1024", a rational "1/3", else 30
significant digits; several for a set such as "12 and 13"), and `status` None, `timeout` or `parse_error`.

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
_STATUS = {"ok": None, "timeout": TIMEOUT}  # worker reply kind -> grade status ("error" is logged: parse_error)


class _Worker:
    """One worker process, restarted when it has to be killed."""

    def __init__(self) -> None:
        self.proc = self._start()

    @staticmethod
    def _start() -> subprocess.Popen:
        # -I: the script's folder is not put on sys.path (our string.py would shadow the standard library's).
        return subprocess.Popen([sys.executable, "-I", "-W", "ignore", str(WORKER)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def _ready(self) -> bool:
        """Wait (once per process, up to `IMPORT_S`) for the worker's imports: not part of any call's limit."""
        if not self.ready:
            got, _, _ = select.select([self.proc.stdout], [], [], IMPORT_S)
            self.ready = bool(got) and self.proc.stdout.readline().startswith('["ready"')
        return self.ready

    def ask(self, text: str, timeout_s: int) -> tuple[str | None, list[str] | None]:
        if self.proc.poll() is not None:
            self.proc, self.ready = self._start(), False
        if not self._ready():
            self.kill()
            log.warning("math-verify worker did not start (code %s): %s", self.proc.returncode, PARSE_ERROR)
            return PARSE_ERROR, None
        self.proc.stdin.write(json.dumps([text, timeout_s]) + "\n")
        self.proc.stdin.flush()
        got, _, _ = select.select([self.proc.stdout], [], [], timeout_s + GRACE_S)
        line = self.proc.stdout.readline() if got else None
        if not line:
            self.kill()
            if line is None:
                log.warning("math-verify gave no answer within %ss on %r: %s", timeout_s + GRACE_S, text[:80], TIMEOUT)
                return TIMEOUT, None
            log.warning("math-verify worker exited (code %s) on %r: %s", self.proc.returncode, text[:80], PARSE_ERROR)
            return PARSE_ERROR, None
        kind, payload = json.loads(line)
        if kind == "error":
            log.warning("math-verify failed on %r: %s", text[:80], payload)
            return PARSE_ERROR, None
        return _STATUS[kind], payload

    ready = False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


_WORKERS: list[_Worker] = []
_LOCK = threading.Lock()


def warm(n: int = 1) -> None:
    """Start `n` workers now (they import math-verify in the background) so the first call does not wait."""
    with _LOCK:
        while len(_WORKERS) < min(n, MAX_WORKERS):
            _WORKERS.append(_Worker())


@atexit.register
def _shutdown() -> None:
    with _LOCK:
        for w in _WORKERS:
            w.kill()
        _WORKERS.clear()


def evaluate(texts: list[str], *, timeout_s: int | None = None) -> dict[str, tuple[str | None, list[str] | None]]:
    """(status, values) for each distinct string in `texts`, computed by the worker processes (one thread each
    here feeds its worker and enforces the per-call limit, `timeout_s`, default `TIMEOUT_S`)."""
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    todo = list(dict.fromkeys(texts))
    if not todo:
        return {}
    warm(1 if len(todo) < 32 else MAX_WORKERS)
    jobs: queue.SimpleQueue[str] = queue.SimpleQueue()
    for t in todo:
        jobs.put(t)
    out: dict[str, tuple[str | None, list[str] | None]] = {}

    def feed(worker: _Worker) -> None:
        while True:
            try:
                text = jobs.get_nowait()
            except queue.Empty:
                return
            out[text] = worker.ask(text, timeout_s)

    with _LOCK:
        threads = [threading.Thread(target=feed, args=(w,), daemon=True) for w in _WORKERS]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    return out
