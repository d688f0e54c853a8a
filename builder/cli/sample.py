"""`rationale sample RECIPE.yaml`: the sampling stage alone (resumable), or regenerate one sample exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def sample(
        recipe: Annotated[Path, typer.Argument(help="Build recipe (YAML).")],
        regenerate: Annotated[str | None, typer.Option(
            help="Regenerate one sample exactly: QID:SAMPLE_IDX (prints it as JSON).")] = None,
    ) -> None:
        """Sample rationales into <work_dir>/<name>/samples/ (resumes; only missing (qid, sample_idx) are sampled)."""
        from builder import sample as sample_stage
        from builder import tasks
        from builder.cli._common import console, stage_progress
        from builder.recipe import load_recipe
        from builder.schemas import write_table

        cfg = load_recipe(recipe)
        questions = tasks.run(cfg.tasks, cfg.base_dir)
        if regenerate:
            qid, _, idx = regenerate.partition(":")
            if not idx.isdigit():
                raise ValueError(f"--regenerate {regenerate!r}: expected QID:SAMPLE_IDX, e.g. 3f2a9c0d1e2b4a5c:3")
            match = questions.filter(questions["qid"] == qid)
            if not match.height:
                raise ValueError(f"--regenerate: question id {qid!r} is not among the recipe's questions")
            row = sample_stage.regenerate(cfg, match["question"][0], match["task"][0], qid, int(idx))
            typer.echo(json.dumps(row.to_dicts()[0]))
            return
        write_table(questions, cfg.run_dir / "questions.parquet", "questions")
        with stage_progress() as progress:
            task = progress.add_task("sampling", total=questions.height * cfg.sampling.n)
            samples, stats = sample_stage.run(
                questions, cfg, progress=lambda done, total: progress.update(task, completed=done, total=total))
        console.print(f"{samples.height} samples in {cfg.run_dir / 'samples'}; this run sampled {stats.new_samples} "
                      f"({stats.completion_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s)")
