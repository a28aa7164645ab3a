"""DBG101 vanishing-gradient and DBG102 exploding-gradient."""

from __future__ import annotations

import numpy as np

from dbgcli.report.model import RuleStatus

from .helpers import keyed, run_rule


def gradients(scales: list[float], steps: int = 40, shape=(16, 8), seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        f"grad/layer{i}.weight": {
            "values": [rng.normal(0, scale, size=shape).astype(np.float32) for _ in range(steps)],
            "collection": "gradients",
        }
        for i, scale in enumerate(scales)
    }


def test_vanishing_fires_at_the_first_vanished_step(make_trace) -> None:
    tensors = gradients([1e-2, 1e-2])
    for step in range(25, 40):
        tensors["grad/layer0.weight"]["values"][step] *= 1e-7
    result = run_rule(make_trace(tensors=tensors), "DBG101")
    (finding,) = keyed(result, "vanished")
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "grad/layer0.weight",
        25,
        39,
        15,
    )
    assert finding.value is not None and finding.value < 1e-7 and finding.threshold == 1e-7
    assert finding.severity is not None and finding.severity.value == "error"


def test_vanishing_quiet_on_healthy_gradients_and_tunable(make_trace) -> None:
    path = make_trace(tensors=gradients([1e-3, 5e-3, 1e-2]))
    assert run_rule(path, "vanishing-gradient").status is RuleStatus.passed
    tuned = run_rule(path, "vanishing-gradient", threshold=1.0)
    assert len(keyed(tuned, "vanished")) == 3


def test_vanishing_across_layers(make_trace) -> None:
    path = make_trace(tensors=gradients([1e-6, 1e-2, 1e-2]))
    result = run_rule(path, "DBG101")
    (finding,) = keyed(result, "vanished-relative")
    assert finding.tensor == "grad/layer0.weight" and finding.steps == 40
    assert finding.value is not None and finding.value < 1e-3
    assert not keyed(run_rule(path, "DBG101", ratio=1e-5), "vanished-relative")


def test_vanishing_min_steps(make_trace) -> None:
    tensors = gradients([1e-2])
    tensors["grad/layer0.weight"]["values"][10] *= 0
    path = make_trace(tensors=tensors)
    assert keyed(run_rule(path, "DBG101"), "vanished")[0].first_step == 10
    assert run_rule(path, "DBG101", min_steps=2).status is RuleStatus.passed


def test_exploding_nonfinite_growth_and_magnitude(make_trace) -> None:
    tensors = gradients([1e-2, 1e-2], steps=60)
    values = tensors["grad/layer0.weight"]["values"]
    values[30] = values[30] * 1e4
    values[50][0, 0] = np.nan
    tensors["grad/layer1.weight"]["values"][45] += 1e7
    result = run_rule(make_trace(tensors=tensors), "DBG102")
    (nan,) = keyed(result, "nonfinite")
    assert (nan.tensor, nan.first_step, nan.value) == ("grad/layer0.weight", 50, 1.0)
    growth = {f.tensor: f for f in keyed(result, "norm-growth")}
    assert growth["grad/layer0.weight"].first_step == 30
    assert (
        growth["grad/layer0.weight"].value is not None and growth["grad/layer0.weight"].value > 1000
    )
    (huge,) = keyed(result, "magnitude")
    assert (huge.tensor, huge.first_step) == ("grad/layer1.weight", 45)


def test_exploding_quiet_on_healthy_noisy_gradients(make_trace) -> None:
    tensors = gradients([1e-2, 1e-1], steps=200)
    rng = np.random.default_rng(3)
    for spec in tensors.values():
        spec["values"] = [v * rng.uniform(0.2, 5) for v in spec["values"]]
    assert run_rule(make_trace(tensors=tensors), "DBG102").status is RuleStatus.passed


def test_gradient_rules_skip_without_gradients(make_trace) -> None:
    path = make_trace(scalars={"loss": [1.0, 0.5]})
    for rule in ("DBG101", "DBG102"):
        result = run_rule(path, rule)
        assert result.status is RuleStatus.skipped
        assert result.reason == "no tensors of collection 'gradients'"


def test_trailing_median_at_positions_matches_the_full_series() -> None:
    """The exploding rule asks for the trailing median only where a jump is possible."""
    from dbgcli.rules import trailing_median

    rng = np.random.default_rng(3)
    values = rng.lognormal(size=300)
    values[[20, 21, 150]] = np.nan
    full = trailing_median(values, 10)
    at = np.array([0, 5, 10, 11, 25, 151, 299])
    partial = trailing_median(values, 10, at=at)
    np.testing.assert_array_equal(partial[at], full[at])
    assert np.isnan(np.delete(partial, at)).all()
    # Spot check against the definition (NaN ignored).
    assert full[30] == np.nanmedian(values[20:30])
    assert np.isnan(full[:10]).all()
