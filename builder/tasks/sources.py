"""Generic sources: a user's JSONL/JSON/CSV/Parquet file or a Hub dataset, mapped onto raw rows by `columns`.

`tasks.items[].columns` maps our fields (question, gold, choices, id, split) to the source's column names; `a.b`
reads field b of struct column a (Hub datasets nest choices: choices.text). Unmapped: question -> "question",
gold -> "gold" (or "answer").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from builder.errors import InputError
from builder.paths import resolve_recipe_path
from builder.readers import Table, read_table
from builder.tasks.normalise import first_bad

if TYPE_CHECKING:
    from builder.recipe import TaskSpec

MAPPABLE_FIELDS = ("question", "gold", "choices", "id", "split")


def load_source(spec: TaskSpec, base_dir: str | Path | None) -> tuple[pl.DataFrame, str, dict[str, str]]:
    """Read a file or Hub source and map its columns; returns the raw rows, the source name and the mapping.

    The raw rows follow `normalise.RAW_SCHEMA`, plus `split` when the mapping names a split column.
    """
    if not spec.path:
        raise InputError(f"task {spec.name!r}: source={spec.source} needs tasks.items[].path")
    local = resolve_recipe_path(base_dir, spec.path)
    if spec.source == "file":
        table, source = read_table(local), str(local)
    else:
        if not local.exists() and spec.path.startswith((".", "/", "~")):  # a local path, not an ORG/NAME Hub id
            raise FileNotFoundError(f"{local}: no such dataset folder or file (tasks.items[].path of hub task "
                                    f"{spec.name!r}; relative paths resolve against the recipe's folder)")
        dataset = str(local) if local.exists() else spec.path
        table = _read_hub(dataset, spec.hub_config, spec.hub_split)
        source = f"hub dataset {dataset} [{spec.hub_split}]"
    unknown = sorted(set(spec.columns) - set(MAPPABLE_FIELDS))
    if unknown:
        raise InputError(f"task {spec.name!r}: tasks.items[].columns has unknown field(s) {unknown}; "
                         f"map any of {', '.join(MAPPABLE_FIELDS)}")
    df = table.frame
    mapping = {"question": "question", "gold": "gold"} | spec.columns
    if "gold" not in spec.columns and "gold" not in df.columns and "answer" in df.columns:
        mapping["gold"] = "answer"
    exprs = [
        pl.int_range(pl.len(), dtype=pl.Int64).alias("source_idx"),
        _column(df, mapping["question"], source, "question").cast(pl.String).alias("question"),
        _column(df, mapping["gold"], source, "gold").cast(pl.String).alias("gold"),
        (_choices_expr(df, _column(df, mapping["choices"], source, "choices")) if "choices" in mapping
         else pl.lit(None, dtype=pl.List(pl.String))).alias("choices"),
        (_column(df, mapping["id"], source, "id").cast(pl.String) if "id" in mapping
         else pl.lit(None, dtype=pl.String)).alias("source_id"),
        table.where(source).alias("where"),
    ]
    if "split" in mapping:
        exprs.append(_column(df, mapping["split"], source, "split").cast(pl.String).alias("split"))
    _refuse_nested(df, mapping, source)
    raw = df.select(exprs)
    if "id" in mapping:
        dup = first_bad(raw, pl.col("source_id").is_duplicated())
        if dup:
            first_row = raw.filter(pl.col("source_id") == dup["source_id"])["where"].to_list()
            raise InputError(f"{first_row[1]}: field 'id' (column {mapping['id']!r}): duplicate id "
                             f"{dup['source_id']!r}, first seen at {first_row[0]}; ids must be unique")
    return raw, source, mapping


def _refuse_nested(df: pl.DataFrame, mapping: dict[str, str], source: str) -> None:
    """question, gold, id and split are text or numbers; polars would cast a struct or list to its JSON text."""
    for field_name in ("question", "gold", "id", "split"):
        if field_name not in mapping:
            continue
        dtype = df.lazy().select(_column(df, mapping[field_name], source, field_name)).collect_schema().dtypes()[0]
        if dtype.is_nested():
            raise InputError(f"{source}: column {mapping[field_name]!r} (mapped to field {field_name!r}) holds "
                             f"{dtype}, expected text; map a text column in tasks.items[].columns.{field_name}")


def _read_hub(path: str, config: str | None, split: str) -> Table:
    """A Hub dataset (or a local dataset folder/file) through datasets.load_dataset(path, name, split)."""
    import datasets

    try:
        ds = datasets.load_dataset(path, config, split=split)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"hub dataset {path!r}: {exc}") from None
    except ValueError as exc:  # unknown split / config
        raise InputError(f"hub dataset {path!r} (config {config!r}, split {split!r}): {exc}") from None
    return Table(pl.from_arrow(ds.data.table), "row")


def _column(df: pl.DataFrame, dotted: str, source: str, field_name: str) -> pl.Expr:
    """`a.b` reads field b of struct column a (or of each struct in a list column a)."""
    head, *rest = dotted.split(".")
    if head not in df.columns:
        if dotted in df.columns:
            return pl.col(dotted)
        raise InputError(f"{source}: column {dotted!r} (mapped to field {field_name!r}) not found; columns: "
                         f"{', '.join(df.columns)}. Fix tasks.items[].columns.{field_name}")
    expr, dtype = pl.col(head), df.schema[head]
    for part in rest:
        inner = dtype.inner if isinstance(dtype, pl.List) else None
        struct = inner if isinstance(inner, pl.Struct) else dtype
        if not isinstance(struct, pl.Struct) or part not in [f.name for f in struct.fields]:
            raise InputError(f"{source}: column {dotted!r} (mapped to field {field_name!r}) not found: "
                             f"{head!r} has no field {part!r}")
        sub = dict((f.name, f.dtype) for f in struct.fields)[part]
        if isinstance(dtype, pl.List):
            expr, dtype = expr.list.eval(pl.element().struct.field(part)), pl.List(sub)
        else:
            expr, dtype = expr.struct.field(part), sub
    return expr


def _choices_expr(df: pl.DataFrame, expr: pl.Expr) -> pl.Expr:
    """Choices as list<string>; CSV cells hold a JSON list ('["a", "b"]') or 'a|b|c'."""
    dtype = df.select(expr).to_series().dtype
    if isinstance(dtype, pl.List | pl.Array):
        return expr.cast(pl.List(pl.String))
    as_text = expr.cast(pl.String).str.strip_chars()
    return (pl.when(as_text.str.starts_with("["))
            .then(as_text.str.json_decode(pl.List(pl.String)))
            .otherwise(as_text.str.split("|").list.eval(pl.element().str.strip_chars())))
