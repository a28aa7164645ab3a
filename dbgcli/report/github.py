"""GitHub Actions workflow commands: ``::error``/``::warning``/``::notice`` annotation lines.

GitHub shows at most 10 annotations of each type per step (and 50 per job), so they are spent
on causes first: one annotation per diagnosis, at the diagnosis's severity (the worst of what
it explains), carrying its cause, how many findings it explains, its evidence and its fix.
The slots left go to the other findings, most severe first, each symptom saying what caused
it; then one notice counts what was left out (notices keep a slot for it), and the closing
line sums up the causes and their symptoms. Data and property values are escaped as the
runner expects (``%``, CR and LF everywhere; ``:`` and ``,`` in properties too).
"""

from __future__ import annotations

from pathlib import Path

from dbgcli.diagnosis import Diagnosis, causes_first
from dbgcli.findings import Finding, Severity
from dbgcli.report.model import Report
from dbgcli.report.text import counted

COMMANDS = {Severity.error: "error", Severity.warning: "warning", Severity.info: "notice"}
PER_LEVEL = 10
# Causes named in the closing line; the rest are counted.
_NAMED = 3


def render(report: Report, per_level: int = PER_LEVEL) -> str:
    """Annotation lines, causes first, capped per level, then a count of the rest and a
    closing summary."""
    lines = [f"::error title=dbg error::{escape_data(line)}" for line in report.errors]
    room = dict.fromkeys(Severity, per_level)
    room[Severity.error] -= len(lines)
    room[Severity.info] -= 1  # for the notice counting what was left out
    causes: list[tuple[str, Diagnosis, Finding]] = []
    others: list[tuple[str, Finding, Diagnosis | None, Finding | None]] = []
    for trace in report.traces:
        findings = trace.findings
        for index, diagnosis in causes_first(trace.diagnoses, len(findings)).items():
            if diagnosis is None:
                others.append((trace.path, findings[index], None, None))
            elif diagnosis.cause == index:
                causes.append((trace.path, diagnosis, findings[index]))
            else:
                others.append((trace.path, findings[index], diagnosis, findings[diagnosis.cause]))
    # Sorting is stable: within a severity, traces and diagnoses keep their order.
    causes.sort(key=lambda item: -item[1].severity.rank)
    others.sort(key=lambda item: -_severity(item[1]).rank)
    left_out = 0
    for path, diagnosis, cause in causes:
        if room[diagnosis.severity] <= 0:
            left_out += 1
            continue
        room[diagnosis.severity] -= 1
        lines.append(_cause(path, diagnosis, cause))
    for path, finding, explained_by, its_cause in others:
        if room[_severity(finding)] <= 0:
            left_out += 1
            continue
        room[_severity(finding)] -= 1
        lines.append(_finding(path, finding, explained_by, its_cause))
    if left_out:
        lines.append(
            f"::notice title=dbg::{left_out} more finding(s) not annotated (GitHub shows 10 per "
            "type; causes were annotated first); see the job summary or the full report"
        )
    counts = report.counts()
    lines.append(
        f"dbg: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info "
        f"in {len(report.traces)} trace(s)"
        + _causes_summary([diagnosis for _, diagnosis, _ in causes])
        + f"; exit {report.exit_code()}"
    )
    return "\n".join(lines)


def _cause(path: str, diagnosis: Diagnosis, cause: Finding) -> str:
    """The annotation of a diagnosis: its cause, what it explains, evidence and fix."""
    title = f"{diagnosis.title}: {cause.rule_id} {cause.rule}" + (
        f" ({cause.tensor})" if cause.tensor else ""
    )
    text = [cause.message + (f" [{cause.span}]" if cause.span else "")]
    if diagnosis.symptoms:
        count = len(diagnosis.symptoms)
        text.append(
            f"Explains {counted(count, 'other finding')}; evidence: "
            + "; ".join(diagnosis.evidence)
        )
    if diagnosis.fix:
        text.append(f"Fix: {diagnosis.fix}")
    return _annotation(diagnosis.severity, path, title, "\n".join(text))


def _finding(
    path: str, finding: Finding, diagnosis: Diagnosis | None, cause: Finding | None
) -> str:
    """The annotation of a finding that is no cause, naming the cause that explains it."""
    title = f"{finding.rule_id} {finding.rule}" + (f" ({finding.tensor})" if finding.tensor else "")
    text = finding.message + (f" [{finding.span}]" if finding.span else "")
    if diagnosis is not None and cause is not None:
        where = f" in {cause.tensor}" if cause.tensor else ""
        text += f" (caused by {diagnosis.title}: {cause.rule_id}{where})"
    return _annotation(_severity(finding), path, title, text)


def _annotation(level: Severity, path: str, title: str, text: str) -> str:
    return (
        f"::{COMMANDS[level]} file={escape_property(_relative(path))},line=1,"
        f"title={escape_property(title)}::{escape_data(text)}"
    )


def _causes_summary(causes: list[Diagnosis]) -> str:
    """``; 2 causes explaining 10 other findings: dying ReLU (+9 symptoms), overfitting (+1
    symptom)``, the first few named, most severe first."""
    if not causes:
        return ""
    named = []
    for diagnosis in causes[:_NAMED]:
        count = len(diagnosis.symptoms)
        named.append(diagnosis.title + (f" (+{counted(count, 'symptom')})" if count else ""))
    if len(causes) > _NAMED:
        named.append(f"{len(causes) - _NAMED} more")
    symptoms = sum(len(d.symptoms) for d in causes)
    text = f"; {counted(len(causes), 'cause')}"
    if symptoms:
        text += f" explaining {counted(symptoms, 'other finding')}"
    return f"{text}: {', '.join(named)}"


def _severity(finding: Finding) -> Severity:
    return finding.severity or Severity.info


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
