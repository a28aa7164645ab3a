"""SARIF 2.1.0 for GitHub code scanning and other SARIF consumers.

One ``tool.driver.rules`` entry per rule that ran, one result per finding. Results point at the
trace file (``artifactLocation.uri``, relative to the working directory when possible, line 1
because code scanning needs a line to attach an alert to) and name the tensor as a logical
location. ``partialFingerprints`` carries the finding's fingerprint (rule, tensor, kind), so
reruns update alerts instead of duplicating them.

Results lead with the causes: per trace, the cause of each diagnosis in rank order, then the
symptoms. A cause's message starts with its diagnosis (title, evidence, fix; also in
``properties.diagnosis``, with its ``rank``, 1 for the trace's first) and its symptoms are its
``relatedLocations``; a symptom's message ends with the cause that explains it, which is its
related location and ``properties.explainedBy``. A result's level is its finding's own
severity, whatever it explains, so an alert keeps its level when its symptoms come and go.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dbgcli._version import __version__
from dbgcli.diagnosis import Diagnosis, causes_first
from dbgcli.findings import Finding, Severity, json_number
from dbgcli.report.model import Report, RuleResult, RuleStatus
from dbgcli.report.text import counted

SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
INFORMATION_URI = "https://github.com/dbgcli/dbg"
LEVELS = {Severity.error: "error", Severity.warning: "warning", Severity.info: "note"}


def render(report: Report) -> str:
    """The SARIF log as JSON text."""
    return json.dumps(to_document(report), indent=2)


def to_document(report: Report) -> dict[str, Any]:
    """The SARIF log as plain data."""
    from dbgcli.rules import REGISTRY

    results_by_id: dict[str, RuleResult] = {}
    for trace in report.traces:
        for result in trace.results:
            results_by_id.setdefault(result.id, result)
    rule_index = {rule_id: position for position, rule_id in enumerate(results_by_id)}
    rules = []
    for rule_id, first in results_by_id.items():
        # Rules of the registry carry their documentation; others (dbg compare) their summary.
        registered = REGISTRY.find(rule_id)
        description = registered.description if registered else ""
        rules.append(
            {
                "id": rule_id,
                "name": first.name,
                "shortDescription": {"text": first.summary},
                "fullDescription": {"text": description or first.summary},
                "defaultConfiguration": {
                    "level": LEVELS[registered.severity if registered else first.severity]
                },
                "help": {
                    "text": f"{first.summary}\n\n{description}\n\nRun 'dbg rules explain {rule_id}'."
                    if registered
                    else first.summary,
                    "markdown": f"**{first.summary}**\n\n{description}",
                },
                "properties": {"category": first.category, "tags": ["training", first.category]},
            }
        )
    artifacts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for trace in report.traces:
        uri = _uri(trace.path)
        artifacts.append({"location": {"uri": uri}})
        artifact = len(artifacts) - 1
        if trace.error:
            notifications.append(
                {"level": "error", "message": {"text": f"{trace.path}: {trace.error}"}}
            )
        for result in trace.results:
            if result.status is RuleStatus.error:
                notifications.append(
                    {
                        "level": "error",
                        "message": {
                            "text": f"{trace.path}: rule {result.id} crashed: {result.reason}"
                        },
                        "associatedRule": {"id": result.id, "index": rule_index[result.id]},
                    }
                )
        findings = trace.findings
        locations = [_location(finding, uri, artifact) for finding in findings]
        diagnosis_of = causes_first(trace.diagnoses, len(findings))
        rank_of = {diagnosis.cause: rank for rank, diagnosis in enumerate(trace.diagnoses, 1)}
        for index, diagnosis in diagnosis_of.items():
            finding = findings[index]
            text = finding.message + (
                f" ({finding.tensor}, {finding.span})" if finding.tensor and finding.span else ""
            )
            sarif_result: dict[str, Any] = {
                "ruleId": finding.rule_id,
                "ruleIndex": rule_index[finding.rule_id],
                "level": LEVELS[finding.severity or Severity.info],
                "message": {"text": text},
                "locations": [locations[index]],
                "partialFingerprints": {"dbgFinding/v1": finding.fingerprint},
                "properties": {
                    "tensor": finding.tensor,
                    "firstStep": finding.first_step,
                    "lastStep": finding.last_step,
                    "steps": finding.steps,
                    "value": json_number(finding.value),
                    "threshold": json_number(finding.threshold),
                    "mode": finding.mode,
                    "key": finding.key,
                },
            }
            if diagnosis is not None:
                rank = rank_of[diagnosis.cause]
                if diagnosis.cause == index:
                    _as_cause(sarif_result, diagnosis, rank, findings, locations)
                else:
                    _as_symptom(sarif_result, diagnosis, rank, findings, locations)
            results.append(sarif_result)
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "dbg",
                        "version": __version__,
                        "informationUri": INFORMATION_URI,
                        "rules": rules,
                    }
                },
                "artifacts": artifacts,
                "results": results,
                "invocations": [
                    {
                        "executionSuccessful": not report.errors,
                        "toolExecutionNotifications": notifications,
                    }
                ],
            }
        ],
    }


def _location(finding: Finding, uri: str, artifact: int) -> dict[str, Any]:
    """The trace file, line 1, and the finding's tensor as a logical location."""
    location: dict[str, Any] = {
        "physicalLocation": {
            "artifactLocation": {"uri": uri, "index": artifact},
            "region": {"startLine": 1},
        },
    }
    if finding.tensor:
        location["logicalLocations"] = [
            {
                "name": finding.tensor,
                "fullyQualifiedName": f"{uri}:{finding.tensor}",
                "kind": "variable",
            }
        ]
    return location


