"""Dataset store: the curation ledger becomes an immutable, content-addressed dataset version on disk.

Input: the ledger table (schemas/ledger.table.json) and the build stats (`builder.stats.BuildStats`). Output: a
version folder

    <root>/<name>/v<N>/
        data/train-00000-of-0000K.parquet        (one task, or task_configs off)
        data/<task>/train-00000-of-0000K.parquet (several tasks: one `datasets` config per task + default)
        README.md                                (card with the YAML `configs` / `dataset_info` header)
        assets/*.png                             (funnel and rationale-length plots)
        manifest.json                            (content hash, file sha256s, the recipe once, teacher, funnel, ...)
    <root>/<name>/versions.json                  (index: v1, v2, ... -> content hashes)

The content hash covers the rows (canonical NDJSON, sorted by task, qid, sample_idx) and the resolved recipe
(canonical JSON without paths and other machine-specific fields), so the same recipe and seeds on the same engine
give the same hash and any change of a row changes it. Versions are written to a temp folder and renamed into
place under a file lock; a version is never rewritten.

Writing and verifying take bounded memory at any size: the rows (a DataFrame, or `Parts`: the Parquet files of a
rows table or a ledger that a Ray cluster wrote, sorted in range buckets) are read once, in order, feeding the shards,
the rows digest and the card's length counts slice by slice; counts and sizes come from a first pass over the
columns they need, one batch at a time; verify reads one row group at a time.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import polars as pl

from builder import reasons as R
from builder.errors import SchemaError, StoreError
from builder.prompts import (
    reasoning_completion_expr,
    student_completion_expr,
    student_conversation_exprs,
    student_messages_expr,
    student_prompt_expr,
)
from builder.recipe import (
    CurationConfig,
    PromptConfig,
    SamplingConfig,
    SelectionConfig,
    StoreConfig,
    TeacherConfig,
    drop_added_defaults,
)
from builder.schemas import table_schema, validate
from builder.stats import BuildStats

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX = "versions.json"
FORMAT = "rationale-builder/dataset-version@1"
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
_DERIVED = ("messages",)
HASH_SPEC = ("sha256 over: 'rows\\n' + sha256(rows as NDJSON sorted by task, qid, sample_idx) + '\\nrecipe\\n' + "
             "canonical JSON of the recipe without machine-specific fields (paths, store location)")
MANIFEST_DIGEST_SPEC = ("sha256 of the manifest as canonical JSON (sorted keys, no spaces) without its own "
                        "manifest_sha256 field")
# Recipe fields that name places on one machine, not what the data is: left out of the content hash.
_VOLATILE_KEYS = frozenset({"work_dir", "benchmarks_dir", "base_dir", "import_path", "root", "lock_timeout_s"})
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
_SORT_KEY = ["task", "qid", "sample_idx"]
# What manifest.json keeps of the build stats: measured facts only (the settings are in its `recipe`).
_STATS_SECTIONS = ("sampling", "funnel", "dropped", "diversity", "decontamination")
# Memory bounds of writing and verifying a version (text bytes = the string columns' UTF-8 bytes): rows per NDJSON
# slice fed to the digest; Parquet bytes (uncompressed, as the file's metadata gives them) per batch read
# (pyarrow's decoding holds about 3x a batch); text per sorted bucket of `Parts` (raised so that at most
# MAX_BUCKETS files are open); text per Parquet row group of the shards (its row count follows from the mean row,
# so the files do not depend on how the rows were fed).
DIGEST_BATCH_ROWS = 10_000
BATCH_BYTES = 8 << 20
BUCKET_BYTES = 32 << 20
MAX_BUCKETS = 512
ROW_GROUP_BYTES = 32 << 20


class StoreWriteError(StoreError, OSError):
    """Writing a version failed (disk full, permissions); still an OSError for callers that catch those."""


@dataclass(frozen=True)
class VersionInfo:
    """Where a version lives and whether this call wrote it (False: the newest version already had this hash)."""

    path: Path
    version: str
    content_hash: str
    created: bool


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


# ---------------------------------------------------------------- ledger -> rows
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
    rows = _kept_rows(ledger.filter(pl.col("state") == R.KEPT), "ledger")
    return validate(rows.sort(_SORT_KEY), "rows", where="rows from ledger")


def _kept_rows(kept: pl.DataFrame, where: str, *, messages: bool = True) -> pl.DataFrame:
    """Kept ledger rows -> rows columns (unsorted, not validated; `messages` left out unless asked for)."""
    _check_answers(kept, where)
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


def _check_answers(kept: pl.DataFrame, where: str) -> None:
    """Refuse a kept ledger row without an extracted answer, naming the first."""
    no_answer = kept.filter(pl.col("pred").is_null() | (pl.col("pred").str.strip_chars() == ""))
    if no_answer.height:
        first = no_answer.row(0, named=True)
        raise StoreError(f"{where}: {no_answer.height} kept row(s) have no extracted answer (column 'pred'), first "
                         f"qid={first['qid']} sample_idx={first['sample_idx']}; drop them in curation "
                         "(filter 'no_answer') before storing")



def conversational_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """The `conversational` config's table: the rows with prompt/completion as message lists
    (`builder.prompts.student_conversation_exprs`) and no `messages` column (one TRL type per table)."""
    prompt, completion = student_conversation_exprs(pl.col("question"), pl.col("completion"))
    return rows.with_columns(prompt.alias("prompt"), completion.alias("completion")).drop(_DERIVED)


def _with_derived(files_frame: pl.DataFrame) -> pl.DataFrame:
    """Config files -> the rows table: rebuild `messages` (left out of the files) from the other columns.
    Versions written before the conversational config still hold it and are returned as they are."""
    if "messages" in files_frame.columns:
        return files_frame
    return files_frame.with_columns(
        student_messages_expr(pl.col("question"), pl.col("rationale"), pl.col("answer"), pl.col("reasoning")
                              if "reasoning" in files_frame.columns else None).alias("messages"))


# ---------------------------------------------------------------- hashing
def canonical_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as hashed: without paths and store placement, task file paths reduced to their file name."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    out = strip(copy.deepcopy(recipe))
    for item in (out.get("tasks") or {}).get("items") or []:
        if isinstance(item, dict) and item.get("path") and item.get("source", "paper") != "hub":
            item["path"] = Path(str(item["path"])).name
    out.get("store", {}).pop("name", None)  # the name is where the data goes, not what it is
    for key, model in (("teacher", TeacherConfig), ("prompt", PromptConfig), ("sampling", SamplingConfig),
                       ("store", StoreConfig)):
        if isinstance(out.get(key), dict):  # fields added later hash only once set: old hashes stay
            out[key] = drop_added_defaults(model, out[key])
    curation = out.get("curation")
    if isinstance(curation, dict):
        out["curation"] = curation = drop_added_defaults(CurationConfig, curation)
        if isinstance(curation.get("selection"), dict):
            curation["selection"] = drop_added_defaults(SelectionConfig, curation["selection"])
    return out


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class _NdjsonSha256:
    """sha256 of frames written as NDJSON one slice after another: the digest of the whole NDJSON text, which is
    never held (the whole table's text peaked at 4x the table). A file-like object for `write_ndjson`."""

    def __init__(self, drop: list[str] | tuple[str, ...] = ()) -> None:
        self._sha = hashlib.sha256()
        self._drop = list(drop)

    def write(self, data: bytes | str) -> int:
        self._sha.update(data.encode() if isinstance(data, str) else data)
        return len(data)

    def update(self, frame: pl.DataFrame, batch_rows: int | None = None) -> None:
        for part in frame.drop(self._drop).iter_slices(batch_rows or DIGEST_BATCH_ROWS):
            part.write_ndjson(self)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _unused_added(rows: pl.LazyFrame) -> list[str]:
    """Added columns that are all null: left out of the rows digest (see `rows_digest`)."""
    added = table_schema("rows").added
    counts = rows.select(pl.len(), *(pl.col(c).null_count() for c in added)).collect(engine="streaming").row(0)
    return [c for c, nulls in zip(added, counts[1:], strict=True) if nulls == counts[0]]


def rows_digest(rows: pl.DataFrame, *, batch_rows: int | None = None) -> str:
    """sha256 of the rows as NDJSON in schema column order, sorted by (task, qid, sample_idx), fed to the hash
    `batch_rows` rows at a time (the value does not depend on it).

    Columns added to the rows schema later (`reasoning`) are left out while they are all null, so a dataset without
    traces keeps the hash it had before they existed.
    """
    rows = validate(rows, "rows", where="rows").sort(_SORT_KEY)
    digest = _NdjsonSha256(_unused_added(rows.lazy()))
    digest.update(rows, batch_rows)
    return digest.hexdigest()


def _content_hash(rows_sha256: str, recipe: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(b"rows\n" + rows_sha256.encode() + b"\nrecipe\n" + _canonical_json(canonical_recipe(recipe)))
    return h.hexdigest()


def content_hash(rows: pl.DataFrame, recipe: dict[str, Any]) -> str:
    """The version identity: rows plus canonical recipe (see HASH_SPEC)."""
    return _content_hash(rows_digest(rows), recipe)


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own digest (see MANIFEST_DIGEST_SPEC).

    The content hash covers rows and recipe; this covers every other field (teacher, funnel, file list, ...), so
    a manifest edited by hand (or by a tool that did not recompute it) is detected. It is a checksum, not a
    signature: whoever can rewrite the whole version can recompute it.
    """
    plain = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "manifest_sha256"}, default=str))
    return hashlib.sha256(_canonical_json(plain)).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def published_copy(folder: Path, manifest: dict[str, Any], repo: str) -> dict[str, bytes]:
    """README.md and manifest.json as published to Hub repo `repo`: the card's usage snippet names `repo`, and the
    manifest records it (`published_repo`) with the card's new sha256 and its own digest recomputed. The rows, the
    content hash and the local version are unchanged; a pulled copy verifies like the local one."""
    from builder.card import for_repo

    readme = for_repo((folder / "README.md").read_text(encoding="utf-8"), manifest["name"], repo).encode()
    out = copy.deepcopy(manifest)
    out["files"]["README.md"] = {"sha256": sha256_bytes(readme), "bytes": len(readme)}
    out["published_repo"] = repo
    out["manifest_sha256"] = manifest_digest(out)
    text = json.dumps(out, indent=2, ensure_ascii=False, default=str) + "\n"
    return {"README.md": readme, MANIFEST: text.encode()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- writing
def _tool_version() -> str:
    from builder.version import __version__

    return __version__


def _config_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task).strip(".") or "task"


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
        _release()
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


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


@dataclass(frozen=True)
class _Summary:
    """What the layout, manifest and digest of a version need from its rows, merged batch by batch."""

    rows: int
    tasks: dict[str, int]
    teachers: list[str]
    unused: list[str]  # added columns that are all null: left out of the digest
    text_bytes: int


def _text_bytes() -> pl.Expr:
    """A row's text in UTF-8 bytes (its string columns): what buckets and row groups are sized by."""
    strings = [c.name for c in table_schema("rows").columns if c.dtype == pl.String()]
    return pl.sum_horizontal(pl.col(strings).str.len_bytes().cast(pl.Int64))


def _rows_for(text_bytes: int, summary: _Summary) -> int:
    """Rows that hold about `text_bytes` of text at the rows' mean size."""
    return max(1, text_bytes * summary.rows // max(1, summary.text_bytes))


# Ledger columns that the rows are made of (`_kept_rows`): the only ones read from ledger parts.
_LEDGER_INPUT = ("qid", "sample_idx", "task", "question", "rationale", "reasoning", "pred", "gold", "seed", "teacher",
                 "state")
# Rows columns made from (or changed from) the ledger's by `_kept_rows`.
_LEDGER_MADE = frozenset({"answer", "prompt", "completion", "messages", "rationale", "reasoning"})


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


def _release() -> None:
    """Hand the memory pyarrow's pool has freed back to the system: its allocator (mimalloc) keeps it otherwise, and
    one pass over 5M rows left 290 MB held but unused."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def _batch_rows(meta: Any, columns: list[str] | None) -> int:
    """Rows per batch so that a batch of `columns` (None: all) holds about BATCH_BYTES (uncompressed)."""
    size = 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            if columns is None or chunk.path_in_schema.split(".")[0] in columns:
                size += chunk.total_uncompressed_size
    return max(1, BATCH_BYTES * meta.num_rows // max(1, size))


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


def _ledger_columns(columns: list[str]) -> list[str]:
    """The ledger columns that rows `columns` are made of (`state` and `pred` always: kept rows, answers)."""
    want = {"state", "pred", *(c for c in columns if c in _LEDGER_INPUT)}
    if _LEDGER_MADE & set(columns):
        want |= {"question", "rationale", "reasoning"}
    return [c for c in _LEDGER_INPUT if c in want]


def _parts_batches(parts: Parts, columns: list[str], where: str) -> Iterator[pl.DataFrame]:
    """The rows of `parts`, `columns` only (rows-schema names, in that order), cast as `validate` does, in batches
    of about BATCH_BYTES of the columns read; a ledger's kept rows made into rows batch by batch."""
    for file in parts.files:
        with _input_file(file, where) as parquet:
            target = _target(file, parquet.schema_arrow, parts.table, where)
            read = columns if parts.table == "rows" else _ledger_columns(columns)
            present = [c for c in read if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=_batch_rows(parquet.metadata, present), columns=present):
                frame = _cast(pl.from_arrow(batch), target, read, parts.table, where)
                del batch
                if parts.table == "ledger":
                    kept = frame.filter(pl.col("state") == R.KEPT)
                    if _LEDGER_MADE & set(columns):
                        frame = _kept_rows(kept, where, messages="messages" in columns).select(columns)
                    else:
                        _check_answers(kept, where)
                        frame = kept.select(columns)
                yield frame
        _release()


def _check_parts(parts: Parts, where: str) -> None:
    """Every part opens and holds the columns its table needs (before the lock is taken)."""
    for file in parts.files:
        with _input_file(file, where) as parquet:
            _target(file, parquet.schema_arrow, parts.table, where)


def _parquet_rows(path: Path) -> int:
    """A Parquet file's row count, from its metadata."""
    import pyarrow.parquet as pq

    with _reading(path), pq.ParquetFile(path) as parquet:
        return parquet.metadata.num_rows


def _parquet_batches(path: Path, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """A Parquet file's rows in batches of about BATCH_BYTES (at the file's mean row size), read by pyarrow, which
    holds one batch (polars' streaming engine reads files ahead: 450 MB where this stays flat)."""
    import pyarrow.parquet as pq

    with _reading(path):
        parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        for batch in parquet.iter_batches(batch_size=_batch_rows(parquet.metadata, columns), columns=columns):
            yield pl.from_arrow(batch)
    _release()


def _summarise(batches: Iterable[pl.DataFrame], where: str) -> tuple[_Summary, pl.DataFrame]:
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
        pending.append(batch.group_by("task", "qid").agg(pl.len().alias("rows"), _text_bytes().sum().alias("bytes")))
        if len(pending) >= 16:  # a bounded number of partial tables: merged into one row per question
            questions, pending = _merge_questions([questions, *pending]), []
    for c in required:
        if nulls[c]:
            raise SchemaError(f"table 'rows' in {where}: column {c!r} is null in {nulls[c]} row(s), first "
                              f"qid={first[c][0]} sample_idx={first[c][1]}")
    questions = _merge_questions([questions, *pending])
    rows = int(questions.get_column("rows").sum())
    tasks = questions.group_by("task").agg(pl.col("rows").sum()).sort("task")
    return _Summary(rows=rows, tasks=dict(tasks.iter_rows()), teachers=sorted(teachers),
                    unused=[c for c in schema.added if nulls[c] == rows],
                    text_bytes=int(questions.get_column("bytes").sum())), questions.drop("rows")


def _merge_questions(parts: list[pl.DataFrame | None]) -> pl.DataFrame:
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


def _duplicate_key(keys: pl.DataFrame) -> dict[str, Any] | None:
    """The first key (qid, sample_idx) held by two rows of `keys` (task, qid, sample_idx) sorted by _SORT_KEY:
    within a task such rows are neighbours."""
    key = list(table_schema("rows").key)
    same = pl.all_horizontal(pl.col(c) == pl.col(c).shift(1) for c in _SORT_KEY)
    dup = keys.filter(same).head(1)
    return dup.select(key).row(0, named=True) if dup.height else None


def _shared_qid_duplicate(questions: pl.DataFrame, batches: Iterable[pl.DataFrame]) -> dict[str, Any] | None:
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


def _question_key(task: pl.Expr, qid: pl.Expr) -> pl.Expr:
    """One string that sorts as (task, qid) does: the two joined by NUL, which sorts before any other byte."""
    return pl.concat_str([task, pl.lit("\x00"), qid])


def _bucket_bounds(questions: pl.DataFrame, summary: _Summary) -> pl.Series:
    """The first question (`_question_key`) of each range bucket: the questions (sorted), in order, cut into buckets of
    about BUCKET_BYTES of text (raised so that there are at most MAX_BUCKETS); a question is never cut."""
    budget = max(BUCKET_BYTES, summary.text_bytes // MAX_BUCKETS)
    bucket = (pl.col("bytes").cum_sum() - pl.col("bytes")) // budget
    return questions.filter(bucket != bucket.shift(1).fill_null(-1)).select(
        _question_key(pl.col("task"), pl.col("qid"))).to_series()


def _sorted_buckets(batches: Iterable[pl.DataFrame], bounds: pl.Series, summary: _Summary, work: Path,
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
    slice_rows = _rows_for(ROW_GROUP_BYTES, summary)
    for bucket in sorted(writers):
        path = work / f"bucket-{bucket:06d}.parquet"
        with pq.ParquetFile(path, pre_buffer=False) as bucket_file:  # one column at a time, not polars' read-ahead
            part = pl.from_arrow(bucket_file.read())
        path.unlink()
        _release()
        order = part.select(pl.arg_sort_by(_SORT_KEY)).to_series()
        dup = _duplicate_key(part.select(_SORT_KEY)[order])
        if dup is not None:
            raise SchemaError(f"table 'rows' in {where}: duplicate key {dup}")
        for start in range(0, part.height, slice_rows):
            yield part[order.slice(start, slice_rows)]


@dataclass(frozen=True)
class _CardInput:
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


def _write_data(parts: Iterable[pl.DataFrame], folder: Path, summary: _Summary, *, shard_rows: int,
                task_configs: bool, where: str) -> tuple[dict[str, dict[str, Any]], str, _CardInput]:
    """Write every config's files from the sorted rows, part after part, feeding the rows digest and the card's
    length counts on the way: the rows are read once. Returns the configs (pattern, files, rows), the rows digest
    and what the card needs of the rows."""
    plan = _plan_configs(list(summary.tasks), task_configs)
    group_rows = _rows_for(ROW_GROUP_BYTES, summary)
    by_task = {task: (config, _ShardWriter(folder / "data" / config, summary.tasks[task], shard_rows, group_rows))
               for config, task in plan.items() if task is not None}
    whole = None if by_task else _ShardWriter(folder / "data", summary.rows, shard_rows, group_rows)
    conv = _ShardWriter(folder / CONVERSATIONAL_CONFIG, summary.rows, shard_rows, group_rows)
    digest = _NdjsonSha256(summary.unused)
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
            first = pl.from_arrow(part.head(1).drop(_DERIVED).to_arrow())
        standard = part.drop(_DERIVED)
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
    return configs, digest.hexdigest(), _CardInput(first=first, lengths=lengths.result())


def _prepare(rows: pl.DataFrame | Parts, tmp: Path, where: str) -> tuple[_Summary, Iterable[pl.DataFrame]]:
    """The rows' summary and the rows in sorted parts for `_write_data`. A sorted DataFrame is cut into slices;
    `Parts` are read in pyarrow batches, only the columns each pass needs: once to summarise (all but `messages`),
    once for the keys of qids under several tasks (when there are any), once to route into sorted buckets.

    Raises:
        SchemaError: a null in a required column or a duplicate key (of `Parts`; a DataFrame is validated).
    """
    if isinstance(rows, pl.DataFrame):
        step = max(1, (BATCH_BYTES * rows.height) // max(1, rows.estimated_size()))
        summary, _ = _summarise(rows.iter_slices(step), where)
        return summary, rows.iter_slices(_rows_for(ROW_GROUP_BYTES, summary))
    work = tmp / ".work"
    work.mkdir(parents=True)
    names = table_schema("rows").names
    summary, questions = _summarise(_parts_batches(rows, [c for c in names if c not in _DERIVED], where), where)
    dup = _shared_qid_duplicate(questions, _parts_batches(rows, list(table_schema("rows").key), where))
    if dup is not None:
        raise SchemaError(f"table 'rows' in {where}: duplicate key {dup}")
    bounds = _bucket_bounds(questions, summary)
    del questions  # the rows are routed by the bounds alone
    return summary, _sorted_buckets(_parts_batches(rows, names, where), bounds, summary, work / "buckets", where)


def _teacher(recipe: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """The teacher as the card names it: the recipe's, else the model(s) the rows were written by."""
    teacher = recipe.get("teacher", {})
    return {"model": teacher.get("model") or (models[0] if len(models) == 1 else models),
            "revision": teacher.get("revision"), "backend": teacher.get("backend")}


def write_version(
    rows: pl.DataFrame | Parts,
    *,
    root: str | Path,
    name: str,
    recipe: dict[str, Any],
    stats: BuildStats | None = None,
    tool_version: str | None = None,
    shard_rows: int | None = None,
    task_configs: bool | None = None,
    lock_timeout_s: float | None = None,
) -> VersionInfo:
    """Write `rows` as the next version of dataset `name` under `root`, unless a version (any, not only the
    newest) already has this content hash.

    `Parts` (the Parquet parts of a rows table or of a ledger, e.g. as a Ray cluster wrote them) are written in
    bounded memory: read in batches, summarised, and sorted bucket by bucket through temporary files in the
    version's temp folder (`_prepare`, `_sorted_buckets`); a DataFrame is sorted in memory. Either way the rows are
    read once for the shards, the digest and the card, and the same rows give the same files and content hash.

    Args:
        rows: the `rows` table (see `rows_from_ledger`), or `Parts`: Parquet files of a rows table or a ledger.
        root: the store folder; the dataset lives in <root>/<name>/.
        name: dataset name (letters, digits, '_', '-', '.').
        recipe: the resolved recipe as a JSON-able dict (hashed without paths, copied into manifest.json).
        stats: the build's stats; without them the manifest and card record no funnel, diversity or usage.
        tool_version: recorded in the manifest (default: this package's version).
        shard_rows, task_configs, lock_timeout_s: default to recipe["store"] values, then StoreConfig defaults.

    Returns:
        VersionInfo; created=False when a version already has this content hash (that version; nothing written).

    Raises:
        SchemaError: the rows do not match the rows schema (names the column, or the first null or duplicate row).
        StoreError: bad name, no rows, the lock is held by another build past the timeout, or a write failed.
    """
    from filelock import FileLock, Timeout

    from builder.recipe import StoreConfig

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise StoreError(f"dataset name {name!r}: use letters, digits, '_', '-' and '.' (e.g. 'multiarith-cot')")
    store_cfg = StoreConfig.model_validate({k: v for k, v in (recipe.get("store") or {}).items()
                                            if k in StoreConfig.model_fields})
    shard_rows = shard_rows or store_cfg.shard_rows
    task_configs = store_cfg.task_configs if task_configs is None else task_configs
    lock_timeout_s = store_cfg.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
    where = f"rows for {name}"
    if isinstance(rows, pl.DataFrame):
        rows = validate(rows, "rows", where=where).sort(_SORT_KEY)
    elif isinstance(rows, Parts):
        _check_parts(rows, where)  # columns checked before the lock; each batch is cast as it is read
    else:
        raise TypeError(f"write_version: rows is a {type(rows).__name__}, expected a polars DataFrame or "
                        "store.Parts (Parquet files of a rows table or ledger)")

    dataset_dir = Path(root) / name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dataset_dir / ".lock"), timeout=lock_timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(f"{dataset_dir}: another build is writing this dataset (lock {dataset_dir / '.lock'} "
                         f"still held after {lock_timeout_s:g}s); wait for it to finish and run again") from None
    try:
        for stale in dataset_dir.glob(".tmp-*"):  # a crashed writer's leftovers; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        existing = list_versions(dataset_dir.parent, name)
        version = f"v{1 + max((int(v['version'][1:]) for v in existing), default=0)}"  # unless the content exists
        tmp = dataset_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            summary, parts = _prepare(rows, tmp, where)
            if summary.rows == 0:  # `datasets` cannot load a version without rows, and there is nothing to train on
                raise StoreError(f"dataset {name!r}: no rows to store (curation kept no sample; see the funnel in "
                                 "the build summary); nothing written")
            configs, rows_sha256, card_input = _write_data(parts, tmp, summary, shard_rows=shard_rows,
                                                           task_configs=task_configs, where=where)
            shutil.rmtree(tmp / ".work", ignore_errors=True)
            digest = _content_hash(rows_sha256, recipe)
            same = next((v for v in existing if v["content_hash"] == digest), None)
            if same is None:
                manifest = _write_folder(tmp, configs, summary, name=name, version=version, digest=digest,
                                         rows_sha256=rows_sha256, recipe=recipe, stats=stats,
                                         tool_version=tool_version or _tool_version(), card_input=card_input)
                final = dataset_dir / version
                if final.exists():
                    raise StoreError(f"{final}: already exists but has no readable manifest; versions are "
                                     "immutable, move it away by hand")
                os.rename(tmp, final)
        except OSError as exc:  # disk full, permissions: nothing half-written stays visible
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreWriteError(f"{dataset_dir}: writing {version} failed ({exc}); nothing was written, the store "
                                  "is unchanged; fix the cause (e.g. free disk space) and rerun") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if same is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            folder = dataset_dir / same["version"]
            # "unchanged" must not point at a damaged copy: check its files, and heal an index a kill left stale.
            _check_files(folder, load_manifest(folder), hint=f"{same['version']} has this content but is corrupt; "
                         f"move {folder} out of the store and rerun to write it again")
            if _read_index(dataset_dir) != existing:
                _write_index(dataset_dir, existing)
            logger.info("%s %s already has content hash %s; nothing written", name, same["version"], digest[:12])
            return VersionInfo(folder, same["version"], digest, False)
        try:
            _write_index(dataset_dir, [*existing, _index_entry(manifest)])
        except OSError as exc:  # the version is complete; the index is rebuilt from the folders on the next write
            logger.warning("%s: could not update %s (%s); the version folders remain the source of truth",
                           dataset_dir, INDEX, exc)
        logger.info("wrote %s %s (%d rows, content hash %s)", name, version, summary.rows, digest[:12])
        return VersionInfo(final, version, digest, True)
    finally:
        lock.release()


def _write_folder(folder: Path, configs: dict[str, dict[str, Any]], summary: _Summary, *, name: str, version: str,
                  digest: str, rows_sha256: str, recipe: dict[str, Any], stats: BuildStats | None,
                  tool_version: str, card_input: _CardInput) -> dict[str, Any]:
    """The card, the manifest and read-only files around the data files `_write_data` wrote into `folder`."""
    from builder.card import write_card

    measured = stats.to_json() if stats is not None else {}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "content_hash": digest,
        "hash_spec": HASH_SPEC,
        "rows_sha256": rows_sha256,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": tool_version,
        "rows": summary.rows,
        "tasks": summary.tasks,
        "configs": {
            c: {"split": SPLIT, "data_files": v["pattern"], "rows": v["rows"],
                "files": [p.relative_to(folder).as_posix() for p in v["files"]],
                "trl_type": TRL_TYPES.get(c, TRL_TYPES[DEFAULT_CONFIG])}
            for c, v in configs.items()
        },
        "columns": table_schema("rows").names,
        "teacher": _teacher(recipe, summary.teachers),
        **{section: measured.get(section, {}) for section in _STATS_SECTIONS},
        "recipe": recipe,
    }
    first = card_input.first if card_input.first is not None else table_schema("rows").empty().drop(_DERIVED)
    write_card(folder, first, manifest, lengths=card_input.lengths)
    manifest["files"] = {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*")) if p.is_file()
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    _fsync_tree(folder)
    for p in folder.rglob("*"):
        if p.is_file():
            p.chmod(0o444)  # immutable: a later write must be a new version
    return manifest


def _index_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest[k] for k in ("version", "content_hash", "created_at", "rows", "tasks")}


def _read_index(dataset_dir: Path) -> list[dict[str, Any]] | None:
    try:
        return json.loads((dataset_dir / INDEX).read_text())["versions"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_index(dataset_dir: Path, entries: list[dict[str, Any]]) -> None:
    tmp = dataset_dir / f".{INDEX}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps({"versions": entries}, indent=2) + "\n")
    os.replace(tmp, dataset_dir / INDEX)


# ---------------------------------------------------------------- reading
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("version", "content_hash", "files", "configs", "name", "rows", "tasks", "manifest_sha256")


def _inside(rel: Any) -> bool:
    """A relative POSIX path that stays inside its folder: no '..', no absolute path, no backslash, no './'."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or ":" in rel.split("/")[0]:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _manifest_problem(m: Any) -> str | None:
    """What is structurally wrong with a parsed manifest (wrong types, paths outside the folder), or None."""
    if not isinstance(m, dict):
        return f"expected a JSON object, found {type(m).__name__}"
    for key in _REQUIRED:
        if key not in m:
            older = " (older manifests have none: rebuild the version to add it)" if (
                key == "manifest_sha256") else ""
            return f"field {key!r} is missing{older}"
    if not isinstance(m["version"], str) or not _VERSION_RE.match(m["version"]):
        return f"field 'version' is {m['version']!r}, not v1, v2, ..."
    for key in ("content_hash", "manifest_sha256"):
        if not isinstance(m[key], str) or not _HEX64.match(m[key]):
            return f"field {key!r} is not a sha256 hex digest"
    if not isinstance(m["name"], str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", m["name"]):
        return f"field 'name' is {m['name']!r}, not a dataset name"
    if not isinstance(m["rows"], int) or isinstance(m["rows"], bool) or m["rows"] < 0:
        return f"field 'rows' is {m['rows']!r}, not a row count"
    if not isinstance(m["tasks"], dict) or not all(isinstance(n, int) for n in m["tasks"].values()):
        return "field 'tasks' is not an object of task -> row count"
    files = m["files"]
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return "field 'files' is not an object of path -> {sha256, bytes}"
    for rel, meta in files.items():
        if not _inside(rel) or rel == MANIFEST:
            return f"files lists {rel!r}, a path outside the version folder (or the manifest itself)"
        if not isinstance(meta.get("sha256"), str) or not _HEX64.match(meta["sha256"]):
            return f"files[{rel!r}] has no sha256 hex digest"
        if not isinstance(meta.get("bytes"), int) or isinstance(meta["bytes"], bool):
            return f"files[{rel!r}] has no byte count"
    configs = m["configs"]
    if not isinstance(configs, dict) or not configs or not all(isinstance(c, dict) for c in configs.values()):
        return "field 'configs' is not an object of config -> {data_files, files, rows}"
    for name, config in configs.items():
        listed = config.get("files")
        if not isinstance(listed, list) or not isinstance(config.get("data_files"), str):
            return f"configs[{name!r}] has no files list or data_files pattern"
        if not _inside(config["data_files"]):
            return f"configs[{name!r}].data_files {config['data_files']!r} points outside the version folder"
        for rel in listed:
            if not _inside(rel) or rel not in files:
                return f"configs[{name!r}] lists {rel!r}, which is outside the version folder or not in files"
        if not isinstance(config.get("rows"), int):
            return f"configs[{name!r}].rows is not a row count"
    if not isinstance(m.get("recipe", {}), dict):
        return "field 'recipe' is not an object"
    if m["manifest_sha256"] != manifest_digest(m):
        return ("manifest_sha256 does not match the manifest's fields: the manifest was edited after the version "
                "was written")
    return None


def load_manifest(version_dir: Path) -> dict[str, Any]:
    """Read manifest.json and check it on its own: fields and types, paths inside the folder, its digest, and
    its version against the folder's name (when the folder is named like a version).

    Raises:
        StoreError: naming the manifest and what is wrong; the version is then treated as corrupt.
    """
    path = version_dir / MANIFEST
    if not path.is_file():
        raise StoreError(f"{path}: missing; {version_dir} is not a dataset version folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON (line {exc.lineno}): the version is corrupt") from None
    except UnicodeDecodeError:
        raise StoreError(f"{path}: not UTF-8 text: the version is corrupt") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise StoreError(f"{path}: {problem}: the version is corrupt")
    if _VERSION_RE.match(version_dir.name) and manifest["version"] != version_dir.name:
        raise StoreError(f"{path}: says version {manifest['version']} but lives in folder {version_dir.name}: the "
                         "version is corrupt (a folder is never renamed)")
    return manifest


def is_version_name(text: str) -> bool:
    """Whether `text` names a version ("v1", "v2", ...), as folders and Hub tags are named."""
    return _VERSION_RE.match(text) is not None


def resolve_root(root: str | Path | None = None) -> Path:
    """The store folder: `root` when given, else $RATIONALE_STORE, else ./store (StoreConfig's default)."""
    return Path(root if root is not None else os.environ.get("RATIONALE_STORE", "store"))


def list_versions(root: str | Path, name: str) -> list[dict[str, Any]]:
    """Versions of dataset `name`, oldest first, read from the version folders' manifests (the source of truth)."""
    dataset_dir = Path(root) / name
    found = []
    for child in dataset_dir.iterdir() if dataset_dir.is_dir() else []:
        m = _VERSION_RE.match(child.name)
        if m and child.is_dir():
            manifest = load_manifest(child)
            if manifest["name"] != name:
                raise StoreError(f"{child / MANIFEST}: names dataset {manifest['name']!r} but lives under {name!r}: "
                                 "the version is corrupt")
            found.append((int(m.group(1)), _index_entry(manifest)))
    return [entry for _, entry in sorted(found, key=lambda t: t[0])]


def resolve(ref: str | Path, root: str | Path | None = None) -> Path:
    """Find a version folder from "NAME@vN", "NAME@latest", "NAME@<hash prefix>", "NAME" (= latest) or a path.

    Raises:
        StoreError: unknown dataset or version (lists the ones that exist), or an ambiguous hash prefix.
    """
    path = Path(ref)
    if path.is_dir() and (path / MANIFEST).is_file():
        return path
    text = str(ref)
    name, at, want = text.partition("@")
    if at and not want:
        raise StoreError(f"{text}: nothing after '@'; write NAME@vN, NAME@latest, NAME@<hash prefix> or NAME")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise StoreError(f"{text}: {name!r} is not a dataset name (letters, digits, '_', '-', '.') nor a version "
                         "folder")
    want = want or "latest"
    root = resolve_root(root)
    versions = list_versions(root, name)
    if not versions:
        raise StoreError(f"{text}: no dataset {name!r} under store {root} (and no version folder at that path); "
                         "pass --store DIR or a version folder path")
    if want == "latest":
        return root / name / versions[-1]["version"]
    if _VERSION_RE.match(want):
        if any(v["version"] == want for v in versions):
            return root / name / want
    elif re.fullmatch(r"[0-9a-f]{4,64}", want):
        hits = [v for v in versions if v["content_hash"].startswith(want)]
        if len(hits) > 1:
            raise StoreError(f"{text}: hash prefix matches {', '.join(v['version'] for v in hits)}; give more digits")
        if hits:
            return root / name / hits[0]["version"]
    known = ", ".join(f"{v['version']} ({v['content_hash'][:12]})" for v in versions)
    raise StoreError(f"{text}: no such version of {name!r} in {root}; versions: {known}")


def read_version(ref_or_path: str | Path, root: str | Path | None = None, *, config: str = DEFAULT_CONFIG
                 ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Read a version's rows table (the default config: all rows, or one task's config) and its manifest.

    The `conversational` config holds the same rows as message lists, not the rows table: load it with
    `builder.api.open_version(ref, "conversational")` (a `datasets.DatasetDict`).
    """
    folder = resolve(ref_or_path, root)
    manifest = load_manifest(folder)
    if config not in manifest["configs"]:
        raise StoreError(f"{folder}: no config {config!r}; configs: {', '.join(manifest['configs'])}")
    if config == CONVERSATIONAL_CONFIG:
        raise StoreError(f"{folder}: config {config!r} holds TRL message lists, not the rows table; read the rows "
                         f"with config {DEFAULT_CONFIG!r} or load it with builder.api.open_version(ref, {config!r})")
    files = [folder / f for f in manifest["configs"][config]["files"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise StoreError(f"{missing[0]}: listed in {folder / MANIFEST} but missing; run `rationale pull` again")
    rows = _with_derived(_read_files(folder, manifest["configs"][config]["files"]))
    return validate(rows, "rows", where=str(folder)), manifest


def _check_files(folder: Path, manifest: dict[str, Any], hint: str = "do not use this copy") -> None:
    """Every file the manifest lists exists inside the folder with its recorded size and sha256; the first that
    does not is named. A symlink is refused: its content lives elsewhere."""
    inside = folder.resolve()
    for rel, meta in sorted(manifest["files"].items()):
        file = folder / rel
        if file.is_symlink() or (file.exists() and not file.resolve().is_relative_to(inside)):
            raise StoreError(f"{file}: a link to a file outside the version folder; {hint}")
        if not file.is_file():
            raise StoreError(f"{file}: missing (listed in {folder / MANIFEST}); {hint}")
        found = sha256_file(file)
        if found != meta["sha256"] or file.stat().st_size != meta["bytes"]:
            raise StoreError(f"{file}: sha256 {found[:16]}... does not match the manifest's {meta['sha256'][:16]}... "
                             f"(file altered or corrupt); {hint}")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Name the file when its Parquet cannot be read."""
    import pyarrow as pa

    try:
        yield
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as exc:
        raise StoreError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]}); the version is corrupt: "
                         "`rationale pull` it again or rebuild it") from None


def _read_files(folder: Path, files: list[str]) -> pl.DataFrame:
    frames = []
    for rel in files:
        with _reading(folder / rel):
            frames.append(pl.read_parquet(folder / rel))
    return pl.concat(frames, how="vertical_relaxed") if frames else table_schema("rows").empty()


def _unused_in(paths: list[Path]) -> list[str]:
    """Added columns that are all null (or absent, in versions older than them) in these files."""
    added = table_schema("rows").added
    rows, nulls = 0, dict.fromkeys(added, 0)
    for path in paths:
        with _reading(path):
            scan = pl.scan_parquet(path)
            present = [c for c in added if c in scan.collect_schema()]
            counts = scan.select(pl.len(), *(pl.col(c).null_count() for c in present)).collect().row(0)
        rows += counts[0]
        for c in added:
            nulls[c] += counts[1 + present.index(c)] if c in present else counts[0]
    return [c for c in added if nulls[c] == rows]


def _in_order(keys: pl.DataFrame) -> bool:
    return bool(keys.select((pl.arg_sort_by(_SORT_KEY, maintain_order=True) == pl.int_range(pl.len())).all()).item())


def _derive_problem(folder: Path, manifest: dict[str, Any]) -> tuple[str | None, str]:
    """The first manifest field that disagrees with the data (rows, tasks, configs, columns, rows_sha256), and the
    rows digest; with none, a duplicate key raises SchemaError.

    The default config's rows are read once, one batch at a time, in the order the store writes them (sorted by
    task, qid, sample_idx), feeding the digest and the expected `conversational` config; a duplicate key is two
    neighbours, or two rows of a qid under several tasks (then read again, those keys only). The other configs are
    checked from their files' metadata and task column.
    """
    configs = manifest["configs"]
    files = [folder / rel for rel in configs.get(DEFAULT_CONFIG, {}).get("files") or []]
    conversational = [folder / rel for rel in configs.get(CONVERSATIONAL_CONFIG, {}).get("files") or []]
    conv_columns: list[str] = []
    if conversational:
        with _reading(conversational[0]):
            conv_columns = list(pl.read_parquet_schema(conversational[0]))
    digest, as_messages = _NdjsonSha256(_unused_in(files)), _NdjsonSha256()
    height, tasks, last, unsorted, dup = 0, {}, table_schema("rows").empty().select(_SORT_KEY), None, None
    questions, pending = None, []
    for path in files:
        for batch in _parquet_batches(path):
            rows = validate(_with_derived(batch), "rows", where=str(path))
            keys = pl.concat([last, rows.select(_SORT_KEY)])
            if unsorted is None and not _in_order(keys):
                unsorted = path
            dup = dup or _duplicate_key(keys)
            last = keys.tail(1)
            pending.append(keys.group_by("task", "qid").len("rows"))
            if len(pending) >= 16:
                questions, pending = _merge_questions([questions, *pending]), []
            height += rows.height
            for task, n in rows.group_by("task").len().iter_rows():
                tasks[task] = tasks.get(task, 0) + n
            digest.update(rows)
            if conv_columns:
                as_messages.update(conversational_rows(rows).select(conv_columns))
    if manifest["rows"] != height:
        return f"says {manifest['rows']} rows, the data has {height}", digest.hexdigest()
    tasks = dict(sorted(tasks.items()))
    if manifest["tasks"] != tasks:
        return f"says tasks {manifest['tasks']}, the data has {tasks}", digest.hexdigest()
    # a version older than a column added to the schema lists no such column (validate filled it with nulls)
    names = table_schema("rows").names
    listed = manifest.get("columns", names)
    columns = [c for c in names if c in listed or c not in table_schema("rows").added]
    if listed != columns:
        return f"says columns {manifest['columns']}, the data has {columns}", digest.hexdigest()
    if unsorted is not None:
        return (f"{unsorted}: rows out of (task, qid, sample_idx) order, which is how the store writes them",
                digest.hexdigest())
    if manifest.get("rows_sha256", digest.hexdigest()) != digest.hexdigest():  # older manifests have none
        return "rows_sha256 does not match the rows", digest.hexdigest()
    if configs.get(DEFAULT_CONFIG, {}).get("files") is None:
        return f"has no {DEFAULT_CONFIG!r} config", digest.hexdigest()
    data_files = sorted(rel for rel in manifest["files"] if rel.endswith(".parquet")
                        and rel not in (configs.get(CONVERSATIONAL_CONFIG, {}).get("files") or []))
    if sorted(configs[DEFAULT_CONFIG]["files"]) != data_files:
        return f"the {DEFAULT_CONFIG!r} config does not list every data file", digest.hexdigest()
    for name, config in configs.items():
        # `datasets` loads a config by its pattern, so the pattern must match exactly the listed files
        matched = sorted(p.relative_to(folder).as_posix() for p in folder.glob(config["data_files"]) if p.is_file())
        if matched != sorted(config["files"]):
            return (f"config {name!r}: data_files {config['data_files']!r} matches {matched}, not its files",
                    digest.hexdigest())
        if name == DEFAULT_CONFIG:
            found, part_tasks = height, set()
        elif name == CONVERSATIONAL_CONFIG:  # the same rows, only laid out as messages
            held = _NdjsonSha256()
            found, part_tasks = 0, set()
            for path in conversational:
                for batch in _parquet_batches(path):
                    held.update(batch)
                    found += batch.height
            if found == config["rows"] and held.hexdigest() != as_messages.hexdigest():
                return f"config {name!r} does not hold the default config's rows as messages", digest.hexdigest()
        else:  # row counts from the files' metadata, tasks from their task column, one batch at a time
            found, part_tasks = 0, set()
            for path in (folder / rel for rel in config["files"]):
                found += _parquet_rows(path)
                for batch in _parquet_batches(path, ["task"]):
                    part_tasks |= set(batch.get_column("task").unique().to_list())
        if config["rows"] != found:
            return f"config {name!r} says {config['rows']} rows, its files hold {found}", digest.hexdigest()
        if len(part_tasks) > 1:
            return f"config {name!r} mixes tasks {sorted(part_tasks)}", digest.hexdigest()
    dup = dup or _shared_qid_duplicate(_merge_questions([questions, *pending]),
                                       (b for path in files for b in _parquet_batches(path, ["qid", "sample_idx"])))
    if dup is not None:
        raise SchemaError(f"table 'rows' in {folder}: duplicate key {dup}")
    return None, digest.hexdigest()


def verify(path: str | Path) -> dict[str, Any]:
    """Check a version folder: the manifest on its own (`load_manifest`), every file against it, no unlisted
    file, the manifest's fields re-derived from the data, and the content hash against the rows and recipe.

    Each file is hashed as it streams and the rows are read one row group at a time (memory stays bounded at
    any size); the rows digest is computed once.

    Files under .cache/ (huggingface_hub's download bookkeeping) and the Hub's .gitattributes are ignored; any
    other file the manifest does not list is an error, since `datasets` could pick it up.

    Returns:
        The manifest.

    Raises:
        StoreError: naming the first missing, altered or unexpected file, a manifest field that disagrees with
            the data, or a content hash mismatch.
        SchemaError: a data file does not hold the rows schema, or two rows share a key.
    """
    folder = Path(path)
    manifest = load_manifest(folder)
    _check_files(folder, manifest)
    listed = set(manifest["files"]) | {MANIFEST}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder).as_posix()
        if file.is_file() and rel not in listed and not rel.startswith(".cache/") and rel != ".gitattributes":
            raise StoreError(f"{file}: not listed in {folder / MANIFEST} (unexpected file in a version folder)")
    problem, rows_sha256 = _derive_problem(folder, manifest)
    if problem:
        raise StoreError(f"{folder / MANIFEST}: {problem}; the manifest or data was altered")
    found = _content_hash(rows_sha256, manifest.get("recipe") or {})
    if found != manifest["content_hash"]:
        raise StoreError(f"{folder / MANIFEST}: content_hash {manifest['content_hash'][:12]} does not match the "
                         f"rows and recipe ({found[:12]}); the manifest or data was altered")
    return manifest


# ---------------------------------------------------------------- comparing
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def diff_versions(a: str | Path, b: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Compare two versions: rows added/removed per task (a row is (qid, sample_idx, completion)),
    funnel changes per task and stage, and changed recipe settings and teacher (flattened dotted keys).

    Both versions are verified first (`verify`): a diff of corrupt data would be a wrong answer, not an error."""
    for ref in (a, b):
        verify(resolve(ref, root))
    rows_a, man_a = read_version(a, root)
    rows_b, man_b = read_version(b, root)
    key = ["qid", "sample_idx", "completion"]
    added = rows_b.join(rows_a.select(key), on=key, how="anti").group_by("task").len(name="added")
    removed = rows_a.join(rows_b.select(key), on=key, how="anti").group_by("task").len(name="removed")
    tasks = pl.concat([rows_a.select("task"), rows_b.select("task")]).unique()
    per_task = (
        tasks.join(added, on="task", how="left").join(removed, on="task", how="left")
        .join(rows_a.group_by("task").len(name="rows_a"), on="task", how="left")
        .join(rows_b.group_by("task").len(name="rows_b"), on="task", how="left")
        .fill_null(0).sort("task")
    )
    funnel: dict[str, dict[str, list[int | None]]] = {}
    fa, fb = man_a.get("funnel") or {}, man_b.get("funnel") or {}
    for task in sorted(set(fa) | set(fb)):
        stages = sorted(set(fa.get(task, {})) | set(fb.get(task, {})))
        changed = {s: [fa.get(task, {}).get(s), fb.get(task, {}).get(s)] for s in stages
                   if fa.get(task, {}).get(s) != fb.get(task, {}).get(s)}
        if changed:
            funnel[task] = changed
    settings: dict[str, list[Any]] = {}
    for section in ("recipe", "teacher"):
        flat_a, flat_b = _flatten(man_a.get(section) or {}, section), _flatten(man_b.get(section) or {}, section)
        for k in sorted(set(flat_a) | set(flat_b)):
            if flat_a.get(k) != flat_b.get(k):
                settings[k] = [flat_a.get(k), flat_b.get(k)]
    return {
        "a": {"version": man_a["version"], "content_hash": man_a["content_hash"], "rows": rows_a.height},
        "b": {"version": man_b["version"], "content_hash": man_b["content_hash"], "rows": rows_b.height},
        "same_content": man_a["content_hash"] == man_b["content_hash"],
        "tasks": per_task.to_dicts(),
        "funnel": funnel,
        "settings": settings,
    }
