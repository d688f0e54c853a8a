"""The structure of a number answer span: a small lexer and parser, run in Python on the few spans that need it.

`read` turns a prepared answer span (`number.prepare`: LaTeX spellings of plain numbers already plain text) into
the values it states, so the number grader never takes a structure for a number nor an expression for its first
operand. The rules, each for a wrong verdict it prevents:

- The answer phrase ends at an explanation ("which", "for", "per", "from", "than", ...; a parenthesis holding one
  of those words or an "="): " 8 cookies for 4 people" states 8. Before that, every value counts, so a hedge
  (" 7 or 8", " 3 and 7, or 37", " 2 hours and 30 minutes", lines "14\\n16", " 20 (or 21)") is two values.
- The explanation never hides a value given in parallel (`_rivals`): outside brackets, a value right after ",",
  ";", a new line, "or", "maybe", "might be", "=" / "equals", or after "and" when the explanation's word comes again,
  is a second value (" 5 for Alice, 6 for Bob", " 5, which might be 6", " 5 for Alice and 6 for Bob", " 2 + 3,
  which equals 6"); other values there are context (" $12 per hour for 3 hours", " 5 apples, which is Tom's 2 and
  Sue's 3"). Erring to ambiguous: " 8 cookies for 4 people, 2 each" is two values.
- Arithmetic is evaluated exactly (`fractions.Fraction`): " 2 + 3" is 5, "(12 + 8) apples" is 20, never 2 or 12.
  A calculation counts by its result, after the last "=" / "equals" (" 2^3 = 8"; with nothing after it, by its
  terms; terms only math-verify reads, " 2x + 3 = ", are refused), but only within one clause (`_clauses`): a
  phrase with "=" is split at separators outside brackets (",", ";", a new line, "or", "and", ...) and each
  clause gives its result, so " x = 5 or x = 6", " x=5, y=6" and a
  worked solution on several lines ("x + y = 38 \\n29 + y = 38 \\ny = 9") state several values (ambiguous unless
  all are equal). Powers need an integer exponent of at most `MAX_EXPONENT` and a result of at most `MAX_BITS` bits
  (about `MAX_DIGITS` digits); a bigger one is refused (wrong_format) before it is computed, a non-integer one goes
  to math-verify.
- Words right after a value that change it are applied: scales multiply ("5 thousand", "2.5 million", "5k", "2
  dozen", "5 hundredths"), "squared" / "cubed" raise; a letter glued to a value that is no unit ("5x", "5i", "5M")
  makes it math-verify's; "sqrt" is math-verify's (as "\\sqrt"). Units stay units ("5 apples", "5 m", "5m").
- A minus before a value, spaced or not, or the word "negative" / "minus", is a sign (" - 5" is -5); a minus spaced
  on both sides subtracts (" 10 - 5" is 5); one unspaced on either side ("3-4-1", "2-3 hours", "5 -3") separates
  values (a range, a code, a list) unless the span has other arithmetic ("10^3 -1" is 999).
- A comma inside brackets or in a chain ("1,2,3") separates values; a decimal comma ("1,5") is read only alone.
- Words after a value are its unit; a unit may carry an exponent ("25 m^2", "cm²", "m/s^2"): only the known units
  of `UNITS` do, so "25 x^2" (a variable) is not 25.
- Anything else with structure (radicals, pi, a variable in arithmetic, nested LaTeX, a pair or an interval) is
  math-verify's (`MATH_VERIFY`), never a guess.
- Hostile input is refused, never raised: brackets, signs or powers nested deeper than `MAX_DEPTH`, a literal of more
  than `MAX_DIGITS` digits, and any RecursionError / ValueError / OverflowError / ZeroDivisionError are wrong_format.
  An em dash glued before a number (" \u20145", "is\u20145") may be a sign or punctuation: wrong_format.
"""

from __future__ import annotations

import re
from fractions import Fraction

import polars as pl

MAX_EXPONENT = 1000
MAX_DIGITS = 1000  # a longer number literal is refused (wrong_format)
MAX_BITS = 3322  # a value of about 1,000 digits; a larger one is refused before it is computed
MAX_DEPTH = 50  # brackets, signs and powers nested deeper are refused
OK, MATH_VERIFY, WRONG_FORMAT, NOTHING = "ok", "math_verify", "wrong_format", "nothing"

