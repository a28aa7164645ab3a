"""dbg as a CI gate: machine formats, fail levels, baselines, many traces, jobs."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from dbgcli.report.model import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())

# Documented workflow-command syntax: ::LEVEL key=value,key=value::message (no raw newlines).
ANNOTATION = re.compile(
    r"^::(error|warning|notice)( [a-zA-Z]+=[^,:\r\n]*(,[a-zA-Z]+=[^,:\r\n]*)*)?::[^\r\n]*$"
)

MANY_FINDINGS_RULES = '''
from dbgcli.rules import Finding, Need, rule

@rule("TST700", "many-findings", severity="warning", category="testing", requires=Need.loss(), default_enabled=False)
def many_findings(ctx, *, count: int = 8000):
    """Yields many findings, to exercise the size caps of the formats."""
    for i in range(count):
        yield Finding("a finding with a long enough message to fill space quickly " * 2, tensor=f"t{i}",
                      first_step=i, last_step=i, steps=1, key=f"k{i}")
'''


@pytest.fixture(scope="module")
def many_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One file for the whole module: rules register once per process, by file.
    path = tmp_path_factory.mktemp("rules") / "many.py"
    path.write_text(MANY_FINDINGS_RULES)
    return path


def gradient_trace(
    make_trace, name: str, vanish_from: int | None = None, nan_at: int | None = None
) -> Path:
    rng = np.random.default_rng(7)
    grads = [rng.normal(0, 1e-2, size=(8, 8)) for _ in range(30)]
    if vanish_from is not None:
        for step in range(vanish_from, 30):
            grads[step] = grads[step] * 1e-9
    if nan_at is not None:
        grads[nan_at][0, 0] = np.nan
    return make_trace(
        name,
        scalars={"loss": list(np.linspace(2.0, 1.0, 30))},
        tensors={"grad/fc.weight": {"values": grads, "collection": "gradients"}},
    )


@pytest.fixture
def traces(make_trace) -> dict[str, Path]:
    return {
        "clean": gradient_trace(make_trace, "clean.h5"),
        "dirty": gradient_trace(make_trace, "dirty.h5", vanish_from=20),
        "nan": gradient_trace(make_trace, "nan.h5", nan_at=5),
    }


def test_sarif_is_valid_and_complete(
    cli, traces: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli(
        "analyze",
        traces["dirty"],
        traces["nan"],
        traces["clean"],
        "--select",
        "DBG1",
        "--format",
        "sarif",
    )
    assert result.code == EXIT_FINDINGS
    log = json.loads(result.stdout)
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    (run,) = log["runs"]
    rules = {rule["id"]: rule for rule in run["tool"]["driver"]["rules"]}
    assert set(rules) == {"DBG101", "DBG102"}
    for rule in rules.values():
        assert (
            rule["shortDescription"]["text"]
            and rule["fullDescription"]["text"]
            and rule["help"]["text"]
        )
        assert rule["defaultConfiguration"]["level"] == "error"
    assert [a["location"]["uri"] for a in run["artifacts"]] == ["dirty.h5", "nan.h5", "clean.h5"]
    by_rule = {r["ruleId"]: r for r in run["results"]}
    vanished = by_rule["DBG101"]
    assert vanished["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "dirty.h5",
        "index": 0,
    }
    assert vanished["locations"][0]["logicalLocations"][0]["name"] == "grad/fc.weight"
    assert vanished["properties"]["firstStep"] == 20 and vanished["level"] == "error"
    fingerprint = vanished["partialFingerprints"]["dbgFinding/v1"]
    rerun = gradient_trace_rerun(cli, tmp_path, traces)
    assert rerun == fingerprint  # same pathology in another file and other steps: same alert


def gradient_trace_rerun(cli, tmp_path: Path, traces: dict[str, Path]) -> str:
    from dbgcli import TraceWriter, open_trace

    source = open_trace(traces["dirty"])
    path = tmp_path / "rerun.h5"
    with TraceWriter(path) as writer:
        for chunk in source.iter_raw("grad/fc.weight"):
            for step, values in zip(chunk.steps, chunk.values):
                writer.add_tensor(
                    "grad/fc.weight", values, int(step) + 1000, collection="gradients"
                )
    source.close()
    log = json.loads(cli("analyze", path, "--select", "DBG101", "--format", "sarif").stdout)
    return log["runs"][0]["results"][0]["partialFingerprints"]["dbgFinding/v1"]


def test_sarif_reports_errors_as_notifications(
    cli, traces: dict[str, Path], tmp_path: Path
) -> None:
    result = cli(
        "analyze", traces["dirty"], tmp_path / "gone.h5", "--select", "DBG1", "--format", "sarif"
    )
    assert result.code == EXIT_ERROR
    log = json.loads(result.stdout)
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    invocation = log["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert "no such file" in invocation["toolExecutionNotifications"][0]["message"]["text"]


def test_junit_parses_back(cli, traces: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "junit.xml"
    result = cli(
        "analyze",
        traces["dirty"],
        traces["clean"],
        tmp_path / "gone.h5",
        "--select",
        "DBG1",
        "-f",
        "junit",
        "-o",
        out,
    )
    assert result.code == EXIT_ERROR
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "1", "1")
    suites = {suite.get("name"): suite for suite in root}
    dirty = suites[str(traces["dirty"])]
    cases = {case.get("name"): case for case in dirty}
    failure = cases["DBG101 vanishing-gradient"].find("failure")
    assert failure is not None and failure.get("type") == "error"
    assert "grad/fc.weight, steps 20-29 (10 records)" in (failure.text or "")
    assert cases["DBG102 exploding-gradient"].find("failure") is None
    assert suites[str(tmp_path / "gone.h5")].find("testcase/error") is not None


def test_junit_findings_below_the_fail_level_pass(
    cli, traces: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "dbg.toml"
    config.write_text('[severity]\nDBG101 = "warning"\n')
    out = tmp_path / "junit.xml"
    assert (
        cli(
            "analyze",
            traces["dirty"],
            "--select",
            "DBG101",
            "--config",
            config,
            "-f",
            "junit",
            "-o",
            out,
        ).code
        == EXIT_OK
    )
    case = ET.parse(out).getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is None
    assert "[warning] grad/fc.weight" in (case.findtext("system-out") or "")


def test_github_annotations_follow_the_syntax_and_cap(
    cli, traces: dict[str, Path], many_rules: Path
) -> None:
    result = cli(
        "analyze",
        traces["dirty"],
        "--rules-file",
        many_rules,
        "--select",
        "TST700,DBG101",
        "-p",
        "TST700.count=25",
        "-f",
        "github",
    )
    lines = result.stdout.strip().splitlines()
    annotations = [line for line in lines if line.startswith("::")]
    assert all(ANNOTATION.match(line) for line in annotations), annotations
    assert sum(line.startswith("::error") for line in annotations) == 1
    assert sum(line.startswith("::warning") for line in annotations) == 10
    assert (
        "title=DBG101 vanishing-gradient (grad/fc.weight)::mean |gradient| fell to"
        in annotations[0]
    )
    assert "15 more finding(s) not annotated" in annotations[-1]
    assert lines[-1].startswith("dbg: 1 error(s), 25 warning(s)")


def test_github_escaping() -> None:
    from dbgcli.report.github import escape_data, escape_property

    assert escape_data("50% of\nunits") == "50%25 of%0Aunits"
    assert escape_property("a:b,c") == "a%3Ab%2Cc"


def test_markdown_stays_under_the_step_summary_limit(
    cli, traces: dict[str, Path], many_rules: Path, tmp_path: Path
) -> None:
    out = tmp_path / "summary.md"
    result = cli(
        "analyze",
        traces["dirty"],
        "--rules-file",
        many_rules,
        "--select",
        "TST700",
        "-f",
        "markdown",
        "-o",
        out,
    )
    assert result.code == EXIT_OK
    text = out.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 1_000_000
    assert "8000 trace" not in text and "more finding(s) omitted" in text
    shown = text.count("| 🟡 |")
    assert 1000 < shown < 8000
    assert f"_{8000 - shown} more finding(s) omitted" in text


@pytest.mark.parametrize(
    ("fail_on", "exit_zero", "expected"),
    [
        ("error", False, {"clean": 0, "dirty": 1, "broken": 2}),
        ("warning", False, {"clean": 0, "dirty": 1, "broken": 2}),
        ("info", False, {"clean": 0, "dirty": 1, "broken": 2}),
        ("error", True, {"clean": 0, "dirty": 0, "broken": 2}),
        ("info", True, {"clean": 0, "dirty": 0, "broken": 2}),
    ],
)
def test_exit_code_matrix(
    cli,
    traces: dict[str, Path],
    tmp_path: Path,
    fail_on: str,
    exit_zero: bool,
    expected: dict[str, int],
) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5" * 100)
    cases = {
        "clean": [traces["clean"]],
        "dirty": [traces["dirty"]],
        "broken": [broken, traces["clean"]],
    }
    for name, paths in cases.items():
        args = ["analyze", *paths, "--select", "DBG1", "--fail-on", fail_on, "-q"]
        if exit_zero:
            args.append("--exit-zero")
        assert cli(*args).code == expected[name], name


def test_warning_findings_and_fail_levels(cli, traces: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "dbg.toml"
    config.write_text('[severity]\nDBG101 = "info"\n')
    run = ["analyze", traces["dirty"], "--select", "DBG101", "--config", config]
    assert cli(*run).code == EXIT_OK
    assert cli(*run, "--fail-on", "warning").code == EXIT_OK
    assert cli(*run, "--fail-on", "info").code == EXIT_FINDINGS


def test_baseline_round_trip(cli, traces: dict[str, Path], make_trace, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    first = cli("analyze", traces["dirty"], "--select", "DBG1", "--write-baseline", baseline, "-q")
    assert first.code == EXIT_FINDINGS
    assert "wrote 1 finding(s) to baseline" in first.stderr
    entries = json.loads(baseline.read_text())["findings"]
    assert [(e["rule_id"], e["tensor"], e["key"]) for e in entries] == [
        ("DBG101", "grad/fc.weight", "vanished")
    ]
    again = cli(
        "analyze", traces["dirty"], "--select", "DBG1", "--baseline", baseline, "-f", "json"
    )
    assert again.code == EXIT_OK
    document = json.loads(again.stdout)
    assert document["baselined"] == 1 and document["traces"][0]["findings"] == []
    worse = gradient_trace(make_trace, "worse.h5", vanish_from=10, nan_at=3)
    new = cli("analyze", worse, "--select", "DBG1", "--baseline", baseline, "-f", "json")
    assert new.code == EXIT_FINDINGS
    findings = json.loads(new.stdout)["traces"][0]["findings"]
    assert [(f["rule_id"], f["key"]) for f in findings] == [("DBG102", "nonfinite")]
    fixed = cli(
        "analyze", traces["clean"], "--select", "DBG1", "--baseline", baseline, "-f", "json"
    )
    assert fixed.code == EXIT_OK
    assert [e["rule_id"] for e in json.loads(fixed.stdout)["stale_baseline"]] == ["DBG101"]
    assert "no longer occur" in fixed.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert cli("analyze", traces["clean"], "--baseline", bad).code == EXIT_ERROR
    assert (
        cli("analyze", traces["clean"], "--baseline", tmp_path / "absent.json").code == EXIT_ERROR
    )


def test_many_traces_with_jobs_match_one_process(
    cli, traces: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    args = [
        "analyze",
        traces["dirty"],
        broken,
        traces["nan"],
        traces["clean"],
        "--select",
        "DBG1",
        "-f",
        "json",
    ]
    serial = json.loads(cli(*args).stdout)
    parallel = cli(*args, "--jobs", "2")
    assert parallel.code == EXIT_ERROR
    document = json.loads(parallel.stdout)
    for trace in (*serial["traces"], *document["traces"]):
        for rule in trace["rules"]:
            rule.pop("seconds")
    assert document["traces"] == serial["traces"]
    assert document["traces"][1]["error"] and document["traces"][2]["findings"]
