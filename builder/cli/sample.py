"""`rationale sample RECIPE.yaml`: the sampling stage alone (resumable), or regenerate one sample exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from builder.cli._common import AddressOption, ExecutorOption

if TYPE_CHECKING:
    from rich.progress import Progress

    from builder.recipe import Recipe

DryRunOption = Annotated[bool, typer.Option(
    "--dry-run", help="Print the requests, tokens and dollars sampling would send now; send nothing, start no "
    "engine, write nothing.")]


def print_estimate(cfg: Recipe, json_out: bool) -> None:
    """`--dry-run`: the estimate of what sampling `cfg` would send now, on stdout (`--json`: as one JSON line)."""
    from builder import sample
    from builder.cli._common import echo_json

    estimate = sample.dry_run(cfg)
    if json_out:
        echo_json(estimate.to_json())
        return
    for line in estimate.lines(cfg.teacher.model):
        typer.echo(line)


def _progress() -> Progress:
    """Samples bar plus questions done, generated tokens/s and ETA (on stderr, so stdout stays clean)."""
    from rich.progress import TextColumn

    from builder.cli._common import stage_progress

    return stage_progress(TextColumn("samples · {task.fields[questions]} questions · {task.fields[tps]} tok/s"))


def register(app: typer.Typer) -> None:
    @app.command()
    def sample(
        recipe: Annotated[Path, typer.Argument(help="Build recipe (YAML).")],
        regenerate: Annotated[str | None, typer.Option(
            help="Regenerate one sample exactly: QID:SAMPLE_IDX (prints it as JSON).")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the sampling summary as JSON.")] = False,
        executor: ExecutorOption = None,
        address: AddressOption = None,
        dry_run: DryRunOption = False,
    ) -> None:
        """Sample rationales into <work_dir>/<name>/samples/ (resumes; only missing (qid, sample_idx) are sampled)."""
        from builder import sample as sample_stage
        from builder import tasks
        from builder.bind import load_recipe
        from builder.cli._common import apply_executor, echo_json, resumable, shards_kept, stdout_console
        from builder.run import Run
        from builder.schemas import write_table

        cfg = load_recipe(recipe)
        apply_executor(cfg, executor, address)
        if dry_run:
            print_estimate(cfg, json_out)
            return
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
        with Run.of(cfg) as the_run, _progress() as progress:  # the lease first: questions.parquet is the run's
            write_table(questions, the_run.questions, "questions")
            bar = progress.add_task("sampling", total=None, questions="0/?", tps="-")

            def show(p: sample_stage.SampleProgress) -> None:
                label = f"sampling (round {p.round})" if cfg.sampling.adaptive.enabled else "sampling"
                progress.update(bar, description=label, completed=p.samples_done, total=p.samples_total,
                                questions=f"{p.questions_done}/{p.questions_total}", tps=f"{p.tokens_per_s:.0f}")

            with resumable(lambda: shards_kept(cfg),
                           f"rerun `rationale sample {recipe}` to sample only what is missing"):
                samples, stats = sample_stage.run(questions, cfg, run=the_run, progress=show)
        assert samples is not None
        summary = stats.summary()
        if json_out:
            echo_json({"samples_dir": the_run.samples, "total_samples": samples.height, **summary})
            return
        out = stdout_console()
        out.print(f"{samples.height} samples in {the_run.samples}; this run sampled "
                  f"{stats.new_samples} in {stats.shards_written} shards: {stats.prompt_tokens} prompt + "
                  f"{stats.completion_tokens} completion tokens in {stats.seconds:.1f} s "
                  f"({stats.tokens_per_s:.1f} generated tokens/s)")
        if "spent" in summary:
            from builder.cost import Usage

            out.print(f"teacher spent: {Usage.from_json(summary['usage']).describe()} in this run; "
                      f"{Usage.from_json(summary['spent']).describe()} in all (resumes included)")
            if summary.get("refused"):
                out.print(f"teacher errors: {summary['refused']} sample(s) refused by the server (finish_reason "
                          "error, its message in the error column); a rerun asks refused rationales again")
        if "adaptive" in summary:
            a = summary["adaptive"]
            out.print(f"adaptive: {a['solved']} of {a['questions']} questions solved in {a['rounds']} round(s), "
                          f"mean pass rate {a['mean_pass_rate']:.3f}, {a['mean_samples_per_question']} samples per "
                          f"question; per-question stats in {the_run.question_stats}")
