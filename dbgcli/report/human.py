"""The human report: a Rich rendering of the report model (the only report module using Rich).

By default each trace takes one screen: its verdict, the run in a line or two with the loss
and learning-rate curves, then each diagnosis (the cause, what it explains, the fix). Several
traces get one line each first, then the details of the unhealthy ones. ``verbose`` adds the
rules table and every finding.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dbgcli.diagnosis import Diagnosis
from dbgcli.findings import Finding, Severity
from dbgcli.report.model import Curve, Report, RuleStatus, TraceReport
from dbgcli.report.text import counted, run_line, shorten_apart, shorten_path

SEVERITY_STYLE = {Severity.error: "bold red", Severity.warning: "yellow", Severity.info: "cyan"}
STATUS_STYLE = {
    RuleStatus.passed: ("passed", "green"),
    RuleStatus.violated: ("violated", "bold red"),
    RuleStatus.skipped: ("skipped", "dim"),
    RuleStatus.error: ("error", "bold magenta"),
}
_BLOCKS = "▁▂▃▄▅▆▇█"
# Diagnoses shown with their evidence and fix; the next ones get a line each.
_DETAILED = 3
_LISTED = 5
_INDENT = 5
_LABEL = 9


def render(
    report: Report, console: Console, *, show_passed: bool = True, verbose: bool = False
) -> None:
    """Print the report: a summary line per trace when there are several, then each trace
    (every trace with ``verbose``, else the unhealthy ones), then the totals."""
    traces = report.traces
    several = len(traces) > 1
    # Paths keep their file names, tags their ends; none prints like another of the report.
    paths = shorten_apart([t.path for t in traces], _name_width(console.width), shorten_path)
    tags = shorten_apart(
        [f.tensor for t in traces for f in t.findings if f.tensor], _name_width(console.width)
    )
    if several:
        path_width = max(len(paths[t.path]) for t in traces)
        for trace in traces:
            console.print(_summary_line(trace, console.width, paths[trace.path], path_width))
        console.print()
    for trace in traces:
        if several and not verbose and trace.healthy:
            continue
        _render_trace(
            trace, console, paths[trace.path], tags, show_passed=show_passed, verbose=verbose
        )
    if report.suppressed:
        console.print(Text(f"{report.suppressed} finding(s) hidden by the baseline", style="dim"))
    for entry in report.stale_baseline:
        console.print(
            Text(
                f"stale baseline entry: {entry.get('rule_id')} {entry.get('tensor') or ''} "
                f"({entry.get('key')}) no longer occurs",
                style="yellow",
            )
        )
    counts = report.counts()
    code = report.exit_code()
    totals = ", ".join(
        f"{n} {name}{'s' if n != 1 and name != 'info' else ''}"
        for name, n in reversed(counts.items())
    )
    verdict = Text(f"{totals} in {counted(len(traces), 'trace')}")
    verdict.append(
        f" · fail on {report.fail_on.value} · exit {code}",
        style="bold red" if code else "bold green",
    )
    console.print(verdict)


def _verdict_style(trace: TraceReport) -> str:
    if trace.error is not None:
        return "bold magenta"
    problems = trace.problems
    if not problems:
        return "green"
    return SEVERITY_STYLE[problems[0].severity]


def _name_width(width: int) -> int:
    """Columns a trace's path gets beside its verdict, and a finding's tensor: room for
    ``grad/…layer.0.attention.q_lin.weight``."""
    return max(16, width // 2)


def _summary_line(trace: TraceReport, width: int, path: str, path_width: int) -> Text:
    """``✗ runs/a.h5  unhealthy: dying ReLU (9 symptoms)`` in one line."""
    mark = "✓" if trace.healthy else "✗"
    line = Text(f"{mark} ", style=_verdict_style(trace))
    line.append(f"{path:<{path_width}}", style="bold")
    line.append("  ")
    room = max(10, width - path_width - 4)
    verdict = trace.verdict
    if len(verdict) > room:
        verdict = verdict[: room - 1] + "…"
    line.append(verdict, style=_verdict_style(trace))
    return line


def _render_trace(
    trace: TraceReport,
    console: Console,
    path: str,
    tags: Mapping[str, str],
    *,
    show_passed: bool,
    verbose: bool,
) -> None:
    """One trace; ``path`` is its path as shortened for the report, ``tags`` the shortened
    tensor of each finding."""
    width = console.width
    head = Text(path, style="bold")
    if head.cell_len + 2 + len(trace.verdict) <= width:
        head.append("  ")
        head.append(trace.verdict, style=_verdict_style(trace))
        console.print(head)
    else:
        console.print(head)
        _wrapped(console, trace.verdict, indent=2, style=_verdict_style(trace))
    if trace.error is not None:
        return
    if trace.summary:
        _wrapped(console, run_line(trace), indent=2, style="dim")
    label = max((len(curve.name) for curve in trace.curves), default=0)
    for curve in trace.curves:
        console.print(_curve_line(curve, width, label))
    findings = trace.findings
    problems = trace.problems
    for number, diagnosis in enumerate(problems[:_DETAILED], start=1):
        _render_diagnosis(console, number, diagnosis, findings, tags)
    rest = problems[_DETAILED:]
    for number, diagnosis in enumerate(rest[:_LISTED], start=_DETAILED + 1):
        _diagnosis_line(console, number, diagnosis, findings, tags)
    if len(rest) > _LISTED:
        console.print(Text(f"  … and {len(rest) - _LISTED} more problems", style="dim"))
    unknown = _unrecognised(trace)
    if unknown:
        _wrapped(
            console,
            f"{unknown}: rules that need them were skipped; give them a collection or a "
            "conventional name, or name the loss with the 'loss' key (--verbose lists them)",
            indent=2,
            label="unknown",
            style="yellow",
        )
    notes = [d for d in trace.diagnoses if d not in problems]
    if notes:
        titles = "; ".join(
            f"{d.title} ({findings[d.cause].rule_id} {findings[d.cause].tensor or ''})".replace(
                " )", ")"
            )
            for d in notes
        )
        _wrapped(console, titles, indent=2, label="notes", style="cyan")
    if findings and not verbose:
        rules = len({f.rule_id for f in findings})
        console.print(
            Text(
                f"  {counted(len(findings), 'finding')} from {counted(rules, 'rule')}; "
                "--verbose shows the rules and every finding",
                style="dim",
            )
        )
    if verbose:
        for curve in trace.curves:
            if curve.note:
                _wrapped(console, curve.note, indent=2, label=curve.name, style="dim")
        console.print(_rules_table(trace, show_passed))
        if findings:
            console.print(Text("findings", style="italic"))
            console.print(_findings_table(findings, tags))
    console.print()


_MEANING_UNKNOWN = re.compile(r"\(found (.*?), whose meaning dbg cannot tell\)")


def _unrecognised(trace: TraceReport) -> str:
    """The series skipped rules found but could not tell the meaning of, once each."""
    found: list[str] = []
    for result in trace.results:
        if result.status is RuleStatus.skipped:
            for match in _MEANING_UNKNOWN.finditer(result.reason):
                for item in match.group(1).split(", "):
                    if item not in found and not item.startswith("and "):
                        found.append(item)
    return ", ".join(found)


def _wrapped(
    console: Console,
    text: str,
    *,
    indent: int,
    label: str = "",
    label_width: int = 0,
    style: str = "",
) -> None:
    """``label  text`` at ``indent``, the text wrapped under itself (no trailing blanks)."""
    width = max(label_width, len(label) + 1 if label else 0)
    room = max(20, console.width - indent - width)
    lines = textwrap.wrap(text, room, break_long_words=True, break_on_hyphens=False) or [""]
    for index, line in enumerate(lines):
        row = Text(" " * indent)
        row.append(f"{label if index == 0 else '':<{width}}", style="dim")
        row.append(line, style=style)
        console.print(row, soft_wrap=True)


def _curve_line(curve: Curve, width: int, label: int) -> Text:
    values = np.asarray(curve.values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    first = f"{values[0]:.3g}" if values.size else "-"
    last = f"{values[-1]:.3g}" if values.size else "-"
    binned = _binned(values, min(32, max(8, width // 4)))
    line = Text(f"  {curve.name:<{label}}  ", style="dim")
    line.append(_draw(binned), style="blue")
    scale = ", log" if _log_scaled(binned) else ""
    line.append(
        f"  {first} → {last}" + (f" (min {finite.min():.3g}{scale})" if finite.size else "")
    )
    return line


def _where(finding: Finding, tags: Mapping[str, str]) -> str:
    parts = [finding.rule_id]
    if finding.tensor:
        parts.append(tags.get(finding.tensor, finding.tensor))
    if finding.span:
        parts.append(finding.span)
    if finding.mode not in (None, "train"):
        parts.append(str(finding.mode))
    return " · ".join(parts)


def _render_diagnosis(
    console: Console,
    number: int,
    diagnosis: Diagnosis,
    findings: list[Finding],
    tags: Mapping[str, str],
) -> None:
    cause = findings[diagnosis.cause]
    _print_head(console, number, diagnosis, cause, "", tags)
    _wrapped(console, cause.message, indent=_INDENT, label_width=_LABEL)
    if diagnosis.symptoms:
        _wrapped(
            console,
            "; ".join(diagnosis.evidence),
            indent=_INDENT,
            label="evidence",
            label_width=_LABEL,
        )
    if diagnosis.fix:
        _wrapped(console, diagnosis.fix, indent=_INDENT, label="fix", label_width=_LABEL)


def _print_head(
    console: Console,
    number: int,
    diagnosis: Diagnosis,
    cause: Finding,
    suffix: str,
    tags: Mapping[str, str],
) -> None:
    """``N. title  severity · where``; where it does not fit, ``where`` goes on the next
    line under the message column, so that nothing wraps to the margin."""
    head = Text(f"  {number}. ")
    head.append(diagnosis.title, style="bold")
    head.append(f"  {diagnosis.severity.value}", style=SEVERITY_STYLE[diagnosis.severity])
    where = _where(cause, tags) + suffix
    if head.cell_len + 3 + len(where) <= console.width:
        head.append(f" · {where}", style="dim")
        console.print(head)
    else:
        console.print(head)
        _wrapped(console, where, indent=_INDENT, label_width=_LABEL, style="dim")


def _diagnosis_line(
    console: Console,
    number: int,
    diagnosis: Diagnosis,
    findings: list[Finding],
    tags: Mapping[str, str],
) -> None:
    suffix = f" (+{len(diagnosis.symptoms)} symptoms)" if diagnosis.symptoms else ""
    _print_head(console, number, diagnosis, findings[diagnosis.cause], suffix, tags)


def _binned(values: Sequence[float] | np.ndarray, width: int) -> np.ndarray:
    """The mean of each of ``width`` runs of consecutive values (NaN where one is not
    finite), or the values themselves when there are fewer."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return data
    bins = np.array_split(np.arange(data.size), min(width, data.size))
    return np.array(
        [float(np.mean(data[i])) if np.isfinite(data[i]).all() else math.nan for i in bins]
    )


