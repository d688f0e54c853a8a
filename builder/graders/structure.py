"""The structure of a number answer span: a small lexer and parser, run in Python on the few spans that need it.

`read` turns a prepared answer span (`number.prepare`: LaTeX spellings of plain numbers already plain text) into
the values it states, so the number grader never takes a structure for a number nor an expression for its first
operand. The rules, each for a wrong verdict it prevents:

- The answer phrase ends at an explanation ("which", "for", "per", "from", "than", ...; a parenthesis holding one
  of those words or an "="): " 8 cookies for 4 people" states 8. Before that, every value counts, so a hedge
  (" 7 or 8", " 3 and 7, or 37", " 2 hours and 30 minutes", lines "14\\n16", " 20 (or 21)") is two values.
- Arithmetic is evaluated exactly (`fractions.Fraction`): " 2 + 3" is 5, "(12 + 8) apples" is 20, never 2 or 12.
  A calculation counts by its result, after the last "=" / "equals" (" 2^3 = 8"; with nothing after it, by its
  terms). Powers need an integer exponent
  of at most `MAX_EXPONENT` and a result of at most `MAX_BITS` bits; a bigger one is refused (wrong_format) before
  it is computed, a non-integer one goes to math-verify.
- A minus before a value, spaced or not, or the word "negative" / "minus", is a sign (" - 5" is -5); a minus spaced
  on both sides subtracts (" 10 - 5" is 5); one unspaced on either side ("3-4-1", "2-3 hours", "5 -3") separates
  values (a range, a code, a list) unless the span has other arithmetic ("10^3 -1" is 999).
- A comma inside brackets or in a chain ("1,2,3") separates values; a decimal comma ("1,5") is read only alone.
- Words after a value are its unit; a unit may carry an exponent ("25 m^2", "cm²", "m/s^2"): only the known units
  of `UNITS` do, so "25 x^2" (a variable) is not 25.
- Anything else with structure (radicals, pi, a variable in arithmetic, nested LaTeX, a pair or an interval) is
  math-verify's (`MATH_VERIFY`), never a guess.
"""

from __future__ import annotations

import re
from fractions import Fraction

import polars as pl

MAX_EXPONENT = 1000
MAX_BITS = 14_000  # about 4,200 digits: Python prints ints up to 4,300 digits
OK, MATH_VERIFY, WRONG_FORMAT, NOTHING = "ok", "math_verify", "wrong_format", "nothing"

# A span that needs reading (anything but one plain number): brackets, operators, "=", roots, LaTeX left after
# `prepare`, superscripts, a spaced or unspaced minus between values, a sign or operator word.
ROUTE = (r"[()\[\]{}\\^=+*/\u00d7\u00f7\u00b7\u221a\u03c0\u00b2\u00b3]|(?:^|\s)-\s|\d\s*-\s*\d"
         r"|(?i)\b(?:negative|minus|equals|sqrt|pi)\b")

SEPARATORS = {"and", "or", "to", "between", "either", "nor", "vs", "versus"}
CONTEXT = {"which", "who", "for", "per", "from", "than", "where", "with", "each", "since", "after"}
UNITS = set(
    "m cm mm km dm um nm in inch inches ft foot feet yd yard yards mi mile miles meter meters metre metres "
    "centimeter centimeters kilometer kilometers millimeter millimeters s sec second seconds h hr hrs hour hours "
    "min minute minutes g kg mg lb lbs l ml units unit sq square cubic".split())

