"""Report destinations shared by ``dbg analyze`` and ``dbg compare``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from dbgcli.errors import ConfigError, OutputError
from dbgcli.report.formats import FORMATS, machine_renderer, require

FORMAT_HELP = (
    f"Report format: {', '.join(FORMATS)}; FORMAT:FILE writes it to FILE. "
    "Repeat for several reports from one run."
)
OUTPUT_HELP = (
    "Write the report to this file instead of stdout. With several --format, give one "
    "--output per --format: they pair up in order."
)


def parse_outputs(
    formats: list[str], outputs: list[Path], configured: tuple[str, ...]
) -> list[tuple[str, Path | None]]:
    """Pair formats with destinations (default: human on stdout); at most one goes to stdout.

    A destination comes from ``FORMAT:FILE`` or from the ``--output`` in the same position;
    giving both for one format, or a number of ``--output`` that is not the number of formats,
    is an error.
    """
    pairs: list[tuple[str, Path | None]] = []
    for value in formats or configured or ["human"]:
        name, _, destination = value.partition(":")
        fmt = name.strip().lower()
        if fmt not in FORMATS:
            raise ConfigError(
                f"unknown format {name!r}; formats: {', '.join(FORMATS)} "
                "(FORMAT:FILE writes to a file)"
            )
        pairs.append((fmt, Path(destination) if destination else None))
    if outputs:
        if len(outputs) != len(pairs):
            raise ConfigError(
                f"{len(pairs)} --format but {len(outputs)} --output: give one --output per "
                "--format (they pair up in order), or write FORMAT:FILE"
            )
        for (name, named), output in zip(pairs, outputs):
            if named is not None:
                raise ConfigError(
                    f"--format {name}:{named} already names a file; drop its --output {output}"
                )
        pairs = [(name, output) for (name, _), output in zip(pairs, outputs)]
    if sum(1 for _, destination in pairs if destination is None) > 1:
        raise ConfigError(
            "only one report can go to stdout; give the others a file with --format FORMAT:FILE"
        )
    for fmt, path in pairs:
        require(fmt)
        if path is not None:
            _check_writable(fmt, path)
    return pairs


def _check_writable(fmt: str, destination: Path) -> None:
    """Fail before the analysis when the report could not be written to ``destination``."""
    if destination.is_dir():
        raise ConfigError(f"cannot write the {fmt} report to {destination}: it is a directory")
    parent = destination.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"cannot write the {fmt} report to {destination}: {parent} is not a directory"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write the {fmt} report to {destination}: {parent} is not writable"
        )


def write_report(
    report: Any, fmt: str, destination: Path | None, quiet: bool, verbose: bool = False
) -> None:
    """Write ``report`` in ``fmt`` to ``destination`` (stdout when None)."""
    try:
        _write_report(report, fmt, destination, quiet, verbose)
    except OSError as error:
        where = destination if destination is not None else "standard output"
        raise OutputError(
            f"cannot write the {fmt} report to {where}: {error.strerror or error}"
        ) from None


def _write_report(
    report: Any, fmt: str, destination: Path | None, quiet: bool, verbose: bool
) -> None:
    if fmt == "human":
        from rich.console import Console

        from dbgcli.cli.console import stdout_console
        from dbgcli.report import human

        if destination is None:
            human.render(report, stdout_console(), show_passed=not quiet, verbose=verbose)
            return
        with destination.open("w", encoding="utf-8") as handle:
            human.render(
                report,
                Console(file=handle, width=120, color_system=None, highlight=False),
                show_passed=not quiet,
                verbose=verbose,
            )
        return
    text = machine_renderer(fmt)(report)
    if destination is None:
        typer.echo(text)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text + "\n", encoding="utf-8")
