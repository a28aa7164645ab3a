"""JUnit XML: one test suite per trace, one test case per rule.

A rule whose findings reach the fail level is a ``<failure>`` (listing its findings); one whose
findings are all below it passes and lists them in ``<system-out>``; a skipped rule is
``<skipped>``; a crashed rule or an unreadable trace is an ``<error>``. Jenkins, GitLab and
Azure DevOps render this in their test tabs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from dbgcli.findings import Finding, Severity
from dbgcli.report.model import Report, RuleStatus


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
        for result in trace.results:
            counts["tests"] += 1
            case = ET.SubElement(
                suite,
                "testcase",
                classname=trace.path,
                name=f"{result.id} {result.name}",
                time=f"{result.seconds:.6f}",
            )
            if result.status is RuleStatus.skipped:
                ET.SubElement(case, "skipped", message=result.reason)
                counts["skipped"] += 1
            elif result.status is RuleStatus.error:
                ET.SubElement(
                    case, "error", message=result.reason, type="RuleCrashed"
                ).text = result.reason
                counts["errors"] += 1
            elif result.findings:
                failing = [
                    f
                    for f in result.findings
                    if (f.severity or Severity.info).rank >= report.fail_on.rank
                ]
                if failing:
                    worst = max(
                        (f.severity or Severity.info for f in failing), key=lambda s: s.rank
                    )
                    message = f"{len(failing)} finding(s) at or above {report.fail_on.value}: {failing[0].message}"
                    failure = ET.SubElement(case, "failure", message=message, type=worst.value)
                    failure.text = "\n".join(_line(f) for f in result.findings)
                    counts["failures"] += 1
                else:
                    ET.SubElement(case, "system-out").text = "\n".join(
                        _line(f) for f in result.findings
                    )
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{trace.seconds:.6f}")
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")


def _line(finding: Finding) -> str:
    where = ", ".join(part for part in (finding.tensor, finding.span) if part)
    severity = (finding.severity or Severity.info).value
    return (
        f"[{severity}] {where}: {finding.message}" if where else f"[{severity}] {finding.message}"
    )
