"""math-verify worker process: one JSON request per stdin line, one JSON reply per stdout line.

First line out `["ready", null]` (imports done). Requests, each answered by one reply:
- `[text, timeout_s]` (the number grader): `["ok", values | null]`, the numeric values of `text`;
- `["verify", gold, answer, timeout_s]` (the math grader): `["ok", [gold_ok, pred, correct]]`, where `gold_ok` says
  whether the gold parsed, `pred` is a canonical string of the parsed answer (null when it does not parse) and
  `correct` is math-verify's `verify` at the precision rule of `float_rounding_for`;
- `["gold", gold, timeout_s]` (the load-time check of math golds): `["ok", [gold_ok, canonical]]`;
every request may instead get `["timeout", null]` or `["error", message]`. Run as a
script (`python _mv_worker.py`), so it imports math-verify and sympy only, not the builder package or polars. Calls
run in this process's main thread, where math-verify's `signal.alarm` timeout works; `raise_on_error=True` makes
its failures replies instead of a silent empty parse.
"""

from __future__ import annotations

import functools
import json
import logging
import re
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


# A decimal in an answer string: "2.5", ".33", "0.125" (not the "5." of a sentence end, not a thousands group).
_DECIMAL = re.compile(r"(?<![\d.])\d*\.(\d+)")
# Delimiters math-verify's LaTeX extraction looks for; "\\$" (an escaped dollar, "\\$5") is not one.
_DELIMITED = re.compile(r"\\boxed|\\fbox|(?<!\\)\$|\\\(|\\\[")
_CONFIG = None


def _config():
    global _CONFIG
    if _CONFIG is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        _CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return _CONFIG


def decimals(text: str) -> int:
    """The most digits after a decimal point in `text` ("2.5" 1, "0.33" 2, "\\frac{1}{3}" 0)."""
    return max((len(d) for d in _DECIMAL.findall(text)), default=0)


def float_rounding_for(gold: str, answer: str) -> int:
    """Decimal places `verify` rounds floats to: the precision rule.

    math-verify rounds both sides to `float_rounding` (default 6) when either is a float, so on its own gold "0.33"
    never matches \\frac{1}{3} (0.333333) while at 1 place "2.49" would match gold "2.5". Here a gold given to k
    decimals (k + 2 for a percentage, which compares as a fraction of 100) compares at k places, so an exact answer
    rounds to the gold ("0.33" matches \\frac{1}{3}); an answer written with more decimals than the gold compares
    at its own places, so a decimal that merely rounds to the gold ("2.49" for "2.5") stays wrong. An exact gold
    (no decimals) keeps math-verify's 6 places.
    """
    k = decimals(gold)
    if k == 0:
        return 6
    k += 2 if "%" in gold else 0
    return max(k, decimals(answer) + (2 if "%" in answer else 0))


def _delimit(text: str) -> str:
    """`text` as math-verify's LaTeX extraction reads it: wrapped in $...$ unless it already has delimiters."""
    text = text.strip()
    return text if _DELIMITED.search(text) else f"${text.rstrip('.').strip()}$"


@functools.lru_cache(maxsize=4096)
def parse_one(text: str, timeout_s: int):
    """The first sympy object math-verify parses from `text` (delimited), or None; its errors raise."""
    import sympy
    from math_verify import parse

    parsed = parse(_delimit(text), _config(), parsing_timeout=timeout_s, raise_on_error=True)
    return next((p for p in parsed if isinstance(p, (sympy.Basic, sympy.MatrixBase))), None)


