"""From raw source rows to question rows: the raw-row contract, qids, gold normalisation and choice shuffling.

Every source (paper loader, file, Hub dataset) returns rows in `RAW_SCHEMA`; the stage turns them into questions
with these rules, so a question gets the same qid and gold whichever source it came from.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import polars as pl

from builder.errors import InputError
from builder.graders.precision import SCIENTIFIC, canonical_number, written_out
from builder.prompts import LETTERS, show_choices

# What a source returns: index into the split space, question stem (choices not yet shown), raw gold
# (a letter for choice tasks), choice texts in file order, and "file row N" for error messages.
RAW_SCHEMA = pl.Schema({
    "source_idx": pl.Int64(),
    "question": pl.String(),
    "gold": pl.String(),
    "choices": pl.List(pl.String()),
    "source_id": pl.String(),
    "where": pl.String(),
})


def raw_frame(rows: list[dict]) -> pl.DataFrame:
    """Dict rows as a `RAW_SCHEMA` frame; missing columns are null."""
    if not rows:
        return pl.DataFrame(schema=RAW_SCHEMA)
    df = pl.DataFrame(rows, schema_overrides={k: v for k, v in RAW_SCHEMA.items() if k in rows[0]})
    return df.with_columns(pl.lit(None, dtype=dtype).alias(name) for name, dtype in RAW_SCHEMA.items()
                           if name not in df.columns).select(list(RAW_SCHEMA))


def first_bad(df: pl.DataFrame, bad: pl.Expr) -> dict | None:
    """The first row matching `bad` (for an error message naming it), or None."""
    hits = df.filter(bad)
    return hits.row(0, named=True) if hits.height else None


# ---------------------------------------------------------------- question ids
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,?!;:])")
_CHOICES_MARK = re.compile(r"\banswer choices\s*:", re.IGNORECASE)
_CHOICE_LABEL = re.compile(r"\(([a-z])\)\s*")


def normalise_question(question: str) -> str:
    """The text a qid hashes: lowercase, single spaces, no space before punctuation, choices sorted.

    The tokenised MAWPS files put a space before punctuation ("beach . she"). Sorting the "Answer Choices: (A) ..
    (B) .." tail makes the id independent of the order choices are shown in, so shuffling never changes a qid.
    """
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(question.lower().split())).strip()
    mark = _CHOICES_MARK.search(text)
    if mark is None:
        return text
    stem, tail = text[: mark.start()].strip(), text[mark.end():]
    options = [o.strip(" ,;") for o in _CHOICE_LABEL.split(tail)[2::2]]
    return f"{stem} || " + " | ".join(sorted(options))


def make_qid(task: str, question: str) -> str:
    """Stable question id: 16 hex chars of blake2b(task key + normalised question)."""
    digest = hashlib.blake2b(f"{task}\x1f{normalise_question(question)}".encode(), digest_size=8)
    return digest.hexdigest()


def qids(task: str, questions: pl.Expr) -> pl.Expr:
    return questions.map_batches(lambda s: pl.Series([make_qid(task, q) for q in s], dtype=pl.String),
                                 return_dtype=pl.String)


def shown_question() -> pl.Expr:
    """The question as the teacher sees it: `stem` with `choices` shown Zero-shot-CoT style."""
    return pl.struct("stem", "choices").map_batches(
        lambda s: pl.Series([show_choices(r["stem"], r["choices"]) for r in s], dtype=pl.String),
        return_dtype=pl.String)


# ---------------------------------------------------------------- gold
def _choice_letter(gold: str | None, choices: list[str] | None) -> str | None:
    """'b', '(B)', 'B)' -> 'B' when B is one of the choices; a gold equal to a choice text -> its letter."""
    if gold is None:
        return None
    letter = gold.upper().strip(" ().:")
    n = len(choices) if choices is not None else len(LETTERS)
    if len(letter) == 1 and letter in LETTERS[:n]:
        return letter
    texts = [c.strip() for c in choices or []]
    return LETTERS[texts.index(gold)] if gold in texts else None


def normalise_gold(df: pl.DataFrame, answer_type: str, field_name: str) -> pl.DataFrame:
    """Rewrite `gold` to its canonical form: number -> canonical decimal, choice -> letter, yesno -> "yes"/"no",
    anything else -> stripped text (math golds must also parse with math-verify). The first bad row raises naming
    file, row and field."""
    gold = pl.col("gold").cast(pl.String).str.strip_chars()
    if answer_type == "number":
        out = df.with_columns(
            gold.map_batches(lambda s: pl.Series([canonical_number(v) for v in s], dtype=pl.String),
                             return_dtype=pl.String).alias("_norm"))
        bad = first_bad(out, pl.col("_norm").is_null())
        if bad:
            raise InputError(f"{bad['where']}: field {field_name!r}: gold {bad['gold']!r} is not a number "
                             "(answer_type 'number' needs digits, e.g. 1600 or 2.5)")
    elif answer_type == "yesno":
        low = gold.str.to_lowercase().str.strip_chars(" .")
        norm = (pl.when(low.is_in(["yes", "true", "1"])).then(pl.lit("yes"))
                .when(low.is_in(["no", "false", "0"])).then(pl.lit("no")))
        out = df.with_columns(norm.alias("_norm"))
        bad = first_bad(out, pl.col("_norm").is_null())
        if bad:
            raise InputError(f"{bad['where']}: field {field_name!r}: gold {bad['gold']!r} is not yes/no")
    elif answer_type == "choice":
        out = df.with_columns(pl.struct(gold.alias("gold"), "choices").map_batches(
            lambda s: pl.Series([_choice_letter(r["gold"], r["choices"]) for r in s], dtype=pl.String),
            return_dtype=pl.String).alias("_norm"))
        bad = first_bad(out, pl.col("_norm").is_null())
        if bad:
            n_bad = len(bad["choices"]) if bad["choices"] is not None else len(LETTERS)
            raise InputError(f"{bad['where']}: field {field_name!r}: gold {bad['gold']!r} is not one of the choice "
                             f"letters {', '.join(LETTERS[:n_bad])} (nor a choice text)")
    elif answer_type == "math":
        out = df.with_columns(gold.map_batches(lambda s: pl.Series([math_gold(v) for v in s], dtype=pl.String),
                                               return_dtype=pl.String).alias("_norm"))
        _check_math_golds(out, field_name)
    else:
        out = df.with_columns(gold.alias("_norm"))
        bad = first_bad(out, pl.col("_norm").is_null() | (pl.col("_norm") == ""))
        if bad:
            raise InputError(f"{bad['where']}: field {field_name!r}: gold is empty")
    return out.with_columns(pl.col("_norm").alias("gold")).drop("_norm")


# A gold made only of words ("yes", "odd", "no solution"), with a run of two letters or more: math-verify would
# read the product y*e*s. Single letters ("x", "B") are math.
_WORDS = re.compile(r"[^\W\d_]+(?:\s+[^\W\d_]+)*")
_TEXT_GROUP = r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}"
# The one use of ':' kept: a ratio of integers whose right side is not two digits (those read as a clock time).
_RATIO = r"^\s*\d+\s*:\s*(?:\d|\d{3,})\s*$"


def math_gold(text: str | None) -> str | None:
    """A `math` gold as the grader must read it: a plain number in scientific notation written out ("1.5e3" ->
    "1500", `written_out`), a gold made only of words read as text ("yes" -> "\\text{yes}"; a choice, yes/no
    or free-text answer type is usually the better fit), anything else as written (its LaTeX and its number of
    decimals are what the grader reads, so "2.50" stays)."""
    if text is None:
        return None
    if SCIENTIFIC.fullmatch(text):
        return written_out(text)
    if _WORDS.fullmatch(text) and re.search(r"[^\W\d_]{2}", text):
        return rf"\text{{{text}}}"
    return text


def _check_math_golds(df: pl.DataFrame, field_name: str) -> None:
    """Every `math` gold must parse with math-verify to a value an answer can match, so a gold that cannot stops the
    load (naming file, row and value) instead of turning into `parse_error` or `timeout` rows at grading: one it
    cannot parse, one that is undefined ("0/0" is nan, "\\frac{1}{0}" complex infinity), and one whose parse or
    evaluation runs out of time ("10^{10^{10^{10}}}": every comparison with it would). A gold with ':' is refused
    unless it is a ratio of integers a:b with b not two digits ("3:4"; math-verify reads it as 3/4, so "\\frac{3}{4}"
    and "6:8" match it): "12:30" would read as 12/30 = 2/5, and a clock time is a string answer. The distinct
    golds go through the grader's worker processes in one batch (a MATH train split, 7,500 golds, takes
    seconds)."""
    from builder.graders import latex

    bad = first_bad(df, pl.col("_norm").is_null() | (pl.col("_norm") == ""))
    if bad:
        raise InputError(f"{bad['where']}: field {field_name!r}: gold is empty")
    norm = pl.col("_norm")
    bad = first_bad(df, norm.str.replace_all(_TEXT_GROUP, "").str.contains(":") & ~norm.str.contains(_RATIO))
    if bad:
        raise InputError(f"{bad['where']}: field {field_name!r}: gold {bad['_norm']!r} has ':', which math-verify "
                         "reads as a division (12:30 as 12/30 = 2/5); a clock time needs answer_type 'string', a "
                         r"ratio is written a:b with integers (3:4) or \frac{a}{b}")
    # Plain numbers ("12", "-3", "0.25", about half of MATH's golds) need no parser.
    distinct = df.filter(~norm.str.contains(r"^-?\d+(?:\.\d+)?$"))["_norm"].unique(maintain_order=True)
    replies = latex.parse_golds(distinct.to_list())
    failed = {}
    for g, (s, p) in replies.items():
        if s == "timeout":
            failed[g] = ("can never grade: math-verify timed out parsing or evaluating it, so every row would grade "
                         "timeout; write it in a simpler form")
        elif s is None and p and p[0]:
            continue
        elif s is None and p and len(p) > 2 and p[2]:
            failed[g] = f"can never grade: {p[2]}"
        else:
            why = s or "math-verify found no expression in it"
            failed[g] = (f"is not a math expression math-verify can parse ({why}); answer_type 'math' needs LaTeX "
                         r"such as \frac{1}{2}, (-\infty, 3] or \text{(B)}")
    if failed:
        bad = first_bad(df, norm.is_in(list(failed)))
        raise InputError(f"{bad['where']}: field {field_name!r}: gold {bad['_norm']!r} {failed[bad['_norm']]}")


# ---------------------------------------------------------------- choices
def _shuffle_seed(seed: int, qid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{qid}".encode(), digest_size=8).digest(), "little")


def shuffle_choices(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Permute each row's choices with a generator seeded by (seed, qid); the gold letter follows its text."""
    new_choices, new_gold = [], []
    columns = (df["qid"].to_list(), df["choices"].to_list(), df["gold"].to_list())
    for qid, choices, gold in zip(*columns, strict=True):
        perm = np.random.default_rng(_shuffle_seed(seed, qid)).permutation(len(choices)).tolist()
        new_choices.append([choices[j] for j in perm])
        new_gold.append(LETTERS[perm.index(LETTERS.index(gold))])
    return df.with_columns(pl.Series("choices", new_choices, dtype=pl.List(pl.String)),
                           pl.Series("gold", new_gold, dtype=pl.String))
