"""GitHub Actions workflow commands: ``::error``/``::warning``/``::notice`` annotation lines.

GitHub shows at most 10 annotations of each type per step (and 50 per job), so the most severe
findings are annotated first, at most ``per_level`` of each level, followed by one notice saying
how many were left out. Data and property values are escaped as the runner expects
(``%``, CR and LF everywhere; ``:`` and ``,`` in properties too).
"""

from __future__ import annotations

from pathlib import Path

from dbgcli.findings import Severity
from dbgcli.report.model import Report

COMMANDS = {Severity.error: "error", Severity.warning: "warning", Severity.info: "notice"}
PER_LEVEL = 10


def render(report: Report, per_level: int = PER_LEVEL) -> str:
    """Annotation lines, most severe first, capped per level, then a count of the rest."""
    lines = []
    shown = dict.fromkeys(Severity, 0)
    left_out = 0
    for line in report.errors:
        lines.append(f"::error title=dbg error::{escape_data(line)}")
    ordered = sorted(report.findings, key=lambda pair: -(pair[1].severity or Severity.info).rank)
    for trace, finding in ordered:
        severity = finding.severity or Severity.info
        if shown[severity] >= per_level:
            left_out += 1
            continue
        shown[severity] += 1
        title = f"{finding.rule_id} {finding.rule}" + (
            f" ({finding.tensor})" if finding.tensor else ""
        )
        where = f" [{finding.span}]" if finding.span else ""
        lines.append(
            f"::{COMMANDS[severity]} file={escape_property(_relative(trace.path))},line=1,"
            f"title={escape_property(title)}::{escape_data(finding.message + where)}"
        )
    if left_out:
        lines.append(
            f"::notice title=dbg::{left_out} more finding(s) not annotated (GitHub shows 10 per type); "
            "see the job summary or the full report"
        )
    counts = report.counts()
    lines.append(
        f"dbg: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info "
        f"in {len(report.traces)} trace(s); exit {report.exit_code()}"
    )
    return "\n".join(lines)


def escape_data(text: str) -> str:
    """Escape the message part of a workflow command."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a property value of a workflow command."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _relative(path: str) -> str:
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()
