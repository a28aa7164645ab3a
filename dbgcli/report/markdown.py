"""A Markdown summary for ``$GITHUB_STEP_SUMMARY`` (or any Markdown viewer).

GitHub caps a step summary at 1 MiB, so findings are added until ``max_bytes`` would be
exceeded; the rest are counted in a closing line.
"""

from __future__ import annotations

from dbgcli.findings import Severity
from dbgcli.report.model import Report, RuleStatus

MAX_BYTES = 1_000_000
_ICONS = {Severity.error: "🔴", Severity.warning: "🟡", Severity.info: "🔵"}


def render(report: Report, max_bytes: int = MAX_BYTES) -> str:
    """The summary, never longer than ``max_bytes`` bytes of UTF-8."""
    counts = report.counts()
    code = report.exit_code()
    head = [
        "## dbg analyze",
        "",
        f"**{'failed' if code else 'passed'}** (exit {code}, fail on {report.fail_on.value}): "
        f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info "
        f"in {len(report.traces)} trace(s)"
        + (f"; {report.suppressed} baselined" if report.suppressed else ""),
        "",
    ]
    for line in report.errors:
        head.append(f"- ❗ {_cell(line)}")
    if report.errors:
        head.append("")
    head += ["| trace | complete | violated rules | findings |", "| --- | --- | --- | --- |"]
    for trace in report.traces:
        violated = ", ".join(r.id for r in trace.results if r.status is RuleStatus.violated) or "-"
        state = "error" if trace.error else ("yes" if trace.complete else "no")
        head.append(f"| `{_cell(trace.path)}` | {state} | {violated} | {len(trace.findings)} |")
    head += [
        "",
        "| | rule | trace | tensor | steps | message |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    text = "\n".join(head) + "\n"
    findings = sorted(report.findings, key=lambda pair: -(pair[1].severity or Severity.info).rank)
    size = len(text.encode("utf-8"))
    reserve = 200  # room for the closing line
    for shown, (trace, finding) in enumerate(findings):
        row = (
            f"| {_ICONS[finding.severity or Severity.info]} | {finding.rule_id} {finding.rule} | "
            f"`{_cell(trace.path)}` | `{_cell(finding.tensor or '-')}` | {finding.span or '-'} | {_cell(finding.message)} |\n"
        )
        row_size = len(row.encode("utf-8"))
        if size + row_size + reserve > max_bytes:
            text += f"\n_{len(findings) - shown} more finding(s) omitted to stay under {max_bytes} bytes; see the full report._\n"
            return text
        text += row
        size += row_size
    if report.stale_baseline:
        text += f"\n{len(report.stale_baseline)} baseline entr{'y' if len(report.stale_baseline) == 1 else 'ies'} no longer occur and can be removed.\n"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
