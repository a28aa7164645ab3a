"""SARIF 2.1.0 for GitHub code scanning and other SARIF consumers.

One ``tool.driver.rules`` entry per rule that ran, one result per finding. Results point at the
trace file (``artifactLocation.uri``, relative to the working directory when possible, line 1
because code scanning needs a line to attach an alert to) and name the tensor as a logical
location. ``partialFingerprints`` carries the finding's fingerprint (rule, tensor, kind), so
reruns update alerts instead of duplicating them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dbgcli._version import __version__
from dbgcli.findings import Severity, json_number
from dbgcli.report.model import Report, RuleResult, RuleStatus

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
        for finding in trace.findings:
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
            text = finding.message + (
                f" ({finding.tensor}, {finding.span})" if finding.tensor and finding.span else ""
            )
            results.append(
                {
                    "ruleId": finding.rule_id,
                    "ruleIndex": rule_index[finding.rule_id],
                    "level": LEVELS[finding.severity or Severity.info],
                    "message": {"text": text},
                    "locations": [location],
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
            )
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


def _uri(path: str) -> str:
    """A relative, forward-slash URI when the trace lies under the working directory."""
    absolute = Path(path).resolve()
    try:
        relative = absolute.relative_to(Path.cwd().resolve())
    except ValueError:
        return absolute.as_uri()
    return relative.as_posix() if os.sep == "/" else str(relative).replace(os.sep, "/")
