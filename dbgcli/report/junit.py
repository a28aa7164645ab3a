"""JUnit XML: one test suite per trace, one test case per rule.

A rule whose findings reach the fail level, or that found the cause of a diagnosis that does,
is a ``<failure>`` (listing its findings); one whose findings are all below it passes and lists
them in ``<system-out>``; a skipped rule is ``<skipped>``; a crashed rule or an unreadable
trace is an ``<error>``. Jenkins, GitLab and Azure DevOps render this in their test tabs.

Test cases lead with the causes: the rules that found a cause come first, in the rank of their
best diagnosis, and their failure message starts with that diagnosis (its title, where, how
many findings it explains). A symptom rule's failure message says which cause explains it. In
the listing every finding names its cause, and a cause carries its evidence and fix.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from dbgcli.diagnosis import Diagnosis, causes_first
from dbgcli.findings import Finding, Severity
from dbgcli.report.model import Report, RuleResult, RuleStatus, TraceReport


def render(report: Report) -> str:
    """The XML document as text."""
    suites = ET.Element("testsuites", name="dbg")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for trace in report.traces:
        suite = ET.SubElement(suites, "testsuite", name=trace.path)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if trace.error:
            case = ET.SubElement(suite, "testcase", classname=trace.path, name="read trace")
            ET.SubElement(case, "error", message=trace.error, type="TraceError").text = trace.error
            counts["tests"] += 1
            counts["errors"] += 1
        _Rules(trace, report.fail_on).add_cases(suite, counts)
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{trace.seconds:.6f}")
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")


class _Rules:
    """The rules of one trace as test cases, with the diagnoses their findings belong to."""

    def __init__(self, trace: TraceReport, fail_on: Severity) -> None:
        self.path = trace.path
        self.results = trace.results
        self.fail_on = fail_on
        self.findings = trace.findings
        self.diagnosis_of = causes_first(trace.diagnoses, len(self.findings))
        self.rank_of = {d.cause: rank for rank, d in enumerate(trace.diagnoses)}
        # Findings by rule, in the order the report leads with (causes first).
        self.indices: dict[str, list[int]] = {}
        for index in self.diagnosis_of:
            self.indices.setdefault(self.findings[index].rule_id, []).append(index)

    def add_cases(self, suite: ET.Element, counts: dict[str, int]) -> None:
        """One test case per rule, the rules that found a cause first."""
        for result in sorted(self.results, key=self._lead_rank):
            counts["tests"] += 1
            case = ET.SubElement(
                suite,
                "testcase",
                classname=self.path,
                name=f"{result.id} {result.name}",
                time=f"{result.seconds:.6f}",
            )
            indices = self.indices.get(result.id, [])
            if result.status is RuleStatus.skipped:
                ET.SubElement(case, "skipped", message=result.reason)
                counts["skipped"] += 1
            elif result.status is RuleStatus.error:
                ET.SubElement(
                    case, "error", message=result.reason, type="RuleCrashed"
                ).text = result.reason
                counts["errors"] += 1
            elif self._fails(indices):
                failure = ET.SubElement(
                    case, "failure", message=self._message(indices), type=self._worst(indices)
                )
                failure.text = self._listing(indices)
                counts["failures"] += 1
            elif indices:
                ET.SubElement(case, "system-out").text = self._listing(indices)

    def _lead_rank(self, result: RuleResult) -> int:
        """The rank of the best diagnosis whose cause the rule found (after all ranks if
        none); sorting is stable, so the other rules keep their order."""
        ranks = [self.rank_of[i] for i in self.indices.get(result.id, []) if i in self.rank_of]
        return min(ranks, default=len(self.rank_of))

    def _lead(self, indices: list[int]) -> Diagnosis | None:
        """The best diagnosis whose cause is among ``indices`` (they are causes first)."""
        if indices and indices[0] in self.rank_of:
            return self.diagnosis_of[indices[0]]
        return None

    def _failing(self, indices: list[int]) -> list[int]:
        return [i for i in indices if _severity(self.findings[i]).rank >= self.fail_on.rank]

    def _fails(self, indices: list[int]) -> bool:
        lead = self._lead(indices)
        return bool(self._failing(indices)) or (
            lead is not None and lead.severity.rank >= self.fail_on.rank
        )

    def _worst(self, indices: list[int]) -> str:
        lead = self._lead(indices)
        severities = [_severity(self.findings[i]) for i in self._failing(indices)]
        if lead is not None:
            severities.append(lead.severity)
        return max(severities, key=lambda s: s.rank).value

    def _message(self, indices: list[int]) -> str:
        """A cause rule's diagnosis, or which cause explains a symptom rule's findings."""
        failing = self._failing(indices)
        count = f"{len(failing)} finding(s) at or above {self.fail_on.value}"
        lead = self._lead(indices)
        if lead is not None:
            cause = self.findings[lead.cause]
            where = ", ".join(part for part in (cause.tensor, cause.span) if part)
            text = f"{lead.title}" + (f" ({where})" if where else "") + f": {cause.message}"
            if lead.symptoms:
                text += f"; explains {len(lead.symptoms)} other finding(s)"
            return text + (f"; {count}" if failing else "")
        first = self.findings[failing[0]]
        diagnosis = self.diagnosis_of[failing[0]]
        if diagnosis is None:
            return f"{count}: {first.message}"
        causes = {d.cause for i in failing if (d := self.diagnosis_of[i]) is not None}
        others = f" and {len(causes) - 1} other cause(s)" if len(causes) > 1 else ""
        return f"{count}, explained by {_name(diagnosis, self.findings)}{others}: {first.message}"

    def _listing(self, indices: list[int]) -> str:
        """One line per finding, causes first, each saying what it explains or what explains
        it; a cause's evidence and fix indented under it."""
        lines = []
        for index in indices:
            finding, diagnosis = self.findings[index], self.diagnosis_of[index]
            line = _line(finding)
            if diagnosis is not None and diagnosis.cause == index:
                lines.append(f"{line} -- cause: {diagnosis.title}")
                if diagnosis.symptoms:
                    lines.append(
                        f"    explains {len(diagnosis.symptoms)} other finding(s); evidence: "
                        + "; ".join(diagnosis.evidence)
                    )
                if diagnosis.fix:
                    lines.append(f"    fix: {diagnosis.fix}")
            elif diagnosis is not None:
                lines.append(f"{line} -- explained by {_name(diagnosis, self.findings)}")
            else:
                lines.append(line)
        return "\n".join(lines)


def _name(diagnosis: Diagnosis, findings: list[Finding]) -> str:
    """``dying ReLU (DBG201 in act/act1)``: a diagnosis by its title and cause."""
    cause = findings[diagnosis.cause]
    return f"{diagnosis.title} ({cause.rule_id}" + (f" in {cause.tensor})" if cause.tensor else ")")


def _severity(finding: Finding) -> Severity:
    return finding.severity or Severity.info


def _line(finding: Finding) -> str:
    where = ", ".join(part for part in (finding.tensor, finding.span) if part)
    severity = _severity(finding).value
    return (
        f"[{severity}] {where}: {finding.message}" if where else f"[{severity}] {finding.message}"
    )
