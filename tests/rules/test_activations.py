"""DBG201 dying-relu, DBG202 tanh-saturation and DBG203 sigmoid-saturation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from dbgcli.report.model import RuleStatus

from .helpers import analyze_path, keyed, run_rule

SAMPLES = Path(__file__).resolve().parents[2] / "sample_traces"


def preactivations(
    steps: int = 40, batch: int = 32, units: int = 16, seed: int = 0, shape: tuple[int, ...] = ()
) -> list[np.ndarray]:
    """Healthy pre-activations: every unit is positive for about half of the samples."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0.0, 1.0, size=(batch, units, *shape)).astype(np.float32) for _ in range(steps)
    ]


def relu(values: list[np.ndarray]) -> list[np.ndarray]:
    return [np.maximum(v, 0.0) for v in values]


def shift_units(
    values: list[np.ndarray], units: slice, by: float, steps: range
) -> list[np.ndarray]:
    """Move some units' pre-activations far away (dead for ReLU, saturated for tanh/sigmoid)."""
    out = [v.copy() for v in values]
    for step in steps:
        out[step][:, units] += by
    return out


def activation_trace(
    make_trace, values: list[np.ndarray], kind: str, collection: str = "activations"
):
    return make_trace(
        tensors={f"act/{kind}1": {"values": values, "collection": collection, "kind": kind}}
    )


# -- DBG201 dying-relu ------------------------------------------------------------------------


def test_dying_relu_fires_when_most_units_stop_firing(make_trace) -> None:
    pre = shift_units(preactivations(), slice(0, 12), -10.0, range(20, 40))
    result = run_rule(activation_trace(make_trace, relu(pre), "relu"), "DBG201")
    (finding,) = keyed(result, "dead")
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "act/relu1",
        20,
        39,
        20,
    )
    assert finding.value == 75.0 and finding.threshold == 50.0 and finding.mode == "train"
    assert finding.severity is not None and finding.severity.value == "warning"
    assert finding.message == "75 % of 16 units dead (active on < 1 % of their values; > 50 %)"
    assert finding.extra == {"units": 16, "min_steps": 3, "positions": 1}


def test_dying_relu_whole_layer_dead_is_an_error(make_trace) -> None:
    pre = shift_units(preactivations(), slice(None), -10.0, range(5, 40))
    (finding,) = run_rule(activation_trace(make_trace, relu(pre), "relu"), "DBG201").findings
    assert (finding.first_step, finding.value) == (5, 100.0)
    assert finding.severity is not None and finding.severity.value == "error"


def test_dying_relu_quiet_on_healthy_relu_with_half_the_values_zero(make_trace) -> None:
    values = relu(preactivations(steps=60))
    zero_share = np.mean([np.mean(v == 0) for v in values])
    assert 0.45 < zero_share < 0.55
    assert (
        run_rule(activation_trace(make_trace, values, "relu"), "dying-relu").status
        is RuleStatus.passed
    )


def test_dying_relu_thresholds_are_tunable(make_trace) -> None:
    pre = shift_units(preactivations(), slice(0, 12), -10.0, range(20, 40))
    path = activation_trace(make_trace, relu(pre), "relu")
    assert run_rule(path, "DBG201", threshold_layer=80.0).status is RuleStatus.passed
    # Units active on 2-3 % of their values count as dead once the bar is 5 %.
    rare = shift_units(preactivations(batch=256), slice(0, 12), -2.0, range(40))
    rare_path = activation_trace(make_trace, relu(rare), "relu")
    assert run_rule(rare_path, "DBG201").status is RuleStatus.passed
    assert keyed(run_rule(rare_path, "DBG201", threshold_inactivity=5.0), "dead")[0].first_step == 0


def test_dying_relu_ignores_a_single_odd_batch_unless_min_steps_is_1(make_trace) -> None:
    pre = shift_units(preactivations(), slice(0, 12), -10.0, range(17, 18))
    path = activation_trace(make_trace, relu(pre), "relu")
    assert run_rule(path, "DBG201").status is RuleStatus.passed
    (finding,) = run_rule(path, "DBG201", min_steps=1).findings
    assert (finding.first_step, finding.last_step, finding.steps) == (17, 17, 1)


