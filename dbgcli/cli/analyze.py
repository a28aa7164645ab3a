"""``dbg analyze``: run the rules over traces, print a report, exit with a CI-friendly code."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dbgcli.cli.app import app, handle_errors
from dbgcli.errors import ConfigError, RuleConfigError


class OutputFormat(str, Enum):
    human = "human"
    json = "json"
    sarif = "sarif"
    junit = "junit"
    github = "github"
    markdown = "markdown"


class FailOn(str, Enum):
    info = "info"
    warning = "warning"
    error = "error"


TRACE_SUFFIXES = (".h5", ".hdf5", ".trace")


@app.command()
@handle_errors
def analyze(
    traces: Annotated[
        list[Path],
        typer.Argument(help="Trace files, or directories searched recursively for *.h5 traces.", show_default=False),
    ],
    select: Annotated[
        list[str] | None,
        typer.Option("--select", "-s", help="Rules to run: ids, id prefixes (DBG1), names or categories. Repeat or comma-separate."),
    ] = None,
    ignore: Annotated[
        list[str] | None, typer.Option("--ignore", "-i", help="Rules to leave out (same forms as --select).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Rule parameter override RULE.NAME=VALUE, e.g. DBG101.threshold=1e-6."),
    ] = None,
    fail_on: Annotated[
        FailOn | None, typer.Option("--fail-on", help="Lowest severity that makes the exit code 1 [default: error].")
    ] = None,
    exit_zero: Annotated[
        bool, typer.Option("--exit-zero", help="Exit 0 even with findings (errors still exit 2).")
    ] = False,
    output_format: Annotated[
        list[str] | None,
        typer.Option(
            "--format", "-f",
            help="Report format: human, json, sarif, junit, github, markdown; FORMAT:FILE writes it to "
            "FILE. Repeat for several reports from one analysis.",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the (single) report to this file instead of stdout.")
    ] = None,
    start: Annotated[int | None, typer.Option("--start", help="First step to analyse.")] = None,
    stop: Annotated[int | None, typer.Option("--stop", help="Last step to analyse.")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="Only records of this mode (train, eval, predict).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Configuration file (default: dbg.toml or [tool.dbg] found upwards).")
    ] = None,
    rules_file: Annotated[
        list[Path] | None, typer.Option("--rules-file", help="Load custom rules from this Python file.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Human report: hide rules that passed.")] = False,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Report only findings that are not in this baseline file.")
    ] = None,
    write_baseline: Annotated[
        Path | None, typer.Option("--write-baseline", help="Record today's findings in this baseline file.")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Analyse traces in this many processes.")] = 1,
) -> None:
    """Analyse traces with the rules and report what went wrong.

    Exit codes: 0 nothing at or above the fail level, 1 findings at or above it, 2 errors
    (unreadable trace, bad option or configuration, crashed rule).
    """
    from dbgcli.analysis import Options, analyze as run_analysis
    from dbgcli.cli.console import log, progress
    from dbgcli.config import load_config
    from dbgcli.findings import Severity
    from dbgcli.report.baseline import apply_baseline, read_baseline
    from dbgcli.report.baseline import write_baseline as write_baseline_file

    settings = load_config(config)
    options = Options(
        select=_tokens(select) if select else settings.select,
        ignore=_tokens(ignore) if ignore else settings.ignore,
        params=_merge_params(settings.params, param or []),
        severities=settings.severities,
        start=start,
        stop=stop,
        mode=mode or settings.mode,
        rules_files=(*settings.rules_files, *(str(p) for p in rules_file or [])),
    )
    level_name = fail_on.value if fail_on is not None else (settings.fail_on or "error")
    try:
        level = Severity(level_name)
    except ValueError:
        raise ConfigError(f"fail-on must be info, warning or error, not {level_name!r}") from None
    targets = _outputs(output_format or [], output, settings.formats)
    known = read_baseline(baseline) if baseline is not None else None
    paths = expand_traces(traces)
    with progress(f"analysing {len(paths)} traces", len(paths) > 1):
        report = run_analysis(paths, options, fail_on=level, jobs=jobs)
    if write_baseline is not None:
        count = write_baseline_file(report, write_baseline)
        log(f"wrote {count} finding(s) to baseline {write_baseline}")
    if known is not None:
        report = apply_baseline(report, known)
        if report.stale_baseline:
            log(f"{len(report.stale_baseline)} baseline entr{'y' if len(report.stale_baseline) == 1 else 'ies'} no longer occur")
    for fmt, destination in targets:
        _write(report, fmt, destination, quiet)
    raise typer.Exit(report.exit_code(exit_zero=exit_zero or settings.exit_zero))


def expand_traces(paths: list[Path]) -> list[Path]:
    """Files as given; directories replaced by the traces inside them (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix in TRACE_SUFFIXES and p.is_file())
            if not inside:
                raise ConfigError(f"{path}: no traces (*.h5) in this directory")
            found.extend(inside)
        else:
            found.append(path)
    return found


def _tokens(values: list[str]) -> tuple[str, ...]:
    return tuple(token.strip() for value in values for token in value.split(",") if token.strip())


def _merge_params(from_file: dict[str, dict[str, Any]], overrides: list[str]) -> dict[str, dict[str, Any]]:
    merged = {rule: dict(values) for rule, values in from_file.items()}
    for item in overrides:
        target, sep, value = item.partition("=")
        rule, dot, name = target.strip().rpartition(".")
        if not sep or not dot or not rule or not name:
            raise RuleConfigError(f"--param {item!r}: expected RULE.NAME=VALUE, e.g. DBG101.threshold=1e-6")
        merged.setdefault(rule, {})[name] = value.strip()
    return merged


def _outputs(formats: list[str], output: Path | None, configured: tuple[str, ...]) -> list[tuple[OutputFormat, Path | None]]:
    """Parse ``FORMAT[:FILE]`` values (default: human on stdout); at most one goes to stdout."""
    pairs: list[tuple[OutputFormat, Path | None]] = []
    for value in formats or configured or ["human"]:
        name, _, destination = value.partition(":")
        try:
            fmt = OutputFormat(name.strip().lower())
        except ValueError:
            choices = ", ".join(f.value for f in OutputFormat)
            raise ConfigError(f"unknown format {name!r}; formats: {choices} (FORMAT:FILE writes to a file)") from None
        pairs.append((fmt, Path(destination) if destination else None))
    if output is not None:
        if len(pairs) != 1 or pairs[0][1] is not None:
            raise ConfigError("--output goes with a single --format; write several reports with --format FORMAT:FILE")
        pairs = [(pairs[0][0], output)]
    if sum(1 for _, destination in pairs if destination is None) > 1:
        raise ConfigError("only one report can go to stdout; give the others a file with --format FORMAT:FILE")
    return pairs


def _write(report: Any, fmt: OutputFormat, destination: Path | None, quiet: bool) -> None:
    if fmt is OutputFormat.human:
        from rich.console import Console

        from dbgcli.cli.console import stdout_console
        from dbgcli.report import human

        if destination is None:
            human.render(report, stdout_console(), show_passed=not quiet)
            return
        with destination.open("w", encoding="utf-8") as handle:
            human.render(report, Console(file=handle, width=120, color_system=None, highlight=False), show_passed=not quiet)
        return
    from dbgcli.report.formats import machine_renderer

    text = machine_renderer(fmt.value)(report)
    if destination is None:
        typer.echo(text)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text + "\n", encoding="utf-8")
