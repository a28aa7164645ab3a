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
    assert set(rules) == {"DBG101", "DBG102", "DBG103"}
    for rule in rules.values():
        assert (
            rule["shortDescription"]["text"]
            and rule["fullDescription"]["text"]
            and rule["help"]["text"]
        )
    levels = {rule_id: rule["defaultConfiguration"]["level"] for rule_id, rule in rules.items()}
    # DBG102's growth findings are warnings, its non-finite gradients errors (below).
    assert levels == {"DBG101": "warning", "DBG102": "warning", "DBG103": "error"}
    assert [a["location"]["uri"] for a in run["artifacts"]] == ["dirty.h5", "nan.h5", "clean.h5"]
    by_rule = {r["ruleId"]: r for r in run["results"]}
    vanished = by_rule["DBG101"]
    assert vanished["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "dirty.h5",
        "index": 0,
    }
    assert vanished["locations"][0]["logicalLocations"][0]["name"] == "grad/fc.weight"
    assert vanished["properties"]["firstStep"] == 20 and vanished["level"] == "warning"
    assert by_rule["DBG102"]["level"] == "error"
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
        "--fail-on",
        "warning",
        "-f",
        "junit",
        "-o",
        out,
    )
    assert result.code == EXIT_ERROR
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    # Three DBG1 rules for each of the two readable traces, and the missing one's error.
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("7", "1", "1")
    suites = {suite.get("name"): suite for suite in root}
    dirty = suites[str(traces["dirty"])]
    cases = {case.get("name"): case for case in dirty}
    failure = cases["DBG101 vanishing-gradient"].find("failure")
    assert failure is not None and failure.get("type") == "warning"
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
        traces["nan"],
        "--rules-file",
        many_rules,
        "--select",
        "TST700,DBG102",
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
    assert sum(line.startswith("::notice") for line in annotations) == 1
    assert (
        "title=non-finite gradients%3A DBG102 exploding-gradient (grad/fc.weight)::"
        "1 NaN/inf gradient elements [step 5]" in annotations[0]
    )
    assert "15 more finding(s) not annotated" in annotations[-1]
    assert lines[-1].startswith(
        "dbg: 1 error(s), 25 warning(s), 0 info in 1 trace(s); 26 causes: non-finite gradients,"
    )


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
    # Each finding is a diagnosis of its own: the verdict and the diagnoses come first, the
    # findings behind them are cut.
    assert "**unhealthy: many findings, and 7999 other problems**" in text
    assert text.count("| 🟡 | **many findings** (TST700 many-findings) |") == 8000
    shown = text.count("| 🟡 | TST700 many-findings |")
    assert 1000 < shown < 8000
    assert f"<details><summary>8000 findings, {shown} shown</summary>" in text
    assert f"_{8000 - shown} more findings omitted to stay under 1000000 bytes" in text
    assert f"Left out to stay under 1000000 bytes: {8000 - shown} finding(s)" in text


