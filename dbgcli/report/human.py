"""The human report: a Rich rendering of the report model (the only report module using Rich)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dbgcli.findings import Finding, Severity
from dbgcli.report.model import Curve, Report, RuleStatus, TraceReport

SEVERITY_STYLE = {Severity.error: "bold red", Severity.warning: "yellow", Severity.info: "cyan"}
STATUS_STYLE = {
    RuleStatus.passed: ("passed", "green"),
    RuleStatus.violated: ("violated", "bold red"),
    RuleStatus.skipped: ("skipped", "dim"),
    RuleStatus.error: ("error", "bold magenta"),
}
_BLOCKS = "▁▂▃▄▅▆▇█"


def render(report: Report, console: Console, *, show_passed: bool = True) -> None:
    """Print the whole report: one panel per trace, then the totals."""
    for trace in report.traces:
        _render_trace(trace, console, show_passed)
    if report.suppressed:
        console.print(Text(f"{report.suppressed} finding(s) hidden by the baseline", style="dim"))
    for entry in report.stale_baseline:
        console.print(
            Text(
                f"stale baseline entry: {entry.get('rule_id')} {entry.get('tensor') or ''} ({entry.get('key')}) no longer occurs",
                style="yellow",
            )
        )
    counts = report.counts()
    code = report.exit_code()
    totals = ", ".join(
        f"{n} {name}{'s' if n != 1 and name != 'info' else ''}"
        for name, n in reversed(counts.items())
    )
    verdict = Text(
        f"{totals} in {len(report.traces)} trace{'s' if len(report.traces) != 1 else ''}"
    )
    verdict.append(
        f" · fail on {report.fail_on.value} · exit {code}",
        style="bold red" if code else "bold green",
    )
    console.print(verdict)


def _render_trace(trace: TraceReport, console: Console, show_passed: bool) -> None:
    if trace.error:
        console.print(
            Panel(
                Text(trace.error, style="bold magenta"),
                title=trace.path,
                title_align="left",
                border_style="magenta",
            )
        )
        return
    parts: list[Table] = [_header(trace)]
    for curve in trace.curves:
        parts.append(_sparkline_row(curve))
    console.print(Panel(Group(*parts), title=trace.path, title_align="left"))
    console.print(_rules_table(trace, show_passed))
    findings = trace.findings
    if findings:
        console.print(Text("findings", style="italic"))
        console.print(_findings_table(findings))


def _header(trace: TraceReport) -> Table:
    grid = Table.grid(padding=(0, 2))
    status = (
        Text("complete", style="green")
        if trace.complete
        else Text("incomplete: " + "; ".join(trace.incomplete_reasons), style="yellow")
    )
    grid.add_row("trace", status)
    modes = trace.summary.get("modes", {})
    if modes:
        grid.add_row(
            "steps",
            ", ".join(
                f"{m} {s['first_step']}..{s['last_step']} ({s['steps']})" for m, s in modes.items()
            ),
        )
    grid.add_row(
        "series",
        f"{trace.summary.get('scalars', 0)} scalars, {trace.summary.get('tensors', 0)} tensors "
        f"({trace.summary.get('raw_tensors', 0)} with full values)"
        + (f", {trace.summary['framework']}" if trace.summary.get("framework") else ""),
    )
    return grid


def _sparkline_row(curve: Curve) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    values = np.asarray(curve.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    first = f"{values[0]:.3g}" if values.size else "-"
    last = f"{values[-1]:.3g}" if values.size else "-"
    span = f"{first} → {last}" + (f" (min {finite.min():.3g})" if finite.size else "")
    grid.add_row(
        Text(f"{curve.name:<16}"),
        Text(sparkline(values, width=32), style="blue"),
        Text(span, style="dim"),
    )
    return grid


def sparkline(values: Sequence[float] | np.ndarray, width: int = 60) -> str:
    """Unicode block sparkline; non-finite points show as ``×``; log scale for wide ranges."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return ""
    bins = np.array_split(np.arange(data.size), min(width, data.size))
    points = []
    for index in bins:
        chunk = data[index]
        points.append(float(np.mean(chunk)) if np.isfinite(chunk).all() else math.nan)
    series = np.asarray(points)
    finite = series[np.isfinite(series)]
    if finite.size == 0:
        return "×" * len(series)
    if finite.min() > 0 and finite.max() / finite.min() > 100:
        series = np.log10(series)
        finite = np.log10(finite)
    low, high = finite.min(), finite.max()
    scale = (high - low) or 1.0
    return "".join(
        "×" if not np.isfinite(v) else _BLOCKS[int(round((v - low) / scale * (len(_BLOCKS) - 1)))]
        for v in series
    )


def _rules_table(trace: TraceReport, show_passed: bool) -> Table:
    table = Table(title="rules", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("id")
    table.add_column("rule")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for result in trace.results:
        if result.status is RuleStatus.passed and not show_passed:
            continue
        label, style = STATUS_STYLE[result.status]
        if result.status is RuleStatus.violated:
            worst = max(
                (f.severity or Severity.info for f in result.findings), key=lambda s: s.rank
            )
            detail = Text(
                f"{len(result.findings)} finding{'s' if len(result.findings) != 1 else ''} ({worst.value})",
                style=SEVERITY_STYLE[worst],
            )
        elif result.status is RuleStatus.passed:
            detail = Text("")
        elif result.status is RuleStatus.skipped:
            # Skip reasons can be long; the full text is in the JSON report.
            detail = Text(result.reason, style="dim", no_wrap=True, overflow="ellipsis")
        else:
            detail = Text(result.reason, style="magenta")
        table.add_row(result.id, result.name, Text(label, style=style), detail)
    return table


def _findings_table(findings: list[Finding]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for finding in findings:
        severity = finding.severity or Severity.info
        mode = finding.mode if finding.mode != "train" else None
        where = " · ".join(part for part in (finding.tensor, finding.span, mode) if part)
        head = Text()
        head.append(f"{finding.rule_id} {finding.rule}", style="bold")
        if where:
            head.append(f"  {where}", style="dim")
        table.add_row(Text(f"{severity.value:<7}", style=SEVERITY_STYLE[severity]), head)
        table.add_row("", Text(finding.message))
    return table
