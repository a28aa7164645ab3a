"""The report model: what one analysis found, fed to every output format.

Turning findings into an exit code happens here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dbgcli.diagnosis import Diagnosis, Place
from dbgcli.findings import Finding, Severity
from dbgcli.report.text import counted

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
    #: Whether the rule judges the training loss (passed: training worked, as far as it shows).
    judges_training: bool = False


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
    diagnoses: tuple[Diagnosis, ...] = ()
    places: Mapping[str, Place] = field(default_factory=dict)
    slack: int = 1

    @property
    def findings(self) -> list[Finding]:
        """Every finding, most severe first (diagnoses refer to findings by their index here)."""
        return sorted_findings(self.results)

    @property
    def problems(self) -> list[Diagnosis]:
        """Diagnoses of warning or error severity (the rest are notes)."""
        return [d for d in self.diagnoses if d.severity.rank >= Severity.warning.rank]

    @property
    def healthy(self) -> bool:
        """Readable, and no finding of warning or error severity."""
        return self.error is None and not self.problems

    @property
    def verdict(self) -> str:
        """The trace in one line: ``unhealthy: learning rate too high (4 symptoms)``,
        ``healthy: 22 rules passed, 2 skipped (no eval loss series)``, ``no problems found:
        5 rules passed, 32 skipped (no train loss series...)`` when no loss rule could judge
        the run, or ``unreadable: ...``."""
        if self.error is not None:
            # The error names the file for stderr; beside the trace's path it need not.
            return f"unreadable: {self.error.removeprefix(f'{self.path}: ')}"
        crashed = [r for r in self.results if r.status is RuleStatus.error]
        problems = self.problems
        if problems:
            top = problems[0]
            symptoms = len(top.symptoms)
            text = f"unhealthy: {top.title}"
            if symptoms:
                text += f" ({counted(symptoms, 'symptom')})"
            if len(problems) > 1:
                more = len(problems) - 1
                text += f", and {counted(more, 'other problem')}"
            return text
        passed = sum(1 for r in self.results if r.status is RuleStatus.passed)
        skipped = [r for r in self.results if r.status is RuleStatus.skipped]
        notes = len(self.diagnoses)
        # Without a rule that could judge the training loss (no loss, or a metric none reads,
        # such as a ranker's NDCG; an evaluation loss alone), nothing says training worked: no
        # problem found is all there is.
        judged = any(r.judges_training and r.status is RuleStatus.passed for r in self.results)
        text = f"{'healthy' if judged else 'no problems found'}: {counted(passed, 'rule')} passed"
        if notes:
            text += f", {counted(notes, 'note')}"
        if skipped:
            text += f", {len(skipped)} skipped ({_common_reason(skipped)})"
        if crashed:
            text += f", {len(crashed)} crashed"
        return text


def sorted_findings(results: tuple[RuleResult, ...]) -> list[Finding]:
    """The findings of rule results, most severe first, then by rule, step and tensor."""
    found = [f for result in results for f in result.findings]
    return sorted(
        found,
        key=lambda f: (
            -(f.severity or Severity.info).rank,
            f.rule_id,
            f.first_step or 0,
            f.tensor or "",
        ),
    )


# A skip reason given per stream (the data rules): ``labels (train): only 384 labels ...``.
_STREAM_PREFIX = re.compile(r"^\S+ \((?:train|eval|predict)\): ")


def _common_reason(skipped: list[RuleResult]) -> str:
    """The most frequent skip reason, or the one reason; shortened to its first clause
    (without the tag and mode a data rule names its stream by)."""
    reasons: dict[str, int] = {}
    for result in skipped:
        reason = _STREAM_PREFIX.sub("", result.reason)
        first = reason.split(";")[0].split(" (")[0].strip()
        reasons[first] = reasons.get(first, 0) + 1
    reason, count = max(reasons.items(), key=lambda item: item[1])
    if len(reasons) == 1:
        return reason
    return f"{reason}, and {counted(len(reasons) - 1, 'other reason')}"


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
                # Reader errors already name the file.
                prefix = "" if trace.error.startswith(trace.path) else f"{trace.path}: "
                lines.append(f"{prefix}{trace.error}")
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
