"""`Parts`: a version's rows as Parquet files that no one process holds (a rows table or a ledger, e.g. as a Ray
cluster wrote them), read in batches of the columns each pass needs and cast as `validate` would cast them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from builder import reasons as R
from builder.errors import SchemaError, StoreError
from builder.schemas import validate
from builder.store.parquet import batch_rows, release
from builder.store.rows import LEDGER_MADE, check_answers, kept_rows, ledger_columns


@dataclass(frozen=True)
class Parts:
    """Parquet files that hold a version's rows, read in bounded memory by `write_version`: a `rows` table, or a
    `ledger` whose kept rows (state == kept) become the rows (`rows_from_ledger`, applied one batch at a time).
    Files are local paths or URLs (`file://`, any fsspec URL); their order does not matter."""

    files: list[str | Path]
    table: Literal["rows", "ledger"]

    def __post_init__(self) -> None:
        if self.table not in ("rows", "ledger"):
            raise ValueError(f"Parts.table is {self.table!r}, expected 'rows' or 'ledger'")
        if isinstance(self.files, (str, Path)):
            raise TypeError("Parts.files is a list of files, not one path")


@contextlib.contextmanager
def _input_file(file: str | Path, where: str) -> Iterator[Any]:
    """An input part as a pyarrow ParquetFile (a URL opened by fsspec); a file that cannot be read is named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = str(file)
    try:
        with contextlib.ExitStack() as stack:
            if "://" in text:
                import fsspec

                source: Any = stack.enter_context(fsspec.open(text, "rb"))
            else:
                source = text
            yield stack.enter_context(pq.ParquetFile(source, buffer_size=1 << 20, pre_buffer=False))
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(f"{text}: unreadable Parquet part of {where} ({str(exc).splitlines()[0]})") from None


def _cast(frame: pl.DataFrame, target: dict[str, pl.DataType], columns: list[str], table: str, where: str
          ) -> pl.DataFrame:
    """`columns` of `frame` cast to `target` (a column the file lacks, added later to the schema: nulls)."""
    try:
        return frame.select(pl.col(c).cast(target[c], strict=True) if c in frame.columns
                            else pl.lit(None, target[c]).alias(c) for c in columns)
    except pl.exceptions.PolarsError as exc:
        raise SchemaError(f"table {table!r} in {where}: {str(exc).splitlines()[0]}") from None


def _target(file: str | Path, schema: Any, table: str, where: str) -> dict[str, pl.DataType]:
    """The dtypes a part's columns are read as: its columns checked against `table` as `validate` does."""
    found = pl.from_arrow(schema.empty_table()).schema
    return dict(validate(pl.DataFrame(schema=found), table, where=f"{where} ({file})").schema)


def parts_batches(parts: Parts, columns: list[str], where: str) -> Iterator[pl.DataFrame]:
    """The rows of `parts`, `columns` only (rows-schema names, in that order), cast as `validate` does, in batches
    of about BATCH_BYTES of the columns read; a ledger's kept rows made into rows batch by batch."""
    for file in parts.files:
        with _input_file(file, where) as parquet:
            target = _target(file, parquet.schema_arrow, parts.table, where)
            read = columns if parts.table == "rows" else ledger_columns(columns)
            present = [c for c in read if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=batch_rows(parquet.metadata, present), columns=present):
                frame = _cast(pl.from_arrow(batch), target, read, parts.table, where)
                del batch
                if parts.table == "ledger":
                    kept = frame.filter(pl.col("state") == R.KEPT)
                    if LEDGER_MADE & set(columns):
                        frame = kept_rows(kept, where, messages="messages" in columns).select(columns)
                    else:
                        check_answers(kept, where)
                        frame = kept.select(columns)
                yield frame
        release()


def check_parts(parts: Parts, where: str) -> None:
    """Every part opens and holds the columns its table needs (before the lock is taken)."""
    for file in parts.files:
        with _input_file(file, where) as parquet:
            _target(file, parquet.schema_arrow, parts.table, where)
