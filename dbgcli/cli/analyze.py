"""``dbg analyze``: run the rules over traces, print a report, exit with a CI-friendly code."""

from __future__ import annotations

from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dbgcli.cli.app import MemoryOption, TimeoutOption, app, fail, handle_errors, limits
from dbgcli.cli.output import FORMAT_HELP, OUTPUT_HELP, parse_outputs, write_report
from dbgcli.errors import ConfigError, RuleConfigError
from dbgcli.isolation import Limits
from dbgcli.report.text import counted

if TYPE_CHECKING:
    from dbgcli.analysis import Options
    from dbgcli.compare import Tolerance
    from dbgcli.config import Config
    from dbgcli.findings import Severity
    from dbgcli.report.model import Report


class FailOn(str, Enum):
    info = "info"
    warning = "warning"
    error = "error"


TRACE_SUFFIXES = (".h5", ".hdf5", ".trace")

# The options that choose the rules and their settings, shared with ``dbg watch``
# (:func:`rule_settings` reads them).
SelectOption = Annotated[
    list[str] | None,
    typer.Option(
        "--select",
        "-s",
        help="Rules to run: ids, id prefixes (DBG1), names or categories. Repeat or comma-separate.",
    ),
]
IgnoreOption = Annotated[
    list[str] | None,
    typer.Option("--ignore", "-i", help="Rules to leave out (same forms as --select)."),
]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        help="Rule parameter override RULE.NAME=VALUE, e.g. DBG101.threshold=1e-6.",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Configuration file (default: dbg.toml or [tool.dbg] found upwards, up to the "
        "project root: the directory holding .git, .hg or pyproject.toml).",
    ),
]
IsolatedOption = Annotated[
    bool,
    typer.Option(
        "--isolated",
        help="Ignore every configuration file (and the rules files they name: those run Python).",
    ),
]
RulesFileOption = Annotated[
    list[Path] | None,
    typer.Option("--rules-file", help="Load custom rules from this Python file."),
]


@app.command()
@handle_errors
def analyze(
    traces: Annotated[
        list[Path],
        typer.Argument(
            help="Trace files, or directories searched recursively for *.h5 traces.",
            show_default=False,
        ),
    ],
    select: SelectOption = None,
    ignore: IgnoreOption = None,
    param: ParamOption = None,
    fail_on: Annotated[
        FailOn | None,
        typer.Option(
            "--fail-on", help="Lowest severity that makes the exit code 1 [default: error]."
        ),
    ] = None,
    exit_zero: Annotated[
        bool, typer.Option("--exit-zero", help="Exit 0 even with findings (errors still exit 2).")
    ] = False,
    output_format: Annotated[
        list[str] | None,
        typer.Option("--format", "-f", help=FORMAT_HELP, metavar="FORMAT[:FILE]"),
    ] = None,
    output: Annotated[list[Path] | None, typer.Option("--output", "-o", help=OUTPUT_HELP)] = None,
    start: Annotated[int | None, typer.Option("--start", help="First step to analyse.")] = None,
    stop: Annotated[int | None, typer.Option("--stop", help="Last step to analyse.")] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="Only records of this mode (train, eval, predict).")
    ] = None,
    config: ConfigOption = None,
    isolated: IsolatedOption = False,
    rules_file: RulesFileOption = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Human report: every trace in full, with the rules table and every finding.",
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Human report: hide rules that passed.")
    ] = False,
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="Report only findings that are not in this baseline file."),
    ] = None,
    write_baseline: Annotated[
        Path | None,
        typer.Option("--write-baseline", help="Record today's findings in this baseline file."),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Analyse traces in this many processes.")
    ] = 1,
    timeout: TimeoutOption = Limits.seconds,
    memory_limit: MemoryOption = Limits.memory_mb,
) -> None:
    """Analyse traces with the rules and report what went wrong.

    Exit codes: 0 nothing at or above the fail level, 1 findings at or above it, 2 errors
    (unreadable trace, bad option or configuration, crashed rule).
    """
    from dbgcli.analysis import analyze as run_analysis
    from dbgcli.cli.console import log, progress
    from dbgcli.report.baseline import apply_baseline, read_baseline
    from dbgcli.report.baseline import write_baseline as write_baseline_file

    settings, options, level = rule_settings(
        config, isolated, select, ignore, param, rules_file, fail_on, mode
    )
    options = replace(options, start=start, stop=stop)
    targets = parse_outputs(output_format or [], output or [], settings.formats)
    known = read_baseline(baseline) if baseline is not None else None
    paths = expand_traces(traces)
    with progress(f"analysing {len(paths)} traces", len(paths) > 1):
        report = run_analysis(
            paths, options, fail_on=level, jobs=jobs, limits=limits(timeout, memory_limit)
        )
    if write_baseline is not None:
        count = write_baseline_file(report, write_baseline)
        log(f"wrote {count} finding(s) to baseline {write_baseline}")
    if known is not None:
        report = apply_baseline(report, known)
        if report.stale_baseline:
            log(
                f"{len(report.stale_baseline)} baseline entr{'y' if len(report.stale_baseline) == 1 else 'ies'} no longer occur"
            )
    for fmt, destination in targets:
        write_report(report, fmt, destination, quiet, verbose)
    errors = report.errors
    if errors:
        more = f" (and {counted(len(errors) - 1, 'more error')})" if len(errors) > 1 else ""
        fail(f"{errors[0]}{more}")
    raise typer.Exit(report.exit_code(exit_zero=exit_zero or settings.exit_zero))


