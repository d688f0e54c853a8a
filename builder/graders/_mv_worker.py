"""math-verify worker process: one JSON request per stdin line, one JSON reply per stdout line.

First line out `["ready", null]` (imports done). Request `[text, timeout_s]`; reply `["ok", values | null]`,
`["timeout", null]` or `["error", message]`. Run as a
script (`python _mv_worker.py`), so it imports math-verify and sympy only, not the builder package or polars. Calls
run in this process's main thread, where math-verify's `signal.alarm` timeout works; `raise_on_error=True` makes
its failures replies instead of a silent empty parse.
"""

from __future__ import annotations

import json
import logging
import sys


def values(obj) -> list[str] | None:
    """Numeric spellings of a parsed sympy object (a set or tuple gives one per element); None if not numeric.

    An integer stays exact ("1024"), a rational is "p/q", anything else has 30 significant digits; the numeric
    evaluation never simplifies, which on "3^{3^{30}}" would not return.
    """
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
        else:
            num = sympy.N(item, 30)
            if not (num.is_real and num.is_finite):
                return None
            whole = int(num) if abs(num) < 10**25 else None  # integral to 25 digits: "2^{10}" is 1024
            exact = whole is not None and abs(num - whole) < 1e-20 * max(1, abs(whole))
            out.append(str(whole) if exact else str(num))
    return out or None


def evaluate_one(text: str, timeout_s: int) -> list:
    """The reply for one answer string."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    from math_verify.errors import TimeoutException

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    try:
        if not any(d in text for d in ("$", "\\(", "\\[", "\\boxed")):
            text = f"${text.strip().rstrip('.')}$"  # math-verify reads LaTeX only between delimiters
        parsed = parse(text, config, parsing_timeout=timeout_s, raise_on_error=True)
        return ["ok", values(parsed[0]) if parsed else None]
    except TimeoutException:  # a BaseException: caught by name
        return ["timeout", None]
    except Exception as exc:  # noqa: BLE001 - every parser failure becomes a reply, never a silent "wrong"
        return ["error", f"{type(exc).__name__}: {exc}"[:300]]


def main() -> None:
    logging.disable(logging.WARNING)  # math-verify logs "timeout is disabled" and parse warnings
    import math_verify  # noqa: F401 - import before the first request, while the parent still works

    sys.stdout.write(json.dumps(["ready", None]) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        text, timeout_s = json.loads(line)
        sys.stdout.write(json.dumps(evaluate_one(text, timeout_s)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