SPACES = "\u00a0\u2009\u202f"
# One number without sign: first match wins, so the grouped forms come before the plain one.
MANTISSA = (
    r"(?:[1-9]\d{0,2}(?:\.\d{3}\b)+,\d+"  # 1.234,5
    r"|[1-9]\d{0,2}(?:,\d{3}\b)+(?:\.\d+)?"  # 1,234.5
    rf"|[1-9]\d{{0,2}}(?:[ {SPACES}']\d{{3}}\b)+(?:[.,]\d+)?"  # 1 234,5  1'234
    r"|[1-9]\d{0,2}(?:\.\d{3}\b){2,}"  # 1.234.567
    "{decimal_comma}"
    r"|\d+(?:\.\d+)?|\.\d+)"
    r"(?:[eE][+-]?\d+\b)?"
)
_MANTISSA_NO_DECIMAL_COMMA = MANTISSA.replace("{decimal_comma}", "")
MANTISSA = MANTISSA.replace("{decimal_comma}", r"|\d+,\d{1,2}\b|0,\d+")  # decimal comma: 1,5  2,74  0,111
MIXED = r"\d+[ \u00a0]+\d+\s*/\s*\d+"
# The reader's numbers: a decimal comma only alone, outside brackets and comma chains ("1,5" but not "1,2,3").
_DECIMAL_COMMA = re.compile(r"(?:\d+,\d{1,2}|0,\d+)(?![\d,])")
_NUMBER = re.compile(rf"{MIXED}|{_MANTISSA_NO_DECIMAL_COMMA}")
_TOKEN = re.compile(
    r"(?P<ws>[ \t\u00a0\u2009\u202f]+|\*\*)|(?P<op>\\times|\\cdot|\\div|[-+*/^\u00d7\u00f7\u00b7])"
    r"|(?P<sup>[\u00b2\u00b3])|(?P<lp>[(\[])|(?P<rp>[)\]])|(?P<sep>[,;\n])|(?P<eq>=)"
    r"|(?P<mv>\\[A-Za-z]+|[{\u221a\u03c0]|(?<=[\d)])!)|(?P<word>[A-Za-z]+(?:['-][A-Za-z]+)*)|(?P<skip>.)", re.S)
_OPS = {"\\times": "*", "\\cdot": "*", "\u00d7": "*", "\u00b7": "*", "\\div": "/", "\u00f7": "/"}
_WORDS = {"equals": "eq", "negative": "neg", "minus": "neg", "sqrt": "mv", "pi": "mv"}


class _MathVerify(Exception):
    """Structure this parser does not evaluate."""


class _Refused(Exception):
    """No number: a power too large to compute, a division by zero."""


def _bounded(value: Fraction) -> Fraction:
    if value.numerator.bit_length() + value.denominator.bit_length() > MAX_BITS:
        raise _Refused
    return value


def _value(tok: str) -> Fraction:
    """One number token as an exact value, by the grouping rules of `number._plain`."""
    if mixed := re.fullmatch(r"(\d+)[ \u00a0]+(\d+)\s*/\s*(\d+)", tok):
        whole, num, den = (int(g) for g in mixed.groups())
        if den == 0:
            raise _Refused
        return whole + Fraction(num, den)
    t = re.sub(rf"[\s'{SPACES}]", "", tok)
    if re.fullmatch(r"\d{1,3}(?:\.\d{3})+,\d+", t):
        t = t.replace(".", "").replace(",", ".")
    elif re.fullmatch(r"\d{1,3}(?:\.\d{3}){2,}", t):
        t = t.replace(".", "")
    elif re.fullmatch(r"(?:\d+,\d{1,2}|0,\d+)(?:[eE][+-]?\d+)?", t):
        t = t.replace(",", ".")
    else:
        t = t.replace(",", "")
    if (exp := re.search(r"[eE]([+-]?\d+)$", t)) and abs(int(exp.group(1))) > MAX_EXPONENT:
        raise _Refused
    return _bounded(Fraction(t))


def _lex(text: str) -> list[tuple[str, object, object]]:
    """(kind, value, flag) tokens; `flag` is "written with decimals" for a number, and for a '-' "dash" (a digit
    right before and after it: "3-4") or "sign" (a space before, none after: "5 -3"), which separate values in a
    span without other arithmetic."""
    out: list[tuple[str, object, object]] = []
    depth, i = 0, 0
    while i < len(text):
        if not (i and text[i - 1].isalnum()):
            m = (None if depth or (i and text[i - 1] == ",") else _DECIMAL_COMMA.match(text, i)) \
                or _NUMBER.match(text, i)
            if m:
                decimal = "." in m.group() or m.re is _DECIMAL_COMMA
                out.append(("num", _value(m.group()), decimal))
                i = m.end()
                continue
        m = _TOKEN.match(text, i)
        kind, tok = m.lastgroup, m.group()
        i = m.end()
        if kind in ("ws", "skip"):
            continue
        if kind == "word":
            tok = tok.lower()
            kind = _WORDS.get(tok, "word")
        elif kind == "op":
            tok = _OPS.get(tok, tok)
            if tok == "+" and not re.match(r"\s*[\d(.]", text[i:]):
                continue  # "10+ people": a bound, not a sum
            before, after = text[i - 2:i - 1], text[i:i + 1]
            flag = tok == "-" and ("dash" if before.isdigit() and after.isdigit()
                                   else "sign" if before.isspace() and after and not after.isspace() else False)
            out.append(("op", tok, flag))
            continue
        elif kind == "sup":
            out += [("op", "^", False), ("num", Fraction("\u00b2\u00b3".index(tok) + 2), False)]
            continue
        elif kind in ("lp", "rp"):
            depth = max(depth + (1 if kind == "lp" else -1), 0)
        out.append((kind, tok, False))
    return out