def test_dying_relu_pools_records_so_a_batch_of_one_is_not_dead(make_trace) -> None:
    # With one sample per record about half the units of a healthy layer are off in each
    # record; pooling min_steps records tells "off for this sample" from "dead".
    path = activation_trace(make_trace, relu(preactivations(steps=100, batch=1, units=64)), "relu")
    assert run_rule(path, "DBG201").status is RuleStatus.passed
    assert run_rule(path, "DBG201", min_steps=1).status is RuleStatus.violated


def test_dying_relu_population_spans_the_spatial_axes_of_conv_layers(make_trace) -> None:
    pre = preactivations(steps=20, batch=4, units=8, shape=(5, 5))
    for values in pre:
        values[:, :6] -= 10.0  # channels 0-5 dead at every position
        values[:, 6:, 0, 0] = 1.0  # channels 6-7 alive at one position only
    (finding,) = run_rule(activation_trace(make_trace, relu(pre), "relu"), "DBG201").findings
    assert finding.value == 75.0 and finding.extra["units"] == 8


def test_dying_relu_judges_a_conv_channel_per_sample(make_trace) -> None:
    """A channel that detects a pattern, firing at one of 144 positions of every third image,
    is active on 0.23 % of its values but in a third of the samples: alive. Never firing, it
    is dead."""
    pre = preactivations(steps=20, batch=32, units=16, shape=(12, 12))
    for values in pre:
        values[:, :10] -= 10.0
        values[::3, :10, 4, 7] = 1.0
    assert run_rule(activation_trace(make_trace, relu(pre), "relu"), "DBG201").status is (
        RuleStatus.passed
    )
    for values in pre:
        values[::3, :10, 4, 7] = -1.0
    (finding,) = keyed(run_rule(activation_trace(make_trace, relu(pre), "relu"), "DBG201"), "dead")
    assert finding.message == (
        "62 % of 16 units dead (active on < 1 % of their samples at most: < 0.0069 % of their "
        "values over 144 positions; > 50 %)"
    )
    assert finding.extra["positions"] == 144


def test_dying_relu_judges_a_channels_last_conv_channel_per_sample(make_trace) -> None:
    """The same detectors recorded channels last, ``(batch, height, width, channels)``."""
    pre = preactivations(steps=20, batch=32, units=16, shape=(12, 12))
    for values in pre:
        values[:, :10] -= 10.0
        values[::3, :10, 4, 7] = 1.0
    last = [np.ascontiguousarray(np.moveaxis(v, 1, -1)) for v in relu(pre)]
    tensors = {"act/relu1": {"values": last, "kind": "relu", "unit_axis": -1}}
    assert run_rule(make_trace(tensors=tensors), "DBG201").status is RuleStatus.passed
    # A 1-D convolution's channels, (batch, channels, length) with the units on axis 1.
    lengths = [v.reshape(32, 16, 144) for v in relu(pre)]
    tensors = {"act/relu1": {"values": lengths, "kind": "relu", "unit_axis": 1}}
    assert run_rule(make_trace(tensors=tensors), "DBG201").status is RuleStatus.passed


def test_dying_relu_on_preactivations_of_a_leaky_relu(make_trace) -> None:
    pre = shift_units(preactivations(), slice(0, 10), -10.0, range(30, 40))
    path = activation_trace(make_trace, pre, "leaky_relu", collection="preactivations")
    assert keyed(run_rule(path, "DBG201"), "dead")[0].first_step == 30


def gelu(values: list[np.ndarray]) -> list[np.ndarray]:
    """GELU in float64, then stored as float32 as a model's would be."""
    erf = np.vectorize(math.erf)
    return [(0.5 * v * (1 + erf(v / math.sqrt(2)))).astype(np.float32) for v in values]


def test_dying_relu_on_gelu_counts_its_live_dip_as_active(make_trace) -> None:
    """A GELU unit whose inputs sit between -2 and 0 is never positive, but its derivative is
    up to 0.5 in magnitude there: live, as a trained transformer's feed-forward units often
    are. Pushed beyond -3.07, where the derivative stays under 0.01, it is dead."""
    dip = shift_units(preactivations(), slice(0, 12), -1.2, range(40))
    for values in dip:
        values[:, :12] = np.clip(values[:, :12], -2.0, -0.01)
    path = activation_trace(make_trace, gelu(dip), "gelu")
    assert run_rule(path, "DBG201").status is RuleStatus.passed
    tail = shift_units(preactivations(), slice(0, 12), -10.0, range(20, 40))
    (finding,) = keyed(run_rule(activation_trace(make_trace, gelu(tail), "gelu"), "DBG201"), "dead")
    assert (finding.first_step, finding.value) == (20, 75.0)


