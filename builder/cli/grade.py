"""`rationale grade`: grade a file of rationales (JSONL or Parquet) and, optionally, audit against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import polars as pl

REQUIRED = ("task", "question", "rationale", "gold")


def read_input(path: Path) -> pl.DataFrame:
    """Read JSONL or Parquet; errors name the file."""
    import polars as pl

    from builder.errors import InputError

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL or Parquet with columns {', '.join(REQUIRED)})")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pl.read_ndjson(path, infer_schema_length=None)
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: {_bad_line(path) or ''}cannot read as {suffix[1:]} ({exc})") from exc
    raise InputError(f"{path}: unknown file type {suffix!r}; use .jsonl or .parquet")


def _bad_line(path: Path) -> str | None:
    """'line N: ' of the first line of a JSONL file that is not a JSON object (polars only gives a byte offset)."""
    import json

    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip() and not isinstance(json.loads(line), dict):
                    return f"line {lineno}: not a JSON object; "
    except UnicodeDecodeError as exc:
        return f"not UTF-8 ({exc.reason}); "
    except json.JSONDecodeError as exc:
        return f"line {lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
    return None


def prepare(df: pl.DataFrame, path: Path, answer_type: str | None) -> pl.DataFrame:
    """Check columns and nulls, and set answer_type (from the task key or --answer-type); errors name the row."""
    import polars as pl

    from builder.errors import InputError
    from builder.grade import TASK_ANSWER_TYPES
    from builder.graders import GRADERS

    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (needed in every row); found columns {df.columns}")
    for col in REQUIRED:
        if df.schema[col] not in (pl.String, pl.Null):
            if col == "gold":
                df = df.with_columns(pl.col("gold").cast(pl.String))
            else:
                raise InputError(f"{path}: column {col!r} has type {df.schema[col]}, expected strings")
        if df[col].null_count():
            row = df.select(pl.col(col).is_null().arg_max()).item()
            raise InputError(f"{path} row {row}: field {col!r} is null; every row needs a {col}")
    if answer_type is not None:
        GRADERS.get(answer_type)  # unknown names raise, listing the valid ones
        return df.with_columns(pl.lit(answer_type).alias("answer_type"))
    if "answer_type" in df.columns and df["answer_type"].null_count() == 0:
        return df
    unknown = ~pl.col("task").is_in(list(TASK_ANSWER_TYPES))
    if df.select(unknown.any()).item():
        row = df.select(unknown.arg_max()).item()
        raise InputError(f"{path} row {row}: field 'task' is {df['task'][row]!r}, not one of the 12 paper tasks; "
                         f"pass --answer-type ({', '.join(GRADERS.names())})")
    return df.with_columns(pl.col("task").replace_strict(TASK_ANSWER_TYPES, return_dtype=pl.String)
                           .alias("answer_type"))


def audit(graded: pl.DataFrame, compare_with: str, reference_pred: str | None, path: Path) -> pl.DataFrame:
    """Rows where our verdict and the reference verdict differ, with both preds."""
    import polars as pl

    from builder.errors import InputError

    if compare_with not in graded.columns:
        raise InputError(f"{path}: --compare-with column {compare_with!r} not found; columns: {graded.columns}")
    ref = graded[compare_with]
    if ref.dtype != pl.Boolean:
        raise InputError(f"{path}: --compare-with column {compare_with!r} has type {ref.dtype}, expected bool")
    if ref.null_count():
        row = graded.select(pl.col(compare_with).is_null().arg_max()).item()
        raise InputError(f"{path} row {row}: field {compare_with!r} is null")
    ref_pred = pl.col(reference_pred).cast(pl.String) if reference_pred else pl.lit(None, pl.String)
    return (
        graded.with_row_index("row")
        .filter(pl.col("correct") != pl.col(compare_with))
        .select("row", "task", "question", "gold", "pred", ref_pred.alias("reference_pred"), "correct",
                pl.col(compare_with).alias("reference_correct"), "grade_status")
    )


def register(app: typer.Typer) -> None:
    @app.command("grade")
    def grade(
        input: Annotated[Path, typer.Option("--input", "-i", help="JSONL or Parquet with task, question, "
                                            "rationale, gold and optional answer_completion, choices.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the graded Parquet.")],
        answer_type: Annotated[str | None, typer.Option(
            help="Grader for every row (number, choice, yesno, date, string); default: from the paper task key.")]
        = None,
        mode: Annotated[str, typer.Option(
            help="auto (answer_completion if present, else rationale), answer_completion, rationale, student.")]
        = "auto",
        compare_with: Annotated[str | None, typer.Option(
            help="A bool column of reference verdicts (e.g. reference_correct): print and save the disagreements.")]
        = None,
        reference_pred: Annotated[str | None, typer.Option(
            help="Column with the reference's extracted answer (default: <compare-with> with _correct -> _pred).")]
        = None,
    ) -> None:
        """Grade rationales: add pred, correct, grade_status and grader to every row."""
        import polars as pl
        from rich.table import Table

        from builder.cli._common import console, stage_progress
        from builder.grade import grade_frame
        from builder.schemas import atomic_write_parquet

        with stage_progress() as progress:
            step = progress.add_task("read", total=3)
            df = prepare(read_input(input), input, answer_type)
            if compare_with is not None and compare_with not in df.columns:  # fail before writing anything
                from builder.errors import InputError

                raise InputError(f"{input}: --compare-with column {compare_with!r} not found; columns: {df.columns}")
            progress.update(step, advance=1, description=f"grade {df.height:,} rows")
            graded = grade_frame(df, mode=mode)
            progress.update(step, advance=1, description="write")
            atomic_write_parquet(graded, output)
            progress.update(step, advance=1, description="done")

        summary = Table("task", "rows", "correct", "accuracy", "no_answer", "wrong_format", "parse_error")
        per_task = graded.group_by("task", maintain_order=True).agg(
            pl.len(), pl.col("correct").sum().alias("n_correct"), pl.col("correct").mean().alias("accuracy"),
            *[(pl.col("grade_status") == s).sum().alias(s) for s in ("no_answer", "wrong_format", "parse_error")])
        for task, n, c, acc, na, wf, pe in per_task.rows():
            summary.add_row(task, str(n), str(c), f"{acc:.1%}", str(na), str(wf), str(pe))
        console.print(summary)
        console.print(f"wrote {graded.height:,} graded rows to {output}")

        if compare_with is None:
            return
        if reference_pred is None and compare_with.endswith("_correct"):
            guess = compare_with[: -len("_correct")] + "_pred"
            reference_pred = guess if guess in graded.columns else None
        diff = audit(graded, compare_with, reference_pred, input)
        report = output.with_name(output.name.removesuffix(".parquet") + ".audit.jsonl")
        diff.write_ndjson(report)
        agree = graded.height - diff.height
        we_right = int(diff["correct"].sum())
        console.print(f"audit vs {compare_with}: {agree:,} agree, {diff.height:,} disagree "
                      f"({we_right} we accept / reference rejects, {diff.height - we_right} we reject / "
                      "reference accepts)")
        if diff.height:
            table = Table("row", "task", "question", "gold", "our pred", "reference pred", "ours", "reference")
            for r in diff.iter_rows(named=True):
                q = r["question"] if len(r["question"]) <= 60 else r["question"][:57] + "..."
                table.add_row(str(r["row"]), r["task"], q, r["gold"], str(r["pred"]), str(r["reference_pred"]),
                              str(r["correct"]), str(r["reference_correct"]))
            console.print(table)
        console.print(f"wrote the audit to {report}")