def _related(location: dict[str, Any], number: int, text: str) -> dict[str, Any]:
    """A related location: another finding's location, numbered, saying what it is."""
    return {"id": number, **location, "message": {"text": text}}


def _as_cause(
    result: dict[str, Any],
    diagnosis: Diagnosis,
    rank: int,
    findings: list[Finding],
    locations: list[dict[str, Any]],
) -> None:
    """Lead the cause's result with its diagnosis; its symptoms become related locations."""
    count = len(diagnosis.symptoms)
    text = f"{diagnosis.title}: {result['message']['text']}"
    if count:
        text += (
            f". Explains {counted(count, 'other finding')}; "
            f"evidence: {'; '.join(diagnosis.evidence)}"
        )
    text += "."
    if diagnosis.fix:
        text += f" Fix: {diagnosis.fix}"
    result["message"]["text"] = text
    if diagnosis.symptoms:
        result["relatedLocations"] = [
            _related(
                locations[index],
                number,
                f"symptom: {findings[index].rule_id} {findings[index].rule}: "
                f"{findings[index].message}",
            )
            for number, index in enumerate(diagnosis.symptoms, 1)
        ]
    result["properties"]["diagnosis"] = {
        "rank": rank,
        "title": diagnosis.title,
        "severity": diagnosis.severity.value,
        "evidence": list(diagnosis.evidence),
        "fix": diagnosis.fix,
        "explains": [findings[index].fingerprint for index in diagnosis.symptoms],
    }


def _as_symptom(
    result: dict[str, Any],
    diagnosis: Diagnosis,
    rank: int,
    findings: list[Finding],
    locations: list[dict[str, Any]],
) -> None:
    """Say which cause explains a symptom, and point at it."""
    cause = findings[diagnosis.cause]
    where = f" in {cause.tensor}" if cause.tensor else ""
    result["message"]["text"] += f". Explained by {diagnosis.title} ({cause.rule_id}{where})."
    result["relatedLocations"] = [
        _related(
            locations[diagnosis.cause],
            1,
            f"cause: {diagnosis.title} ({cause.rule_id} {cause.rule}): {cause.message}",
        )
    ]
    result["properties"]["explainedBy"] = {
        "rank": rank,
        "title": diagnosis.title,
        "ruleId": cause.rule_id,
        "fingerprint": cause.fingerprint,
    }


def _uri(path: str) -> str:
    """A relative, forward-slash URI when the trace lies under the working directory."""
    absolute = Path(path).resolve()
    try:
        relative = absolute.relative_to(Path.cwd().resolve())
    except ValueError:
        return absolute.as_uri()
    return relative.as_posix() if os.sep == "/" else str(relative).replace(os.sep, "/")
