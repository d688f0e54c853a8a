"""Symbolic answers (MATH-style golds: `x^2+1`, `\\text{(B)}`, `(-\\infty, 3]`, `\\{1,2\\}`, `(3, 4)`, matrices,
`\\frac{\\sqrt{3}}{2}`, `10\\%`, `\\$5`), graded by huggingface's math-verify: its `parse` of gold and answer and its
`verify`, in the worker processes of `builder.graders.latex` (its time limit needs a main thread), each distinct
(gold, answer) pair once.

Why math-verify and not the number grader: these golds are sets, intervals, tuples, matrices and expressions whose
equality is symbolic (`x^2+1` is `1+x^2`, `\\frac{1}{2}\\sqrt{3}` is `\\frac{\\sqrt{3}}{2}`), which only a
computer-algebra comparison can tell.

Read (simple and strict): an anchored region is cut to its answer span (`_common.region`); each piece of delimited
math in it (`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`, `\\boxed{}`) is a candidate, else the span itself
(`bare_candidates`): a lone word reads `\\text{Evelyn}`; prose words at its ends are dropped ("12 square units" reads
12) and prose words between values separate candidates, never fuse them ("3 or 4", "3 hours 4 minutes": two values,
`ambiguous`; a lone "and" stays, as math-verify reads "3 and 4" as the set {3, 4}); numbers side by side with only
spaces between ("3 4", which math-verify reads as 3 + 4) do not parse (`wrong_format`). A whole rationale
(`last=True`) is read at its last piece of delimited math only when that piece ends the text (only spaces and
punctuation after it: "Step: $6$. Final: 5." has no answer); otherwise it has no answer. Two candidates with
different values are `ambiguous`; the same value twice ("$\\frac{1}{2}$, i.e. $0.5$") is one.

`pred` is a canonical LaTeX spelling of what math-verify parsed (`_mv_worker.canonical`: sympy's printer and order,
so `x^2+1` and `1+x^2` are both `x^{2} + 1`; "0.5" is `\\frac{1}{2}` where that spelling grades the same), so
majority votes count one value once, and the grader reads it back (it becomes a version's `answer`).

Verdict (`_mv_worker.judge`): a set never matches a tuple or pair (`\\{1,2\\}` vs `(1, 2)`, and a bare list "1, 2",
which reads as a set, vs a pair gold: wrong; math-verify's `verify` equates them whatever its `strict` flag). Against
a plain decimal gold, an answer in closed form (no decimals written) is right when exactly equal or by the shared
precision rule (`builder/graders/precision.py`: the simplest fraction that rounds to the gold, \\frac{1}{3} for
"0.33" but not \\frac{33}{101}; an irrational that rounds to it, \\sqrt{2} for "1.41"; at 2 to 12 places and 2
significant digits). An answer written with decimals compares at max(gold places, its places) ("2.49" is not "2.5",
"2.50" is); an exact gold keeps math-verify's 6 places.

Statuses: a gold math-verify cannot parse is `parse_error` (the tasks stage refuses such golds when it loads, so
this is only reached by frames built elsewhere); an answer it cannot parse is `wrong_format`; its failures are
`timeout` and `parse_error`, never a silent wrong.
"""

from __future__ import annotations

import re

import polars as pl

from builder.graders import latex
from builder.graders._common import BOXED, finish, is_blank, region, status
from builder.graders.base import GRADERS

# Delimited math: $$...$$, $...$ (not an escaped \$), \(...\), \[...\], \boxed{...}. Rust regex has no look-behind:
# an inline $ piece takes the character before it, stripped again by `_LEAD`.
PIECE = (rf"(?s)\$\$.+?\$\$|(?:^|[^\\$])\$(?:[^$\\]|\\.)+\$|\\\(.+?\\\)|\\\[.+?\\\]|{BOXED}")
_LEAD = r"^[^$\\]"
# What may follow the piece that ends a whole rationale: spaces and sentence punctuation (markdown's ** too).
_TRAILING = " \t\r\n.,;:!?*\"'"
# Prose words in an undelimited span: letter runs of two or more not part of a command (\frac), not after a letter,
# and outside braces (\text{Evelyn Smith}).
_PROSE = re.compile(r"(?<![\\{])(?<![^\W\d_])[^\W\d_]{2,}\b")
_LONE_WORD = re.compile(r"[\s(]*([^\W\d_]+)[\s).]*")
_ENDS = " \t\r\n.,;:!?"
_WORD_GOLD = re.compile(r"\\text\s*\{|^[\s(]*[^\W\d_]{2,}")


def word_gold(gold: str | None) -> bool:
    """Whether a gold is a word (`\\text{Evelyn}`, "Evelyn"), so that a lone word can answer it."""
    return bool(gold) and bool(_WORD_GOLD.search(gold))