class _Parser:
    def __init__(self, toks: list[tuple[str, object, object]], dashes: bool) -> None:
        self.toks, self.i, self.dashes = toks, 0, dashes
        self.decimal = False  # a decimal literal in the current value (then it is no closed form)

    def peek(self, offset: int = 0) -> tuple[str, object, object]:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else ("end", None, False)

    def take(self) -> tuple[str, object, object]:
        tok = self.peek()
        self.i += 1
        return tok

    # expr := term (('+' | '-' | minus) term)*
    def expr(self) -> Fraction:
        value = self.term()
        while True:
            kind, tok, flag = self.peek()
            if kind == "op" and tok in "+-" and not (flag and self.dashes):
                self.take()
                value = _bounded(value + self.term() if tok == "+" else value - self.term())
            elif kind == "neg" and tok == "minus":
                self.take()
                value = _bounded(value - self.term())
            else:
                return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek()[0] == "op" and self.peek()[1] in "*/":
            op = self.take()[1]
            rhs = self.unary()
            if op == "/" and rhs == 0:
                raise _Refused
            value = _bounded(value * rhs if op == "*" else value / rhs)
        return value

    def unary(self) -> Fraction:
        kind, tok, _ = self.peek()
        if (kind == "op" and tok in "+-") or kind == "neg":
            self.take()
            value = self.unary()
            return value if tok == "+" else -value
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        if self.peek()[:2] != ("op", "^"):
            return base
        self.take()
        exp = self.unary()
        if exp.denominator != 1:
            raise _MathVerify
        size = base.numerator.bit_length() + base.denominator.bit_length()
        if abs(exp) > MAX_EXPONENT or size * abs(exp) > MAX_BITS or (base == 0 and exp < 0):
            raise _Refused  # checked before computing: "2^100000" never runs
        return base ** int(exp)

    def atom(self) -> Fraction:
        kind, tok, decimal = self.take()
        if kind == "num":
            self.decimal |= decimal
            return tok
        if kind == "lp":
            value = self.expr()
            if self.take()[0] != "rp":
                raise _MathVerify
            return value
        raise _MathVerify

    def units(self) -> None:
        """Words after a value, a known unit's exponent ("m^2", "m/s^2") with them."""
        while self.peek()[0] == "word" and self.peek()[1] not in SEPARATORS | CONTEXT:
            unit = self.take()[1]
            if self.peek()[:2] == ("op", "^"):
                if unit not in UNITS:
                    raise _MathVerify  # a variable's power
                self.take()
                self.unary()
            if self.peek()[:2] == ("op", "/") and self.peek(1)[0] == "word":
                self.take()
        if self.peek()[0] == "op" and self.i and self.toks[self.i - 1][0] == "word":
            raise _MathVerify  # arithmetic on a word: a variable

    def bracket_end(self) -> int:
        """Index of the token closing the bracket at `self.i`."""
        depth = 0
        for j in range(self.i, len(self.toks)):
            depth += {"lp": 1, "rp": -1}.get(self.toks[j][0], 0)
            if depth == 0:
                return j
        return len(self.toks)

    def phrase(self) -> tuple[list[Fraction], bool]:
        """The values of a phrase and whether the first is a closed form."""
        items: list[Fraction] = []
        closed = False
        while (kind := self.peek()[0]) != "end":
            tok, flag = self.peek()[1:]
            if kind == "lp":
                end = self.bracket_end()
                inner = self.toks[self.i + 1:end]
                if items and any(k == "eq" or (k == "word" and t in CONTEXT) for k, t, _ in inner):
                    self.i = end + 1  # an explanation in brackets: " 20 (12 + 8 = 20)"
                    continue
                if any(k == "sep" for k, _, _ in inner) and not any(k == "word" for k, _, _ in inner):
                    raise _MathVerify  # a pair, a tuple or an interval
                if not self.whole_expression(end):
                    self.take()  # brackets around words and values: read what is inside
                    continue
            starts_value = kind == "neg" and self.peek(1)[0] in ("num", "lp", "op")  # "negative seven (-7)"
            if kind in ("num", "lp") or starts_value or (kind == "op" and tok in "+-" and flag != "dash"):
                self.decimal = False
                value = self.expr()
                if not items:
                    closed = not self.decimal and _repeats(value)
                items.append(value)
                self.units()
                continue
            if kind == "op" and tok not in "+-":
                raise _MathVerify  # an operator with no value before it
            self.take()  # separators, words, a dash, a closing bracket
        return items, closed

    def whole_expression(self, end: int) -> bool:
        """Whether the bracket from `self.i` to `end` holds one expression."""
        probe = _Parser(self.toks[self.i:end + 1], self.dashes)
        try:
            probe.atom()
        except (_MathVerify, _Refused):
            return False
        return probe.i == end + 1 - self.i


