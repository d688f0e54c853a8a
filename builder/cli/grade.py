"""`rationale grade`: grade a file of rationales (JSONL or Parquet) and, optionally, audit against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import polars as pl

    from builder.readers import Table

REQUIRED = ("task", "question", "rationale", "gold")


def read_input(path: Path) -> Table:
    """Read JSONL or Parquet (through `builder.readers`, so errors name the file and line); errors name the file."""
    from builder.errors import InputError
    from builder.readers import read_table

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL or Parquet with columns {', '.join(REQUIRED)})")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".parquet"):
        raise InputError(f"{path}: unknown file type {suffix!r}; use .jsonl or .parquet")
    return read_table(path)


def prepare(table: Table, path: Path, answer_type: str | None, compare_with: str | None = None) -> pl.DataFrame:
    """Check columns, types and nulls (and the --compare-with column), and set answer_type (from the task key or
    --answer-type); errors name the file line (JSONL) or row (Parquet)."""
    import polars as pl

    from builder.errors import InputError
    from builder.grade import TASK_ANSWER_TYPES
    from builder.graders import GRADERS

    df = table.frame
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (needed in every row); found columns {df.columns}")
    for col in REQUIRED:
        if df.schema[col] not in (pl.String, pl.Null):
            if col == "gold" and df.schema[col].is_numeric():
                if df.schema[col].is_float() and df["gold"].is_nan().any():
                    row = df.select(pl.col("gold").is_nan().arg_max()).item()
                    raise InputError(f"{path} {table.line_of(row)}: field 'gold' is NaN; every row needs a gold "
                                     "answer")
                df = df.with_columns(pl.col("gold").cast(pl.String))
            else:
                raise InputError(f"{path}: column {col!r} has type {df.schema[col]}, expected strings")
        if df[col].null_count():
            row = df.select(pl.col(col).is_null().arg_max()).item()
            raise InputError(f"{path} {table.line_of(row)}: field {col!r} is null; every row needs a {col}")
    if compare_with is not None:  # checked before anything is graded or written
        if compare_with not in df.columns:
            raise InputError(f"{path}: --compare-with column {compare_with!r} not found; columns: {df.columns}")
        if df.schema[compare_with] != pl.Boolean:
            raise InputError(f"{path}: --compare-with column {compare_with!r} has type {df.schema[compare_with]}, "
                             "expected bool")
        if df[compare_with].null_count():
            row = df.select(pl.col(compare_with).is_null().arg_max()).item()
            raise InputError(f"{path} {table.line_of(row)}: field {compare_with!r} is null")
    if answer_type is not None:
        GRADERS.get(answer_type)  # unknown names raise, listing the valid ones
        return df.with_columns(pl.lit(answer_type).alias("answer_type"))
    if "answer_type" in df.columns and df["answer_type"].null_count() == 0:
        return df
    unknown = ~pl.col("task").is_in(list(TASK_ANSWER_TYPES))
    if df.select(unknown.any()).item():
        row = df.select(unknown.arg_max()).item()
        raise InputError(f"{path} {table.line_of(row)}: field 'task' is {df['task'][row]!r}, not one of the 12 paper "
                         f"tasks; pass --answer-type ({', '.join(GRADERS.names())})")
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
        json_out: Annotated[bool, typer.Option("--json", help="Print the result (paths, counts per task) as JSON.")]
        = False,
    ) -> None:
        """Grade rationales: add pred, correct, grade_status and grader to every row."""
        import polars as pl
        from rich.table import Table

        from builder.cli._common import echo_json, stage_progress, stdout_console
        from builder.grade import grade_frame
        from builder.paths import check_output_path
        from builder.schemas import atomic_write_parquet

        check_output_path(output)  # before any work: a failed command leaves nothing behind
        with stage_progress() as progress:
            step = progress.add_task("read", total=3)
            df = prepare(read_input(input), input, answer_type, compare_with)  # every check before any write
            progress.update(step, advance=1, description=f"grade {df.height:,} rows")
            graded = grade_frame(df, mode=mode)
            progress.update(step, advance=1, description="write")
            atomic_write_parquet(graded, output)
            progress.update(step, advance=1, description="done")

        from builder.graders import OK, STATUSES

        not_ok = [s for s in STATUSES if s != OK]
        out = stdout_console()
        summary = Table("task", "rows", "correct", "accuracy", *not_ok)
        per_task = graded.group_by("task", maintain_order=True).agg(
            pl.len(), pl.col("correct").sum().alias("n_correct"), pl.col("correct").mean().alias("accuracy"),
            *[(pl.col("grade_status") == s).sum().alias(s) for s in not_ok])
        for task, n, c, acc, *counts in per_task.rows():
            summary.add_row(task, str(n), str(c), f"{acc:.1%}", *map(str, counts))
        result = {"output": str(output), "rows": graded.height, "tasks": per_task.to_dicts()}
        if compare_with is None:
            if json_out:
                echo_json(result)
                return
            out.print(summary)
            out.print(f"wrote {graded.height:,} graded rows to {output}")
            return
        if reference_pred is None and compare_with.endswith("_correct"):
            guess = compare_with[: -len("_correct")] + "_pred"
            reference_pred = guess if guess in graded.columns else None
        diff = audit(graded, compare_with, reference_pred, input)
        report = output.with_name(output.name.removesuffix(".parquet") + ".audit.jsonl")
        diff.write_ndjson(report)
        agree = graded.height - diff.height
        we_right = int(diff["correct"].sum())
        if json_out:
            echo_json({**result, "audit": str(report), "agree": agree, "disagree": diff.height})
            return
        out.print(summary)
        out.print(f"wrote {graded.height:,} graded rows to {output}")
        out.print(f"audit vs {compare_with}: {agree:,} agree, {diff.height:,} disagree "
                  f"({we_right} we accept / reference rejects, {diff.height - we_right} we reject / "
                  "reference accepts)")
        if diff.height:
            table = Table("row", "task", "question", "gold", "our pred", "reference pred", "ours", "reference")
            for r in diff.iter_rows(named=True):
                q = r["question"] if len(r["question"]) <= 60 else r["question"][:57] + "..."
                table.add_row(str(r["row"]), r["task"], q, r["gold"], str(r["pred"]), str(r["reference_pred"]),
                              str(r["correct"]), str(r["reference_correct"]))
            out.print(table)
        out.print(f"wrote the audit to {report}")
