"""A Markdown summary for ``$GITHUB_STEP_SUMMARY`` (or any Markdown viewer).

Per trace: its verdict, a table of its diagnoses (the cause, where, severity, how many findings
it explains, evidence, fix), then every finding in a collapsed ``<details>`` block, causes
first, each symptom naming its cause.

GitHub caps a step summary at 1 MiB, so the parts are added by priority while they fit in
``max_bytes``: every trace's verdict first, then the diagnoses, then the findings. A cut loses
details, never a verdict before a finding; what was left out is counted where it was cut and
in a closing line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dbgcli.diagnosis import Diagnosis, causes_first
from dbgcli.findings import Finding, Severity
from dbgcli.report.model import Report, TraceReport
from dbgcli.report.text import counted

MAX_BYTES = 1_000_000
_ICONS = {Severity.error: "🔴", Severity.warning: "🟡", Severity.info: "🔵"}
_CLOSING = 300  # room for the closing lines
_NOTES = 200  # room, per trace, for saying what of it was left out
_DIAGNOSES_HEAD = (
    "| | cause | where | severity | symptoms | evidence | fix |\n"
    "| --- | --- | --- | --- | --- | --- | --- |\n"
)
_FINDINGS_HEAD = (
    "| | rule | tensor | steps | message | explained by |\n| --- | --- | --- | --- | --- | --- |\n"
)
_DETAILS_END = "\n</details>\n"
# The longest ``<details><summary>`` line ("123456 findings, 123456 shown") and blank lines.
_DETAILS_START = 80
# Bytes each tier (verdict, diagnoses, findings) adds to a trace before its first row: the
# room for notes of what was cut, the table heads (ASCII, so characters are bytes).
_OPENING = (_NOTES, len(_DIAGNOSES_HEAD), _DETAILS_START + len(_FINDINGS_HEAD + _DETAILS_END))


@dataclass
class _Section:
    """One trace's part of the summary: its verdict, diagnoses and findings as rows, with how
    many of each tier fit."""

    head: str
    diagnoses: list[str]
    findings: list[str]
    shown: list[int] = field(default_factory=lambda: [0, 0, 0])

    def tiers(self) -> tuple[list[str], list[str], list[str]]:
        return [self.head], self.diagnoses, self.findings


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
    text = "\n".join(head) + "\n"
    sections = [_section(trace) for trace in report.traces]
    _fill(sections, max_bytes - _size(text) - _CLOSING)
    text += "".join(_render(section, max_bytes) for section in sections)
    omitted = {
        "trace(s)": sum(1 for section in sections if not section.shown[0]),
        "diagnosis(es)": sum(len(section.diagnoses) - section.shown[1] for section in sections),
        "finding(s)": sum(len(section.findings) - section.shown[2] for section in sections),
    }
    if any(omitted.values()):
        parts = ", ".join(f"{count} {name}" for name, count in omitted.items() if count)
        text += f"_Left out to stay under {max_bytes} bytes: {parts}; see the full report._\n"
    if report.stale_baseline:
        stale = len(report.stale_baseline)
        text += (
            f"\n{stale} baseline entr{'y' if stale == 1 else 'ies'} no longer occur and can be "
            "removed.\n"
        )
    return text


def _fill(sections: list[_Section], room: int) -> None:
    """Mark the rows that fit in ``room`` bytes: every verdict, then every trace's diagnoses,
    then every trace's findings, stopping at the first that does not fit."""
    for tier in range(3):
        for section in sections:
            for row in section.tiers()[tier]:
                cost = _size(row) + (_OPENING[tier] if not section.shown[tier] else 0)
                if cost > room:
                    return
                room -= cost
                section.shown[tier] += 1


def _section(trace: TraceReport) -> _Section:
    findings = trace.findings
    icon = "❗" if trace.error else ("✅" if trace.healthy else _ICONS[trace.problems[0].severity])
    head = f"### {icon} `{_cell(trace.path)}`\n\n**{_cell(trace.verdict)}**"
    if not trace.complete and not trace.error:
        head += f" (incomplete: {_cell('; '.join(trace.incomplete_reasons))})"
    diagnosis_of = causes_first(trace.diagnoses, len(findings))
    return _Section(
        head=head + "\n\n",
        diagnoses=[_diagnosis_row(d, findings) for d in trace.diagnoses],
        findings=[_finding_row(findings, i, d) for i, d in diagnosis_of.items()],
    )


def _render(section: _Section, max_bytes: int) -> str:
    if not section.shown[0]:
        return ""
    text = section.head
    cut = f"omitted to stay under {max_bytes} bytes; see the full report._\n\n"
    shown, total = section.shown[1], len(section.diagnoses)
    if shown:
        text += _DIAGNOSES_HEAD + "".join(section.diagnoses[:shown]) + "\n"
    if shown < total:
        text += f"_{total - shown} more diagnos{'is' if total - shown == 1 else 'es'} {cut}"
    shown, total = section.shown[2], len(section.findings)
    if shown:
        summary = counted(total, "finding")
        if shown < total:
            summary += f", {shown} shown"
        text += f"<details><summary>{summary}</summary>\n\n{_FINDINGS_HEAD}"
        text += "".join(section.findings[:shown]) + _DETAILS_END + "\n"
    if shown < total:
        text += f"_{counted(total - shown, 'more finding')} {cut}"
    return text


def _diagnosis_row(diagnosis: Diagnosis, findings: list[Finding]) -> str:
    cause = findings[diagnosis.cause]
    where = " · ".join(
        part for part in (f"`{_cell(cause.tensor)}`" if cause.tensor else "", cause.span) if part
    )
    count = len(diagnosis.symptoms)
    evidence = "; ".join(diagnosis.evidence) if count else ""
    return (
        f"| {_ICONS[diagnosis.severity]} | **{_cell(diagnosis.title)}** ({cause.rule_id} "
        f"{cause.rule}) | {where or '-'} | {diagnosis.severity.value} | "
        f"{count} | {_cell(evidence) or '-'} | "
        f"{_cell(diagnosis.fix) or '-'} |\n"
    )


def _finding_row(findings: list[Finding], index: int, diagnosis: Diagnosis | None) -> str:
    finding = findings[index]
    if diagnosis is None:
        role = "-"
    elif diagnosis.cause == index:
        role = f"**cause**: {_cell(diagnosis.title)}"
    else:
        cause = findings[diagnosis.cause]
        where = f" `{_cell(cause.tensor)}`" if cause.tensor else ""
        role = f"{_cell(diagnosis.title)} ({cause.rule_id}{where})"
    return (
        f"| {_ICONS[finding.severity or Severity.info]} | {finding.rule_id} {finding.rule} | "
        f"`{_cell(finding.tensor or '-')}` | {finding.span or '-'} | {_cell(finding.message)} | "
        f"{role} |\n"
    )


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
