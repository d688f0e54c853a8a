"""The `rationale` command: one subcommand per stage plus build, publish, train, eval.

Each command group lives in its own module with a `register(app)` function. Heavy imports (vllm, torch,
transformers) happen inside commands so `rationale --help` stays fast. Errors print as one line and exit
non-zero; `--debug` shows the traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import typer
from typer._click import exceptions as click_exc  # Typer >=0.24 bundles its own click: catch its exceptions

# One module per command group, each with register(app); each imports its stage inside the command.
from builder.cli import build, curate, grade, hub, sample, tasks, train, versions
from builder.errors import BuilderError

app = typer.Typer(
    name="rationale",
    help="Build, curate, version and publish chain-of-thought rationale datasets, and train students on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        from builder.version import __version__

        typer.echo(f"rationale-builder {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs (any position)."),
) -> None:
    """Build, curate, version and publish chain-of-thought rationale datasets, and train students on them.

    Results (paths, tables, --json) go to stdout; progress and logs to stderr.
    """


# The command groups, in the order `rationale --help` lists them.
for _group in (build, tasks, sample, grade, curate, versions, hub, train):
    _group.register(app)


# What to do about the OS errors a user's paths cause (the path itself comes from the error).
_OS_HINTS = {
    errno.EROFS: "read-only file system; write somewhere else (--output, work_dir, store.root, --dest)",
    errno.ENAMETOOLONG: "file name too long; use a shorter name or folder",
    errno.ENOTDIR: "a file is where a folder is expected; move it or pick another path",
    errno.EISDIR: "a folder is where a file is expected; pick a file path",
    errno.ENOSPC: "no space left on the device; free some and rerun",
    errno.EACCES: "permission denied; check the owner and mode of the path",
    errno.EPERM: "operation not permitted; check the owner and mode of the path",
    errno.EEXIST: "already exists",
    errno.ENOENT: "no such file or folder",
}


def user_error_line(exc: BaseException) -> str | None:
    """The one-line message for an OS, polars or pyarrow error caused by the user's files, else None.

    OSError: "<path>: <what to do>" from its filename and errno (messages we raise ourselves are kept as they
    are). polars/pyarrow: their first line, which names the column (cast and schema errors) or the file.
    """
    if isinstance(exc, OSError):
        if exc.filename is None:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"{where}: {_OS_HINTS.get(exc.errno) or exc.strerror or type(exc).__name__}"
    bases = {cls.__name__ for cls in type(exc).__mro__}  # no polars/pyarrow import just to name their errors
    if bases & {"PolarsError", "ArrowException"}:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return f"cannot process the data ({type(exc).__name__}: {first})"
    return None


def usage_error_line(exc: click_exc.UsageError) -> str:
    """One line for a usage error, keeping Click's hint ("Did you mean 'build'?") and naming the help to read."""
    message = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
    command = exc.ctx.command_path if exc.ctx is not None else "rationale"
    return f"{message} (see '{command} --help')"


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
    try:
        result = app(args=argv, prog_name="rationale", standalone_mode=False)
        if result == 130:  # Typer turns Ctrl-C into a silent exit code 130
            _error("interrupted")
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except click_exc.NoArgsIsHelpError as exc:  # bare `rationale` (or a bare group): help is the answer
        typer.echo(exc.format_message())
        return 0
    except click_exc.UsageError as exc:
        _error(usage_error_line(exc))
        return 2
    except click_exc.ClickException as exc:
        _error(exc.format_message())
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _error("interrupted")
        return 130
    except BuilderError as exc:
        if debug:
            raise
        _error(str(exc))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback with --debug
        if debug:
            raise
        line = user_error_line(exc)
        if line is not None or isinstance(exc, ValueError):  # the user's path or data: exit 2
            _error(line if line is not None else str(exc))
            return 2
        _error(f"{type(exc).__name__}: {exc} (run again with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