# A span that needs reading (anything but one plain number): brackets, operators, "=", roots, LaTeX left after
# `prepare`, superscripts, a spaced or unspaced minus between values, a sign or operator word.
ROUTE = (r"[()\[\]{}\\^=+*/\u00d7\u00f7\u00b7\u221a\u03c0\u00b2\u00b3\u2014\u2015]|(?:^|\s)-\s|\d\s*-\s*\d"
         r"|(?:^|[^\w.,])\d[\d.,]*[A-Za-z]\b|(?i)\b(?:negative|minus|equals|sqrt|pi)\b"
         r"|\d\s*(?:hundred|thousand|million|billion|trillion|dozen|squared|cubed|tenths|hundredths|thousandths)\b")

SEPARATORS = {"and", "or", "to", "between", "either", "nor", "vs", "versus"}
# Words after a value that change it: "5 thousand" is 5000, "5 squared" is 25 ("5k": `_GLUED_SCALES`).
SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12, "dozen": 12,
          "tenths": Fraction(1, 10), "hundredths": Fraction(1, 100), "thousandths": Fraction(1, 1000)}
POWERS = {"squared": 2, "cubed": 3}
_GLUED_SCALES = {"k": 1000, "K": 1000}
# After the explanation, these introduce a rival value: ", 6", "or 6", "or maybe 6", "might be 6".
_HEDGES = {"or", "maybe", "perhaps", "possibly"}
_MODALS = {"might", "may", "could", "would"}
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
    r"|(?P<mv>\\[A-Za-z]+|[{\u221a\u03c0]|(?<=[\d)])!)|(?P<word>[A-Za-z]+(?:['-][A-Za-z]+)*)"
    r"|(?P<dash>[\u2014\u2015])|(?P<skip>.)", re.S)
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


# How a number written with separators is grouped, once for the vectorised path (`number._plain`) and this one:
EUROPEAN = r"\d{1,3}(?:\.\d{3})+,\d+"  # 1.234,5
DOTTED = r"\d{1,3}(?:\.\d{3}){2,}"  # 1.234.567
DECIMAL_COMMA = r"(?:\d+,\d{1,2}|0,\d+)(?:[eE][+-]?\d+)?"  # 1,5  2,74  0,111 (three digits after a comma: 1,600)


def _value(tok: str) -> Fraction:
    """One number token as an exact value, grouped as `number._plain` groups it; a literal of more than
    `MAX_DIGITS` digits is refused."""
    if len(tok) > MAX_DIGITS and sum(c.isdigit() for c in tok) > MAX_DIGITS:
        raise _Refused
    if mixed := re.fullmatch(r"(\d+)[ \u00a0]+(\d+)\s*/\s*(\d+)", tok):
        whole, num, den = (int(g) for g in mixed.groups())
        if den == 0:
            raise _Refused
        return whole + Fraction(num, den)
    t = re.sub(rf"[\s'{SPACES}]", "", tok)
    if re.fullmatch(EUROPEAN, t):
        t = t.replace(".", "").replace(",", ".")
    elif re.fullmatch(DOTTED, t):
        t = t.replace(".", "")
    elif re.fullmatch(DECIMAL_COMMA, t):
        t = t.replace(",", ".")
    else:
        t = t.replace(",", "")
    if (exp := re.search(r"[eE]([+-]?\d+)$", t)) and abs(int(exp.group(1))) > MAX_EXPONENT:
        raise _Refused
    return _bounded(Fraction(t))


def _lex(text: str) -> list[tuple[str, object, object]]:
    """(kind, value, flag) tokens; `flag` is "written with decimals" for a number, for a '-' "dash" (a digit
    right before and after it: "3-4") or "sign" (a space before, none after: "5 -3"), which separate values in a
    span without other arithmetic, and for a word its spelling when it is glued to a number ("5k", "5x").
    Brackets nested deeper than `MAX_DEPTH` and an em dash glued to a number ("is\u20145": a sign or punctuation)
    are refused."""
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
        if kind == "dash":
            if text[i:i + 1].isdigit() and not text[i - 2:i - 1].isdigit():
                raise _Refused
            continue
        if kind == "word":
            glued = tok if m.start() and (text[m.start() - 1].isdigit() or text[m.start() - 1] == ")") else False
            tok = tok.lower()
            kind = _WORDS.get(tok, "word")
            if kind == "word":
                out.append((kind, tok, glued))
                continue
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
            if depth > MAX_DEPTH:
                raise _Refused
        out.append((kind, tok, False))
    return out


def _power(base: Fraction, exp: Fraction) -> Fraction:
    if exp.denominator != 1:
        raise _MathVerify
    size = base.numerator.bit_length() + base.denominator.bit_length()
    if abs(exp) > MAX_EXPONENT or size * abs(exp) > MAX_BITS or (base == 0 and exp < 0):
        raise _Refused  # checked before computing: "2^100000" never runs
    return base ** int(exp)


