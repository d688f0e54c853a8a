"""Reading a version's Parquet files in bounded memory: one batch at a time, through pyarrow, naming the file that
cannot be read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import StoreError

# Parquet bytes (uncompressed, as the file's metadata gives them) per batch read; pyarrow's decoding holds about 3x.
BATCH_BYTES = 8 << 20


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Name the file when its Parquet cannot be read."""
    import pyarrow as pa

    try:
        yield
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
        raise StoreError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]}); the version is corrupt: "
                         "`rationale pull` it again or rebuild it") from None


def release() -> None:
    """Hand the memory pyarrow's pool has freed back to the system: its allocator (mimalloc) keeps it otherwise, and
    one pass over 5M rows left 290 MB held but unused."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def batch_rows(meta: Any, columns: list[str] | None) -> int:
    """Rows per batch so that a batch of `columns` (None: all) holds about BATCH_BYTES (uncompressed)."""
    size = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            if columns is None or chunk.path_in_schema.split(".")[0] in columns:
                size += chunk.total_uncompressed_size
    return max(1, BATCH_BYTES * meta.num_rows // max(1, size))


def parquet_rows(path: Path) -> int:
    """A Parquet file's row count, from its metadata."""
    import pyarrow.parquet as pq

    with reading(path), pq.ParquetFile(path) as parquet:
        return parquet.metadata.num_rows


def parquet_batches(path: Path, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """A Parquet file's rows in batches of about BATCH_BYTES (at the file's mean row size), read by pyarrow, which
    holds one batch (polars' streaming engine reads files ahead: 450 MB where this stays flat)."""
    import pyarrow.parquet as pq

    with reading(path):
        parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        for batch in parquet.iter_batches(batch_size=batch_rows(parquet.metadata, columns), columns=columns):
            yield pl.from_arrow(batch)
    release()
