"""Options and output helpers shared by the command modules."""

from __future__ import annotations

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

console = Console(stderr=True)


def stage_progress(*extra: ProgressColumn) -> Progress:
    """A progress bar for long stages: description, bar, done/total, `extra` columns, elapsed and ETA (on stderr)."""
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra, TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