class _Parser:
    def __init__(self, toks: list[tuple[str, object, object]], dashes: bool) -> None:
        self.toks, self.i, self.dashes = toks, 0, dashes
        self.decimal = False  # a decimal literal in the current value (then it is no closed form)
        self.depth = 0  # nested signs, powers and brackets (`MAX_DEPTH`)

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
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused
        kind, tok, _ = self.peek()
        if (kind == "op" and tok in "+-") or kind == "neg":
            self.take()
            value = self.unary()
            value = value if tok == "+" else -value
        else:
            value = self.power()
        self.depth -= 1
        return value

    def power(self) -> Fraction:
        base = self.postfix(self.atom())
        if self.peek()[:2] != ("op", "^"):
            return base
        self.take()
        return _power(base, self.unary())

    def postfix(self, value: Fraction) -> Fraction:
        """Words right after a value that change it: a scale ("5 thousand", "5k", "2 dozen") multiplies, "squared"
        and "cubed" raise; a letter glued to it that is no unit ("5x", "5i", "5e") makes it no plain number."""
        while (tok := self.peek())[0] == "word":
            word, glued = tok[1], tok[2]
            if word in SCALES:
                value = _bounded(value * SCALES[word])
            elif word in POWERS:
                value = _power(value, Fraction(POWERS[word]))
            elif glued in _GLUED_SCALES:
                value = _bounded(value * _GLUED_SCALES[glued])
            elif glued and len(word) == 1 and (word not in UNITS or glued == "M"):  # "5M": a million or a molar
                raise _MathVerify
            else:
                return value
            self.take()
        return value

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
        if kind == "word":
            raise _Refused  # arithmetic on prose ("5 / six"): math-verify would guess a value from it
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
            raise _Refused  # arithmetic on a word (a variable, or prose): no number

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
            after_word = kind == "op" and tok in "+-" and self.i and self.toks[self.i - 1][0] == "word"
            if after_word and not (tok == "-" and flag == "sign"):
                raise _Refused  # a word plus or minus a value ("x + 1"): an expression, not the value; "is -5" is
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
                raise _Refused  # an operator with no value before it ("5 and/or 6"): no number
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


def _depths(toks: list[tuple[str, object, object]]) -> list[int]:
    """How many brackets are open before each token."""
    out, depth = [], 0
    for k, _, _ in toks:
        out.append(depth)
        depth = max(depth + {"lp": 1, "rp": -1}.get(k, 0), 0)
    return out


def _answer_end(toks: list[tuple[str, object, object]], depths: list[int]) -> int:
    """Where the explanation starts: the first `CONTEXT` word outside brackets after a number (else the end)."""
    seen = False
    for j, (kind, tok, _) in enumerate(toks):
        seen |= kind == "num"
        if seen and kind == "word" and tok in CONTEXT and depths[j] == 0:
            return j
    return len(toks)


def _clauses(toks: list[tuple[str, object, object]], depths: list[int], dashes: bool) -> tuple[list[Fraction], bool]:
    """The values of an answer phrase and whether the first is a closed form. A phrase with a calculation ("=" outside
    brackets) is split into clauses at separators outside brackets (",", ";", a new line, "or", "and", ...); each
    clause counts by its result (after its last "="; with nothing after it, by its terms), so " x = 5 or x = 6"
    states 5 and 6. A phrase without one is read whole."""
    if not any(k == "eq" and d == 0 for (k, _, _), d in zip(toks, depths, strict=True)):
        return _Parser(toks, dashes).phrase()
    clauses: list[list[int]] = [[]]
    for j, ((kind, tok, _), d) in enumerate(zip(toks, depths, strict=True)):
        if d == 0 and (kind == "sep" or (kind == "word" and tok in SEPARATORS)):
            clauses.append([])
        else:
            clauses[-1].append(j)
    items: list[Fraction] = []
    closed = False
    for clause in clauses:
        eq = max((j for j in clause if toks[j][0] == "eq" and depths[j] == 0), default=None)
        parts = [clause] if eq is None else [[j for j in clause if j > eq], [j for j in clause if j < eq]]
        for n, part in enumerate(parts):  # a calculation's result, else its terms
            try:
                got, first_closed = _Parser([toks[j] for j in part if toks[j][0] != "eq"], dashes).phrase()
            except _MathVerify:
                if n:  # " 2x + 3 = ": no result, and math-verify would read a fragment (3)
                    raise _Refused from None
                raise
            if got:
                closed = closed if items else first_closed
                items += got
                break
    return items, closed


