"""Table contracts between stages, read from schemas/*.table.json, checked on every read and write.

Each stage hands the next a polars frame; `validate` checks it against the named schema and returns it with
columns in schema order, `write_table` validates then writes Parquet atomically (temp file, then rename).

A column added to a table after its first release carries `"added": <schema version>` and must be nullable: a
shard or dataset version written before it has none, and `validate` fills it with typed nulls, so old files stay
readable. Any other missing column is an error.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl

from builder.errors import SchemaError

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
if not SCHEMA_DIR.is_dir():  # installed as a wheel: schemas are packaged beside the code
    SCHEMA_DIR = Path(__file__).resolve().parent / "_schemas"

TABLES = ("questions", "samples", "graded", "ledger", "rows")

_SCALARS: dict[str, pl.DataType] = {
    "string": pl.String(),
    "int32": pl.Int32(),
    "int64": pl.Int64(),
    "float64": pl.Float64(),
    "bool": pl.Boolean(),
}


def parse_type(spec: str) -> pl.DataType:
    """Turn a schema type string ('list<string>', 'struct<a:string,b:int32>') into a polars dtype."""
    spec = spec.strip()
    if spec in _SCALARS:
        return _SCALARS[spec]
    if spec.startswith("list<") and spec.endswith(">"):
        return pl.List(parse_type(spec[5:-1]))
    if spec.startswith("struct<") and spec.endswith(">"):
        fields = [f.split(":", 1) for f in _split_top(spec[7:-1])]
        return pl.Struct({name.strip(): parse_type(t) for name, t in fields})
    raise ValueError(f"unknown schema type {spec!r}")


def _split_top(body: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in body:
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur] if cur else parts


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    nullable: bool
    description: str
    added: int | None = None  # schema version that added the column (nullable ones are filled when missing)


@dataclass(frozen=True)
class TableSchema:
    name: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    description: str

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def added(self) -> list[str]:
        """Columns added after the table's first release: filled with nulls when an old file lacks them."""
        return [c.name for c in self.columns if c.added is not None]

    @property
    def polars_schema(self) -> pl.Schema:
        return pl.Schema({c.name: c.dtype for c in self.columns})

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.polars_schema)


@cache
def table_schema(name: str) -> TableSchema:
    """Load the schema of hand-off table `name` from schemas/<name>.table.json."""
    path = SCHEMA_DIR / f"{name}.table.json"
    if not path.exists():
        raise SchemaError(f"unknown table {name!r}; known tables: {', '.join(TABLES)}")
    raw = json.loads(path.read_text())
    cols = tuple(
        Column(c["name"], parse_type(c["type"]), bool(c.get("nullable", False)), c.get("description", ""),
               c.get("added"))
        for c in raw["columns"]
    )
    late = [c.name for c in cols if c.added is not None and not c.nullable]
    if late:
        raise SchemaError(f"{path}: added column(s) {late} must be nullable (old files do not have them)")
    return TableSchema(raw["name"], tuple(raw["key"]), cols, raw.get("description", ""))