@pytest.mark.parametrize(
    ("fail_on", "exit_zero", "expected"),
    [
        ("error", False, {"clean": 0, "dirty": 0, "nan": 1, "broken": 2}),
        ("warning", False, {"clean": 0, "dirty": 1, "nan": 1, "broken": 2}),
        ("info", False, {"clean": 0, "dirty": 1, "nan": 1, "broken": 2}),
        ("error", True, {"clean": 0, "dirty": 0, "nan": 0, "broken": 2}),
        ("info", True, {"clean": 0, "dirty": 0, "nan": 0, "broken": 2}),
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
        "dirty": [traces["dirty"]],  # a vanishing gradient: a warning
        "nan": [traces["nan"]],  # a non-finite gradient: an error
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
    gate = ("--select", "DBG1", "--fail-on", "warning")
    first = cli("analyze", traces["dirty"], *gate, "--write-baseline", baseline, "-q")
    assert first.code == EXIT_FINDINGS
    assert "wrote 1 finding(s) to baseline" in first.stderr
    entries = json.loads(baseline.read_text())["findings"]
    assert [(e["rule_id"], e["tensor"], e["key"]) for e in entries] == [
        ("DBG101", "grad/fc.weight", "vanished")
    ]
    again = cli("analyze", traces["dirty"], *gate, "--baseline", baseline, "-f", "json")
    assert again.code == EXIT_OK
    document = json.loads(again.stdout)
    assert document["baselined"] == 1 and document["traces"][0]["findings"] == []
    assert document["traces"][0]["diagnoses"] == [] and document["traces"][0]["healthy"]
    worse = gradient_trace(make_trace, "worse.h5", vanish_from=10, nan_at=3)
    new = cli("analyze", worse, *gate, "--baseline", baseline, "-f", "json")
    assert new.code == EXIT_FINDINGS
    (trace,) = json.loads(new.stdout)["traces"]
    assert [(f["rule_id"], f["key"]) for f in trace["findings"]] == [("DBG102", "nonfinite")]
    # The diagnoses are those of the findings left, not of the baselined ones.
    assert [(d["cause"]["finding"], d["explains"]) for d in trace["diagnoses"]] == [(0, [])]
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


@pytest.fixture
def dying(make_trace) -> Path:
    """A ReLU layer with 6 of its 8 units dead (a warning) and the gradients below it all zero
    (errors): the cause sorts after its symptoms among the findings, so a format that leads
    with it does so on purpose."""
    rng = np.random.default_rng(3)
    activations = np.zeros((20, 16, 8))
    activations[:, :, :2] = rng.uniform(0.1, 1.0, size=(20, 16, 2))
    return make_trace(
        "dying.h5",
        scalars={"loss": list(1.0 + 1e-3 * rng.normal(size=20))},
        tensors={
            "act/relu1": {"values": activations, "collection": "activations", "kind": "relu"},
            "grad/fc1.weight": {"values": np.zeros((20, 8, 8)), "collection": "gradients"},
            "grad/fc2.weight": {"values": np.zeros((20, 8, 8)), "collection": "gradients"},
        },
    )


# The rules of the cause and of its symptoms, so that the findings do not hang on others.
DYING_RULES = ("--select", "DBG201,DBG401")
CAUSE = "dying ReLU (DBG201 in act/relu1)"


def test_json_diagnosis_of_a_cause_sorted_late(cli, dying: Path) -> None:
    result = cli("analyze", dying, *DYING_RULES, "-f", "json")
    assert result.code == EXIT_FINDINGS
    (trace,) = json.loads(result.stdout)["traces"]
    assert [(f["rule_id"], f["tensor"]) for f in trace["findings"]] == [
        ("DBG401", "grad/fc1.weight"),
        ("DBG401", "grad/fc2.weight"),
        ("DBG201", "act/relu1"),
    ]
    (diagnosis,) = trace["diagnoses"]
    assert diagnosis["cause"]["finding"] == 2 and sorted(diagnosis["explains"]) == [0, 1]
    assert diagnosis["severity"] == "error" and diagnosis["cause"]["severity"] == "warning"
    assert trace["verdict"] == "unhealthy: dying ReLU (2 symptoms)"


def test_sarif_leads_with_the_cause(cli, dying: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    log = json.loads(cli("analyze", dying, *DYING_RULES, "-f", "sarif").stdout)
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    cause, *symptoms = log["runs"][0]["results"]
    assert cause["ruleId"] == "DBG201" and cause["level"] == "warning"  # its own severity
    text = cause["message"]["text"]
    assert text.startswith("dying ReLU: 75 % of 8 units dead")
    assert "Explains 2 other findings; evidence: dying ReLU in act/relu1 from step 0" in text
    assert "Fix: lower the learning rate" in text
    diagnosis = cause["properties"]["diagnosis"]
    assert (diagnosis["rank"], diagnosis["title"], diagnosis["severity"]) == (
        1,
        "dying ReLU",
        "error",
    )
    fingerprints = [s["partialFingerprints"]["dbgFinding/v1"] for s in symptoms]
    assert sorted(diagnosis["explains"]) == sorted(fingerprints)
    related = [r["logicalLocations"][0]["name"] for r in cause["relatedLocations"]]
    assert sorted(related) == ["grad/fc1.weight", "grad/fc2.weight"]
    for symptom in symptoms:
        assert symptom["ruleId"] == "DBG401" and symptom["level"] == "error"
        assert symptom["message"]["text"].endswith(f"Explained by {CAUSE}.")
        assert symptom["properties"]["explainedBy"] == {
            "rank": 1,
            "title": "dying ReLU",
            "ruleId": "DBG201",
            "fingerprint": cause["partialFingerprints"]["dbgFinding/v1"],
        }
        (pointer,) = symptom["relatedLocations"]
        assert pointer["logicalLocations"][0]["name"] == "act/relu1"


def test_junit_leads_with_the_cause(cli, dying: Path) -> None:
    root = ET.fromstring(cli("analyze", dying, *DYING_RULES, "-f", "junit").stdout)
    assert (root.get("tests"), root.get("failures")) == ("2", "2")
    first, second = root.iter("testcase")
    assert first.get("name") == "DBG201 dying-relu"
    # A warning finding, but the cause of an error diagnosis: it fails, and leads.
    failure = first.find("failure")
    assert failure is not None and failure.get("type") == "error"
    assert (failure.get("message") or "").startswith(
        "dying ReLU (act/relu1, steps 0-19 (20 records)): 75 % of 8 units dead"
    )
    assert "explains 2 other finding(s)" in (failure.get("message") or "")
    assert "-- cause: dying ReLU\n    explains 2 other finding(s); evidence:" in (
        failure.text or ""
    )
    assert "\n    fix: lower the learning rate" in (failure.text or "")
    symptom = second.find("failure")
    assert second.get("name") == "DBG401 all-zero" and symptom is not None
    assert (symptom.get("message") or "").startswith(
        f"2 finding(s) at or above error, explained by {CAUSE}: every element is exactly zero"
    )
    assert (symptom.text or "").count(f"-- explained by {CAUSE}") == 2


def test_github_spends_annotations_on_causes(cli, dying: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    lines = cli("analyze", dying, *DYING_RULES, "-f", "github").stdout.strip().splitlines()
    assert all(ANNOTATION.match(line) for line in lines[:-1]), lines
    cause, *symptoms = lines[:-1]
    # Annotated at the diagnosis's severity, with what it explains and the fix.
    assert cause.startswith("::error file=dying.h5,line=1,title=dying ReLU%3A DBG201 dying-relu")
    assert "%0AExplains 2 other findings; evidence: " in cause and "%0AFix: " in cause
    assert len(symptoms) == 2
    assert all(s.endswith("(caused by dying ReLU: DBG201 in act/relu1)") for s in symptoms)
    assert lines[-1].endswith(
        "; 1 cause explaining 2 other findings: dying ReLU (+2 symptoms); exit 1"
    )


def test_github_keeps_the_slots_for_causes(dying: Path) -> None:
    from dbgcli.analysis import Options, analyze
    from dbgcli.report import github

    report = analyze([dying], Options(select=("DBG201", "DBG401")))
    lines = github.render(report, per_level=1).splitlines()
    # One error slot: the cause takes it before the two error findings it explains.
    assert [line.split(" ")[0] for line in lines[:-1]] == ["::error", "::notice"]
    assert "title=dying ReLU%3A" in lines[0]
    assert "2 more finding(s) not annotated" in lines[1]


def test_markdown_leads_with_the_diagnoses(cli, dying: Path) -> None:
    text = cli("analyze", dying, *DYING_RULES, "-f", "markdown").stdout
    verdict = text.index("**unhealthy: dying ReLU (2 symptoms)**")
    table = text.index("| | cause | where | severity | symptoms | evidence | fix |")
    row = text.index(
        "| 🔴 | **dying ReLU** (DBG201 dying-relu) | `act/relu1` · steps 0-19 (20 records) "
        "| error | 2 | dying ReLU in act/relu1 from step 0; all-zero tensor in 2 tensors"
    )
    details = text.index("<details><summary>3 findings</summary>")
    assert verdict < table < row < details
    rows = [
        line
        for line in text[details:].splitlines()
        if line.startswith("| 🔴") or line.startswith("| 🟡")
    ]
    assert rows[0].startswith("| 🟡 | DBG201 dying-relu | `act/relu1` |")
    assert rows[0].endswith("| **cause**: dying ReLU |")
    assert [r.endswith("| dying ReLU (DBG201 `act/relu1`) |") for r in rows[1:]] == [True, True]
    assert text.rstrip().endswith("</details>")


def test_markdown_cuts_details_before_verdicts() -> None:
    """Whatever the limit, the summary stays under it and keeps the order of priority:
    verdicts, then diagnoses, then findings."""
    from dbgcli.diagnosis import Diagnosis
    from dbgcli.findings import Finding, Severity
    from dbgcli.report import markdown
    from dbgcli.report.model import Report, RuleResult, RuleStatus, TraceReport

    def trace(name: str) -> TraceReport:
        findings = tuple(
            Finding(
                "a message of some length " * 3,
                tensor=f"t{i}",
                first_step=i,
                last_step=i,
                steps=1,
                key="k",
                severity=Severity.warning,
                rule_id="TST701",
                rule="many",
            )
            for i in range(200)
        )
        result = RuleResult(
            "TST701",
            "many",
            "testing",
            Severity.warning,
            "",
            RuleStatus.violated,
            findings=findings,
        )
        diagnoses = tuple(
            Diagnosis(
                "a problem",
                4 * i,
                (4 * i + 1, 4 * i + 2, 4 * i + 3),
                Severity.warning,
                ("e",),
                "fix",
            )
            for i in range(50)
        )
        return TraceReport(name, results=(result,), diagnoses=diagnoses)

    report = Report((trace("a.h5"), trace("b.h5"), trace("c.h5")))
    complete = markdown.render(report)
    assert "Left out" not in complete and complete.count("</details>") == 3
    for limit in (1_200, 3_000, 10_000, 30_000, 60_000, 100_000):
        text = markdown.render(report, max_bytes=limit)
        assert len(text.encode("utf-8")) <= limit
        verdicts = text.count("**unhealthy: a problem (3 symptoms), and 49 other problems**")
        diagnoses = text.count("| 🟡 | **a problem** (TST701 many)")
        findings = text.count("| 🟡 | TST701 many |")
        assert diagnoses == 0 or verdicts == 3
        assert findings == 0 or diagnoses == 150
        left = [
            (3 - verdicts, "trace(s)"),
            (150 - diagnoses, "diagnosis(es)"),
            (600 - findings, "finding(s)"),
        ]
        expected = ", ".join(f"{n} {name}" for n, name in left if n)
        assert f"_Left out to stay under {limit} bytes: {expected}; see the full report._" in text


@pytest.mark.parametrize("fmt", ["sarif", "junit", "github", "markdown"])
def test_formats_lead_with_the_cause_of_a_recorded_run(cli, fmt: str, monkeypatch) -> None:
    """A real dying-ReLU run (PyTorch hook): the dying ReLU comes first in every format."""
    monkeypatch.chdir(Path(__file__).parent.parent)
    out = cli("analyze", "sample_traces/torch_dying_relu.h5", "-f", fmt).stdout
    if fmt == "sarif":
        first = json.loads(out)["runs"][0]["results"][0]
        assert first["ruleId"] == "DBG201" and first["message"]["text"].startswith("dying ReLU: ")
        assert first["relatedLocations"]
    elif fmt == "junit":
        case = ET.fromstring(out).find("testsuite/testcase")
        assert case is not None and case.get("name") == "DBG201 dying-relu"
        failure = case.find("failure")
        assert failure is not None
        assert (failure.get("message") or "").startswith("dying ReLU (act/act1")
    elif fmt == "github":
        assert out.startswith(
            "::error file=sample_traces/torch_dying_relu.h5,line=1,title=dying ReLU%3A"
        )
        assert "caused by dying ReLU: DBG201 in act/act1" in out.splitlines()[1]
    else:
        verdict = out.index("**unhealthy: dying ReLU (")
        assert verdict < out.index("| 🔴 | **dying ReLU** (DBG201 dying-relu) | `act/act1`")
