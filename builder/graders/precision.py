"""Plain decimal numbers as the graders, the tasks stage and the math-verify worker all read them: the canonical
spelling of a number (`canonical_number`, `written_out`) and the precision rule for a gold given to k decimals.

A gold such as "0.33" is often a closed form rounded for print (1/3); a model that writes the closed form should be
credited, but a different value that merely rounds to the gold ("2.49" or 249/100 for "2.5", 1/19 for "0.05") must
not be. So, for a gold with at least `MIN_PLACES` decimals and a prediction written in closed form:

- a rational prediction matches when it is the simplest fraction (smallest denominator) that rounds to the gold
  at k places: 1/3 for "0.33", 2/3 for "0.67", but not 749/300 for "2.50" (that is 5/2);
- an irrational prediction (a root, pi) matches when it rounds to the gold at k places: sqrt(2) for "1.41".

A prediction written as a decimal never uses this rule (it is compared as written). Standard library only: the
worker (`_mv_worker.py`) loads this file by path, without the builder package.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

SCIENTIFIC = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*")
"""A whole string that is a plain number in scientific notation (math-verify reads "1.5e3" as 1.5 * e * 3)."""


def canonical_number(text: str | None) -> str | None:
    """'1,600' -> '1600', '25.0' -> '25', '.50' -> '0.5', '-0' -> '0'; None when not a finite number.

    Exact (Decimal), since a gold is stored; the number grader compares float64 values with a tolerance.
    """
    if text is None:
        return None
    s = text.strip().replace(",", "").removeprefix("+")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite() or abs(d.adjusted()) > 60:  # "1e999999" would print a million digits
        return None
    out = format(d.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def written_out(text: str) -> str:
    """`text` with a plain number in scientific notation written out ("1.5e3" -> "1500"), else `text` as it is."""
    return (canonical_number(text) or text) if SCIENTIFIC.fullmatch(text) else text


MIN_PLACES = 2
MIN_DIGITS = 2
"""Fewer decimals or significant digits say too little: "0.3" may be 3/10 exactly and 1/3 and 2/7 both round to
it; 1/19 is a simpler fraction than 1/20 that rounds to "0.05"."""
MAX_PLACES = 12
_PLAIN = re.compile(r"\s*-?\d*\.(\d+)\s*")


def places(gold: str) -> int:
    """Decimal places of a gold written as a plain decimal ("0.33" -> 2), else 0."""
    m = _PLAIN.fullmatch(gold)
    return len(m.group(1)) if m else 0


def _interval(gold: str) -> tuple[Fraction, Fraction] | None:
    """[lo, hi): the values that round to `gold` at its own places, when the rule applies to it."""
    k = places(gold)
    if not MIN_PLACES <= k <= MAX_PLACES or len(re.sub(r"\D", "", gold).lstrip("0")) < MIN_DIGITS:
        return None
    try:
        g = Fraction(Decimal(gold.strip()))
    except (InvalidOperation, ValueError):
        return None
    half = Fraction(1, 2 * 10**k)
    return g - half, g + half


def matches_rational(gold: str, value: Fraction) -> bool:
    """Whether the exact fraction `value` is the simplest fraction that rounds to `gold` (see the module)."""
    bounds = _interval(gold)
    if bounds is None:
        return False
    lo, hi = bounds
    if value < 0:  # the rule is symmetric: mirror a negative gold's interval
        lo, hi, value = -hi, -lo, -value
    if not lo <= value < hi:
        return False
    # The gold itself lies in [lo, hi) with denominator <= 10^k, so a simplest fraction never has a larger one.
    if value.denominator > 10 ** places(gold):
        return False
    for q in range(1, value.denominator):
        p = -((-lo * q) // 1)  # ceil(lo * q): the smallest numerator at or above lo
        if Fraction(p, q) < hi:
            return False
    return True


def matches_irrational(gold: str, value: float) -> bool:
    """Whether the irrational `value` (a float) rounds to `gold` at the gold's places."""
    bounds = _interval(gold)
    if bounds is None:
        return False
    lo, hi = bounds
    return float(lo) <= value < float(hi)
