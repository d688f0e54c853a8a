"""`rationale build RECIPE.yaml`: every stage, resumable, ending in a dataset version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from builder.cli._common import AddressOption, ExecutorOption
from builder.cli.sample import DryRunOption


def register(app: typer.Typer) -> None:
    @app.command()
    def build(
        recipe: Annotated[Path, typer.Argument(help="Build recipe (YAML); see recipes/ and schemas/.")],
        json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
        work_dir: Annotated[Path | None, typer.Option(help="Override the recipe's work_dir (working state).")] = None,
        store: Annotated[Path | None, typer.Option(help="Override the recipe's store.root.")] = None,
        executor: ExecutorOption = None,
        address: AddressOption = None,
        dry_run: DryRunOption = False,
    ) -> None:
        """Turn a recipe's questions into a versioned rationale dataset (tasks -> sample -> grade -> curate -> store).

        Rerunning resumes from <work_dir>/<name>/ and writes a new version only when the content changed.
        """
        from rich.table import Table

        from builder import build as build_stage
        from builder.bind import load_recipe
        from builder.cli._common import apply_executor, console, echo_json, resumable, shards_kept, stage_progress
        from builder.cli.sample import print_estimate
        from builder.cost import Usage
        from builder.run import Run
        from builder.stats import grade_status_lines

        cfg = load_recipe(recipe)
        apply_executor(cfg, executor, address)
        if work_dir is not None:
            cfg.work_dir = str(work_dir.resolve())
        if store is not None:
            cfg.store.root = str(store.resolve())
        if dry_run:  # sampling is what a build pays for
            print_estimate(cfg, json_out)
            return
        from builder.paths import check_output_path

        # before any work: a store or work_dir that cannot be written fails now, not after sampling
        check_output_path(Run.of(cfg).questions)
        check_output_path(cfg.resolve_path(cfg.store.root) / cfg.dataset_name / "versions.json")
        def kept() -> str:
            return f"{shards_kept(cfg)}, no version written"

        with resumable(kept, f"rerun `rationale build {recipe}` to resume from them"):
            summary = build_stage.run(cfg, progress=stage_progress())
        if json_out:
            echo_json(summary.to_dict())
            return
        table = Table(title=f"build {summary.name}", show_header=False)
        rows = [
            ("questions", summary.questions),
            ("samples", summary.samples),
            ("correct", f"{summary.correct} ({summary.correct / max(summary.samples, 1):.1%})"),
            ("kept", summary.kept),
            ("version", f"{summary.version}{'' if summary.created else ' (unchanged, not rewritten)'}"),
            ("content hash", summary.content_hash[:16]),
            ("version path", summary.version_path),
            ("tokens/s (sampling)", summary.tokens_per_s),
            ("seconds (whole build)", summary.seconds),
            *((label, Usage.from_json(usage).describe()) for label, usage in (
                ("teacher spent (this build)", summary.teacher_usage),
                ("teacher spent (run total)", summary.teacher_spent)) if usage is not None),
            ("teacher errors", summary.teacher_errors),
        ]
        for k, v in rows:
            table.add_row(k, str(v))
        grading = grade_status_lines(summary.grade_status,
                                     {t: {"sampled": n} for t, n in summary.graded_per_task.items()})
        for i, line in enumerate(grading):
            table.add_row("grading" if i == 0 else "", line)
        console.print(table)  # the summary is for people (stderr); stdout holds the result alone: the version folder
        typer.echo(summary.version_path)
