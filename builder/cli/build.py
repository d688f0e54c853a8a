"""`rationale build RECIPE.yaml`: every stage, resumable, ending in a dataset version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def build(
        recipe: Annotated[Path, typer.Argument(help="Build recipe (YAML); see recipes/ and schemas/.")],
        json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
        work_dir: Annotated[Path | None, typer.Option(help="Override the recipe's work_dir (working state).")] = None,
        store: Annotated[Path | None, typer.Option(help="Override the recipe's store.root.")] = None,
    ) -> None:
        """Turn a recipe's questions into a versioned rationale dataset (tasks -> sample -> grade -> curate -> store).

        Rerunning resumes from <work_dir>/<name>/ and writes a new version only when the content changed.
        """
        from rich.table import Table

        from builder import build as build_stage
        from builder.cli._common import console, stage_progress
        from builder.recipe import load_recipe

        cfg = load_recipe(recipe)
        if work_dir is not None:
            cfg.work_dir = str(work_dir.resolve())
        if store is not None:
            cfg.store.root = str(store.resolve())
        summary = build_stage.run(cfg, progress=stage_progress())
        if json_out:
            typer.echo(json.dumps(summary.to_dict()))
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
            ("tokens/s", summary.tokens_per_s),
            ("seconds", summary.seconds),
        ]
        for k, v in rows:
            table.add_row(k, str(v))
        console.print(table)
        typer.echo(summary.version_path)
