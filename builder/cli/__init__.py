"""The `rationale` command: one subcommand per stage plus build, publish, train, eval.

Each command group lives in its own module with a `register(app)` function. Heavy imports (vllm, torch,
transformers) happen inside commands so `rationale --help` stays fast. Errors print as one line and exit
non-zero; `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click
import typer

from builder.errors import BuilderError

app = typer.Typer(
    name="rationale",
    help="Build, curate, version and publish chain-of-thought rationale datasets, and train students on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command-group modules under builder.cli, each with register(app).
COMMAND_MODULES = ("build", "tasks", "sample", "grade", "curate", "versions", "hub", "train")

_registered = False


def _register_commands() -> None:
    global _registered
    if _registered:
        return
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"builder.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"builder.cli.{name}":
                continue  # group not built yet
            raise
        module.register(app)
    _registered = True


def _error(message: str) -> None:
    for line in str(message).splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 unexpected failure, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s")
    # vLLM logs every engine detail at INFO; keep the terminal for our progress unless --debug.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "DEBUG" if debug else "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for our results (paths, JSON)
    _register_commands()
    try:
        result = app(args=argv, prog_name="rationale", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        _error("interrupted")
        return 130
    except BuilderError as exc:
        if debug:
            raise
        _error(str(exc))
        return exc.exit_code
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as exc:
        if debug:
            raise
        _error(str(exc))
        return 2
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback with --debug
        if debug:
            raise
        _error(f"{type(exc).__name__}: {exc} (run again with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