def rule_settings(
    config: Path | None,
    isolated: bool,
    select: list[str] | None,
    ignore: list[str] | None,
    param: list[str] | None,
    rules_file: list[Path] | None,
    fail_on: FailOn | None,
    mode: str | None = None,
) -> tuple[Config, Options, Severity]:
    """The configuration file's settings with the command line's on top: what to run, and the
    fail level (``analyze`` and ``watch`` share them)."""
    from dbgcli.analysis import Options
    from dbgcli.config import load_config
    from dbgcli.findings import Severity

    if isolated and config is not None:
        raise ConfigError("--isolated ignores configuration files; drop --config or --isolated")
    settings = load_config(config, search=not isolated)
    options = Options(
        select=_tokens(select) if select else settings.select,
        ignore=_tokens(ignore) if ignore else settings.ignore,
        params=_merge_params(settings.params, param or []),
        severities=settings.severities,
        mode=mode or settings.mode,
        rules_files=(*settings.rules_files, *(str(p) for p in rules_file or [])),
        loss=settings.loss,
    )
    level_name = fail_on.value if fail_on is not None else (settings.fail_on or "error")
    try:
        level = Severity(level_name)
    except ValueError:
        raise ConfigError(f"fail-on must be info, warning or error, not {level_name!r}") from None
    return settings, options, level


def expand_traces(paths: list[Path]) -> list[Path]:
    """Files as given; directories replaced by the traces inside them (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.suffix in TRACE_SUFFIXES and p.is_file()
            )
            if not inside:
                raise ConfigError(f"{path}: no traces (*.h5) in this directory")
            found.extend(inside)
        else:
            found.append(path)
    return found


def _compare(arguments: tuple[Path, Path, Tolerance, str | None]) -> Report:
    from dbgcli.compare import compare as compare_traces

    return compare_traces(*arguments)


def _tokens(values: list[str]) -> tuple[str, ...]:
    return tuple(token.strip() for value in values for token in value.split(",") if token.strip())


def _merge_params(
    from_file: dict[str, dict[str, Any]], overrides: list[str]
) -> dict[str, dict[str, Any]]:
    merged = {rule: dict(values) for rule, values in from_file.items()}
    for item in overrides:
        target, sep, value = item.partition("=")
        rule, dot, name = target.strip().rpartition(".")
        if not sep or not dot or not rule or not name:
            raise RuleConfigError(
                f"--param {item!r}: expected RULE.NAME=VALUE, e.g. DBG101.threshold=1e-6"
            )
        merged.setdefault(rule, {})[name] = value.strip()
    return merged


@app.command()
@handle_errors
def compare(
    first: Annotated[Path, typer.Argument(help="A trace.", show_default=False)],
    second: Annotated[
        Path, typer.Argument(help="The trace that should match it.", show_default=False)
    ],
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance.")] = 1e-5,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = 1e-8,
    tags: Annotated[
        str | None, typer.Option("--tags", help="Only tags matching this glob, e.g. 'grad/*'.")
    ] = None,
    output_format: Annotated[
        list[str] | None, typer.Option("--format", "-f", help=FORMAT_HELP, metavar="FORMAT[:FILE]")
    ] = None,
    output: Annotated[list[Path] | None, typer.Option("--output", "-o", help=OUTPUT_HELP)] = None,
    exit_zero: Annotated[
        bool, typer.Option("--exit-zero", help="Exit 0 even when the runs differ.")
    ] = False,
    timeout: TimeoutOption = Limits.seconds,
    memory_limit: MemoryOption = Limits.memory_mb,
) -> None:
    """Compare two runs that should match: tags, steps, scalars, statistics, full tensors.

    Records are paired by step and mode; values equal within |a - b| <= atol + rtol*|b| (NaN
    equals NaN) match. Exit 0 when the runs match, 1 when they differ, 2 on errors.
    """
    from dbgcli.compare import Tolerance
    from dbgcli.isolation import call_isolated

    if rtol < 0 or atol < 0:
        raise ConfigError("--rtol and --atol must be >= 0")
    targets = parse_outputs(output_format or [], output or [], ())
    report = call_isolated(
        _compare,
        (first, second, Tolerance(rtol, atol), tags),
        f"{first} vs {second}",
        limits(timeout, memory_limit),
    )
    for fmt, destination in targets:
        write_report(report, fmt, destination, quiet=False)
    raise typer.Exit(report.exit_code(exit_zero=exit_zero))