def test_dying_relu_does_not_judge_non_finite_records(make_trace) -> None:
    values = relu(preactivations())
    for step in range(10, 40):
        values[step] = np.full_like(values[step], np.nan)
    assert (
        run_rule(activation_trace(make_trace, values, "relu"), "DBG201").status is RuleStatus.passed
    )


def test_dying_relu_judges_modes_apart(make_trace) -> None:
    train = relu(preactivations(steps=20))
    evaluation = relu(shift_units(preactivations(steps=20, seed=1), slice(0, 12), -10.0, range(20)))
    path = make_trace(
        tensors={
            "act/relu1": {
                "values": train + evaluation,
                "steps": [*range(20), *range(20)],
                "modes": ["train"] * 20 + ["eval"] * 20,
                "collection": "activations",
                "kind": "relu",
            }
        }
    )
    (finding,) = run_rule(path, "DBG201").findings
    assert (finding.mode, finding.first_step, finding.last_step, finding.steps) == (
        "eval",
        0,
        19,
        20,
    )


def test_smdebug_replay_all_zero_relu_output_from_step_500(make_trace) -> None:
    # The DeadRelu replay of the prior-art study: a ReLU output that is all zero from step
    # 500 of 1000 fires on steps 500-999.
    values = relu(preactivations(steps=1000, batch=8, units=8))
    for step in range(500, 1000):
        values[step] = np.zeros_like(values[step])
    (finding,) = run_rule(
        activation_trace(make_trace, values, "relu"), "DBG201", min_steps=1
    ).findings
    assert (finding.first_step, finding.last_step, finding.steps, finding.value) == (
        500,
        999,
        500,
        100.0,
    )


def test_dying_relu_skipped_without_relu_activations(make_trace) -> None:
    path = make_trace(
        scalars={"loss": [1.0, 0.5]},
        tensors={
            "act/tanh1": {
                "values": preactivations(steps=2),
                "collection": "activations",
                "kind": "tanh",
            }
        },
    )
    result = run_rule(path, "DBG201")
    assert result.status is RuleStatus.skipped
    assert result.reason == (
        "no per-unit activation measures of kind elu, gelu, leaky_relu, mish, relu, relu6, selu, "
        "silu (role 'activations' or 'preactivations')"
    )


def test_dying_relu_skipped_for_records_without_a_unit_axis(make_trace) -> None:
    values = [
        np.maximum(np.random.default_rng(s).normal(size=16), 0).astype(np.float32) for s in range(5)
    ]
    assert (
        run_rule(activation_trace(make_trace, values, "relu"), "DBG201").status
        is RuleStatus.skipped
    )


# -- DBG202 tanh-saturation -------------------------------------------------------------------


def test_tanh_saturation_fires_on_preactivations_outside_the_band(make_trace) -> None:
    pre = shift_units(preactivations(), slice(0, 11), 15.0, range(10, 40))
    result = run_rule(
        activation_trace(make_trace, pre, "tanh", collection="preactivations"), "DBG202"
    )
    (finding,) = keyed(result, "saturated")
    # The window of records 9-11 holds two saturated records of three: a unit there sits
    # where tanh' < 0.01 most of the time, so record 9 belongs to the episode.
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "act/tanh1",
        9,
        39,
        31,
    )
    assert finding.value == pytest.approx(100 * 11 / 16) and finding.threshold == 50.0
    assert finding.extra == {"units": 16, "min_steps": 3}  # saturation is per value
    assert finding.message.startswith("69 % of 16 tanh units saturated")


def test_tanh_saturation_uses_the_textbook_band(make_trace) -> None:
    """Units sitting around |z| = 4, where tanh' is 0.0013, are saturated; SageMaker Debugger's
    band (|z| < 9.5, tanh' > 1e-7) would call them active."""
    pre = shift_units(preactivations(), slice(0, 12), 4.0, range(40))
    pre = [np.where(np.arange(16) < 12, 4.0 + 0.3 * v, v).astype(np.float32) for v in pre]
    path = activation_trace(make_trace, pre, "tanh", collection="preactivations")
    (finding,) = run_rule(path, "DBG202").findings
    assert finding.value == 75.0 and "derivative >= 0.01" in finding.message


