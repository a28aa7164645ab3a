"""The JSON report: a versioned document (fields are only ever added).

Each trace carries its one-line ``verdict``, whether it is ``healthy`` and its ranked
``diagnoses``. A diagnosis names its cause (``rule``, ``rule_id``, ``severity``, the steps, the
``tensors`` of its kind and ``finding``, the cause's index into the trace's ``findings``), the
findings it ``explains`` (indices into ``findings`` as well), the ``evidence`` timeline and the
``fix``. ``tests/data/report-schema.json`` is the JSON Schema of the whole document.
"""

from __future__ import annotations

import json
from typing import Any

from dbgcli.diagnosis import Diagnosis
from dbgcli.findings import Finding, Severity
from dbgcli.report.model import Report, TraceReport


def to_document(report: Report) -> dict[str, Any]:
    """The report as plain data."""
    return {
        "version": report.version,
        "fail_on": report.fail_on.value,
        "exit_code": report.exit_code(),
        "counts": report.counts(),
        "baselined": report.suppressed,
        "stale_baseline": list(report.stale_baseline),
        "traces": [_trace(trace) for trace in report.traces],
    }


def render(report: Report) -> str:
    """The JSON text (strict JSON: NaN and infinities are written as strings)."""
    return json.dumps(to_document(report), indent=2, allow_nan=False)


def _trace(trace: TraceReport) -> dict[str, Any]:
    findings = trace.findings
    return {
        "path": trace.path,
        "complete": trace.complete,
        "incomplete_reasons": list(trace.incomplete_reasons),
        "error": trace.error,
        "verdict": trace.verdict,
        "healthy": trace.healthy,
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
        "diagnoses": [_diagnosis(diagnosis, findings) for diagnosis in trace.diagnoses],
        "findings": [finding.to_dict() for finding in findings],
    }


def _diagnosis(diagnosis: Diagnosis, findings: list[Finding]) -> dict[str, Any]:
    cause = findings[diagnosis.cause]
    # The cause's kind of finding in further tensors (dead units in three layers) is one
    # problem: the cause names every tensor it shows in.
    tensors = [cause.tensor] if cause.tensor else []
    for index in diagnosis.symptoms:
        symptom = findings[index]
        same_kind = (symptom.rule_id, symptom.key) == (cause.rule_id, cause.key)
        if same_kind and symptom.tensor and symptom.tensor not in tensors:
            tensors.append(symptom.tensor)
    return {
        "title": diagnosis.title,
        "severity": diagnosis.severity.value,
        "cause": {
            "rule": cause.rule,
            "rule_id": cause.rule_id,
            "severity": (cause.severity or Severity.info).value,
            "first_step": cause.first_step,
            "last_step": cause.last_step,
            "tensors": tensors,
            "finding": diagnosis.cause,
        },
        "explains": list(diagnosis.symptoms),
        "evidence": list(diagnosis.evidence),
        "fix": diagnosis.fix,
    }
