"""The JSON report against its schema (tests/data/report-schema.json), on real reports.

The schema says what every field is; what it cannot say is checked here: the indices of a
diagnosis point into its trace's findings, every finding belongs to exactly one diagnosis, and
a diagnosis's cause agrees with the finding it points at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dbgcli.report.model import EXIT_ERROR, EXIT_FINDINGS

ROOT = Path(__file__).parent.parent
SAMPLES = ROOT / "sample_traces"
SCHEMA = json.loads((Path(__file__).parent / "data" / "report-schema.json").read_text())
RANK = {"info": 0, "warning": 1, "error": 2}


def validate(document: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(document)


def check_diagnoses(trace: dict[str, Any]) -> None:
    """What the schema cannot express about one trace's diagnoses."""
    findings, diagnoses = trace["findings"], trace["diagnoses"]
    owned: list[int] = []
    for diagnosis in diagnoses:
        cause = diagnosis["cause"]
        members = [cause["finding"], *diagnosis["explains"]]
        assert all(0 <= index < len(findings) for index in members), diagnosis
        owned += members
        found = findings[cause["finding"]]
        assert {
            k: cause[k] for k in ("rule", "rule_id", "severity", "first_step", "last_step")
        } == {k: found[k] for k in ("rule", "rule_id", "severity", "first_step", "last_step")}
        assert cause["tensors"][:1] == ([found["tensor"]] if found["tensor"] else [])
        same_kind = {
            findings[i]["tensor"]
            for i in diagnosis["explains"]
            if (findings[i]["rule_id"], findings[i]["key"]) == (found["rule_id"], found["key"])
        }
        assert set(cause["tensors"][1:]) == same_kind - {found["tensor"], None}
        worst = max(RANK[findings[i]["severity"]] for i in members)
        assert RANK[diagnosis["severity"]] == worst
    assert sorted(owned) == list(range(len(findings))), "each finding in exactly one diagnosis"
    ranks = [RANK[d["severity"]] for d in diagnoses]
    assert ranks == sorted(ranks, reverse=True), "most severe diagnosis first"
    problems = [d for d in diagnoses if RANK[d["severity"]] >= RANK["warning"]]
    assert trace["healthy"] is (trace["error"] is None and not problems)
    if problems:
        assert trace["verdict"].startswith(f"unhealthy: {problems[0]['title']}")
    elif trace["error"] is None:
        assert trace["verdict"].startswith("healthy: ")


def test_the_schema_is_a_valid_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_reports_of_the_sample_traces_follow_the_schema(cli, tmp_path: Path) -> None:
    unreadable = tmp_path / "unreadable.h5"
    unreadable.write_bytes(b"not hdf5" * 100)
    result = cli("analyze", SAMPLES, unreadable, "--format", "json")
    assert result.code == EXIT_ERROR
    document = json.loads(result.stdout)
    validate(document)
    traces = {Path(trace["path"]).name: trace for trace in document["traces"]}
    assert set(traces) >= {
        "torch_dying_relu.h5",
        "numpy_mlp_high_lr.h5",
        "torch_healthy.h5",
        "numpy_mlp_healthy.h5",
        "unreadable.h5",
    }
    for trace in traces.values():
        check_diagnoses(trace)
    broken = traces["unreadable.h5"]
    assert broken["verdict"].startswith("unreadable: ") and broken["error"]
    assert broken["healthy"] is False and broken["diagnoses"] == broken["findings"] == []
    healthy = traces["numpy_mlp_healthy.h5"]
    assert healthy["healthy"] is True and healthy["verdict"].startswith("healthy: ")
    assert healthy["diagnoses"] == []
    # A diagnosis with symptoms: the cause leads, what it explains points at real findings.
    dying = traces["torch_dying_relu.h5"]
    first = dying["diagnoses"][0]
    assert first["title"] == "dying ReLU" and first["cause"]["rule_id"] == "DBG201"
    assert first["explains"] and first["fix"] and first["evidence"][0].startswith("dying ReLU")
    explained = {dying["findings"][i]["rule_id"] for i in first["explains"]}
    assert "DBG401" in explained
    # A cause sorted late among the findings (a warning explaining errors) still leads.
    high_lr = traces["numpy_mlp_high_lr.h5"]
    assert high_lr["diagnoses"][0]["cause"]["finding"] > 0


@pytest.mark.parametrize("select", ["DBG201,DBG401", "DBG401"])
def test_a_cause_names_every_tensor_of_its_kind(cli, make_trace, select: str) -> None:
    """Dead units in two layers are one problem: the cause lists both tensors; without the
    cause rule, its former symptoms become causes of their own."""
    zeros = {"values": [[[0.0] * 8] * 16] * 20, "collection": "activations", "kind": "relu"}
    path = make_trace(scalars={"loss": [1.0] * 20}, tensors={"act/a": zeros, "act/b": zeros})
    result = cli("analyze", path, "--select", select, "-f", "json")
    assert result.code == EXIT_FINDINGS
    document = json.loads(result.stdout)
    validate(document)
    (trace,) = document["traces"]
    check_diagnoses(trace)
    (diagnosis, *_) = trace["diagnoses"]
    if select.startswith("DBG201"):
        assert diagnosis["cause"]["rule_id"] == "DBG201"
        assert diagnosis["cause"]["tensors"] == ["act/a", "act/b"]
    else:
        assert diagnosis["cause"]["rule_id"] == "DBG401"


def test_baselined_and_compare_reports_follow_the_schema(cli, tmp_path: Path) -> None:
    dying = SAMPLES / "torch_dying_relu.h5"
    baseline = tmp_path / "baseline.json"
    cli("analyze", dying, "--select", "DBG201", "--write-baseline", baseline, "-q")
    rest = json.loads(cli("analyze", dying, "--baseline", baseline, "-f", "json").stdout)
    validate(rest)
    (trace,) = rest["traces"]
    check_diagnoses(trace)
    assert rest["baselined"] == 1
    assert all(d["cause"]["rule_id"] != "DBG201" for d in trace["diagnoses"])
    compared = cli("compare", dying, SAMPLES / "torch_healthy.h5", "-f", "json")
    assert compared.code == EXIT_FINDINGS
    validate(json.loads(compared.stdout))
