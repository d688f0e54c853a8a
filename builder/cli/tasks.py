"""`rationale tasks list` and `rationale tasks load RECIPE.yaml`: the task loaders stage alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Task loaders: the 12 paper tasks and generic file/Hub sources.", no_args_is_help=True)
    app.add_typer(group, name="tasks")

    @group.command("list")
    def list_tasks(
        benchmarks_dir: Annotated[Path | None, typer.Option(
            help="Folder with the paper task files (default: $RATIONALE_BENCHMARKS_DIR); adds item counts.")] = None,
    ) -> None:
        """List the paper tasks with their answer type and answer prompt (and item counts, given the files).

        Item counts are rows read (duplicates included), exact duplicates dropped, and train/test sizes after
        dedup; gsm8k and aqua show train 0 unless their official train files are in the folder.
        """
        import os

        from builder import tasks
        from builder.recipe import TaskSpec

        env = os.environ.get(tasks.BENCHMARKS_ENV)
        bdir = tasks.resolve_benchmarks_dir(str(benchmarks_dir or env)) if (benchmarks_dir or env) else None
        header = ["task", "answer_type", "choices", "answer_prompt"]
        rows = []
        for task in tasks.PAPER_TASKS:
            cells = [task.name, task.answer_type, str(task.n_choices or "-"), task.answer_prompt]
            if bdir is not None:
                loaded = tasks.load_task(TaskSpec(name=task.name, split="all"), benchmarks_dir=bdir)
                counts = loaded.split_counts
                cells += [str(loaded.raw_count), str(loaded.duplicates), str(counts.get("train", 0)),
                          str(counts.get("test", 0))]
            rows.append(cells)
        if bdir is not None:
            header += ["items", "duplicates", "train", "test"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())

    @group.command("load")
    def load(
        recipe: Annotated[Path, typer.Argument(help="Build recipe (YAML); its tasks section is loaded.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the questions table (Parquet).")]
        = Path("questions.parquet"),
        json_out: Annotated[bool, typer.Option("--json", help="Print the result (path, counts) as JSON.")] = False,
    ) -> None:
        """Load the recipe's tasks into a questions table and print counts per task and split."""
        import polars as pl
        from rich.table import Table

        from builder import tasks
        from builder.bind import load_recipe
        from builder.cli._common import echo_json, stdout_console
        from builder.schemas import write_table

        cfg = load_recipe(recipe)
        loaded = tasks.load_tasks(cfg.tasks, Path(cfg.base_dir) if cfg.base_dir else None)
        questions = write_table(pl.concat([t.questions for t in loaded]), output, "questions")
        counts = [{"task": t.name, "split": split, "questions": n, "read": t.raw_count, "duplicates": t.duplicates}
                  for t in loaded for split, n in sorted(t.questions.group_by("split").len().iter_rows())]
        if json_out:
            echo_json({"output": str(output), "questions": questions.height, "tasks": counts})
            return
        table = Table("task", "split", "questions", "read", "duplicates dropped")
        for c in counts:
            table.add_row(c["task"], c["split"], str(c["questions"]), str(c["read"]), str(c["duplicates"]))
        out = stdout_console()
        out.print(table)
        out.print(f"{questions.height} questions -> {output}")
