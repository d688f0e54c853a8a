"""Grade stage: samples + questions -> graded (extracted answer, verdict and status per sample).

In: the `samples` table and the `questions` table. Out: the `graded` table (schemas/graded.table.json).
Grading is vectorised: `grade_frame` cuts the answer region with polars string expressions, then runs one grader
(`builder.graders.GRADERS`) per answer type over all its rows at once; Python runs only in rare fallbacks.
`question_stats` gives pass rate, majority answer and agreement per question (adaptive sampling, the card).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import polars as pl

from builder.errors import InputError
from builder.graders import AMBIGUOUS, GRADERS, NO_ANSWER, OK, PARSE_ERROR, TIMEOUT, WRONG_FORMAT, latex
from builder.graders._common import BRACED, answer_span, is_blank, qualified
from builder.prompts import student_answer_expr
from builder.schemas import validate
from builder.tasks import PAPER_TASKS
from builder.teachers.base import FAILED

if TYPE_CHECKING:
    from builder.recipe import GradingConfig

log = logging.getLogger(__name__)

MODES = ("auto", "answer_completion", "rationale", "student")

# Answer type of each of the 12 paper tasks, from the task registry (date_understanding is graded by letter).
TASK_ANSWER_TYPES: dict[str, str] = {task.name: task.answer_type for task in PAPER_TASKS}

# "The answer is", "the final answer:", "Answer (arabic numerals) is", "answer would be", "answer =". A final answer
# labelled as such ("Final answer: ...") is marked apart: it counts even when nothing in it can be read.
ANSWER_ANCHOR = r"(?i)\banswer\s*(?:\([^)\n]{0,40}\)\s*)?(?:is|was|would be|will be|should be|:|=)"
FINAL_ANCHOR = r"(?i)\bfinal\s+answer\s*(?:\([^)\n]{0,40}\)\s*)?(?:is|was|:|=)"
BOXED_CONTENT = rf"\\(?:boxed|fbox)\s*\{{({BRACED})\}}"
# A revision opens a sentence or a clause, maybe after an interjection ("No wait", "Hmm, actually", "However, this is
# wrong"): "She had to wait 5 minutes" is none. Its words stay with its text (before `_MARK_END`), to classify it.
_REVISION_WORDS = (r"(?:actually|wait|correction|on second thought|scratch that|hold on|oops|re-?checking"
                   r"|it should (?:be|have been)|i (?:think i )?(?:miscalculated|miscounted|made a mistake|was wrong)"
                   r"|(?:that|this|it)(?:'s|\s+is)\s+(?:not right|not correct|wrong|incorrect)"
                   r"|(?:that|this|it)\s+can(?:'|no)?t\s+be\s+right"
                   r"|(?:that|this|it)\s+does(?:n't|\s+not)\s+seem\s+right"
                   r"|let me (?:recompute|recalculate|redo))\b")
_INTERJECTION = r"(?:(?:no|oh(?:\s+no)?|hmm+|ok(?:ay)?|ah|but|so|however|oops)[,!.]?\s+)?"
_OPENER = r"(^|[.!?;,]\s+|\n\s*(?:[-*\u2022]\s+)?|\(\s*|\s[-\u2013\u2014]\s+)"  # a sentence, clause, bullet or aside
REVISION = rf"(?i){_OPENER}([*_\"']*{_INTERJECTION}{_REVISION_WORDS})"


# Literal hints, case-sensitive (each word without its first letter, and in capitals), three times faster than the
# patterns: an answer or a box anywhere; a revision only matters where the region opens with the answer (a
# rationale's revisions count only after an "answer is" or a box, which the first hint finds).
def _hint(*words: str) -> str:
    return "|".join(f"{w[1:]}|{w.upper()}" for w in words)


_ANSWER_HINT = _hint("answer", "boxed", "fbox")
_REVISION_HINT = _hint("actually", "wait", "correction", "thought", "scratch", "should", "hold on", "oops",
                       "checking", "miscalculated", "miscounted", "mistake", "wrong", "not right", "not correct",
                       "incorrect", "be right", "seem right", "recompute", "recalculate", "redo")
# A restatement of an answer: a short phrase ending its sentence, after "it's", "the correct total is", "I mean",
# "no," and the like, that holds an answer-like token: "Correction: 42.", "Actually, it's 6 apples.", "Wait, (B).",
# "Wait, no." (for a yes/no answer), "It's 5.5." "Wait, 2 more.", "Wait, maybe 5.", "Wait, that's it." restate nothing.
_RESTATES = re.compile(
    rf"[*_\"'(]*(?:{_INTERJECTION}{_REVISION_WORDS})?[\s,:;.!*)\-]*(?:no[,.:!]\s+)?"
    r"(?:(?:it|that)(?:'s|\s+is|\s+was|\s+should\s+(?:be|have\s+been))\s+|i\s+mean,?\s+"
    r"|the\s+(?:correct\s+|right\s+|actual\s+|final\s+)?(?:answer|total|result|number|count|value)\s+is\s+)?"
    r"(?P<value>[^\s.!?)](?:[^.!?\n)]|\.\d){0,60}?)\s*\)?(?:[.!]\)?(?:\s|$)|\n|$)", re.IGNORECASE)
_ANSWER_LIKE = re.compile(r"\d|\\|\$|^\(?[A-J]\)?$|^[\"\u201c].+[\"\u201d]$")
_YES_NO = re.compile(r"(?i)^(?:yes|no|true|false)$")
# Words that make a short phrase something other than an answer: relative amounts, operations, steps, time, hedges.
_NOT_AN_ANSWER = re.compile(
    r"(?i)~|\b(?:is|was|are|were|be|been|would|could|might|may|not|let|me|if|because|since|so|more|less|fewer|extra"
    r"|plus|minus|times|divide|divided|multiply|add|subtract|step|steps|sec|second|seconds|moment|minutes?|hours?"
    r"|days?|weeks?|sure|percent|doubt|problem|kidding|way|off|left|ago|later|per|of|by|to|for|in|at|maybe"
    r"|perhaps|probably|about|around|roughly|approximately|nearly|almost|\w+ish)\b")
RESTATED_WORDS = 3
# A revision that takes the answers before it back: "Wait, that's not right.", "Wait, that's not 5."
_RETRACTS = re.compile(r"(?i)\b(?:not (?:right|correct|\d)|isn't|is not|can(?:'|no)?t be right|seem right|wrong"
                       r"|incorrect|mistake|miscalculat\w*|miscount\w*|error)\b")
# A revision that only wonders: "Wait, is it 5?", "Wait, what if the answer is 5?", "Wait, maybe 5?"
_TENTATIVE = re.compile(r"(?i)\?|\b(?:what if|maybe|perhaps|suppose|supposing|is it|could it|might it|would it"
                        r"|or is|if)\b")
_MARK_END = "\x01"
# A text that runs on into a question of its own ("6.\n\nQ: John has 5 apples...") answers that one after it.
NEW_QUESTION = r"\n\s*(?:Q|q|Question|question)(?:\s*\d+)?\s*[:.)]"
_CUT = "\x00"

CHOICE_TYPES = frozenset({"choice", "date"})  # graders that read choices (parsed from the question when absent)
OUT_COLUMNS = ("pred", "correct", "grade_status", "grader")


def _marked(text: pl.Expr) -> pl.Expr:
    """`text` with each final-answer marker replaced by NUL and a kind letter: `B` opens a \\boxed{} content (`E`
    closes it), `F` follows a "final answer:", `A` an "answer is", `R` a revision (its words, then `_MARK_END`, then
    what it says)."""
    text = text.str.replace_all(rf"[{_CUT}{_MARK_END}]", "")  # a NUL in the text itself must not forge a marker
    return (text.str.replace_all(BOXED_CONTENT, f"{_CUT}B${{1}}{_CUT}E").str.replace_all(FINAL_ANCHOR, f"{_CUT}F")
            .str.replace_all(ANSWER_ANCHOR, f"{_CUT}A").str.replace_all(REVISION, f"${{1}}{_CUT}R${{2}}{_MARK_END}"))


def cut_new_question(text: pl.Expr) -> pl.Expr:
    """`text` up to a question of its own (`NEW_QUESTION`)."""
    cut = text.str.find(NEW_QUESTION)
    return pl.when(cut.is_null()).then(text).otherwise(text.str.slice(0, cut))


def _neighbour(step: int) -> pl.Expr:
    """The text of the segment `step` places on in the same row, without its kind letter (segments are exploded in
    row order, so a plain shift is one)."""
    seg = pl.col("_seg").shift(-step)
    return pl.when(pl.col("_row").shift(-step) == pl.col("_row")).then(seg.str.slice(1))


def restates(text: str, *, yesno: bool) -> bool:
    """Whether a revision (its words and what follows) restates an answer (`_RESTATES`); "yes"/"no" count only for
    a yes/no answer ("Wait, yes." after a number confirms it)."""
    m = _RESTATES.match(text[:200])  # a restatement is short: never scan a long text for one
    if not m:
        return False
    value = m["value"].strip()
    if len(value.split()) > RESTATED_WORDS or _NOT_AN_ANSWER.search(value):
        return False
    return bool(_ANSWER_LIKE.search(value)) or (yesno and bool(_YES_NO.match(value)))


def _first_sentence(text: str) -> tuple[str, str]:
    """(the first sentence of `text`, the rest)."""
    parts = re.split(r"(?<=[.!?])\s+|\n", text[:300], maxsplit=1)
    return parts[0], (parts[1] if len(parts) > 1 else "")


def revision(text: str, *, yesno: bool) -> tuple[bool, bool, bool, str | None]:
    """How a revision (its words and what follows, up to the next marker) revises: (tentative, restates, takes back,
    the restated text when it takes back and then restates: "Wait, that's wrong. It's 5.")."""
    first, rest = _first_sentence(text)
    back = bool(_RETRACTS.search(first))
    again = rest if back and restates(rest, yesno=yesno) else None
    return bool(_TENTATIVE.search(first)), restates(text, yesno=yesno), back, again


def candidates(work: pl.DataFrame) -> pl.DataFrame:
    """Every final answer candidate of each row, one grader row each: `work`'s columns with `text` cut to the
    candidate, plus `_cand` (its index), `_n` (the row's number of candidates), `anchored`, `_last`, `_final` (a
    labelled final answer or a box, last of the row) and `_ctx` (a box's sentence, for bounds and conditions).

    `work` has `_row`, `text` (the region) and `_opens` (the region starts with the answer: a stage-2 completion, a
    student's answer part). Candidates are the region's start when it opens with the answer, each \\boxed{} content
    and the text after each "answer is" / "final answer:". A revision (`REVISION`) after a candidate replaces the
    candidates before it when answers follow it, when it restates one (`restates`: "41. Correction: 42." reads 42),
    or when it takes the answer back ("Wait, that's not right." leaves none); one that only wonders ("Wait, is it
    \\boxed{5}?") or says something else is an ordinary candidate: a rival when it names a value, nothing when it
    names none ("Wait, let me verify."). A region with no candidate (a rationale that never states its answer) is
    read whole, its last value (`_last`, unanchored).
    """
    multi = work.select(pl.col("text").str.contains(_ANSWER_HINT).fill_null(False)).to_series()
    opens = work["_opens"] & ~multi
    if opens.any():
        revised = work.filter(opens).select(pl.col("text").str.contains(_REVISION_HINT).fill_null(False))
        multi = multi.scatter(opens.arg_true(), revised.to_series())
    one = [pl.lit(0, pl.UInt32).alias("_cand"), pl.lit(1, pl.UInt32).alias("_n")]
    plain = work.filter(~multi).with_columns(*one, pl.col("_opens").alias("anchored"),
                                             (~pl.col("_opens")).alias("_last"), pl.lit(True).alias("_final"),
                                             pl.lit(None, pl.String).alias("_ctx"))
    plain = plain.drop("_opens")
    if not multi.any():
        return plain
    kind = pl.col("_seg").str.head(1)
    primary = kind.is_in(["A", "B", "F"]) | ((pl.col("_pos") == 0) & pl.col("_opens"))
    marked = work.filter(multi).select("_row", "_opens", (pl.col("answer_type") == "yesno").alias("_yesno"),
                                       _marked(pl.col("text")).str.split(_CUT).alias("_seg"))
    # a rationale's text before its first marker is reasoning, not a candidate: dropped before exploding, but its
    # last words kept (`_pre`) for a box right after it ("... is at least \\boxed{5}")
    marked = marked.with_columns(pl.when(~pl.col("_opens")).then(pl.col("_seg").list.first().str.slice(-40))
                                 .alias("_pre"))
    segs = (
        marked.with_columns(pl.when(pl.col("_opens")).then("_seg").otherwise(pl.col("_seg").list.slice(1)))
        .with_columns((pl.int_ranges(pl.col("_seg").list.len(), dtype=pl.UInt32)
                       + (~pl.col("_opens")).cast(pl.UInt32)).alias("_pos"))
        .explode("_seg", "_pos")
        .with_columns(pl.when(pl.col("_pos") == 0).then(pl.lit("S") + pl.col("_seg")).otherwise("_seg").alias("_seg"))
        .with_columns(primary.alias("_primary"))
        .with_columns((pl.col("_primary") | ((kind == "R") & (pl.col("_primary").cast(pl.UInt32).cum_sum()
                                                               .over("_row") > 0))).alias("_is"),
                      # a box in its sentence, for open bounds and conditions: "at least $\\boxed{5}$", "\\boxed{5}
                      # if it rains" (the words before it up to a digit or a sentence end, the rest of its line)
                      pl.when(kind == "B").then(pl.concat_str(
                          pl.coalesce(_neighbour(-1).str.slice(-40), pl.when(pl.col("_pos") == 1).then("_pre"))
                          .str.extract(r"([^\d.!?]*)$", 1).fill_null(""),
                          pl.lit(" "), pl.col("_seg").str.slice(1),
                          _neighbour(1).str.slice(0, 80).str.extract(r"^([^\n]*)", 1)
                          .fill_null(""))).alias("_ctx"))
    )
    # A revision after a candidate counts when answers follow it, it restates one, or it takes the answer back; the
    # last that counts drops the candidates before it. Its own text is then the candidate when it restates one, and
    # an empty one (no answer) when it only took the answer back.
    segs = segs.with_columns(pl.when("_primary").then("_pos").max().over("_row").alias("_lastp"))
    is_rev = pl.col("_is") & (kind == "R")
    asked = segs.select(is_rev).to_series()
    classes = pl.DataFrame({"_tent": [False] * segs.height, "_said": [False] * segs.height,
                            "_back": [False] * segs.height, "_again": [None] * segs.height},
                           schema={"_tent": pl.Boolean, "_said": pl.Boolean, "_back": pl.Boolean, "_again": pl.String})
    if asked.any():
        rows = segs.filter(asked).select(pl.col("_seg").str.slice(1).str.replace(_MARK_END, "", literal=True),
                                         "_yesno")
        found = pl.DataFrame([revision(t, yesno=y) for t, y in rows.iter_rows()], orient="row",
                             schema=classes.schema)
        idx = asked.arg_true()
        classes = classes.with_columns(*(classes[c].scatter(idx, found[c]) for c in classes.columns))
    segs = pl.concat([segs, classes], how="horizontal")
    # Answers after a revision replace those before it, unless it only wonders ("Wait, is it \\boxed{5}?").
    followed = (pl.col("_lastp") > pl.col("_pos")) & ~pl.col("_tent")
    counts = is_rev & (followed | (pl.col("_said") & ~pl.col("_tent")) | pl.col("_back"))
    segs = segs.with_columns(pl.when(counts).then("_pos").max().over("_row").alias("_rev"))
    rev = pl.col("_rev")
    later = rev.is_null() | (pl.col("_pos") > rev)
    own = (pl.col("_pos") == rev) & ~followed & (pl.col("_said") | pl.col("_back"))
    # A revision that counts for none of those is an ordinary candidate: a rival when it names a value ("Wait, could
    # it be 5?"), nothing when it names none ("Wait, let me verify.").
    segs = segs.filter((pl.col("_primary") & later) | own | (is_rev & ~counts & later))
    said_text = pl.col("_seg").str.replace(rf"^R[^{_MARK_END}]*{_MARK_END}", "")
    # a revision that takes the answer back says nothing itself, unless it then restates one ("...wrong. It's 5.")
    said_text = pl.when(pl.col("_back")).then(pl.col("_again").fill_null("")).otherwise(said_text)
    text = pl.when(kind == "R").then(said_text).otherwise(pl.col("_seg").str.slice(1))
    found = segs.select(
        "_row", pl.int_range(pl.len(), dtype=pl.UInt32).over("_row").alias("_cand"),
        pl.len().over("_row").cast(pl.UInt32).alias("_n"), text.alias("text"),
        pl.lit(True).alias("anchored"), pl.lit(False).alias("_last"),
        # the last answer stated as such ("answer is", a box): a rival even when nothing in it can be read
        (kind.is_in(["B", "F"]) & (pl.col("_pos") == pl.col("_lastp"))).alias("_final"), "_ctx")
    rest = work.filter(multi).drop("text", "_opens")
    found = found.join(rest, on="_row", how="inner")
    # A rationale with markers but no candidate (a revision before any answer) is read whole, as if unmarked.
    none = work.filter(multi).join(found.select("_row"), on="_row", how="anti").with_columns(
        *one, pl.lit(False).alias("anchored"), pl.lit(True).alias("_last"), pl.lit(True).alias("_final"),
        pl.lit(None, pl.String).alias("_ctx"))
    return pl.concat([plain, found.select(plain.columns), none.select(plain.columns)])


def combine(graded: pl.DataFrame) -> pl.DataFrame:
    """One verdict per `_row` from its candidates' verdicts (`graded` has `_text`, the candidate's text, and
    `_final`, whether it is the last answer stated as such): one distinct answer is the answer; two or more, or a
    hedged candidate, are `ambiguous`. An earlier candidate that states nothing readable ("the answer is that...", a
    revision that only says "wait") does not count; one the grader refused though it holds a value (`$2\\pi r$` for a
    number, a letter beyond the choices), and the final one whatever it holds ("Final answer: cannot be determined"),
    are rival answers. A gold or parser failure wins, so it is never hidden."""
    status = pl.col("grade_status")
    # a value in the answer span, not in a reason after it; a math delimiter ("is \\(\\boxed{A}\\)") is none
    held = answer_span(pl.col("_text")).str.replace_all(r"\\[()\[\]]|\$", "").str.contains(r"[\d\\]")
    refused = (status.is_in([WRONG_FORMAT, NO_ANSWER])
               & ((status == WRONG_FORMAT) & (pl.col("pred").is_not_null() | held) | pl.col("_final")))
    ok = status == OK
    agg = graded.sort("_row", "_cand").group_by("_row", maintain_order=True).agg(
        (status == PARSE_ERROR).any().alias("_pe"),
        (status == TIMEOUT).any().alias("_to"),
        (status == AMBIGUOUS).any().alias("_amb"),
        pl.col("pred").filter(ok).n_unique().alias("_n"),
        refused.sum().alias("_refused"),
        pl.col("pred").filter(status.is_in([OK, AMBIGUOUS, PARSE_ERROR, TIMEOUT]) | refused).last().alias("pred"),
        pl.col("correct").filter(ok).last().alias("_c"),
        status.last().alias("_s"),
        pl.col("grader").first(),
    )
    values = pl.col("_n") + pl.col("_refused")
    verdict = (pl.when("_pe").then(pl.lit(PARSE_ERROR)).when("_to").then(pl.lit(TIMEOUT))
               .when(pl.col("_amb") | (values > 1)).then(pl.lit(AMBIGUOUS))
               .when(pl.col("_n") == 1).then(pl.lit(OK))
               .when(pl.col("_refused") > 0).then(pl.lit(WRONG_FORMAT)).otherwise("_s"))
    return agg.select("_row", "pred", ((verdict == OK) & pl.col("_c").fill_null(False)).alias("correct"),
                      verdict.alias("grade_status"), "grader")


def _bounded_boxes(part: pl.DataFrame, out: pl.DataFrame) -> pl.DataFrame:
    """`out` with a \\boxed{} answer `ambiguous` where its sentence (`_ctx`) bounds or conditions it, which the grader,
    reading the box's content, cannot see."""
    boxed = part["_ctx"].is_not_null()
    if not boxed.any():
        return out
    ctx = part.filter(boxed).select(pl.col("_ctx").alias("text"), "anchored", "gold", "choices")
    hedged = pl.Series([False] * part.height).scatter(boxed.arg_true(), qualified(ctx))
    return out.with_columns(
        (pl.col("correct") & ~hedged).alias("correct"),
        pl.when(hedged & (pl.col("grade_status") == OK)).then(pl.lit(AMBIGUOUS)).otherwise("grade_status")
        .alias("grade_status"))


def choices_from_question(question: pl.Expr) -> pl.Expr:
    """Choices listed in the question text after any "Answer Choices:" / "answer choices" / "Options:" / "Choices:"
    spelling, labelled "(A)" or "(a)"; null when there are none."""
    tail = question.str.extract(r"(?is)(?:answer\s+)?(?:choices|options)\s*:?\s*(\(\s*[A-Ja-j]\s*\).*)$", 1)
    parts = tail.str.replace_all(r"\s*\(\s*[A-Ja-j]\s*\)\s*", _CUT).str.split(_CUT).list.slice(1)
    parts = parts.list.eval(pl.element().str.strip_chars())
    return pl.when(parts.list.len() > 0).then(parts)


def grade_frame(df: pl.DataFrame, *, mode: str = "auto") -> pl.DataFrame:
    """Grade every row of `df`; return `df` plus `pred`, `correct`, `grade_status` and `grader`.

    Args:
        df: columns answer_type, gold, rationale, answer_completion (nullable; may be absent) and optionally
            choices (list[str]; parsed from "Answer Choices:" in `question` when absent or null).
        mode: where the answer is read. "answer_completion": the Zero-shot-CoT stage-2 completion, which opens
            with the answer. "rationale": inline answers of chat teachers: every \\boxed{} and every "answer
            is"/"Answer:" is a final answer candidate, else the last value of the whole rationale. "auto": the
            answer completion when it is non-empty, else as "rationale". "student": a Fine-tune-CoT student's
            output in the `rationale` column, its answer part (`builder.prompts.student_answer`, the text after
            the last separator) opening with the answer. In every mode the candidates are combined by one rule
            (`candidates`, `combine`): one distinct answer is the answer, two are `ambiguous`, and an explicit
            revision ("actually", "wait", "it should be") makes the later one the answer.

    Raises:
        ValueError: unknown mode, missing column, null gold, or an unknown answer type (naming the row).
    """
    if mode not in MODES:
        raise ValueError(f"unknown grading mode {mode!r}; valid: {', '.join(MODES)}")
    for col in ("answer_type", "gold", "rationale"):
        if col not in df.columns:
            raise ValueError(f"grading needs column {col!r}; found columns {df.columns}")
    for col in ("answer_type", "gold"):
        if df[col].null_count():
            row = df.select(pl.col(col).is_null().arg_max()).item()
            raise ValueError(f"row {row}: field {col!r} is null; every row needs a {col}")
    unknown = df.filter(~pl.col("answer_type").is_in(GRADERS.names()))
    if unknown.height:
        row = df.select((~pl.col("answer_type").is_in(GRADERS.names())).arg_max()).item()
        raise ValueError(f"row {row}: field 'answer_type' is {unknown['answer_type'][0]!r}; "
                         f"valid: {', '.join(GRADERS.names())}")

    has_choices, has_question = "choices" in df.columns, "question" in df.columns
    base = df.select(
        pl.int_range(df.height, dtype=pl.UInt32).alias("_row"),
        pl.col("answer_type"),
        pl.col("gold").cast(pl.String),
        pl.col("rationale").cast(pl.String),
        (pl.col("answer_completion") if "answer_completion" in df.columns else pl.lit(None)).cast(pl.String)
        .alias("_completion"),
        (pl.col("choices") if has_choices else pl.lit(None)).cast(pl.List(pl.String)).alias("choices"),
        (pl.col("question") if has_question else pl.lit(None)).cast(pl.String).alias("_question"),
    )
    # Each row's region and whether it opens with the answer; rationale regexes run only on the rows that use them.
    completion = (pl.col("_completion"), pl.lit(True))
    if mode == "answer_completion":
        region, opens = completion
    elif mode == "student":
        region, opens = student_answer_expr(pl.col("rationale")), pl.lit(True)
    elif mode == "rationale":
        region, opens = pl.col("rationale"), pl.lit(False)
    else:
        use_c = ~is_blank(pl.col("_completion"))
        region, opens = pl.when(use_c).then(pl.col("_completion")).otherwise(pl.col("rationale")), use_c
    base = base.select("_row", "answer_type", "gold", "choices", cut_new_question(region).alias("text"),
                       opens.alias("_opens"), "_question")
    if has_question:  # choice rows without choices read them from the question, once, before any row is exploded
        need = base.select(pl.col("answer_type").is_in(list(CHOICE_TYPES)) & pl.col("choices").is_null()).to_series()
        if need.any():
            parsed = base.filter(need).select("_row", choices_from_question(pl.col("_question")).alias("_parsed"))
            base = (base.join(parsed, on="_row", how="left", maintain_order="left")
                    .with_columns(pl.coalesce("choices", "_parsed").alias("choices")).drop("_parsed"))
    work = candidates(base.drop("_question"))

    if work.select((pl.col("answer_type") == "number") & ~pl.col("_last")
                   & pl.col("text").str.contains(r"[\\^]")).to_series().any():
        latex.warm()  # the expression parser's workers import math-verify while the plain rows are graded
    parts = []
    groups = work.partition_by(["answer_type", "_last"], as_dict=True).items()
    # Number rows last: math-verify's workers (warmed above) finish importing while the other types are graded.
    for (answer_type, last_flag), part in sorted(groups, key=lambda kv: kv[0][0] == "number"):
        out = GRADERS.get(answer_type)(part.select("text", "anchored", "gold", "choices"), last=bool(last_flag))
        out = _bounded_boxes(part, out)
        grader = part.select(pl.col("answer_type").alias("grader"))
        keys = part.select("_row", "_cand", "_n", pl.when(pl.col("_n") > 1).then("text").alias("_text"), "_final")
        parts.append(pl.concat([keys, out, grader], how="horizontal"))
    schema = {"_row": pl.UInt32, "pred": pl.String, "correct": pl.Boolean, "grade_status": pl.String,
              "grader": pl.String}
    if not parts:
        graded = pl.DataFrame(schema=schema)
    else:
        graded = pl.concat(parts)
        single = graded.filter(pl.col("_n") == 1).select(*schema)
        graded = pl.concat([single, combine(graded.filter(pl.col("_n") > 1))]).sort("_row")
    out = df.drop([c for c in OUT_COLUMNS if c in df.columns]).hstack(graded.drop("_row"))
    if "finish_reason" in out.columns:  # the engine refused the request (teachers' FAILED): nothing was answered
        refused = pl.col("finish_reason") == FAILED
        out = out.with_columns(pl.when(refused).then(pl.lit(None, pl.String)).otherwise("pred").alias("pred"),
                               pl.when(refused).then(False).otherwise("correct").alias("correct"),
                               pl.when(refused).then(pl.lit(NO_ANSWER)).otherwise("grade_status").alias("grade_status"))
    return out


def run(samples: pl.DataFrame, questions: pl.DataFrame, cfg: GradingConfig) -> pl.DataFrame:
    """Join samples with their questions and grade them; returns the validated `graded` table.

    Raises:
        InputError: a sample's qid is not among the questions.
        SchemaError: the result does not match schemas/graded.table.json.
    """
    q_cols = ["qid", "task", "question", "gold", "answer_type", "choices"]
    q = questions.select([c for c in q_cols if c in questions.columns])
    df = samples.drop([c for c in q_cols[1:] if c in samples.columns]).join(q, on="qid", how="left",
                                                                             maintain_order="left")
    missing = df.filter(pl.col("task").is_null())
    if missing.height:
        row = df.select(pl.col("task").is_null().arg_max()).item()
        raise InputError(f"samples row {row}: field 'qid' = {missing['qid'][0]!r} is not in the questions table "
                         f"({missing.height} samples without a question); grade samples with the questions they "
                         "were sampled from")
    graded = grade_frame(df, mode=cfg.mode)
    counts = graded.group_by("grade_status").len().sort("grade_status").rows()
    log.info("graded %d samples: %d correct; status %s", graded.height, int(graded["correct"].sum()), dict(counts))
    return validate(graded, "graded", where="grade stage")


def question_stats(graded: pl.DataFrame) -> pl.DataFrame:
    """Per question: task, n_samples, n_correct, pass_rate, majority, majority_correct, agreement.

    `majority` is the most common non-null pred (ties go to the smallest pred, so the result is stable);
    `agreement` is the share of ALL the question's samples whose pred equals it (0.0 when no sample answered).
    """
    per_q = graded.group_by("qid", maintain_order=True).agg(
        pl.col("task").first(),
        pl.len().cast(pl.Int64).alias("n_samples"),
        pl.col("correct").sum().cast(pl.Int64).alias("n_correct"),
    )
    votes = (
        graded.filter(pl.col("pred").is_not_null())
        .group_by("qid", "pred").agg(pl.len().alias("_votes"), pl.col("correct").any().alias("majority_correct"))
        .sort(["qid", "_votes", "pred"], descending=[False, True, False])
        .group_by("qid", maintain_order=True).first()
        .rename({"pred": "majority"})
    )
    return per_q.join(votes, on="qid", how="left", maintain_order="left").select(
        "qid", "task", "n_samples", "n_correct",
        (pl.col("n_correct") / pl.col("n_samples")).alias("pass_rate"),
        "majority",
        pl.col("majority_correct").fill_null(False),
        (pl.col("_votes").fill_null(0) / pl.col("n_samples")).alias("agreement"),
    )
