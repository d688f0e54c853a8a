"""math-verify worker process: one JSON request per stdin line, one JSON reply per stdout line.

First line out `["ready", null]` (imports done). Requests, each answered by one reply:
- `[text, timeout_s]` (the number grader): `["ok", values | null]`, the numeric values of `text`;
- `["verify", gold, answer, timeout_s]` (the math grader): `["ok", [gold_ok, pred, correct]]`, where `gold_ok` says
  whether the gold parsed to a defined value, `pred` is a canonical string of the parsed answer (null when it does
  not parse) and `correct` is the verdict of `judge`;
- `["gold", gold, timeout_s]` (the load-time check of math golds): `["ok", [gold_ok, canonical, problem]]`, with
  `problem` a reason the gold can never grade (null when it can); the gold is also evaluated once, so a gold whose
  every comparison would run out of time replies `["timeout", null]`;
every request may instead get `["timeout", null]` or `["error", message]`. Run as a
script (`python _mv_worker.py`), so it imports math-verify and sympy only, not the builder package or polars. Calls
run in this process's main thread, where math-verify's `signal.alarm` timeout works; `raise_on_error=True` makes
its failures replies instead of a silent empty parse.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path


def _load_precision():
    """builder/graders/precision.py, loaded by its path (standard library only): this script runs without the builder
    package, and its folder is never put on sys.path (our math.py and string.py would shadow the standard
    library's)."""
    spec = importlib.util.spec_from_file_location("_mv_precision", Path(__file__).with_name("precision.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


precision = _load_precision()


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


_BARE = re.compile(r"\\boxed\s*\{|\\[()\[\]]|[${}\s]")
_WRITTEN_DECIMAL = re.compile(r"-?\d*\.\d+\\?%?$")


def float_rounding(gold: str, answer: str) -> int:
    """Decimal places `verify` rounds floats to for an answer written as a decimal: max(gold places, answer places)
    (a percentage counts 2 more, as it compares as a fraction of 100), so "2.49" is not "2.5" and "2.50" is. An exact
    gold, or an answer without decimals, keeps math-verify's 6 places (a closed form against a plain decimal gold is
    judged by `precision` instead, in `judge`)."""
    if decimals(gold) == 0 or not _WRITTEN_DECIMAL.match(_BARE.sub("", answer)):
        return 6  # an expression holding a decimal ("\\frac{\\pi}{9.5}") is not given to those places
    return max(decimals(gold) + (2 if "%" in gold else 0), decimals(answer) + (2 if "%" in answer else 0))


# Numbers side by side with only spacing between ("3 4", "3\\ 4", "3\\quad 4", "1\\,000"): math-verify reads "3 4" as
# a mixed number, 3 + 4, and "1\\,000" as 1 * 0 ("1{,}000" and "1\\!000" read 1000 and stay).
_SIDE_BY_SIDE = re.compile(r"\d(?:\s|~|\\[ ,;:>]|\\(?:q?quad|enspace|thinspace|medspace|thickspace)(?![a-zA-Z])"
                           r"|\\hspace\*?\{[^{}]*\})+\.?\d")


def _kind(obj) -> str | None:
    """'set' for a finite set (`\\{1,2\\}`, a bare list "1, 2"), 'seq' for a tuple or a parenthesised pair (math-verify
    reads "(1,2)" as an open interval), None for anything else."""
    import sympy

    if isinstance(obj, sympy.FiniteSet):
        return "set"
    if isinstance(obj, sympy.Tuple) or (isinstance(obj, sympy.Interval) and obj.left_open and obj.right_open):
        return "seq"
    return None


def _items(obj) -> list:
    import sympy

    return [obj.start, obj.end] if isinstance(obj, sympy.Interval) else list(obj.args)


def kinds_differ(gold, pred) -> bool:
    """Whether a set meets a tuple (a pair): math-verify's `verify` compares a FiniteSet with a Tuple or an open
    interval element by element whatever its `strict` flag (0.9.0 reads `strict` for variables only), so "(1, 2)"
    matched gold "\\{1,2\\}". A set and an ordered pair are different answers; elements are checked the same way (a
    set of pairs is not a set of sets). Non-containers are left to math-verify ("5" and "\\{5\\}")."""
    kg, kp = _kind(gold), _kind(pred)
    if kg is None or kp is None:
        return False
    if kg != kp:
        return True
    gi, pi = _items(gold), _items(pred)
    if len(gi) != len(pi):
        return False  # math-verify tells these apart
    if kg == "seq":
        return any(kinds_differ(g, p) for g, p in zip(gi, pi, strict=True))
    inner = [_kind(x) or "" for x in gi], [_kind(x) or "" for x in pi]
    return sorted(inner[0]) != sorted(inner[1]) or any(
        kinds_differ(g, p) for g, p in zip(gi, pi, strict=True) if _kind(g) and _kind(g) == _kind(p))


def _number(obj):
    """The plain real number `obj` stands for (an assignment "x = 1/3" is read at its value, as `verify` reads it
    against a number gold), or None: sets, percentages, expressions with symbols."""
    import sympy
    from math_verify.grader import get_pct_val, is_equation, take_last_relation

    if is_equation(obj):
        obj = take_last_relation(obj).rhs
    if (not isinstance(obj, sympy.Expr) or not obj.is_number or get_pct_val(obj) is not None
            or obj.has(sympy.UnevaluatedExpr) or obj.atoms(sympy.Float)):
        return None
    return obj


def _evaluated(value):
    """A closed-form number as the precision rule reads it: an exact Rational where sympy can tell it is one
    (math-verify parses without evaluating, so "\\frac{33}{101} \\cdot 1^{1}" must become 33/101 before the
    simplest-fraction test, not pass as an irrational that rounds to the gold), else a real irrational; None for
    anything else."""
    import sympy
    from math_verify.grader import safe_sympy_doit

    value = safe_sympy_doit(value)
    if not value.is_Rational and value.is_rational is not False:
        value = sympy.simplify(value)
        if not value.is_Rational and value.is_rational is not False:
            return None
    if not value.is_Rational and not (value.is_real and value.is_finite):
        return None
    return value


def judge(gold: str, gold_obj, answer: str, pred_obj, timeout_s: int) -> bool:
    """Whether the parsed answer is right: a set is never a tuple (`kinds_differ`); a closed form (no decimals written)
    against a plain decimal gold follows the shared precision rule (`precision`: exactly equal, the simplest fraction
    that rounds to the gold, or an irrational that rounds to it); everything else is math-verify's `verify` at
    `float_rounding` places."""
    from math_verify import verify
    from math_verify.utils import timeout

    if kinds_differ(gold_obj, pred_obj):
        return False
    if precision.places(gold) and decimals(answer) == 0 and "%" not in answer:
        value = _number(pred_obj)
        if value is not None:
            value = timeout(timeout_seconds=timeout_s)(_evaluated)(value)
            if value is None:
                return False  # a rational sympy cannot bring to p/q, or not a real number: never credited
            if value.is_Rational:
                got = Fraction(int(value.p), int(value.q))
                return got == Fraction(Decimal(gold.strip())) or precision.matches_rational(gold, got)
            return precision.matches_irrational(gold, timeout(timeout_seconds=timeout_s)(lambda: float(value))())
    return bool(verify(gold_obj, pred_obj, float_rounding=float_rounding(gold, answer), timeout_seconds=timeout_s,
                       raise_on_error=True))


def _delimit(text: str) -> str:
    """`text` as math-verify's LaTeX extraction reads it: wrapped in $...$ unless it already has delimiters."""
    text = text.strip()
    return text if _DELIMITED.search(text) else f"${text.rstrip('.').strip()}$"


@functools.lru_cache(maxsize=4096)
def parse_one(text: str, timeout_s: int):
    """The first sympy object math-verify parses from `text` (delimited), or None; its errors raise. Numbers side by
    side with only spaces between ("3 4", which math-verify reads as 3 + 4) do not parse."""
    import sympy
    from math_verify import parse

    if _SIDE_BY_SIDE.search(text):
        return None
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

    spelled = canonical(pred_obj, fractions=False)
    has_floats = isinstance(pred_obj, (sympy.Basic, sympy.MatrixBase)) and bool(pred_obj.atoms(sympy.Float))
    if not has_floats:
        return spelled
    frac = canonical(pred_obj)
    if frac == spelled:
        return spelled
    from math_verify.errors import TimeoutException

    try:
        again = parse_one(frac, timeout_s)
        same = again is not None and judge(gold, gold_obj, frac, again, timeout_s) == correct
    except (Exception, TimeoutException):  # noqa: BLE001 - the check failing keeps the decimals, the verdict stands
        same = False
    return frac if same else spelled


def undefined(obj) -> bool:
    """Whether a parsed value is undefined ("0/0" is nan, "\\frac{1}{0}" complex infinity): nothing can equal it."""
    import sympy

    try:
        return bool(obj.has(sympy.nan, sympy.zoo))
    except Exception:  # noqa: BLE001 - a form without `has` is not one of these
        return False


def verify_one(gold: str, answer: str, timeout_s: int) -> list:
    """The reply for one (gold, answer) pair: parse both and `verify` them, each step under its own alarm."""
    from math_verify.errors import TimeoutException

    gold, answer = precision.written_out(gold), precision.written_out(answer)
    try:
        gold_obj = parse_one(gold, timeout_s)
        if gold_obj is None or undefined(gold_obj):
            return ["ok", [False, None, False]]
        pred_obj = parse_one(answer, timeout_s)
        if pred_obj is None:
            return ["ok", [True, None, False]]
        correct = judge(gold, gold_obj, answer, pred_obj, timeout_s)
        pred = spelling(gold, gold_obj, answer, pred_obj, bool(correct), timeout_s)
        return ["ok", [True, pred, bool(correct)]]
    except TimeoutException:
        return ["timeout", None]
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reply, never a silent "wrong"
        return ["error", f"{type(exc).__name__}: {exc}"[:300]]


def evaluate_gold(obj, timeout_s: int) -> None:
    """Evaluate a parsed gold once as a comparison would (math-verify's `doit`, then a numeric value), under the
    alarm: "10^{10^{10^{10}}}" parses at once but every comparison with it runs out of time."""
    import sympy
    from math_verify.grader import safe_sympy_doit
    from math_verify.utils import timeout

    def run():
        done = safe_sympy_doit(obj)
        if isinstance(done, sympy.Expr) and done.is_number:
            done.evalf(15)

    timeout(timeout_seconds=timeout_s)(run)()


def gold_one(gold: str, timeout_s: int) -> list:
    """The reply for one gold check: whether it parses, its canonical spelling, and why it can never grade."""
    from math_verify.errors import TimeoutException

    try:
        obj = parse_one(precision.written_out(gold), timeout_s)
        if obj is None:
            return ["ok", [False, None, None]]
        if undefined(obj):
            return ["ok", [False, None, "it is undefined (math-verify reads nan or a division by zero)"]]
        evaluate_gold(obj, timeout_s)
        return ["ok", [True, canonical(obj), None]]
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
