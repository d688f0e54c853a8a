"""LaTeX and expression answers through huggingface's math-verify, in worker processes.

The number grader reads plain numbers itself (vectorised); only answers left with LaTeX structure or an expression
(`\\sqrt{2}`, nested `\\frac`, `2^{10}`, `\\pi`) come here, each distinct string once. `evaluate` maps each string
to `(status, values)`: the numeric values math-verify parsed (an exact integer "1024", a rational "1/3", else 30
significant digits; several for a set such as "12 and 13"), and `status` None, `timeout` or `parse_error`.

Why worker processes: math-verify bounds its time with `signal.alarm`, which only works in a main thread, and by
default swallows errors into `[]` (a silent "wrong"). In a worker the call runs in that process's main thread, so
its own timeout works, `raise_on_error=True` surfaces errors, and the parent still bounds every call (a sympy call
stuck in C ignores the alarm): a worker past its time is killed and the string graded `timeout`.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.pool
import os

from builder.graders._common import PARSE_ERROR, TIMEOUT

log = logging.getLogger(__name__)

TIMEOUT_S = 5
"""Seconds math-verify may spend on one string (its own alarm, in the worker); the parent waits 2 s longer."""

_POOL: multiprocessing.pool.Pool | None = None


def _values(obj) -> list[str] | None:
    """Numeric spellings of a parsed sympy object (a set or tuple gives one per element); None if not numeric."""
    import sympy

    items = list(obj) if isinstance(obj, (sympy.FiniteSet, sympy.Tuple, list, tuple)) else [obj]
    out = []
    for item in items:
        if not isinstance(item, sympy.Basic) or not item.is_number:
            return None
        if item.is_Integer:
            out.append(str(int(item)))
        elif item.is_Rational:
            out.append(f"{item.p}/{item.q}")
        else:  # evaluated numerically: sympy.simplify or doit() on "3^{3^{30}}" would never return
            num = sympy.N(item, 30)
            if not (num.is_real and num.is_finite):
                return None
            whole = int(num) if abs(num) < 10**25 else None  # integral to 25 digits: "2^{10}" is 1024
            out.append(str(whole) if whole is not None and abs(num - whole) < 1e-20 * max(1, abs(whole)) else str(num))
    return out or None


def evaluate_one(text: str, timeout_s: int = TIMEOUT_S) -> tuple[str | None, list[str] | None]:
    """(status, values) of one answer string; runs math-verify in the calling thread (a worker's main thread)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from math_verify.errors import TimeoutException

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    try:
        if not any(d in text for d in ("$", "\\(", "\\[", "\\boxed")):
            text = f"${text.strip().rstrip('.')}$"  # math-verify reads LaTeX only between delimiters
        parsed = parse(text, config, parsing_timeout=timeout_s, raise_on_error=True)
        return None, _values(parsed[0]) if parsed else None
    except TimeoutException:
        return TIMEOUT, None
    except Exception as exc:  # noqa: BLE001 - any parser failure is a status, never a silent "wrong"
        log.debug("math-verify failed on %r: %s", text, exc)
        return PARSE_ERROR, None


def _worker_init() -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" / parse warnings
    import math_verify  # noqa: F401 - import while the parent still grades the plain numbers


def warm() -> None:
    """Start the workers (they import math-verify in the background) before the first call needs them."""
    _pool()


def _pool() -> multiprocessing.pool.Pool:
    global _POOL
    if _POOL is None:
        # spawn, not fork: the parent runs polars' thread pool, which a forked child would inherit locked.
        ctx = multiprocessing.get_context("spawn")
        _POOL = ctx.Pool(processes=max(1, min(2, os.cpu_count() or 1)), initializer=_worker_init)
    return _POOL


def _kill_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.terminate()
        _POOL.join()
        _POOL = None


atexit.register(_kill_pool)


def evaluate(texts: list[str], *, timeout_s: int = TIMEOUT_S) -> dict[str, tuple[str | None, list[str] | None]]:
    """(status, values) for each distinct string in `texts`, computed in worker processes.

    A call that outlives `timeout_s` + 2 s in the parent kills the workers (the rest are resubmitted to fresh ones)
    and is graded `timeout`.
    """
    todo = list(dict.fromkeys(texts))
    out: dict[str, tuple[str | None, list[str] | None]] = {}
    while todo:
        pool = _pool()
        pending = [(t, pool.apply_async(evaluate_one, (t, timeout_s))) for t in todo]
        todo = []
        for i, (text, res) in enumerate(pending):
            try:
                out[text] = res.get(timeout=timeout_s + 2)
            except multiprocessing.TimeoutError:
                log.warning("math-verify gave no answer within %ss on %r; graded %s", timeout_s + 2, text[:80], TIMEOUT)
                out[text] = (TIMEOUT, None)
                _kill_pool()
                todo = [t for t, r in pending[i + 1:] if not (r.ready() and r.successful())]
                out.update({t: r.get() for t, r in pending[i + 1:] if r.ready() and r.successful()})
                break
    return out