def bare_candidates(span: str | None, *, words: bool = True) -> list[str]:
    """The candidates of an undelimited answer span: a lone word is `\\text{word}` ("Evelyn") where the gold is a
    word (`words`; elsewhere a lone word, "The", is no answer); otherwise its prose
    words are dropped at the ends ("12 square units" reads 12) and separate candidates between values ("3 or 4",
    "3 hours 4 minutes" are two candidates, so `ambiguous`, never 7). A lone "and" between values stays, since
    math-verify reads "3 and 4" as the set {3, 4}. Candidates keep only those with a letter or digit."""
    if span is None:
        return []
    lone = _LONE_WORD.fullmatch(span)
    if lone:
        word = lone.group(1)
        if len(word) == 1:
            return [word]  # a variable or a constant: x, e, i
        return [rf"\text{{{word}}}"] if words else []
    words = []
    for m in _PROSE.finditer(span):
        before = span[:m.start()]
        if before.count("{") - before.count(r"\{") > before.count("}") - before.count(r"\}"):
            continue  # inside a group: \text{Evelyn Smith}
        words.append(m)
    # Runs of prose words (only spaces and punctuation between them) are the separators.
    runs: list[list] = []
    for m in words:
        if runs and not span[runs[-1][-1].end():m.start()].strip(_ENDS):
            runs[-1].append(m)
        else:
            runs.append([m])
    pieces, cut = [], 0
    for run in runs:
        if len(run) == 1 and run[0].group().lower() == "and":
            continue  # "3 and 4": a set, read by math-verify
        pieces.append(span[cut:run[0].start()])
        cut = run[-1].end()
    pieces.append(span[cut:])
    out = [p.strip(_ENDS) for p in pieces]
    return [p for p in out if re.search(r"[^\W_]", p)]


def _candidates(frame: pl.DataFrame, *, last: bool) -> pl.DataFrame:
    """(_i, _k, _cand): the candidate answer strings of each row, in order."""
    text = pl.col("_text")
    raw = text.str.extract_all(PIECE)
    pieces = raw.list.eval(pl.element().str.replace(_LEAD, ""))
    if last:
        # A whole rationale: its last piece, and only when the piece ends the text ("$6$. Final: 5." has no answer).
        ends = text.str.strip_chars_end(_TRAILING).str.ends_with(raw.list.last())
        pieces = pl.when(ends).then(pieces.list.slice(-1, 1)).otherwise(pieces.list.slice(0, 0))
    bare = pl.struct(text, "_g").map_batches(
        lambda s: pl.Series([bare_candidates(r["_text"], words=word_gold(r["_g"])) for r in s],
                            dtype=pl.List(pl.String)), return_dtype=pl.List(pl.String))
    bare = pl.when(pl.col("anchored")).then(bare)
    cands = pl.when(raw.list.len() > 0).then(pieces).otherwise(bare)
    n = frame.height
    return (frame.select(pl.int_range(n, dtype=pl.UInt32).alias("_i"), cands.alias("_cand"))
            .filter(pl.col("_cand").list.len() > 0)
            .with_columns(pl.int_ranges(pl.col("_cand").list.len(), dtype=pl.UInt32).alias("_k"))
            .explode("_cand", "_k"))


@GRADERS.register("math")
def grade_math(frame: pl.DataFrame, *, last: bool = False) -> pl.DataFrame:
    """Grade symbolic answers with math-verify (module docstring)."""
    frame = frame.with_columns(region(last=last).alias("_text"), pl.col("gold").str.strip_chars().alias("_g"))
    n = frame.height
    cands = _candidates(frame, last=last).join(
        frame.select(pl.int_range(n, dtype=pl.UInt32).alias("_i"), "_g"), on="_i", how="left")
    pairs = cands.select("_g", "_cand").unique().filter(pl.col("_g").is_not_null() & (pl.col("_g") != ""))
    replies = latex.verify_pairs(list(pairs.iter_rows()))
    # Golds of rows without a candidate are checked too: a bad gold is parse_error whatever the answer.
    seen = {g for g, _ in replies}
    lone = [g for g in frame["_g"].drop_nulls().unique().to_list() if g and g not in seen]
    gold_replies = latex.parse_golds(lone)

    rows = [(g, c, s, *(p if p else (None, None, None))) for (g, c), (s, p) in replies.items()]
    verdicts = pl.DataFrame(rows, schema={"_g": pl.String, "_cand": pl.String, "_fail": pl.String,
                                          "_gold_ok": pl.Boolean, "_p": pl.String, "_ok": pl.Boolean}, orient="row")
    per = cands.join(verdicts, on=["_g", "_cand"], how="left").sort("_i", "_k")
    pick = pl.col("_p").filter(pl.col("_p").is_not_null())
    agg = per.group_by("_i").agg(
        pl.col("_fail").drop_nulls().first().alias("_failed"),
        pl.col("_gold_ok").drop_nulls().all().alias("_gold_ok"),
        (pick.last() if last else pick.first()).alias("_pred"),
        pl.col("_ok").filter(pl.col("_p").is_not_null()).first().alias("_correct"),
        pl.col("_p").drop_nulls().n_unique().alias("_n"),
        pl.len().alias("_cands"),
    )
    golds = pl.DataFrame([(g, s, p[0] if p else None) for g, (s, p) in gold_replies.items()],
                         schema={"_g": pl.String, "_gfail": pl.String, "_gok": pl.Boolean}, orient="row")
    frame = (frame.with_columns(pl.int_range(n, dtype=pl.UInt32).alias("_i"))
             .join(agg, on="_i", how="left", maintain_order="left")
             .join(golds, on="_g", how="left", maintain_order="left"))
    gold_ok = (~is_blank(pl.col("_g")) & pl.col("_gold_ok").fill_null(True) & pl.col("_gok").fill_null(True)
               & pl.col("_gfail").is_null())
    pred = pl.col("_pred")
    grade_status = status(pred, gold_ok, failed=pl.col("_failed"),
                          wrong_format=pl.col("_cands").fill_null(0).gt(0) & pred.is_null(),
                          ambiguous=pl.col("_n") > 1)
    return finish(frame, pred, pl.col("_correct"), grade_status)
