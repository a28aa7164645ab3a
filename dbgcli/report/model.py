"""The report model: what one analysis found, fed to every output format.

Turning findings into an exit code happens here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dbgcli.findings import Finding, Severity

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

REPORT_VERSION = 1


class RuleStatus(str, Enum):
    """Outcome of one rule on one trace."""

    passed = "passed"
    violated = "violated"
    skipped = "skipped"
    error = "error"


@dataclass(frozen=True)
class RuleResult:
    """One rule run on one trace."""

    id: str
    name: str
    category: str
    severity: Severity
    summary: str
    status: RuleStatus
    reason: str = ""
    findings: tuple[Finding, ...] = ()
    seconds: float = 0.0


@dataclass(frozen=True)
class Curve:
    """A series to draw: the loss the rules saw, or a simulated learning rate.

    ``note`` says how a simulated curve was made (which series, from which rate, and whether
    the series is long enough to move the scheduler); recorded series have none.
    """

    name: str
    steps: tuple[int, ...]
    values: tuple[float, ...]
    note: str = ""


@dataclass(frozen=True)
class TraceReport:
    """Everything one analysis learned about one trace."""

    path: str
    complete: bool = True
    incomplete_reasons: tuple[str, ...] = ()
    error: str | None = None
    results: tuple[RuleResult, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    curves: tuple[Curve, ...] = ()
    seconds: float = 0.0

    @property
    def findings(self) -> list[Finding]:
        """Every finding, most severe first."""
        found = [f for result in self.results for f in result.findings]
        return sorted(
            found, key=lambda f: (-(f.severity or Severity.info).rank, f.rule_id, f.first_step or 0)
        )


@dataclass(frozen=True)
class Report:
    """One run of ``dbg analyze`` over one or more traces."""

    traces: tuple[TraceReport, ...]
    fail_on: Severity = Severity.error
    version: int = REPORT_VERSION
    suppressed: int = 0
    stale_baseline: tuple[dict[str, Any], ...] = ()

    @property
    def findings(self) -> Iterator[tuple[TraceReport, Finding]]:
        """(trace, finding) pairs over all traces."""
        for trace in self.traces:
            for finding in trace.findings:
                yield trace, finding

    @property
    def errors(self) -> list[str]:
        """Unreadable traces and crashed rules, one line each."""
        lines = []
        for trace in self.traces:
            if trace.error:
                lines.append(f"{trace.path}: {trace.error}")
            for result in trace.results:
                if result.status is RuleStatus.error:
                    lines.append(
                        f"{trace.path}: rule {result.id} ({result.name}) crashed: {result.reason}"
                    )
        return lines

    def counts(self) -> dict[str, int]:
        """Findings per severity."""
        counts = {severity.value: 0 for severity in Severity}
        for _, finding in self.findings:
            counts[(finding.severity or Severity.info).value] += 1
        return counts

    def exit_code(self, fail_on: Severity | None = None, exit_zero: bool = False) -> int:
        """2 on any error, else 1 if a finding reaches ``fail_on`` (unless ``exit_zero``), else 0."""
        if self.errors:
            return EXIT_ERROR
        if exit_zero:
            return EXIT_OK
        level = fail_on or self.fail_on
        if any((f.severity or Severity.info).rank >= level.rank for _, f in self.findings):
            return EXIT_FINDINGS
        return EXIT_OK
