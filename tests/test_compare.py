"""``dbg compare``: two runs that should match."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np

from dbgcli.compare import Tolerance, compare
from dbgcli.report.model import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK


def run(
    make_trace,
    name: str,
    *,
    perturb_step: int | None = None,
    permute_step: int | None = None,
    extra: bool = False,
    collection: str = "weights",
) -> Path:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(6, 5)) for _ in range(20)]
    loss = list(np.linspace(1.0, 0.1, 20))
    if perturb_step is not None:
        weights = [w.copy() for w in weights]
        for step in range(perturb_step, 20):
            weights[step][0, 0] += 1e-3
    if permute_step is not None:
        weights[permute_step] = weights[permute_step][::-1].copy()  # same statistics, other values
    tensors = {"fc.weight": {"values": weights, "collection": collection}}
    if extra:
        tensors["fc.bias"] = {"values": [np.zeros(6)] * 20, "collection": "biases"}
    return make_trace(name, scalars={"loss": loss}, tensors=tensors)


def test_identical_runs_match(cli, make_trace) -> None:
    a, b = run(make_trace, "a.h5"), run(make_trace, "b.h5")
    result = cli("compare", a, b)
    assert result.code == EXIT_OK and "passed" in result.stdout


def test_differences_name_the_first_step(make_trace) -> None:
    report = compare(run(make_trace, "a.h5"), run(make_trace, "b.h5", perturb_step=12))
    (finding,) = report.traces[0].findings
    assert (finding.tensor, finding.key, finding.first_step, finding.last_step, finding.steps) == (
        "fc.weight",
        "statistics",
        12,
        19,
        8,
    )
    assert finding.value is not None and 1e-4 < finding.value < 1e-2
    assert report.exit_code() == EXIT_FINDINGS
    (trace,) = report.traces
    assert trace.verdict == "unhealthy: runs differ" and trace.diagnoses[0].cause == 0
    loose = compare(
        run(make_trace, "c.h5"),
        run(make_trace, "d.h5", perturb_step=12),
        Tolerance(rtol=1e-2, atol=1e-2),
    )
    assert loose.traces[0].findings == []


def test_full_tensors_catch_what_statistics_cannot(make_trace) -> None:
    # Gradients: no update norm, so a permutation leaves every statistic unchanged.
    report = compare(
        run(make_trace, "a.h5", collection="gradients"),
        run(make_trace, "b.h5", permute_step=7, collection="gradients"),
    )
    (finding,) = report.traces[0].findings
    assert (finding.key, finding.first_step, finding.steps) == ("values", 7, 1)


def test_missing_tags_and_formats(cli, make_trace, tmp_path: Path) -> None:
    a, b = run(make_trace, "a.h5"), run(make_trace, "b.h5", extra=True)
    result = cli("compare", a, b, "-f", "json")
    assert result.code == EXIT_FINDINGS
    (finding,) = json.loads(result.stdout)["traces"][0]["findings"]
    assert (finding["tensor"], finding["key"], finding["message"]) == (
        "fc.bias",
        "missing",
        "only in the second trace",
    )
    sarif = cli("compare", a, b, "-f", "sarif")
    schema = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.Draft4Validator(schema).validate(json.loads(sarif.stdout))
    assert cli("compare", a, b, "--tags", "fc.weight").code == EXIT_OK
    assert cli("compare", a, b, "--exit-zero").code == EXIT_OK
    assert cli("compare", a, tmp_path / "nope.h5").code == EXIT_ERROR


def test_the_first_divergence_is_named_the_cause(make_trace) -> None:
    """Weights that differ from step 12 and a loss that differs from step 13 on: one problem
    whose cause is the weights."""
    a = run(make_trace, "a.h5")
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(6, 5)) for _ in range(20)]
    for step in range(12, 20):
        weights[step][0, 0] += 1e-3
    loss = np.linspace(1.0, 0.1, 20)
    loss[13:] += 1e-3
    b = make_trace(
        "b.h5",
        scalars={"loss": list(loss)},
        tensors={"fc.weight": {"values": weights, "collection": "weights"}},
    )
    (trace,) = compare(a, b).traces
    (diagnosis,) = trace.diagnoses
    cause = trace.findings[diagnosis.cause]
    assert (cause.tensor, cause.first_step) == ("fc.weight", 12)
    assert [trace.findings[i].tensor for i in diagnosis.symptoms] == ["loss"]
