"""`rationale train RECIPE.yaml` and `rationale eval`: fine-tune a student on a dataset version, then grade it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

log = logging.getLogger(__name__)


def train(
    recipe: Annotated[Path, typer.Argument(help="Training recipe YAML (see recipes/train/).")],
    max_steps: Annotated[int | None, typer.Option(help="Override training.max_steps.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Override output_dir.")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the evaluation after training.")] = False,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Start over (output_dir/checkpoints is removed).")
                         ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result (steps, paths, eval) as JSON.")] = False,
) -> None:
    """Fine-tune the recipe's student on its dataset version (completion-only loss), save it with a model card."""
    from builder.cli._common import echo_json, resumable
    from builder.train import latest_checkpoint, main
    from builder.train_recipe import load_train_recipe

    cfg = load_train_recipe(recipe)
    if max_steps is not None:
        cfg.training.max_steps = max_steps
    if output_dir is not None:
        cfg.output_dir = str(Path(output_dir).resolve())
    if no_resume:
        cfg.resume = False
    def kept() -> str:
        last = latest_checkpoint(Path(cfg.output_dir))
        return f"last checkpoint {last}" if last else f"no checkpoint yet in {cfg.output_dir}"

    with resumable(kept, f"rerun `rationale train {recipe}` to resume from the last checkpoint"):
        result = main(cfg, evaluate=False if no_eval else None)
    if not result.main_process:  # `accelerate launch`: the main process reports
        return
    if json_out:
        echo_json({"steps": result.steps, "dataset": result.dataset_ref, "seconds": result.seconds,
                   "tokens_per_s": result.tokens_per_s, "output_dir": str(result.output_dir),
                   "eval": result.eval_report})
        return
    typer.echo(f"trained {result.steps} steps on {result.dataset_ref} in {result.seconds:.0f} s "
               f"({result.tokens_per_s:,.0f} tokens/s); model and card in {result.output_dir}")
    if result.eval_report:
        from builder.eval import report_markdown

        typer.echo(report_markdown(result.eval_report, heading=False))


def eval_(
    model: Annotated[str | None, typer.Argument(help="Model folder, Hub id or alias (default: the recipe's output).")
                     ] = None,
    recipe: Annotated[Path | None, typer.Option(help="Training recipe: its eval section and output model.")] = None,
    task: Annotated[list[str] | None, typer.Option(help="Paper task key (repeatable).")] = None,
    split: Annotated[str | None, typer.Option(help="Split of each task (default: test or the recipe's).")] = None,
    mode: Annotated[str, typer.Option(help="student, zero_shot or zero_shot_cot.")] = "student",
    fmt: Annotated[str, typer.Option("--format", help="ft_cot, chat or seq2seq (students); raw or chat (baselines)."
                                     )] = "ft_cot",
    k: Annotated[list[int] | None, typer.Option("--k", help="Self-consistency sample count (repeatable).")] = None,
    no_greedy: Annotated[bool, typer.Option("--no-greedy", help="Only self-consistency.")] = False,
    max_tokens: Annotated[int | None, typer.Option(help="Generation cap per answer.")] = None,
    limit: Annotated[int | None, typer.Option(help="First N questions per task.")] = None,
    backend: Annotated[str | None, typer.Option(help="vllm or hf.")] = None,
    benchmarks_dir: Annotated[str | None, typer.Option(help="Paper task files (default: $RATIONALE_BENCHMARKS_DIR)."
                                                       )] = None,
    compare_to: Annotated[str | None, typer.Option(help="Paper student row, e.g. gpt2-124m.")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: <model>/eval/<mode>).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate a model on task test splits (greedy and/or self-consistency), graded with the curation graders."""
    from builder.eval import MODES, evaluate, evaluate_recipe, load_split_items, report_markdown
    from builder.train_recipe import EvalSpec, load_train_recipe

    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    cfg = load_train_recipe(recipe) if recipe is not None else None
    spec = cfg.eval if cfg is not None else EvalSpec()
    update = {key: value for key, value in {
        "tasks": task or None, "split": split, "limit": limit, "max_tokens": max_tokens, "backend": backend,
        "benchmarks_dir": benchmarks_dir, "compare_to": compare_to, "self_consistency": k or None}.items()
        if value is not None}
    if no_greedy:
        update["greedy"] = False
    spec = spec.model_copy(update=update)
    if cfg is not None and model is None and mode == "student":
        cfg.eval = spec
        report = evaluate_recipe(cfg)
        typer.echo(json.dumps(report, default=str) if json_out else report_markdown(report, heading=False))
        return
    if model is None:
        raise ValueError("give a MODEL (folder, Hub id or alias) or --recipe RECIPE.yaml")
    if not spec.tasks:
        raise ValueError("give --task TASK (repeatable), or a --recipe whose eval.tasks lists them")
    questions, items = load_split_items(spec.tasks, spec.split, benchmarks_dir=spec.benchmarks_dir, limit=spec.limit)
    dest = out or (Path(model) / "eval" / mode if Path(model).is_dir() else Path("eval") / Path(model).name / mode)
    run = evaluate(model, questions, spec, mode=mode, fmt=fmt, out_dir=dest, items=items)
    if json_out:
        typer.echo(json.dumps({**run.report, "report_dir": str(dest)}, default=str))
        return
    typer.echo(report_markdown(run.report, heading=False))
    typer.echo(f"predictions and report in {dest}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(eval_)
