"""Reading the user's files: JSONL, JSON, CSV/TSV and Parquet, with errors that name the file and the line.

Task files, eval sets and imported completions all come through `read_table`, so a broken file reads the same
way wherever it is given. This module imports nothing from the package but the errors.
"""

from __future__ import annotations

import csv
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
    """A file's rows and where each came from: `lines` holds the file line of each row (JSONL: the object's line,
    blank lines counted; CSV: the line a record starts on, header is line 1); without lines (JSON lists, Parquet)
    rows are named by index, "row 0" first."""

    frame: pl.DataFrame
    unit: str
    lines: pl.Series | None = None

    def where(self, source: str | Path) -> pl.Expr:
        """"<source> line 3" / "<source> row 2" for each row, as error messages name it."""
        if self.lines is not None:
            return pl.format(f"{source} line {{}}", pl.lit(self.lines))
        return pl.format(f"{source} {self.unit} {{}}", pl.int_range(0, pl.len()))

    def line_of(self, row: int) -> str:
        """"line 7" / "row 6" of one row (0-based index into the frame)."""
        return f"line {self.lines[row]}" if self.lines is not None else f"{self.unit} {row}"


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


def _object_lines(text: str) -> list[tuple[int, str]]:
    """(file line, text) of each non-blank line; lines end at '\n' only, as in JSON Lines (not at U+2028)."""
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per line; blank lines are skipped."""
    rows = []
    for lineno, line in _object_lines(read_text(path)):
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
    strings. A .json file with one object per line (AQuA's test.json) is read as JSONL. A UTF-8 BOM is dropped
    in every text format.

    Raises:
        FileNotFoundError: no such file.
        InputError: unknown suffix, bad bytes or bad JSON (naming the line), or an unparseable CSV/Parquet file.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file")
    if suffix in (".jsonl", ".ndjson"):
        return _read_ndjson(path)
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":  # one object per line under a .json name
                return _read_ndjson(path)
            raise InputError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None
        if isinstance(data, dict) and len([v for v in data.values() if isinstance(v, list)]) == 1:
            data = next(v for v in data.values() if isinstance(v, list))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{path}: expected a JSON list of objects (or an object holding one such list)")
        return Table(_frame(path, data), "row")
    if suffix in (".csv", ".tsv"):
        text = read_text(path)
        separator = "\t" if suffix == ".tsv" else ","
        try:
            frame = pl.read_csv(io.StringIO(text), infer_schema=False, separator=separator)
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"{path}: cannot parse as CSV ({str(exc).splitlines()[0]})") from None
        reader = csv.reader(io.StringIO(text), delimiter=separator)
        starts, line = [], 1
        for _ in reader:  # the line each record starts on (quoted cells may hold newlines)
            starts.append(line)
            line = reader.line_num + 1
        lines = pl.Series("line", starts[1: frame.height + 1], dtype=pl.Int64)
        return Table(frame, "line", lines if len(lines) == frame.height else None)
    if suffix == ".parquet":
        try:
            return Table(pl.read_parquet(path), "row")
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
    raise InputError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")


def _frame(path: Path, rows: list[dict], lines: list[int] | None = None) -> pl.DataFrame:
    """Rows as a frame; a value whose type differs between rows (e.g. a string, then a list) is named by line."""
    try:
        return pl.DataFrame(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        for key in dict.fromkeys(k for r in rows for k in r):
            kinds = [(type(r[key]).__name__, i) for i, r in enumerate(rows) if r.get(key) is not None]
            if len({k for k, _ in kinds}) > 1:
                kind, i = next((k, i) for k, i in kinds if k != kinds[0][0])
                at = f"line {lines[i]}" if lines else f"row {i}"
                raise InputError(f"{path}: {at}: field {key!r} is {kind}, earlier rows hold "
                                 f"{kinds[0][0]}") from None
        raise InputError(f"{path}: cannot read as a table ({str(exc).splitlines()[0]})") from None


def _read_ndjson(path: Path) -> Table:
    """JSONL with each row's file line; a file polars cannot read is parsed line by line to name the bad line."""
    text = read_text(path)
    numbered = _object_lines(text)
    lines = [n for n, _ in numbered]
    try:
        frame = pl.read_ndjson(io.StringIO(text), infer_schema_length=None)
    except pl.exceptions.PolarsError:
        frame = None
    if frame is None or frame.height != len(lines):  # polars names a character offset, not the line: find it
        frame = _frame(path, read_jsonl(path), lines)
    else:
        _refuse_stringified(path, frame, numbered)
    return Table(frame, "line", pl.Series("line", lines, dtype=pl.Int64))


def _refuse_stringified(path: Path, frame: pl.DataFrame, numbered: list[tuple[int, str]]) -> None:
    """polars turns an object or list in a text column into its JSON text; such a value is refused by line."""
    for name, dtype in frame.schema.items():
        if dtype != pl.String:
            continue
        col = pl.col(name)
        for i in frame.select(pl.arg_where(col.str.starts_with("{") | col.str.starts_with("["))).to_series():
            lineno, text = numbered[i]
            value = json.loads(text).get(name)
            if isinstance(value, dict | list):
                kind = "an object" if isinstance(value, dict) else "a list"
                raise InputError(f"{path}: line {lineno}: field {name!r} is {kind}, other rows hold text")
