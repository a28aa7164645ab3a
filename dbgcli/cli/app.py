"""The Typer application, the entry point, and the error policy shared by every command.

Exit codes follow the linter convention (ruff, sqlfluff, mypy): 0 clean, 1 findings at or above
the fail level, 2 usage errors, bad input and internal errors. Every error ends in one line on
stderr, never a traceback (set ``DBG_DEBUG=1`` to see one).
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from dbgcli.errors import ConfigError, DbgError
from dbgcli.isolation import Limits
from dbgcli.report.model import EXIT_ERROR, EXIT_OK

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="dbg",
    help="Debug machine-learning training runs from their HDF5 traces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from dbgcli._version import __version__

        typer.echo(f"dbg {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Debug machine-learning training runs from their HDF5 traces."""


def fail(message: str) -> None:
    """Print one error line on stderr (no markup, no traceback)."""
    sys.stderr.write(f"dbg: error: {message}\n")
    sys.stderr.flush()


def handle_errors(command: F) -> F:
    """Turn every error a command raises into one stderr line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except DbgError as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail("interrupted")
        except Exception as error:  # noqa: BLE001 - the CLI must never print a traceback
            if os.environ.get("DBG_DEBUG"):
                traceback.print_exc()
            fail(
                f"internal error: {type(error).__name__}: {error} (set DBG_DEBUG=1 for a traceback)"
            )
        raise typer.Exit(EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        help="Give up on a trace after this many seconds (30 at most to open it): a corrupt "
        "file can make HDF5 loop.",
    ),
]
MemoryOption = Annotated[
    int,
    typer.Option(
        "--memory-limit",
        metavar="MIB",
        min=0,
        help="Memory (address space) reading one trace may add, in MiB; 0 for no limit.",
    ),
]


def limits(seconds: float, memory_mb: int) -> Limits:
    """The ``--timeout`` and ``--memory-limit`` options as :class:`~dbgcli.isolation.Limits`."""
    try:
        return Limits(seconds=seconds, memory_mb=memory_mb)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _register_commands() -> None:
    from dbgcli.cli import analyze, info, lr, rules, watch  # noqa: F401 - importing registers the commands


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app with usage errors as one line and exit 2."""
    _register_commands()
    try:
        with warnings.catch_warnings():
            # numpy's RuntimeWarnings on odd data are not the user's business; the rules say
            # what the data means. DBG_DEBUG=1 shows them.
            if not os.environ.get("DBG_DEBUG"):
                warnings.simplefilter("ignore")
            result = app(args=argv, prog_name="dbg", standalone_mode=False)
    except Exception as error:  # noqa: BLE001
        message = getattr(error, "format_message", None)
        if callable(message) and hasattr(error, "exit_code"):
            # A usage error from the command-line parser (unknown option, missing argument).
            context = getattr(error, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            fail(f"{message()}{hint}")
            sys.exit(EXIT_ERROR)
        if isinstance(error, DbgError):
            fail(str(error))
            sys.exit(EXIT_ERROR)
        if os.environ.get("DBG_DEBUG"):
            traceback.print_exc()
        fail(f"internal error: {type(error).__name__}: {error}")
        sys.exit(EXIT_ERROR)
    sys.exit(result if isinstance(result, int) else EXIT_OK)