def test_tanh_saturation_fires_on_float32_outputs(make_trace) -> None:
    pre = shift_units(preactivations(), slice(0, 16), -20.0, range(25, 40))
    outputs = [np.tanh(v).astype(np.float32) for v in pre]
    (finding,) = run_rule(activation_trace(make_trace, outputs, "tanh"), "DBG202").findings
    assert (finding.first_step, finding.value) == (24, 100.0)
    # Every unit saturated from step 24 to the end of the run: the layer passes no gradient.
    assert finding.severity is not None and finding.severity.value == "error"


def test_tanh_saturation_that_recovers_is_a_warning(make_trace) -> None:
    pre = shift_units(preactivations(), slice(0, 16), -20.0, range(10, 25))
    outputs = [np.tanh(v).astype(np.float32) for v in pre]
    (finding,) = run_rule(activation_trace(make_trace, outputs, "tanh"), "DBG202").findings
    assert finding.value == 100.0 and finding.severity is not None
    assert finding.severity.value == "warning"


def test_saturation_hovering_around_the_threshold_is_one_episode(make_trace) -> None:
    """A saturated share that crosses 50 % back and forth (44 % and 56 %) is one episode."""
    steps = 60
    pre = preactivations(steps=steps)
    for step in range(10, 50):
        count = 9 if step % 6 < 3 else 7
        pre[step][:, :count] += 20.0
    path = activation_trace(make_trace, pre, "tanh", collection="preactivations")
    (finding,) = run_rule(path, "DBG202", min_steps=1).findings
    assert (finding.first_step, finding.last_step, finding.episodes) == (12, 49, 1)


def test_tanh_saturation_quiet_on_healthy_tanh_and_tunable(make_trace) -> None:
    healthy = [np.tanh(3.0 * v) for v in preactivations(steps=60)]
    assert (
        run_rule(activation_trace(make_trace, healthy, "tanh"), "tanh-saturation").status
        is RuleStatus.passed
    )
    pre = shift_units(preactivations(), slice(0, 11), 15.0, range(10, 40))
    path = activation_trace(make_trace, pre, "tanh", collection="preactivations")
    assert run_rule(path, "DBG202", threshold_layer=70.0).status is RuleStatus.passed
    # Pooled over all 40 records, the shifted units sit in the band a quarter of the time.
    assert run_rule(path, "DBG202", min_steps=40, threshold_inactivity=20.0).status is (
        RuleStatus.passed
    )


def test_tanh_saturation_skipped_without_tanh(make_trace) -> None:
    result = run_rule(activation_trace(make_trace, relu(preactivations(steps=3)), "relu"), "DBG202")
    assert result.status is RuleStatus.skipped
    assert result.reason == (
        "no per-unit activation measures of kind tanh (role 'activations' or 'preactivations')"
    )


# -- DBG203 sigmoid-saturation ----------------------------------------------------------------


