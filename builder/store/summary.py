"""What writing and verifying a version need to know of its rows before (or without) holding them: counts, sizes and
duplicate keys, merged batch by batch into one row per question."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from builder.errors import SchemaError
from builder.schemas import table_schema
from builder.store.rows import SORT_KEY

# Text (the string columns' UTF-8 bytes) per Parquet row group of the shards and per sorted slice: its row count
# follows from the mean row, so the files do not depend on how the rows were fed.
ROW_GROUP_BYTES = 32 << 20


@dataclass(frozen=True)
class Summary:
    """What the layout, manifest and digest of a version need from its rows, merged batch by batch."""

    rows: int
    tasks: dict[str, int]
    teachers: list[str]
    unused: list[str]  # added columns that are all null: left out of the digest
    text_bytes: int

    @property
    def group_rows(self) -> int:
        """Rows that hold about ROW_GROUP_BYTES of text at the rows' mean size."""
        return max(1, ROW_GROUP_BYTES * self.rows // max(1, self.text_bytes))


def text_bytes() -> pl.Expr:
    """A row's text in UTF-8 bytes (its string columns): what buckets and row groups are sized by."""
    strings = [c.name for c in table_schema("rows").columns if c.dtype == pl.String()]
    return pl.sum_horizontal(pl.col(strings).str.len_bytes().cast(pl.Int64))


def summarise(batches: Iterable[pl.DataFrame], where: str) -> tuple[Summary, pl.DataFrame]:
    """Counts, teachers and sizes of the rows, and the text bytes per question (task, qid, bytes; sorted), merged
    batch by batch; refuses a null in a required column naming its count and first row, as `validate` does (the
    columns of the batches: `messages`, derived, is checked as the data is written)."""
    schema = table_schema("rows")
    required = [c.name for c in schema.columns if not c.nullable]
    checked = [*required, *schema.added]
    nulls, first, teachers = dict.fromkeys(checked, 0), {}, set()
    questions, pending = None, []
    for batch in batches:
        counts = {c: batch.get_column(c).null_count() for c in checked if c in batch.columns}
        for c in required:
            if counts.get(c) and c not in first:
                first[c] = batch.filter(pl.col(c).is_null()).select("qid", "sample_idx").row(0)
            nulls[c] += counts.get(c, 0)
        for c in schema.added:
            nulls[c] += counts[c]
        teachers.update(batch.get_column("teacher").drop_nulls().unique().to_list())
        pending.append(batch.group_by("task", "qid").agg(pl.len().alias("rows"), text_bytes().sum().alias("bytes")))
        if len(pending) >= 16:  # a bounded number of partial tables: merged into one row per question
            questions, pending = merge_questions([questions, *pending]), []
    for c in required:
        if nulls[c]:
            raise SchemaError(f"table 'rows' in {where}: column {c!r} is null in {nulls[c]} row(s), first "
                              f"qid={first[c][0]} sample_idx={first[c][1]}")
    questions = merge_questions([questions, *pending])
    rows = int(questions.get_column("rows").sum())
    tasks = questions.group_by("task").agg(pl.col("rows").sum()).sort("task")
    return Summary(rows=rows, tasks=dict(tasks.iter_rows()), teachers=sorted(teachers),
                   unused=[c for c in schema.added if nulls[c] == rows],
                   text_bytes=int(questions.get_column("bytes").sum())), questions.drop("rows")


def merge_questions(parts: list[pl.DataFrame | None]) -> pl.DataFrame:
    """Partial per-question tables (task, qid, counts...) merged into one row per question, sorted by task and qid:
    by a sort and the differences of running sums at each question's last row (a hash group-by of the string keys
    held 2.5x the memory: 250 MB for 625k questions)."""
    frames = [p for p in parts if p is not None]
    if not frames:
        return pl.DataFrame(schema={"task": pl.String, "qid": pl.String, "rows": pl.UInt32, "bytes": pl.Int64})
    whole = pl.concat(frames, how="vertical").sort("task", "qid")
    first = whole.select(((pl.col("task") != pl.col("task").shift(1)) | (pl.col("qid") != pl.col("qid").shift(1)))
                         .fill_null(True)).to_series()
    starts = first.arg_true()
    last = pl.concat([starts.slice(1) - 1, pl.Series([whole.height - 1], dtype=starts.dtype)])
    out = whole.filter(first).select("task", "qid")
    for name, values in whole.drop("task", "qid").to_dict().items():
        at_last = values.cast(pl.Int64).cum_sum().gather(last)
        out = out.with_columns((at_last - at_last.shift(1, fill_value=0)).cast(values.dtype).alias(name))
    return out


def duplicate_key(keys: pl.DataFrame) -> dict[str, Any] | None:
    """The first key (qid, sample_idx) held by two rows of `keys` (task, qid, sample_idx) sorted by SORT_KEY:
    within a task such rows are neighbours."""
    key = list(table_schema("rows").key)
    same = pl.all_horizontal(pl.col(c) == pl.col(c).shift(1) for c in SORT_KEY)
    dup = keys.filter(same).head(1)
    return dup.select(key).row(0, named=True) if dup.height else None


def shared_qid_duplicate(questions: pl.DataFrame, batches: Iterable[pl.DataFrame]) -> dict[str, Any] | None:
    """The smallest key held by rows of two tasks: only qids under several tasks (in `questions`, one row per task
    and qid) can have one, so only their keys are collected from `batches` (qid, sample_idx)."""
    qids = questions.get_column("qid").sort()  # a sort: lighter than hashing every qid
    shared = qids.filter(qids == qids.shift(1)).unique()
    del qids
    if shared.is_empty():
        return None
    key = list(table_schema("rows").key)
    keys = pl.concat([b.filter(pl.col("qid").is_in(shared.implode())).select(key) for b in batches])
    dup = keys.filter(pl.struct(key).is_duplicated()).sort(key).head(1)
    return dup.row(0, named=True) if dup.height else None