def canonical(obj, *, fractions: bool = True) -> str:
    """One LaTeX spelling of a parsed value (sympy's printer), so two spellings of it compare equal where sympy can
    tell cheaply, and the grader reads it back (a version's `answer`, a student's target, is this string): sums and
    sets in sympy's order ("x^2+1" and "1+x^2" are both "x^{2} + 1"), a percentage as "<value>\\%", and with
    `fractions` a decimal that spells a simple fraction (denominator below 100) as that fraction ("0.5" is
    "\\frac{1}{2}"; "0.33" stays, as it reads better than \\frac{33}{100}). Nothing is simplified, which could
    take unbounded time."""
    import sympy
    from math_verify.grader import get_pct_val

    pct = get_pct_val(obj)
    if pct is not None:
        return f"{canonical(pct, fractions=False)}\\%"  # math-verify reads "2.5\\%", not "\\frac{5}{2}\\%"
    if fractions:
        try:
            floats = obj.atoms(sympy.Float)
            if floats:
                simple = {f: sympy.Rational(str(f)) for f in floats}
                obj = obj.xreplace({f: r for f, r in simple.items() if r.q < 100})
        except Exception:  # noqa: BLE001 - a form without atoms/xreplace keeps its own spelling
            pass
    try:
        return sympy.latex(obj)
    except Exception:  # noqa: BLE001
        return str(obj)


def spelling(gold: str, gold_obj, answer: str, pred_obj, correct: bool, timeout_s: int) -> str:
    """The pred for a verified answer: `canonical`, with its decimals as fractions only where that spelling,
    read back and verified, gets the same verdict (a decimal is compared at its own places, a fraction exactly:
    "0.333333" stays a decimal for gold \\frac{1}{3}, "0.5" becomes \\frac{1}{2})."""
    import sympy
    from math_verify import verify

    plain = canonical(pred_obj, fractions=False)
    has_floats = isinstance(pred_obj, (sympy.Basic, sympy.MatrixBase)) and bool(pred_obj.atoms(sympy.Float))
    if not has_floats:
        return plain
    frac = canonical(pred_obj)
    if frac == plain:
        return plain
    from math_verify.errors import TimeoutException

    try:
        again = parse_one(frac, timeout_s)
        same = again is not None and verify(gold_obj, again, float_rounding=float_rounding_for(gold, frac),
                                            timeout_seconds=timeout_s, raise_on_error=True) == correct
    except (Exception, TimeoutException):  # noqa: BLE001 - the check failing keeps the decimals, the verdict stands
        same = False
    return frac if same else plain


def verify_one(gold: str, answer: str, timeout_s: int) -> list:
    """The reply for one (gold, answer) pair: parse both and `verify` them, each step under its own alarm."""
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        gold_obj = parse_one(gold, timeout_s)
        if gold_obj is None:
            return ["ok", [False, None, False]]
        pred_obj = parse_one(answer, timeout_s)
        if pred_obj is None:
            return ["ok", [True, None, False]]
        correct = verify(gold_obj, pred_obj, float_rounding=float_rounding_for(gold, answer),
                         timeout_seconds=timeout_s, raise_on_error=True)
        pred = spelling(gold, gold_obj, answer, pred_obj, bool(correct), timeout_s)
        return ["ok", [True, pred, bool(correct)]]
    except TimeoutException:
        return ["timeout", None]
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reply, never a silent "wrong"
        return ["error", f"{type(exc).__name__}: {exc}"[:300]]


def gold_one(gold: str, timeout_s: int) -> list:
    """The reply for one gold check: whether it parses, and its canonical spelling."""
    from math_verify.errors import TimeoutException

    try:
        obj = parse_one(gold, timeout_s)
        return ["ok", [obj is not None, None if obj is None else canonical(obj)]]
    except TimeoutException:
        return ["timeout", None]
    except Exception as exc:  # noqa: BLE001
        return ["error", f"{type(exc).__name__}: {exc}"[:300]]


def answer(request: list) -> list:
    """The reply for one request (the forms in the module docstring)."""
    if len(request) == 4 and request[0] == "verify":
        return verify_one(request[1], request[2], request[3])
    if len(request) == 3 and request[0] == "gold":
        return gold_one(request[1], request[2])
    text, timeout_s = request
    return evaluate_one(text, timeout_s)


def main() -> None:
    logging.disable(logging.WARNING)  # math-verify logs "timeout is disabled" and parse warnings
    import math_verify  # noqa: F401 - import before the first request, while the parent still works

    sys.stdout.write(json.dumps(["ready", None]) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        sys.stdout.write(json.dumps(answer(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
