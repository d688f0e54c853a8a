"""The `rows` table (schemas/rows.table.json) that a version stores: made from a ledger's kept rows, and the
layouts its config files hold it in."""

from __future__ import annotations

import polars as pl

from builder import reasons as R
from builder.errors import StoreError
from builder.prompts import (
    reasoning_completion_expr,
    student_completion_expr,
    student_conversation_exprs,
    student_messages_expr,
    student_prompt_expr,
)
from builder.schemas import validate

SPLIT = "train"
DEFAULT_CONFIG = "default"
# One `datasets` config per TRL dataset type, never both in one table (TRL's SFTTrainer picks one key by set order,
# then may add no EOS): `default` (and the per-task configs) are standard prompt/completion strings in the
# Fine-tune-CoT format; `conversational` holds the same pairs as message lists (TRL's conversational
# prompt-completion type). Its files live outside data/ so the default pattern data/*/... never matches them.
CONVERSATIONAL_CONFIG = "conversational"
TRL_TYPES = {DEFAULT_CONFIG: "standard prompt-completion", CONVERSATIONAL_CONFIG: "conversational prompt-completion"}
# Rows-table columns that no config file holds (rebuilt on read from the other columns, so the rows table and its
# hash stay as they were): `messages` would make a standard config look conversational to TRL.
DERIVED = ("messages",)
# The order rows are stored, hashed and verified in.
SORT_KEY = ["task", "qid", "sample_idx"]
# Ledger columns that the rows are made of (`kept_rows`): the only ones read from ledger parts.
_LEDGER_INPUT = ("qid", "sample_idx", "task", "question", "rationale", "reasoning", "pred", "gold", "seed", "teacher",
                 "state")
# Rows columns made from (or changed from) the ledger's by `kept_rows`.
LEDGER_MADE = frozenset({"answer", "prompt", "completion", "messages", "rationale", "reasoning"})


def rows_from_ledger(ledger: pl.DataFrame) -> pl.DataFrame:
    """The kept rows of a ledger as the `rows` table, in the student formats of `builder.prompts`.

    prompt/completion are the Fine-tune-CoT pair (EOS is added at training time); messages holds the question and
    the rationale followed by the answer sentence. A row with a reasoning trace keeps it in `reasoning`, and its
    completion and assistant message are the R1-distill text (`builder.prompts.REASONING_COMPLETION`).

    Raises:
        SchemaError: the ledger or the resulting rows do not match their schemas.
        StoreError: a kept row has no extracted answer (names its qid and sample_idx).
    """
    ledger = validate(ledger, "ledger", where="ledger")
    rows = kept_rows(ledger.filter(pl.col("state") == R.KEPT), "ledger")
    return validate(rows.sort(SORT_KEY), "rows", where="rows from ledger")


def kept_rows(kept: pl.DataFrame, where: str, *, messages: bool = True) -> pl.DataFrame:
    """Kept ledger rows -> rows columns (unsorted, not validated; `messages` left out unless asked for)."""
    check_answers(kept, where)
    question, rationale, answer, reasoning = pl.col("question"), pl.col("rationale"), pl.col("answer"), pl.col(
        "reasoning")
    rows = kept.with_columns(rationale.str.strip_chars(), reasoning.str.strip_chars(),
                             pl.col("pred").str.strip_chars().alias("answer"))
    return rows.with_columns(
        student_prompt_expr(question).alias("prompt"),
        pl.when(reasoning.is_null()).then(student_completion_expr(rationale, answer))
        .otherwise(reasoning_completion_expr(reasoning, rationale)).alias("completion"),
        *([student_messages_expr(question, rationale, answer, reasoning).alias("messages")] if messages else []),
    )


def check_answers(kept: pl.DataFrame, where: str) -> None:
    """Refuse a kept ledger row without an extracted answer, naming the first."""
    no_answer = kept.filter(pl.col("pred").is_null() | (pl.col("pred").str.strip_chars() == ""))
    if no_answer.height:
        first = no_answer.row(0, named=True)
        raise StoreError(f"{where}: {no_answer.height} kept row(s) have no extracted answer (column 'pred'), first "
                         f"qid={first['qid']} sample_idx={first['sample_idx']}; drop them in curation "
                         "(filter 'no_answer') before storing")


def ledger_columns(columns: list[str]) -> list[str]:
    """The ledger columns that rows `columns` are made of (`state` and `pred` always: kept rows, answers)."""
    want = {"state", "pred", *(c for c in columns if c in _LEDGER_INPUT)}
    if LEDGER_MADE & set(columns):
        want |= {"question", "rationale", "reasoning"}
    return [c for c in _LEDGER_INPUT if c in want]


def conversational_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """The `conversational` config's table: the rows with prompt/completion as message lists
    (`builder.prompts.student_conversation_exprs`) and no `messages` column (one TRL type per table)."""
    prompt, completion = student_conversation_exprs(pl.col("question"), pl.col("completion"))
    return rows.with_columns(prompt.alias("prompt"), completion.alias("completion")).drop(DERIVED)


def with_derived(files_frame: pl.DataFrame) -> pl.DataFrame:
    """Config files -> the rows table: rebuild `messages` (left out of the files) from the other columns.
    Versions written before the conversational config still hold it and are returned as they are."""
    if "messages" in files_frame.columns:
        return files_frame
    return files_frame.with_columns(
        student_messages_expr(pl.col("question"), pl.col("rationale"), pl.col("answer"), pl.col("reasoning")
                              if "reasoning" in files_frame.columns else None).alias("messages"))
