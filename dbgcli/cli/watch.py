"""``dbg watch``: follow a trace while it is written, act on findings, end with analyze's code."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dbgcli.cli.analyze import (
    ConfigOption,
    FailOn,
    IgnoreOption,
    IsolatedOption,
    ParamOption,
    RulesFileOption,
    SelectOption,
    rule_settings,
)
from dbgcli.cli.app import app, handle_errors
from dbgcli.cli.output import FORMAT_HELP, OUTPUT_HELP, parse_outputs, write_report
from dbgcli.findings import Severity
from dbgcli.report.model import EXIT_ERROR, EXIT_FINDINGS, Report

if TYPE_CHECKING:
    from dbgcli.findings import Finding
    from dbgcli.watch import Watcher

# How soon to look again at a file that is being committed.
_BUSY_RETRY = 0.02


@app.command()
@handle_errors
def watch(
    trace: Annotated[
        Path, typer.Argument(help="The trace to follow (it may not exist yet).", show_default=False)
    ],
    interval: Annotated[
        float, typer.Option("--interval", min=0.01, help="Seconds between polls.")
    ] = 1.0,
    window: Annotated[
        int, typer.Option("--window", min=10, help="Steps of history each poll judges.")
    ] = 1000,
    fail_on: Annotated[
        FailOn | None,
        typer.Option(
            "--fail-on",
            help="Lowest severity that fails the run (exit 1, --exit-first, --stop) [default: error].",
        ),
    ] = None,
    exit_first: Annotated[
        bool,
        typer.Option("--exit-first", help="End at the first finding at or above the fail level."),
    ] = False,
    stop: Annotated[
        bool,
        typer.Option(
            "--stop", help="Ask the training to stop at a finding at or above the fail level."
        ),
    ] = False,
    on_finding: Annotated[
        str | None,
        typer.Option(
            "--on-finding",
            help="Shell command run for each new finding, with the finding as JSON on stdin.",
            metavar="CMD",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout", min=0.0, help="Give up (exit 2) if the trace does not appear in time."
        ),
    ] = None,
    select: SelectOption = None,
    ignore: IgnoreOption = None,
    param: ParamOption = None,
    config: ConfigOption = None,
    isolated: IsolatedOption = False,
    rules_file: RulesFileOption = None,
    output_format: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help="Final report (html:FILE is also refreshed while the run goes on): " + FORMAT_HELP,
            metavar="FORMAT[:FILE]",
        ),
    ] = None,
    output: Annotated[list[Path] | None, typer.Option("--output", "-o", help=OUTPUT_HELP)] = None,
    exit_zero: Annotated[
        bool, typer.Option("--exit-zero", help="Exit 0 even with findings (errors still exit 2).")
    ] = False,
) -> None:
    """Follow a trace while training writes it: live status, new findings as they appear.

    Each poll judges the last --window steps, so a poll costs the same however long the run.
    When the writer closes the trace the whole trace is analysed once and the report printed,
    with the exit code ``dbg analyze`` gives: 0 clean, 1 findings at or above the fail level,
    2 errors, including a writer that died without closing the trace.
    """
    from dbgcli.watch import Watcher

    settings, options, level = rule_settings(
        config, isolated, select, ignore, param, rules_file, fail_on
    )
    targets = parse_outputs(output_format or [], output or [], settings.formats)
    watcher = Watcher(trace, options, fail_on=level, window=window)
    session = _Session(watcher, interval, exit_first, stop, on_finding, timeout)
    session.html = [d for fmt, d in targets if fmt == "html" and d is not None]
    session.fail_on = level
    code = session.run()
    if code is not None:
        raise typer.Exit(code)
    report = watcher.final_report()
    for fmt, destination in targets:
        write_report(report, fmt, destination, quiet=False)
    _say_if_stopped(watcher)
    raise typer.Exit(report.exit_code(exit_zero=exit_zero or settings.exit_zero))


class _Session:
    """The polling loop and what it shows: status on stderr, findings on stdout."""

    def __init__(
        self,
        watcher: Watcher,
        interval: float,
        exit_first: bool,
        stop: bool,
        on_finding: str | None,
        timeout: float | None,
    ) -> None:
        from dbgcli.cli.console import stderr_console

        self.watcher = watcher
        self.interval = interval
        self.exit_first = exit_first
        self.stop = stop
        self.on_finding = on_finding
        self.timeout = timeout
        self.console = stderr_console()
        self.stop_requested = False
        self.last_status = ""
        # HTML reports refreshed while the run goes on (--format html:FILE).
        self.html: list[Path] = []
        self.fail_on = Severity.error
        self.html_written = -math.inf

    def run(self) -> int | None:
        """Poll until the writer closes the trace (None: analyse it) or an exit code."""
        from dbgcli.cli.app import fail
        from dbgcli.cli.console import log
        from dbgcli.watch import State

        started = time.monotonic()
        if not self.watcher.path.exists():
            log(f"waiting for {self.watcher.path} to appear")
        status = (
            self.console.status(f"waiting for {self.watcher.path}")
            if self.console.is_terminal
            else None
        )
        if status is not None:
            status.start()
        try:
            while True:
                poll = self.watcher.poll()
                if poll.state is State.waiting:
                    if self.timeout is not None and time.monotonic() - started > self.timeout:
                        fail(f"{self.watcher.path}: no trace appeared within {self.timeout:g} s")
                        return EXIT_ERROR
                elif poll.state is State.died:
                    fail(f"{self.watcher.path}: {poll.note}; what it committed is in the trace")
                    return EXIT_ERROR
                for finding in poll.new_findings:
                    code = self._found(finding)
                    if code is not None:
                        return code
                if poll.state in (State.analysed, State.closed):
                    self._status(status)
                if poll.state is State.analysed:
                    self._refresh_html(bool(poll.new_findings))
                if poll.state is State.closed:
                    return None
                time.sleep(_BUSY_RETRY if poll.state is State.busy else self.interval)
        finally:
            if status is not None:
                status.stop()

    def _refresh_html(self, news: bool) -> None:
        """Rewrite the HTML reports with what the polls found so far: at once on new findings,
        else at most every HTML_REFRESH seconds (a page reads the whole trace). Drawn in a
        worker, as every read of a trace is; a failure is one line, and the watch goes on."""
        from dbgcli.cli.console import log
        from dbgcli.errors import DbgError
        from dbgcli.isolation import call_isolated
        from dbgcli.report.model import Report

        now = time.monotonic()
        if not self.html or (not news and now - self.html_written < HTML_REFRESH):
            return
        self.html_written = now
        report = Report((self.watcher.report(),), fail_on=self.fail_on)
        try:
            call_isolated(_write_html, (report, self.html), str(self.watcher.path))
        except DbgError as error:
            log(f"could not refresh the HTML report: {error}")

    def _found(self, finding: Finding) -> int | None:
        from dbgcli.cli.console import log
        from dbgcli.watch import run_on_finding

        severity = (finding.severity.value if finding.severity else "info").upper()
        where = f" {finding.tensor}," if finding.tensor else ""
        span = f" {finding.span}:" if finding.span else ":"
        # One line per finding, never wrapped: logs and scripts read them.
        typer.echo(f"{severity} {finding.rule_id} {finding.rule}{where}{span} {finding.message}")
        if self.on_finding is not None:
            problem = run_on_finding(self.on_finding, finding, self.watcher.path)
            if problem is not None:
                log(f"--on-finding: {problem}")
        if not self.watcher.failing([finding]):
            return None
        if self.stop and not self.stop_requested:
            self.stop_requested = True
            request = self.watcher.request_stop(finding)
            log(f"asked the run to stop ({request})")
        if self.exit_first:
            return EXIT_FINDINGS
        return None

    def _status(self, status: object) -> None:
        from dbgcli.cli.console import log
        from dbgcli.report.model import RuleStatus

        report = self.watcher.report()
        if not report.results:
            return
        judged = [r for r in report.results if r.status is not RuleStatus.skipped]
        passing = sum(1 for r in judged if r.status is RuleStatus.passed)
        step = self.watcher.newest_step
        text = f"step {step if step is not None else '-'}: {passing}/{len(judged)} rules passing; {report.verdict}"
        if status is not None:
            status.update(text)  # type: ignore[attr-defined]
            return
        # In a log, a line each time the picture changes, not each poll.
        summary = text.split(": ", 1)[1]
        if summary != self.last_status:
            self.last_status = summary
            log(text)


def _say_if_stopped(watcher: Watcher) -> None:
    from dbgcli.cli.console import log

    stopped = watcher.metadata.get("stop")
    if isinstance(stopped, dict):
        log(
            f"the run was stopped at step {stopped.get('seen_at_step')} by {stopped.get('by')}: "
            f"{stopped.get('reason')}"
        )


#: Seconds between refreshes of an HTML report while nothing new is found.
HTML_REFRESH = 30.0


def _write_html(arguments: tuple[Report, list[Path]]) -> None:
    # Written beside and renamed, so a browser reloading the page never sees half of it.
    report, destinations = arguments
    for destination in destinations:
        partial = destination.with_name(f".{destination.name}.partial")
        write_report(report, "html", partial, quiet=False)
        os.replace(partial, destination)
