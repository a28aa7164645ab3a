"""Baselines: accept today's findings, fail only on new ones.

A baseline file lists findings by fingerprint (rule, tensor, kind of finding; never step
numbers, so a rerun of the same pathology matches). ``--write-baseline`` records the current
findings; ``--baseline`` drops findings already listed and reports listed entries that no
longer occur as *stale*, so the file can be pruned.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from dbgcli.diagnosis import diagnose
from dbgcli.errors import ConfigError
from dbgcli.report.model import Report, RuleResult, RuleStatus, sorted_findings
from dbgcli.rules import REGISTRY

BASELINE_VERSION = 1


def write_baseline(report: Report, path: Path) -> int:
    """Record every finding of ``report`` in ``path``; returns how many entries were written."""
    entries: dict[str, dict[str, Any]] = {}
    for trace, finding in report.findings:
        entries.setdefault(
            finding.fingerprint,
            {
                "fingerprint": finding.fingerprint,
                "rule_id": finding.rule_id,
                "rule": finding.rule,
                "tensor": finding.tensor,
                "key": finding.key,
                "trace": Path(trace.path).name,
                "message": finding.message,
            },
        )
    document = {
        "version": BASELINE_VERSION,
        "tool": "dbg",
        "findings": sorted(
            entries.values(), key=lambda e: (e["rule_id"], e["tensor"] or "", e["key"])
        ),
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return len(entries)


def read_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """Entries of a baseline file by fingerprint; raises ConfigError on a bad file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"baseline {path} does not exist (create it with --write-baseline)"
        ) from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"baseline {path} is not readable JSON: {error}") from None
    findings = document.get("findings") if isinstance(document, dict) else None
    if document.get("version") != BASELINE_VERSION or not isinstance(findings, list):
        raise ConfigError(f"baseline {path} is not a dbg baseline (version {BASELINE_VERSION})")
    try:
        return {str(entry["fingerprint"]): entry for entry in findings}
    except (KeyError, TypeError):
        raise ConfigError(f"baseline {path}: every entry needs a fingerprint") from None


def apply_baseline(report: Report, baseline: dict[str, dict[str, Any]]) -> Report:
    """The report without baselined findings, with the count dropped and the stale entries."""
    seen: set[str] = set()
    suppressed = 0
    traces = []
    for trace in report.traces:
        results = []
        for result in trace.results:
            kept = []
            for finding in result.findings:
                if finding.fingerprint in baseline:
                    seen.add(finding.fingerprint)
                    suppressed += 1
                else:
                    kept.append(finding)
            results.append(_with_findings(result, tuple(kept)))
        kept_results = tuple(results)
        diagnoses = diagnose(
            sorted_findings(kept_results), REGISTRY.find, trace.places, slack=trace.slack
        )
        traces.append(replace(trace, results=kept_results, diagnoses=diagnoses))
    stale = tuple(entry for key, entry in baseline.items() if key not in seen)
    return replace(
        report,
        traces=tuple(traces),
        suppressed=report.suppressed + suppressed,
        stale_baseline=stale,
    )


def _with_findings(result: RuleResult, findings: tuple[Any, ...]) -> RuleResult:
    if result.status is not RuleStatus.violated or len(findings) == len(result.findings):
        return result
    status = RuleStatus.violated if findings else RuleStatus.passed
    reason = "" if findings else f"{len(result.findings)} finding(s) in the baseline"
    return replace(result, findings=findings, status=status, reason=reason)