def _depth(toks: list[tuple[str, object, object]], j: int) -> int:
    """How many brackets are open before token `j`."""
    depth = 0
    for k, _, _ in toks[:j]:
        depth = max(depth + {"lp": 1, "rp": -1}.get(k, 0), 0)
    return depth


def _answer_phrase(toks: list[tuple[str, object, object]]) -> list[tuple[str, object, object]]:
    """The tokens before the explanation: the first `CONTEXT` word outside brackets after a number."""
    seen = False
    for j, (kind, tok, _) in enumerate(toks):
        seen |= kind == "num"
        if seen and kind == "word" and tok in CONTEXT and _depth(toks, j) == 0:
            return toks[:j]
    return toks


def _repeats(value: Fraction) -> bool:
    """A fraction whose decimal expansion never ends ("1/3")."""
    q = value.denominator
    for p in (2, 5):
        while q % p == 0:
            q //= p
    return q != 1


def _spell(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def read(text: str) -> tuple[str, list[str], bool]:
    """(kind, values, closed) for one prepared answer span: kind `OK` with the stated values (exact, "7" or "1/3"),
    in order, and whether the first is a closed form (a fraction that never ends, written without decimals);
    `MATH_VERIFY` for structure only math-verify reads; `WRONG_FORMAT` for a refused expression; `NOTHING` when no
    value is stated."""
    try:
        toks = _lex(text)
        if any(k == "mv" for k, _, _ in toks):
            return MATH_VERIFY, [], False
        dashes = not any(k in ("eq", "neg") or (k == "op" and t != "-") for k, t, _ in toks)
        toks = _answer_phrase(toks)
        eq = max((j for j, (k, _, _) in enumerate(toks) if k == "eq" and _depth(toks, j) == 0), default=None)
        items, closed = [], False
        for part in ([toks] if eq is None else [toks[eq + 1:], toks[:eq]]):  # a calculation's result, else its terms
            if not items:
                items, closed = _Parser([t for t in part if t[0] != "eq"], dashes).phrase()
    except _MathVerify:
        return MATH_VERIFY, [], False
    except _Refused:
        return WRONG_FORMAT, [], False
    if not items:
        return NOTHING, [], False
    return OK, [_spell(v) for v in items], closed


def closed_form(value: str | None, text: str) -> bool:
    """Whether math-verify's `value` for `text` is a closed form: irrational or a fraction that never ends, and
    `text` writes no decimal (math-verify spells an integer "7", a rational "p/q", anything else with decimals)."""
    if not value or re.fullmatch(r"-?\d+", value) or re.search(r"\d[.,]\d", text):
        return False
    if "/" in value:
        return _repeats(Fraction(value))
    return True


def for_math_verify(text: pl.Expr) -> pl.Expr:
    """Unicode roots, pi and operators as LaTeX, which math-verify reads ("3√2/2" is otherwise 3)."""
    text = text.str.replace_all(r"\u221a\s*(\d+(?:\.\d+)?)", r"\sqrt{$1}")
    text = text.str.replace_all(r"\u221a\s*\(([^()]*)\)", r"\sqrt{$1}")
    for old, new in (("\u03c0", r"\pi "), ("\u00d7", r"\times "), ("\u00f7", r"\div "), ("\u00b7", r"\cdot "),
                     ("\u00b2", "^2"), ("\u00b3", "^3")):
        text = text.str.replace_all(old, new, literal=True)
    return text
