"""Reading the user's files: JSONL, JSON, CSV/TSV and Parquet, with errors that name the file and the line.

Task files, eval sets and imported completions all come through `read_table`, so a broken file reads the same
way wherever it is given. This module imports nothing from the package but the errors.
"""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path
from typing import NamedTuple

import polars as pl

from builder.errors import InputError


# Whitespace and invisible format characters (zero-width space, word joiner, BOM, bidi marks): text made only of
# these shows as nothing, so a question or name made of them is empty.
_BLANK = r"^[\s\p{Cf}]*$"


def is_blank(expr: pl.Expr) -> pl.Expr:
    """Null, empty, or only whitespace / invisible format characters."""
    return expr.is_null() | expr.str.contains(_BLANK)


def is_blank_text(text: str | None) -> bool:
    """`is_blank` for one Python string."""
    return not text or all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


class Table(NamedTuple):
    """A file's rows and the word errors use for a row: "line" (JSONL, counted from 1) or "row" (from 0)."""

    frame: pl.DataFrame
    unit: str

    def where(self, source: str | Path) -> pl.Expr:
        """"<source> line 3" / "<source> row 2" for each row, as error messages name it."""
        first = 1 if self.unit == "line" else 0
        return pl.format(f"{source} {self.unit} {{}}", pl.int_range(first, pl.len() + first))


def read_text(path: Path) -> str:
    """UTF-8 text (a BOM is dropped); a bad byte is reported with its line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "re-save the file as UTF-8") from None


def read_json(path: Path) -> object:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per line; blank lines are skipped."""
    rows = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}: line {lineno}: expected a JSON object, found {type(row).__name__}")
        rows.append(row)
    return rows


def read_table(path: Path) -> Table:
    """A JSONL/JSON/CSV/TSV/Parquet file as a frame, by suffix.

    JSON holds a list of objects, or an object with exactly one list field (BIG-bench's "examples"). CSV cells stay
    strings. A .json file with one object per line (AQuA's test.json) is read as JSONL.

    Raises:
        FileNotFoundError: no such file.
        InputError: unknown suffix, bad bytes or bad JSON (naming the line), or an unparseable CSV/Parquet file.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if suffix in (".jsonl", ".ndjson"):
        return Table(_read_ndjson(path), "line")
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # one object per line under a .json name
                return Table(_read_ndjson(path), "line")
            raise InputError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None
        if isinstance(data, dict) and len([v for v in data.values() if isinstance(v, list)]) == 1:
            data = next(v for v in data.values() if isinstance(v, list))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{path}: expected a JSON list of objects (or an object holding one such list)")
        return Table(pl.DataFrame(data, infer_schema_length=None), "row")
    if suffix in (".csv", ".tsv"):
        try:
            frame = pl.read_csv(io.StringIO(read_text(path)), infer_schema=False,
                                separator="\t" if suffix == ".tsv" else ",")
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"{path}: cannot parse as CSV ({exc})") from None
        return Table(frame, "row")
    if suffix == ".parquet":
        try:
            return Table(pl.read_parquet(path), "row")
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"{path}: cannot read as Parquet ({exc})") from None
    raise InputError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")


def _read_ndjson(path: Path) -> pl.DataFrame:
    text = read_text(path)
    try:
        return pl.read_ndjson(io.StringIO(text), infer_schema_length=None)
    except pl.exceptions.PolarsError:
        return pl.DataFrame(read_jsonl(path), infer_schema_length=None)  # names the bad line