def validate(df: pl.DataFrame, table: str, *, where: str | None = None, extra: bool = False) -> pl.DataFrame:
    """Check `df` against schema `table`; return it with schema columns first, in schema order.

    Integer and null-typed columns are cast where lossless (a JSONL reader gives Int64 for an int32 column).
    Nullable columns added to the schema later (`"added"`) are filled with typed nulls when `df` predates them.

    Args:
        df: the frame to check.
        table: schema name (questions, samples, graded, ledger, rows).
        where: file or stage named in errors.
        extra: keep columns the schema does not list (after the schema's own); otherwise drop them.

    Raises:
        SchemaError: naming the table, column, expected and found type, or the first offending row.
    """
    schema = table_schema(table)
    at = f" in {where}" if where else ""
    late = [pl.lit(None, c.dtype).alias(c.name) for c in schema.columns
            if c.added is not None and c.name not in df.columns]
    if late:
        df = df.with_columns(late)
    missing = [c.name for c in schema.columns if c.name not in df.columns]
    if missing:
        raise SchemaError(f"table {table!r}{at}: missing column(s) {missing}; expected columns {schema.names}")
    casts = []
    for col in schema.columns:
        found = df.schema[col.name]
        if found == col.dtype:
            continue
        if found == pl.Null or (found.is_integer() and col.dtype.is_integer()):
            casts.append(pl.col(col.name).cast(col.dtype, strict=True))
            continue
        raise SchemaError(f"table {table!r}{at}: column {col.name!r} has type {found}, expected {col.dtype}")
    if casts:
        try:
            df = df.with_columns(casts)
        except pl.exceptions.PolarsError as exc:
            raise SchemaError(f"table {table!r}{at}: {exc}") from exc
    required = [c.name for c in schema.columns if not c.nullable]
    if required and df.height:
        nulls = df.select(pl.col(required).null_count()).row(0)
        for name, count in zip(required, nulls, strict=False):
            if count:
                row = df.select(pl.col(name).is_null().arg_max()).item()
                raise SchemaError(f"table {table!r}{at}: column {name!r} is null in row {row} ({count} null rows)")
    if schema.key and df.height:
        key_cols = list(schema.key)
        # Fast path: distinct key hashes (a hash collision only sends us to the exact check below).
        if df.select(pl.struct(key_cols).hash().n_unique()).item() != df.height:
            dup = df.select(pl.struct(key_cols).is_duplicated())
            if dup.to_series().any():
                i = dup.to_series().arg_max()
                key = df.select(key_cols).row(i, named=True)
                raise SchemaError(f"table {table!r}{at}: duplicate key {key} (row {i})")
    rest = [c for c in df.columns if c not in schema.names] if extra else []
    return df.select(schema.names + rest)


# Temp files of atomic_write_parquet: ".<name>.parquet.<random>.tmp" beside the target.
TEMP_GLOB = ".*.parquet.*.tmp"


def atomic_write_parquet(df: pl.DataFrame, path: str | Path, *, replace: bool = True) -> Path:
    """Write Parquet (zstd) to a temp file in the same folder, fsync, then rename: readers never see half a file.
    `replace=False` never overwrites: an existing `path` raises FileExistsError (`_create_from`, not a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # matches TEMP_GLOB
    try:
        with os.fdopen(fd, "wb") as fh:
            df.write_parquet(fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _create_from(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# What a filesystem without hard links (some FUSE mounts of object stores) answers to os.link.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _create_from(tmp: str, path: Path) -> None:
    """Give the complete file `tmp` the name `path` unless that name exists (FileExistsError): a hard link; where
    the filesystem has none, an exclusive create claims the name and the rename fills it."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, path)
    else:
        Path(tmp).unlink()


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete temp files of `atomic_write_parquet` left in `folder` by a killed process; they are never read.

    Any folder of atomically written tables: a run dir, its samples/ shards. Returns what was deleted.
    """
    stale = sorted(Path(folder).glob(TEMP_GLOB))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_table(df: pl.DataFrame, path: str | Path, table: str, *, extra: bool = False) -> pl.DataFrame:
    """Validate `df` as `table`, then write it atomically to `path`. Returns the validated frame."""
    df = validate(df, table, where=str(path), extra=extra)
    atomic_write_parquet(df, path)
    return df


def read_table(path: str | Path, table: str, *, extra: bool = False) -> pl.DataFrame:
    """Read a Parquet file (or a folder/glob of shards) and validate it as `table`."""
    path = Path(path)
    if not path.exists() and "*" not in str(path):
        raise FileNotFoundError(f"{path}: no such file (expected a {table} table)")
    files = (sorted(path.glob("*.parquet")) if path.is_dir() else
             sorted(path.parent.glob(path.name)) if "*" in path.name else [path])
    if not files:
        raise SchemaError(f"{path}: no Parquet files (expected a {table} table)")
    try:
        # shards written before a column was added lack it: a diagonal concat gives them nulls beside newer ones
        df = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise SchemaError(f"{path}: cannot read as Parquet ({exc})") from exc
    return validate(df, table, where=str(path), extra=extra)
