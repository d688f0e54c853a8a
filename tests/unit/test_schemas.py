"""Table contracts: every hand-off schema loads, and bad tables fail naming the table, column and row."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from builder.errors import SchemaError
from builder.schemas import TABLES, atomic_write_parquet, parse_type, read_table, table_schema, validate, write_table


def questions(**over) -> pl.DataFrame:
    data = {"qid": ["a", "b"], "task": ["t", "t"], "split": ["train", "train"], "source_idx": [0, 1],
            "question": ["1+1?", "2+2?"], "gold": ["2", "4"], "answer_type": ["number", "number"],
            "choices": [None, None]}
    data.update(over)
    return pl.DataFrame(data, schema_overrides={"choices": pl.List(pl.String)})


@pytest.mark.parametrize("name", TABLES)
def test_every_table_schema_loads_with_its_key(name):
    schema = table_schema(name)
    assert schema.key and set(schema.key) <= set(schema.names)
    assert schema.empty().columns == schema.names


def test_parse_nested_types():
    assert parse_type("list<struct<role:string,content:string>>") == pl.List(
        pl.Struct({"role": pl.String, "content": pl.String}))
    with pytest.raises(ValueError, match="unknown schema type"):
        parse_type("decimal")


def test_good_table_is_returned_in_schema_order_with_integer_casts():
    df = questions().select(reversed(questions().columns))
    out = validate(df, "questions")
    assert out.columns == table_schema("questions").names


@pytest.mark.parametrize("bad, message", [
    (questions().drop("gold"), r"table 'questions' in q.parquet: missing column\(s\) \['gold'\]"),
    (questions(source_idx=["0", "1"]), r"column 'source_idx' has type String, expected Int64"),
    (questions(question=["1+1?", None]), r"column 'question' is null in row 1"),
    (questions(qid=["a", "a"]), r"duplicate key \{'qid': 'a'\} \(row 0\)"),
    (questions(gold=[2.0, 4.0]), r"column 'gold' has type Float64, expected String"),
])
def test_bad_tables_fail_naming_table_column_and_row(bad, message):
    with pytest.raises(SchemaError, match=message):
        validate(bad, "questions", where="q.parquet")


def test_write_table_validates_before_writing(tmp_path):
    path = tmp_path / "q.parquet"
    with pytest.raises(SchemaError):
        write_table(questions().drop("task"), path, "questions")
    assert not path.exists() and not list(tmp_path.iterdir())
    write_table(questions(), path, "questions")
    assert read_table(path, "questions").height == 2


def test_unreadable_parquet_is_named(tmp_path):
    path = tmp_path / "broken.parquet"
    atomic_write_parquet(questions(), path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(SchemaError, match="broken.parquet: cannot read as Parquet"):
        read_table(path, "questions")


def test_unknown_table_lists_known_ones():
    with pytest.raises(SchemaError, match="known tables: questions, samples"):
        table_schema("nope")


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    from builder.schemas import remove_stale_temp_files

    (tmp_path / ".graded.parquet.k2j3.tmp").write_bytes(b"PAR1 half")
    atomic_write_parquet(questions(), tmp_path / "q.parquet")
    removed = remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".graded.parquet.k2j3.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.parquet"]


# ---------------------------------------------------------------- columns added later (issue 14: reasoning traces)
def samples(**cols) -> pl.DataFrame:
    """Two samples as written before the reasoning columns existed (`cols` adds or overrides columns)."""
    base = {"qid": ["q1", "q1"], "sample_idx": [0, 1], "seed": [5, 6], "teacher": ["t", "t"],
            "teacher_revision": [None, None], "prompt": ["Q: 1+1?\nA:"] * 2, "rationale": ["1+1 = 2.", "It is 2."],
            "answer_prompt": [None, None], "answer_completion": [None, None], "finish_reason": ["stop", "stop"],
            "prompt_tokens": [4, 4], "completion_tokens": [6, 5], "run_id": ["r", "r"]}
    return pl.DataFrame(base | cols)


def test_missing_added_columns_are_filled_with_typed_nulls_and_others_still_error():
    schema = table_schema("samples")
    assert schema.added == ["reasoning", "reasoning_tokens", "reasoning_finished", "error", "regenerable"]
    old = samples()
    assert not set(schema.added) & set(old.columns)
    out = validate(old, "samples")
    assert out.columns == schema.names
    assert out.select(schema.added).schema == pl.Schema(
        {"reasoning": pl.String, "reasoning_tokens": pl.Int32, "reasoning_finished": pl.Boolean, "error": pl.String,
         "regenerable": pl.Boolean})
    assert out.select(pl.col(schema.added).null_count()).row(0) == (2, 2, 2, 2, 2)
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['rationale'\]"):  # not an added column
        validate(old.drop("rationale"), "samples", where="s.parquet")
    assert validate(old.drop("reasoning_tokens", strict=False), "samples").height == 2


def test_an_old_shard_and_a_new_one_read_together(tmp_path):
    from builder.run import Run
    from builder.sample import read_samples

    run = Run(None, "r", {}, str(tmp_path), tmp_path, {"r"})  # type: ignore[arg-type]  # locations only
    shards = Path(run.samples)
    shards.mkdir()
    samples().write_parquet(shards / "shard-00000.parquet")  # written before the reasoning columns
    new = samples(qid=["q2", "q2"], reasoning=["think a", None], reasoning_tokens=[2, None],
                  reasoning_finished=[True, None])
    new.write_parquet(shards / "shard-00001.parquet")
    both = read_samples(run).sort("qid", "sample_idx")
    assert both.columns == table_schema("samples").names and both.height == 4
    assert both["reasoning"].to_list() == [None, None, "think a", None]
    assert both["reasoning_tokens"].to_list() == [None, None, 2, None]
    assert both["reasoning_finished"].to_list() == [None, None, True, None]
    assert read_table(shards, "samples").sort("qid", "sample_idx").equals(both)


def test_a_write_that_must_not_overwrite_works_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    """Some shared-storage mounts (gcsfuse, s3fs-style FUSE) refuse hard links with EPERM: the never-overwrite write
    claims the name with an exclusive create instead, and still refuses an existing file."""
    import errno
    import os

    import polars as pl

    from builder.schemas import atomic_write_parquet

    def no_links(*_):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    df = pl.DataFrame({"a": [1, 2]})
    path = atomic_write_parquet(df, tmp_path / "shard.parquet", replace=False)
    assert pl.read_parquet(path).equals(df)
    with pytest.raises(FileExistsError):
        atomic_write_parquet(pl.DataFrame({"a": [3]}), path, replace=False)
    assert pl.read_parquet(path).equals(df)
    assert [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]  # no temp file left behind