def _rivals(toks: list[tuple[str, object, object]], depths: list[int], dashes: bool) -> list[Fraction]:
    """Values the explanation `toks` (from its `CONTEXT` word on) states in parallel to the answer, outside brackets:
    a value right after ",", ";", a new line, "or", "maybe", "might be", "=" / "equals" (" 5 for Alice, 6 for Bob",
    " 5, which might be 6", " 5, or x = 6", " 2 + 3, which equals 6"), or after "and" when the explanation's word
    follows it again (" 5 for Alice and 6 for Bob"). Other values there are context (" 8 cookies for 4 people",
    " 5 apples, which is Tom's 2 and Sue's 3", " 5 apples, which is 3 more than Tom's 2")."""
    out: list[Fraction] = []
    for j, ((kind, tok, _), d) in enumerate(zip(toks, depths, strict=True)):
        if d or not (kind in ("sep", "eq") or (kind == "word" and (tok in _HEDGES or tok == "and" or (
                tok == "be" and j and toks[j - 1][1] in _MODALS)))):
            continue
        k = j + 1
        while k < len(toks) and toks[k][0] == "word" and toks[k][1] in _HEDGES:
            k += 1
        if k + 1 < len(toks) and toks[k][0] == "word" and toks[k + 1][0] == "eq":  # "x = 6"
            k += 2
        starts = toks[k:k + 2]
        if not starts or not (starts[0][0] in ("num", "lp") or (
                len(starts) == 2 and (starts[0][0] == "neg" or starts[0][1] in ("-", "+"))
                and starts[1][0] in ("num", "lp"))):
            continue
        parser = _Parser(toks[k:], dashes)
        try:
            value = parser.expr()
        except _MathVerify:
            continue
        if tok == "and":  # parallel only when the explanation's word comes again: "6 for Bob"
            rest = toks[k + parser.i:]
            nxt = next((t for t in rest if t[0] == "sep" or (t[0] == "word" and t[1] in CONTEXT)), None)
            if not nxt or nxt[1] != toks[0][1]:
                continue
        out.append(value)
    return out


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
    `MATH_VERIFY` for structure only math-verify reads; `WRONG_FORMAT` for a refused expression (or any input this
    reader cannot handle: it never raises); `NOTHING` when no value is stated."""
    try:
        toks = _lex(text)
        if any(k == "mv" for k, _, _ in toks):
            return MATH_VERIFY, [], False
        dashes = not any(k in ("eq", "neg") or (k == "op" and t != "-") for k, t, _ in toks)
        depths = _depths(toks)
        end = _answer_end(toks, depths)
        items, closed = _clauses(toks[:end], depths[:end], dashes)
        if items and end < len(toks):
            items += _rivals(toks[end:], depths[end:], dashes)
        spelled = [_spell(v) for v in items]
    except _MathVerify:
        return MATH_VERIFY, [], False
    except (_Refused, RecursionError, ValueError, OverflowError, ZeroDivisionError):
        return WRONG_FORMAT, [], False
    if not items:
        return NOTHING, [], False
    return OK, spelled, closed


def closed_form(value: str | None, text: str) -> bool:
    """Whether math-verify's `value` for `text` is a closed form: irrational or a fraction that never ends, and
    `text` writes no decimal (math-verify spells an integer "7", a rational "p/q", anything else with decimals)."""
    if not value or re.fullmatch(r"-?\d+", value) or re.search(r"\d[.,]\d", text):
        return False
    if "/" in value:
        try:
            return _repeats(Fraction(value))
        except (ValueError, ZeroDivisionError):
            return False
    return True


def for_math_verify(text: pl.Expr) -> pl.Expr:
    """Unicode roots, a spelled "sqrt", pi and operators as LaTeX, which math-verify reads ("3√2/2" and "5 sqrt(2)"
    are otherwise 3 and 5)."""
    text = text.str.replace_all(r"(^|[^\\A-Za-z])sqrt\b", "${1}\u221a")
    text = text.str.replace_all(r"\u221a\s*(\d+(?:\.\d+)?)", r"\sqrt{$1}")
    text = text.str.replace_all(r"\u221a\s*\(([^()]*)\)", r"\sqrt{$1}")
    for old, new in (("\u03c0", r"\pi "), ("\u00d7", r"\times "), ("\u00f7", r"\div "), ("\u00b7", r"\cdot "),
                     ("\u00b2", "^2"), ("\u00b3", "^3")):
        text = text.str.replace_all(old, new, literal=True)
    return text
