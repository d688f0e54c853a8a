"""The samples a run holds on storage: every shard read back (its run id checked), and the first `n_samples` of
each question that the later stages grade. Below the sample stage and the executors, which both read them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from builder.errors import BuilderError
from builder.executors import storage as shard_storage
from builder.schemas import table_schema, validate

if TYPE_CHECKING:
    from builder.run import Run


def read_samples(run: Run, columns: list[str] | None = None) -> pl.DataFrame:
    """Every sample of the run on storage; a shard of another run, or an unreadable one, is refused by name."""
    files = run.shards()
    schema = table_schema("samples")
    if not files:
        empty = schema.empty()
        return empty.select(columns) if columns else empty
    frames = []
    for f in files:
        df = read_shard(f, None if columns is None else [*columns, "run_id"])
        run.check_shard(df["run_id"].unique(), f)
        frames.append(df if columns is None or "run_id" in columns else df.drop("run_id"))
    df = pl.concat(frames, how="diagonal_relaxed")  # shards older than a schema's added columns lack them
    return df if columns else validate(df, "samples", where=run.samples)


def read_shard(path: str, columns: list[str] | None = None) -> pl.DataFrame:
    try:
        return shard_storage.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise BuilderError(f"{path}: corrupt sample shard ({exc}); delete it and rerun to re-sample it") from exc


def wanted(questions: pl.DataFrame, n: int | pl.Expr) -> pl.DataFrame:
    """(qid, n_samples): how many samples of each question the run holds, `n` or a per-question expression."""
    return questions.select("qid", n_samples=(n if isinstance(n, pl.Expr) else pl.lit(n)).cast(pl.Int64))


def only_wanted(samples: pl.DataFrame, want: pl.DataFrame) -> pl.DataFrame:
    """The samples of `want`'s questions with sample_idx below their count: a run that lowered `n` (or whose
    adaptive budget stopped a question early) grades exactly those, whatever else its shards hold."""
    return (samples.join(want.select("qid", "n_samples"), on="qid", how="inner")
            .filter(pl.col("sample_idx") < pl.col("n_samples")).drop("n_samples"))
