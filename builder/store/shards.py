"""A version's data files: every config's Parquet shards written from the sorted rows in one pass that also feeds
the rows digest and the card's length counts, so the rows are read once."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import SchemaError, StoreError
from builder.paths import NAME_CHARS
from builder.store.hashing import NdjsonSha256
from builder.store.parquet import release
from builder.store.rows import CONVERSATIONAL_CONFIG, DEFAULT_CONFIG, DERIVED, SPLIT, conversational_rows
from builder.store.summary import Summary


def _config_name(task: str) -> str:
    return re.sub(rf"[^{NAME_CHARS}]", "_", task).strip(".") or "task"


def _plan_configs(tasks: list[str], task_configs: bool) -> dict[str, str | None]:
    """Map config name -> task (None for the default and conversational configs, which hold every row)."""
    plan: dict[str, str | None] = {DEFAULT_CONFIG: None, CONVERSATIONAL_CONFIG: None}
    if not task_configs or len(tasks) < 2:
        return plan
    for task in tasks:
        name = _config_name(task)
        if name in plan:
            raise StoreError(f"task {task!r}: config name {name!r} collides with another task or the default or "
                             "conversational config; rename the task in the recipe or set store.task_configs: false")
        plan[name] = task
    return plan


def _arrow_plain(table: Any) -> Any:
    """Cast Arrow large types (polars' default) to plain string/list so `datasets` sees Value('string')/List."""
    import pyarrow as pa

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(plain(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
        return t

    schema = pa.schema([pa.field(f.name, plain(f.type), f.nullable) for f in table.schema])
    return table.cast(schema)


class _ShardWriter:
    """Shards train-<i>-of-<k>.parquet of `rows` rows fed in order, `shard_rows` per file, written one row group of
    `group_rows` rows at a time: one row group is held, and the files do not depend on how the rows were fed."""

    def __init__(self, folder: Path, rows: int, shard_rows: int, group_rows: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.shard_rows, self.group_rows = folder, shard_rows, min(group_rows, shard_rows)
        self.rows, self.k = rows, max(1, -(-rows // shard_rows))
        self.paths: list[Path] = []
        self.written = 0
        self._pending: list[pl.DataFrame] = []
        self._writer: Any = None

    def write(self, frame: pl.DataFrame) -> None:
        while frame.height:
            in_shard = self.written % self.shard_rows
            room = min(self.group_rows - in_shard % self.group_rows, self.shard_rows - in_shard)
            part, frame = frame.head(room), frame.slice(room)
            # held as Arrow in plain types: a copy of only these rows (polars' string views of a slice would keep
            # the whole frame they were cut from alive until the row group is written)
            self._pending.append(_arrow_plain(part.to_arrow(compat_level=pl.CompatLevel.newest())))
            self.written += part.height
            if part.height == room:
                self._flush()
        if self.written == self.rows:  # the last rows (e.g. of a task's config: the rows come sorted by task)
            self.close()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables(self._pending).combine_chunks()  # one chunk: the bytes do not depend on the feed
        self._pending = []
        if self._writer is None:
            path = self.folder / f"{SPLIT}-{len(self.paths):05d}-of-{self.k:05d}.parquet"
            self._writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            self.paths.append(path)
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        del table
        release()
        if self.written % self.shard_rows == 0:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        if self._pending:
            self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.paths


@dataclass(frozen=True)
class CardInput:
    """What the card reads of the rows: the first row, and rows per (task, words) of each text column."""

    first: pl.DataFrame | None
    lengths: dict[str, pl.DataFrame]


class _LengthCounts:
    """The card's length counts (`builder.card.length_counts`) of rationale and reasoning, merged part by part."""

    COLUMNS = ("rationale", "reasoning")

    def __init__(self) -> None:
        self._parts: dict[str, list[pl.DataFrame]] = {c: [] for c in self.COLUMNS}

    def update(self, part: pl.DataFrame) -> None:
        from builder.card import length_counts

        for column in self.COLUMNS:
            pending = self._parts[column]
            pending.append(length_counts(part, column))
            if len(pending) >= 16:
                self._parts[column] = [self._merge(pending)]

    @staticmethod
    def _merge(frames: list[pl.DataFrame]) -> pl.DataFrame:
        return pl.concat(frames).group_by("task", "words").agg(pl.col("n").sum()).sort("task", "words")

    def result(self) -> dict[str, pl.DataFrame]:
        return {c: self._merge(frames) for c, frames in self._parts.items() if frames}


def write_data(parts: Iterable[pl.DataFrame], folder: Path, summary: Summary, *, shard_rows: int,
               task_configs: bool, where: str) -> tuple[dict[str, dict[str, Any]], str, CardInput]:
    """Write every config's files from the sorted rows, part after part, feeding the rows digest and the card's
    length counts on the way: the rows are read once. Returns the configs (pattern, files, rows), the rows digest
    and what the card needs of the rows."""
    plan = _plan_configs(list(summary.tasks), task_configs)
    group_rows = summary.group_rows
    by_task = {task: (config, _ShardWriter(folder / "data" / config, summary.tasks[task], shard_rows, group_rows))
               for config, task in plan.items() if task is not None}
    whole = None if by_task else _ShardWriter(folder / "data", summary.rows, shard_rows, group_rows)
    conv = _ShardWriter(folder / CONVERSATIONAL_CONFIG, summary.rows, shard_rows, group_rows)
    digest = NdjsonSha256(summary.unused)
    lengths = _LengthCounts()
    first = None
    for part in parts:
        nulls = part.get_column("messages").null_count()
        if nulls:
            at = part.filter(pl.col("messages").is_null()).row(0, named=True)
            raise SchemaError(f"table 'rows' in {where}: column 'messages' is null in {nulls}+ row(s), first "
                              f"qid={at['qid']} sample_idx={at['sample_idx']}")
        digest.update(part)
        lengths.update(part)
        if first is None and part.height:  # a copy: a slice would keep the whole part alive
            first = pl.from_arrow(part.head(1).drop(DERIVED).to_arrow())
        standard = part.drop(DERIVED)
        if whole is not None:
            whole.write(standard)
        else:
            for (task,), piece in standard.partition_by("task", as_dict=True, maintain_order=True).items():
                by_task[task][1].write(piece)
        conv.write(conversational_rows(part))
    if conv.written != summary.rows:
        raise StoreError(f"{folder}: {summary.rows} rows were counted but {conv.written} read: the rows changed "
                         "while the version was written (e.g. parts added to a scanned folder); rerun")
    per_task = {config: {"pattern": f"data/{config}/{SPLIT}-*.parquet", "files": writer.close(),
                         "rows": summary.tasks[task]} for task, (config, writer) in by_task.items()}
    default = ({"pattern": f"data/{SPLIT}-*.parquet", "files": whole.close()} if whole is not None else
               {"pattern": f"data/*/{SPLIT}-*.parquet", "files": [p for c in per_task.values() for p in c["files"]]})
    configs = {DEFAULT_CONFIG: {**default, "rows": summary.rows},
               CONVERSATIONAL_CONFIG: {"pattern": f"{CONVERSATIONAL_CONFIG}/{SPLIT}-*.parquet", "files": conv.close(),
                                       "rows": summary.rows}, **per_task}
    return configs, digest.hexdigest(), CardInput(first=first, lengths=lengths.result())
