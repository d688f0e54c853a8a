"""Grade stage: samples + questions -> graded (extracted answer, verdict and status per sample).

In: the `samples` table and the `questions` table. Out: the `graded` table (schemas/graded.table.json).
Grading is vectorised: `grade_frame` cuts the answer region with polars string expressions, then runs one grader
(`builder.graders.GRADERS`) per answer type over all its rows at once; Python runs only in rare fallbacks.
`question_stats` gives pass rate, majority answer and agreement per question (adaptive sampling, the card).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import polars as pl

from builder.errors import InputError
from builder.graders import GRADERS, latex
from builder.graders._common import NO_ANSWER, is_blank
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

# "The answer is", "the final answer:", "Answer (arabic numerals) is", "answer would be", "answer =".
ANSWER_ANCHOR = r"(?i)\banswer\s*(?:\([^)\n]{0,40}\)\s*)?(?:is|was|would be|will be|should be|:|=)"
BOXED = r"\\(?:boxed|fbox)\s*\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"
_CUT = "\x00"

CHOICE_TYPES = frozenset({"choice", "date"})  # graders that read choices (parsed from the question when absent)
OUT_COLUMNS = ("pred", "correct", "grade_status", "grader")


def _rationale_region(frame: pl.DataFrame) -> pl.DataFrame:
    """Add text/anchored/_last for inline answers: the later of the last \\boxed{} and the last 'answer is' (so
    "\\boxed{41} ... The final answer is 42" reads 42, "The answer is \\boxed{42}" reads the box), else all."""
    rat = pl.col("rationale")
    frame = frame.with_columns(
        pl.when(rat.str.contains("boxed", literal=True) | rat.str.contains("fbox", literal=True))
        .then(rat.str.extract_all(f"{BOXED}|{ANSWER_ANCHOR}").list.last()).alias("_final"),
        rat.str.replace_all(ANSWER_ANCHOR, _CUT).str.split(_CUT).alias("_parts"),
    ).with_columns(
        pl.when(pl.col("_final").str.contains(r"^\\(?:boxed|fbox)"))
        .then(pl.col("_final").str.replace(r"^\\(?:boxed|fbox)\s*\{", "").str.strip_suffix("}")).alias("_boxed"),
        pl.when(pl.col("_parts").list.len() > 1).then(pl.col("_parts").list.last()).alias("_after"),
    )
    anchored = pl.col("_boxed").is_not_null() | pl.col("_after").is_not_null()
    return frame.with_columns(pl.coalesce("_boxed", "_after", rat).alias("text"), anchored.alias("anchored"),
                              (~anchored).alias("_last")).drop("_final", "_boxed", "_parts", "_after")


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
        mode: where the answer is read. "answer_completion": the first candidate of the Zero-shot-CoT stage-2
            completion. "rationale": inline answers of chat teachers: the last \\boxed{}, else the first candidate
            after the last "answer is"/"Answer:", else the last candidate in the whole rationale. "auto": the
            answer completion when it is non-empty, else as "rationale". "student": a Fine-tune-CoT student's
            output in the `rationale` column: the first candidate in its answer part
            (`builder.prompts.student_answer`, the text after the last separator).

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
    # Each row's answer region, computed only on the rows that use it (rationale regexes are the costly part).
    if mode == "answer_completion":
        work = base.with_columns(text=pl.col("_completion"), anchored=pl.lit(True), _last=pl.lit(False))
    elif mode == "student":
        work = base.with_columns(text=student_answer_expr(pl.col("rationale")), anchored=pl.lit(True),
                                 _last=pl.lit(False))
    elif mode == "rationale":
        work = _rationale_region(base)
    else:
        use_c = base.select(~is_blank(pl.col("_completion"))).to_series()
        work = pl.concat([
            base.filter(use_c).with_columns(text=pl.col("_completion"), anchored=pl.lit(True), _last=pl.lit(False)),
            _rationale_region(base.filter(~use_c)),
        ])

    if work.select((pl.col("answer_type") == "number") & ~pl.col("_last")
                   & pl.col("text").str.contains(r"[\\^]")).to_series().any():
        latex.warm()  # the expression parser's workers import math-verify while the plain rows are graded
    parts = []
    groups = work.partition_by(["answer_type", "_last"], as_dict=True).items()
    # Number rows last: math-verify's workers (warmed above) finish importing while the other types are graded.
    for (answer_type, last_flag), part in sorted(groups, key=lambda kv: kv[0][0] == "number"):
        if answer_type in CHOICE_TYPES and has_question:
            parsed = choices_from_question(pl.col("_question"))
            part = part.with_columns(pl.coalesce("choices", parsed).alias("choices"))
        out = GRADERS.get(answer_type)(part.select("text", "anchored", "gold", "choices"), last=bool(last_flag))
        parts.append(pl.concat([part.select("_row"), out, part.select(pl.col("answer_type").alias("grader"))],
                               how="horizontal"))
    if not parts:
        graded = pl.DataFrame(schema={"_row": pl.UInt32, "pred": pl.String, "correct": pl.Boolean,
                                      "grade_status": pl.String, "grader": pl.String})
    else:
        graded = pl.concat(parts).sort("_row")
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