def _log_scaled(series: np.ndarray) -> bool:
    """Whether a sparkline draws ``series`` on a log scale: positive, over two decades."""
    finite = series[np.isfinite(series)]
    return bool(finite.size and finite.min() > 0 and finite.max() / finite.min() > 100)


def sparkline(values: Sequence[float] | np.ndarray, width: int = 60) -> str:
    """Unicode block sparkline; non-finite points show as ``×``; log scale for wide ranges.

    A series whose range is below a millionth of its magnitude is drawn flat, at the lowest
    level: min-max scaling would otherwise stretch float noise (a constant learning rate of
    0.1 stored once as 0.1000000001) into a full-height step.
    """
    return _draw(_binned(values, width))


def _draw(series: np.ndarray) -> str:
    """The sparkline of values already binned to one per column."""
    if series.size == 0:
        return ""
    finite = series[np.isfinite(series)]
    if finite.size == 0:
        return "×" * len(series)
    if finite.max() - finite.min() <= 1e-6 * np.abs(finite).max():
        return "".join(_BLOCKS[0] if np.isfinite(v) else "×" for v in series)
    if _log_scaled(series):
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
                f"{counted(len(result.findings), 'finding')} ({worst.value})",
                style=SEVERITY_STYLE[worst],
            )
        elif result.status is RuleStatus.passed:
            detail = Text("")
        elif result.status is RuleStatus.skipped:
            detail = Text(result.reason, style="dim")
        else:
            detail = Text(result.reason, style="magenta")
        table.add_row(result.id, result.name, Text(label, style=style), detail)
    return table


def _findings_table(findings: list[Finding], tags: Mapping[str, str]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for finding in findings:
        severity = finding.severity or Severity.info
        mode = finding.mode if finding.mode != "train" else None
        tensor = tags.get(finding.tensor, finding.tensor) if finding.tensor else None
        where = " · ".join(part for part in (tensor, finding.span, mode) if part)
        head = Text()
        head.append(f"{finding.rule_id} {finding.rule}", style="bold")
        if where:
            head.append(f"  {where}", style="dim")
        table.add_row(Text(f"{severity.value:<7}", style=SEVERITY_STYLE[severity]), head)
        table.add_row("", Text(finding.message))
    return table