def test_sigmoid_saturation_fires_on_both_sides_of_the_band(make_trace) -> None:
    pre = shift_units(preactivations(), slice(0, 5), -30.0, range(12, 40))
    pre = shift_units(pre, slice(5, 10), 25.0, range(12, 40))
    outputs = [(1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(np.float32) for v in pre]
    (finding,) = run_rule(activation_trace(make_trace, outputs, "sigmoid"), "DBG203").findings
    assert (finding.first_step, finding.last_step, finding.key) == (11, 39, "saturated")
    assert finding.value == pytest.approx(100 * 10 / 16)
    assert "sigmoid units saturated" in finding.message


def test_sigmoid_saturation_band_depends_on_the_role(make_trace) -> None:
    # Pre-activations use the input band |z| < 4.585: values around -3 are mostly inside it.
    # The same numbers read as outputs lie outside the output band (0.0101, 0.9899).
    low = [np.where(np.arange(16) < 12, -3.0 + 0.3 * v, v) for v in preactivations()]
    assert (
        run_rule(
            activation_trace(make_trace, low, "sigmoid", collection="preactivations"), "DBG203"
        ).status
        is RuleStatus.passed
    )
    assert (
        run_rule(activation_trace(make_trace, low, "sigmoid"), "DBG203").status
        is RuleStatus.violated
    )
    high = shift_units(preactivations(), slice(0, 12), 20.0, range(40))
    path = activation_trace(make_trace, high, "sigmoid", collection="preactivations")
    assert keyed(run_rule(path, "DBG203"), "saturated")[0].first_step == 0
    assert run_rule(path, "DBG203", threshold_layer=80.0).status is RuleStatus.passed


def test_saturation_inputs_found_by_name_and_collection(make_trace) -> None:
    """SageMaker Debugger's tanh_input collection and a Keras-style name say "pre-activation":
    the input band applies, so values around 2 (inside |z| < 2.99) are not saturated, while
    read as outputs (|tanh| < 0.995) they would be."""
    around_two = [np.where(np.arange(16) < 12, 2.0 + 0.2 * v, v) for v in preactivations()]
    for tag, collection, kind in (
        ("tanh1_input_0", "tanh_input", None),
        ("dense/preactivation", "activations", "tanh"),
        ("preact/tanh1", None, None),
    ):
        spec: dict[str, object] = {"values": around_two}
        if collection:
            spec["collection"] = collection
        if kind:
            spec["kind"] = kind
        path = make_trace(tensors={tag: spec})
        result = run_rule(path, "DBG202")
        assert result.status is RuleStatus.passed, (tag, result.reason)


def test_sigmoid_saturation_quiet_on_healthy_sigmoid(make_trace) -> None:
    outputs = [
        (1.0 / (1.0 + np.exp(-4.0 * v))).astype(np.float32) for v in preactivations(steps=60)
    ]
    assert (
        run_rule(activation_trace(make_trace, outputs, "sigmoid"), "DBG203").status
        is RuleStatus.passed
    )


def test_sigmoid_saturation_leaves_output_layers_alone(make_trace) -> None:
    # A binary classifier's sigmoid head, recorded as an activation: too few units for a layer.
    confident = [np.full((32, 1), 1.0, dtype=np.float32) for _ in range(10)]
    assert (
        run_rule(activation_trace(make_trace, confident, "sigmoid"), "DBG203").status
        is RuleStatus.passed
    )
    result = run_rule(
        activation_trace(make_trace, confident, "sigmoid", collection="predictions"), "DBG203"
    )
    assert result.status is RuleStatus.skipped
    assert result.reason == (
        "no per-unit activation measures of kind sigmoid (role 'activations' or 'preactivations')"
    )


def test_a_multi_label_head_trained_to_confidence_is_no_saturated_layer(tmp_path: Path) -> None:
    """A multi-label classifier ending in nn.Sigmoid, trained with nn.BCELoss (the textbook
    pairing) until it is confident: its six output units sit near 0 and 1, as they should.
    The PyTorch hook notes them as the model's output layer, which DBG203 leaves out; the
    hidden sigmoid layer of the same model is still judged."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    x = torch.randn(1024, 20)
    y = (x @ torch.randn(20, 6) > 0.8).float()
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 64), torch.nn.Sigmoid(), torch.nn.Linear(64, 6), torch.nn.Sigmoid()
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    path = tmp_path / "multilabel.h5"
    with attach(model, optimizer, path) as hook:
        for step in range(300):
            batch = slice(64 * (step % 16), 64 * (step % 16 + 1))
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy(model(x[batch]), y[batch])
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    result = run_rule(path, "DBG203")
    assert result.status is RuleStatus.passed, [f.message for f in result.findings]
    # Without the hook's note the head reads as a hidden layer, its units saturated.
    unnoted = tmp_path / "unnoted.h5"
    shutil.copy(path, unnoted)
    with h5py.File(unnoted, "r+") as file:
        metadata = json.loads(file.attrs["metadata"])
        assert metadata.pop("model_outputs") == ["act/3", "preact/3"]
        file.attrs["metadata"] = json.dumps(metadata)
    findings = run_rule(unnoted, "DBG203").findings
    assert {finding.tensor for finding in findings} == {"act/3", "preact/3"}


# -- sample traces ----------------------------------------------------------------------------


def test_sample_traces() -> None:
    healthy = analyze_path(SAMPLES / "numpy_mlp_healthy.h5", select=("activations",))
    assert [r.status for r in healthy.results] == [
        RuleStatus.passed,
        RuleStatus.skipped,
        RuleStatus.skipped,
    ]
    dead = analyze_path(SAMPLES / "numpy_mlp_dead_relu.h5", select=("DBG201",))
    findings = {f.tensor: f for f in dead.results[0].findings}
    assert set(findings) == {"act/relu1", "act/relu2"}
    assert findings["act/relu2"].value == 100.0 and findings["act/relu2"].first_step == 0
