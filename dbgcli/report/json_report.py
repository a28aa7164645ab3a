"""The JSON report: a versioned document (fields are only ever added)."""

from __future__ import annotations

import json
from typing import Any

from dbgcli.report.model import Report


def to_document(report: Report) -> dict[str, Any]:
    """The report as plain data."""
    return {
        "version": report.version,
        "fail_on": report.fail_on.value,
        "exit_code": report.exit_code(),
        "counts": report.counts(),
        "baselined": report.suppressed,
        "stale_baseline": list(report.stale_baseline),
        "traces": [
            {
                "path": trace.path,
                "complete": trace.complete,
                "incomplete_reasons": list(trace.incomplete_reasons),
                "error": trace.error,
                "summary": trace.summary,
                "rules": [
                    {
                        "id": result.id,
                        "name": result.name,
                        "category": result.category,
                        "severity": result.severity.value,
                        "status": result.status.value,
                        "reason": result.reason,
                        "findings": len(result.findings),
                        "seconds": round(result.seconds, 6),
                    }
                    for result in trace.results
                ],
                "findings": [finding.to_dict() for finding in trace.findings],
            }
            for trace in report.traces
        ],
    }


def render(report: Report) -> str:
    """The JSON text (strict JSON: NaN and infinities are written as strings)."""
    return json.dumps(to_document(report), indent=2, allow_nan=False)
