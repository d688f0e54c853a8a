"""Options and output helpers shared by the command modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from builder.errors import BuilderError

console = Console(stderr=True)


def stage_progress(*extra: ProgressColumn) -> Progress:
    """A progress bar for long stages: description, bar, done/total, `extra` columns, elapsed and ETA (on stderr)."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra, TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def stdout_console() -> Console:
    """Where results go (tables, paths): stdout, so `rationale ... > file` and pipes get only the result."""
    return Console(highlight=False, soft_wrap=True)


def echo_json(value: object) -> None:
    """A command's `--json` result: one JSON document on one stdout line (its last line)."""
    import json

    import typer

    typer.echo(json.dumps(value, ensure_ascii=False, default=str))


class Interrupted(BuilderError):
    """Ctrl-C in a resumable command; the message says what was kept and how to resume."""

    exit_code = 130


@contextmanager
def resumable(kept: Callable[[], str], resume: str) -> Iterator[None]:
    """Ctrl-C inside: say what was kept on disk and how to resume (stderr), then exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {kept()}; {resume}") from None


def apply_executor(cfg: object, executor: str | None, address: str | None) -> None:
    """`--executor KIND [--address ADDR]` override the recipe's executor section (validated and bound like the
    recipe)."""
    from builder.bind import bind
    from builder.recipe import ExecutorConfig

    if executor is None and address is None:
        return
    current = cfg.executor  # type: ignore[attr-defined]
    update = {k: v for k, v in (("kind", executor), ("address", address)) if v is not None}
    try:
        cfg.executor = ExecutorConfig.model_validate({**current.model_dump(), **update})  # type: ignore[attr-defined]
        cfg._check()  # type: ignore[attr-defined]  # the recipe's own checks, with the executor it now has
    except ValueError as exc:
        raise BuilderError(f"--executor/--address: {exc}") from None
    bind(cfg, "--executor/--address")  # type: ignore[arg-type]


ExecutorOption = Annotated[str | None, typer.Option(
    "--executor",
    help="Where to run: local (this process) or ray (a Ray cluster); overrides the recipe's executor.kind.")]
AddressOption = Annotated[str | None, typer.Option(
    "--address", help="Ray address (auto, ray://host:10001, host:port); default: start or reuse a local Ray.")]


def shards_kept(cfg: object) -> str:
    """How many finished sample shards a stopped run leaves, and where (the run's storage)."""
    from builder.run import Run

    run = Run.of(cfg)  # type: ignore[arg-type]
    return f"{len(run.shards())} sample shard(s) kept in {run.samples}"
