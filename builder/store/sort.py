"""The rows of a version in (task, qid, sample_idx) order, in bounded memory: a DataFrame is cut into slices; `Parts`
are routed into range buckets on disk and sorted one bucket at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import SchemaError
from builder.schemas import table_schema
from builder.store.parquet import BATCH_BYTES, release
from builder.store.parts import Parts, parts_batches
from builder.store.rows import DERIVED, SORT_KEY
from builder.store.summary import Summary, duplicate_key, shared_qid_duplicate, summarise

# Text per sorted bucket of `Parts`, raised so that at most MAX_BUCKETS files are open.
BUCKET_BYTES = 32 << 20
MAX_BUCKETS = 512


def _question_key(task: pl.Expr, qid: pl.Expr) -> pl.Expr:
    """One string that sorts as (task, qid) does: the two joined by NUL, which sorts before any other byte."""
    return pl.concat_str([task, pl.lit("\x00"), qid])


def _bucket_bounds(questions: pl.DataFrame, summary: Summary) -> pl.Series:
    """The first question (`_question_key`) of each range bucket: the questions (sorted), in order, cut into buckets of
    about BUCKET_BYTES of text (raised so that there are at most MAX_BUCKETS); a question is never cut."""
    budget = max(BUCKET_BYTES, summary.text_bytes // MAX_BUCKETS)
    bucket = (pl.col("bytes").cum_sum() - pl.col("bytes")) // budget
    return questions.filter(bucket != bucket.shift(1).fill_null(-1)).select(
        _question_key(pl.col("task"), pl.col("qid"))).to_series()


def _sorted_buckets(batches: Iterable[pl.DataFrame], bounds: pl.Series, summary: Summary, work: Path,
                    where: str) -> Iterator[pl.DataFrame]:
    """The rows of `batches` in (task, qid, sample_idx) order, one bucket in memory at a time.

    One pass routes each batch's rows to their range bucket's temporary file (`_bucket_bounds`: a binary search of
    the rows' question keys); then each bucket is read, sorted (by an index: its rows are gathered one slice at a
    time) and checked for duplicate keys. Raises SchemaError on a duplicate key.
    """
    import pyarrow.parquet as pq

    work.mkdir(parents=True, exist_ok=True)
    writers: dict[int, Any] = {}
    try:
        for batch in batches:
            keys = batch.select(_question_key(pl.col("task"), pl.col("qid"))).to_series()
            keyed = batch.with_columns((bounds.search_sorted(keys, side="right") - 1).alias("bucket"))
            del keys
            for (bucket,), part in keyed.partition_by("bucket", as_dict=True, include_key=False).items():
                table = part.to_arrow()
                if bucket not in writers:
                    writers[bucket] = pq.ParquetWriter(work / f"bucket-{bucket:06d}.parquet", table.schema)
                writers[bucket].write_table(table)
    finally:
        for writer in writers.values():
            writer.close()
    for bucket in sorted(writers):
        path = work / f"bucket-{bucket:06d}.parquet"
        with pq.ParquetFile(path, pre_buffer=False) as bucket_file:  # one column at a time, not polars' read-ahead
            part = pl.from_arrow(bucket_file.read())
        path.unlink()
        release()
        order = part.select(pl.arg_sort_by(SORT_KEY)).to_series()
        dup = duplicate_key(part.select(SORT_KEY)[order])
        if dup is not None:
            raise SchemaError(f"table 'rows' in {where}: duplicate key {dup}")
        for start in range(0, part.height, summary.group_rows):
            yield part[order.slice(start, summary.group_rows)]


def sorted_rows(rows: pl.DataFrame | Parts, work: Path, where: str) -> tuple[Summary, Iterable[pl.DataFrame]]:
    """The rows' summary and the rows in sorted parts. A DataFrame (validated and sorted by the caller) is cut into
    slices; `Parts` are read in pyarrow batches, only the columns each pass needs: once to summarise (all but
    `messages`), once for the keys of qids under several tasks (when there are any), once to route into sorted
    buckets, whose temporary files go under `work`.

    Raises:
        SchemaError: a null in a required column or a duplicate key (of `Parts`; a DataFrame is validated).
    """
    if isinstance(rows, pl.DataFrame):
        step = max(1, (BATCH_BYTES * rows.height) // max(1, rows.estimated_size()))
        summary, _ = summarise(rows.iter_slices(step), where)
        return summary, rows.iter_slices(summary.group_rows)
    work.mkdir(parents=True)
    names = table_schema("rows").names
    summary, questions = summarise(parts_batches(rows, [c for c in names if c not in DERIVED], where), where)
    dup = shared_qid_duplicate(questions, parts_batches(rows, list(table_schema("rows").key), where))
    if dup is not None:
        raise SchemaError(f"table 'rows' in {where}: duplicate key {dup}")
    bounds = _bucket_bounds(questions, summary)
    del questions  # the rows are routed by the bounds alone
    return summary, _sorted_buckets(parts_batches(rows, names, where), bounds, summary, work / "buckets", where)
