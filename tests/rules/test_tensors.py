"""DBG401 all-zero, DBG402 tensor-variance, DBG403 unchanged-tensor, DBG404 non-finite-tensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from dbgcli.analysis import Options, analyze_trace, configure
from dbgcli.findings import Severity
from dbgcli.report.model import RuleResult, RuleStatus
from dbgcli.trace import reader

from .helpers import analyze_path, keyed, run_rule


def run_window(
    path: Path, rule: str, start: int | None, end: int | None, **params: object
) -> RuleResult:
    """Run a rule like smdebug's ``invoke_rule(start_step, end_step)`` (end exclusive)."""
    options = Options(
        select=(rule,),
        params={rule: params} if params else {},
        start=start,
        stop=None if end is None else end - 1,
    )
    report = analyze_trace(path, configure(options), options)
    assert report.error is None, report.error
    (result,) = report.results
    assert result.status is not RuleStatus.error, result.reason
    return result


def sgd_weights(
    shape: tuple[int, ...], steps: int, ratio: float = 1e-3, seed: int = 0
) -> list[np.ndarray]:
    """He-initialised weights moved by random updates of about ``ratio`` times their norm."""
    rng = np.random.default_rng(seed)
    fan_in = int(np.prod(shape[1:]))
    w = rng.normal(0, np.sqrt(2 / fan_in), size=shape)
    out = []
    for _ in range(steps):
        out.append(w.astype(np.float32))
        step = rng.normal(size=shape)
        w = w + ratio * np.linalg.norm(w) * step / np.linalg.norm(step)
    return out


def healthy_tensors(steps: int = 40, seed: int = 0) -> dict[str, dict[str, object]]:
    """A small healthy layer: moving weights, zero-initialised then moving biases, shrinking
    gradients, ReLU activations with about half their values at zero, varied labels."""
    rng = np.random.default_rng(seed)
    weights = sgd_weights((32, 16), steps, seed=seed)
    biases = [np.zeros(32, np.float32)] + [
        rng.normal(0, 1e-2 * (1 + t / 10), 32).astype(np.float32) for t in range(1, steps)
    ]
    grads = [rng.normal(0, 1e-1 * 0.7**t, size=(32, 16)).astype(np.float32) for t in range(steps)]
    acts = [np.maximum(rng.normal(size=(64, 32)), 0).astype(np.float32) for _ in range(steps)]
    labels = [rng.integers(0, 4, size=64) for _ in range(steps)]
    return {
        "fc.weight": {"values": weights, "collection": "weights"},
        "fc.bias": {"values": biases, "collection": "biases"},
        "grad/fc.weight": {"values": grads, "collection": "gradients"},
        "act/relu": {"values": acts, "collection": "activations", "kind": "relu"},
        "labels": {"values": labels, "collection": "labels"},
    }


# -- DBG401 all-zero ------------------------------------------------------------------------------


def test_all_zero_fires_on_a_dead_relu_layer(make_trace) -> None:
    tensors = healthy_tensors()
    for step in range(10, 20):
        tensors["act/relu"]["values"][step] = np.zeros((64, 32), np.float32)  # type: ignore[index]
    result = run_rule(make_trace(tensors=tensors), "DBG401")
    (finding,) = keyed(result, "all-zero")
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "act/relu",
        10,
        19,
        10,
    )
    assert finding.value == 100.0 and finding.threshold == 100.0
    # Zero for a while and back: a warning. Zero from some record to the end: an error.
    assert finding.severity is not None and finding.severity.value == "warning"
    assert finding.message == "every element is exactly zero"
    for step in range(20, 40):
        tensors["act/relu"]["values"][step] = np.zeros((64, 32), np.float32)  # type: ignore[index]
    (dead,) = run_rule(make_trace(tensors=tensors), "DBG401").findings
    assert (dead.first_step, dead.last_step, dead.severity) == (10, 39, Severity.error)


def test_all_zero_judges_records_whose_zero_count_was_left_out(tmp_path: Path) -> None:
    """The PyTorch hook counts a gradient's zeros only where its minimum and maximum decide
    them: a non-zero record has no zero count, yet its L2 norm shows it is not all zero. A
    gradient zero at 3 of 40 steps recovers (a warning, not 'zero throughout'), and zero
    gradients at steps whose loss is exactly 0 (a satisfied margin loss) are no finding."""
    from dbgcli import TraceWriter

    rng = np.random.default_rng(0)
    zero_steps = {20, 30, 35}
    path = tmp_path / "run.h5"
    with TraceWriter(path) as writer:
        for step in range(40):
            writer.add_scalar("loss", 0.0 if step in {5, 6} else 0.5, step)
            grad = {"count": 64.0, "nan_count": 0.0, "inf_count": 0.0}
            if step in zero_steps | {5, 6}:
                grad.update(min=0.0, max=0.0, mean=0.0, std=0.0, l2=0.0, zero_frac=1.0)
            else:
                values = rng.normal(size=64)
                grad.update(min=values.min(), max=values.max(), l2=float(np.linalg.norm(values)))
            writer.add_tensor_stats(
                "grad/fc.weight", grad, step, shape=(8, 8), dtype=np.float32, collection="gradients"
            )
    (finding,) = keyed(run_rule(path, "DBG401"), "all-zero")
    assert (finding.first_step, finding.last_step, finding.steps) == (20, 35, 3)
    assert finding.severity is Severity.warning


def test_all_zero_quiet_on_healthy_tensors_and_zero_initialised_biases(make_trace) -> None:
    path = make_trace(tensors=healthy_tensors())
    assert run_rule(path, "all-zero").status is RuleStatus.passed
    (bias,) = keyed(run_rule(path, "all-zero", skip_initial=False), "all-zero")
    assert (bias.tensor, bias.first_step, bias.last_step) == ("fc.bias", 0, 0)


def test_all_zero_threshold_override_catches_mostly_zero_layers(make_trace) -> None:
    path = make_trace(tensors=healthy_tensors())
    (relu,) = run_rule(path, "DBG401", threshold=40.0).findings
    assert relu.tensor == "act/relu" and relu.steps == 40
    assert (
        relu.value is not None and 40 <= relu.value < 70 and "exactly zero (>= 40%)" in relu.message
    )


def test_all_zero_leaves_ids_alone(make_trace) -> None:
    """A batch of class 0 is all zero and perfectly ordinary: labels, class-id predictions
    and token ids are ids, not quantities, even when asked for by collection."""
    tensors = healthy_tensors()
    tensors["labels"]["values"][5] = np.zeros(64, np.int64)  # type: ignore[index]
    tensors["predictions"] = {
        "values": [np.zeros(64, np.float32) for _ in range(40)],
        "collection": "predictions",
    }
    path = make_trace(tensors=tensors)
    assert run_rule(path, "DBG401").status is RuleStatus.passed
    assert run_rule(path, "DBG401", collections="labels,predictions").status is RuleStatus.passed


def test_all_zero_leaves_attention_key_bias_gradients_alone(make_trace) -> None:
    zero = [np.zeros(16, np.float32) for _ in range(10)]
    path = make_trace(
        tensors={
            "grad/encoder.layer.0.attention.self.key.bias": {
                "values": zero,
                "collection": "gradients",
            },
            "grad/encoder.layer.0.attention.self.value.bias": {
                "values": zero,
                "collection": "gradients",
            },
        }
    )
    (finding,) = run_rule(path, "DBG401").findings
    assert finding.tensor == "grad/encoder.layer.0.attention.self.value.bias"


def test_all_zero_zero_gradients_fire_after_the_first_step(make_trace) -> None:
    tensors = healthy_tensors()
    tensors["grad/fc.weight"]["values"] = [np.zeros((32, 16), np.float32)] * 40
    (finding,) = run_rule(make_trace(tensors=tensors), "DBG401").findings
    assert (finding.tensor, finding.first_step, finding.last_step) == ("grad/fc.weight", 1, 39)


def test_a_bias_a_pairwise_loss_cancels_is_a_note_and_a_dead_layer_is_not(
    tmp_path: Path, make_trace
) -> None:
    """A scorer trained with MarginRankingLoss sees only s(a) - s(b): its output bias gets an
    exactly zero gradient and never moves, while the output weight's gradient is not zero.
    That is a property of the loss (a note in DBG401 and DBG403), not a dead layer; a bias
    gradient zero at one step beside a weight gradient that is not is no finding; the same
    zero gradient beside a zero weight gradient stays one."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    truth = torch.randn(6)
    path = tmp_path / "ranking.h5"
    with attach(model, optimizer, path, stats_every=1) as hook:
        for _ in range(30):
            a, b = torch.randn(64, 6), torch.randn(64, 6)
            order = torch.sign(a @ truth - b @ truth)
            optimizer.zero_grad()
            loss = torch.nn.functional.margin_ranking_loss(
                model(a).squeeze(1), model(b).squeeze(1), order, margin=0.1
            )
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    report = analyze_path(path, select=("DBG401", "DBG403"))
    findings = [f for result in report.results for f in result.findings]
    assert {(f.rule_id, f.tensor, f.key, f.severity) for f in findings} == {
        ("DBG401", "grad/2.bias", "invariant", Severity.info),
        ("DBG403", "2.bias", "invariant", Severity.info),
    }
    assert "the loss does not depend on this bias" in findings[0].message

    # A multi-margin loss's bias gradient sums contributions of ±1/N: at a step where one
    # sample's violated margin pushes a class up and another's pushes it down by as much, it
    # is exactly zero while the weight gradient is not. The gradient still reached the layer.
    cancelled = healthy_tensors()
    rng = np.random.default_rng(2)
    bias_grads = [rng.normal(0, 1e-2, 32).astype(np.float32) for _ in range(40)]
    bias_grads[20] = np.zeros(32, np.float32)
    cancelled["grad/fc.bias"] = {"values": bias_grads, "collection": "gradients"}
    assert run_rule(make_trace(tensors=cancelled), "DBG401").status is RuleStatus.passed
    cancelled["grad/fc.weight"]["values"][20] = np.zeros((32, 16), np.float32)  # type: ignore[index]
    both = keyed(run_rule(make_trace(tensors=cancelled), "DBG401"), "all-zero")
    assert {(f.tensor, f.first_step, f.last_step, f.severity) for f in both} == {
        ("grad/fc.bias", 20, 20, Severity.warning),
        ("grad/fc.weight", 20, 20, Severity.warning),
    }

    dead = healthy_tensors()
    dead["grad/fc.bias"] = {"values": [np.zeros(32, np.float32)] * 40, "collection": "gradients"}
    dead["grad/fc.weight"]["values"] = [np.zeros((32, 16), np.float32)] * 40
    found = run_rule(make_trace(tensors=dead), "DBG401").findings
    assert {(f.tensor, f.key, f.severity) for f in found} == {
        ("grad/fc.bias", "all-zero", Severity.error),
        ("grad/fc.weight", "all-zero", Severity.error),
    }


# -- DBG402 tensor-variance -----------------------------------------------------------------------


def test_tensor_variance_fires_on_a_constant_initialised_layer(make_trace) -> None:
    tensors = healthy_tensors()
    rng = np.random.default_rng(1)
    # Constant init: units stay (almost) identical while training nudges them together.
    tensors["fc2.weight"] = {
        "values": [
            (0.05 + t * 1e-4 + rng.normal(0, 1e-8, (16, 32))).astype(np.float32) for t in range(40)
        ],
        "collection": "weights",
    }
    result = run_rule(make_trace(tensors=tensors), "DBG402")
    (finding,) = keyed(result, "near-constant")
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "fc2.weight",
        0,
        39,
        40,
    )
    assert finding.value is not None and finding.value < 1e-6 and finding.threshold == 1e-6


def test_tensor_variance_fires_on_a_collapsed_activation(make_trace) -> None:
    tensors = healthy_tensors()
    for step in range(25, 30):
        tensors["act/relu"]["values"][step] = np.full((64, 32), 3.0, np.float32)  # type: ignore[index]
    (finding,) = run_rule(make_trace(tensors=tensors), "DBG402").findings
    assert (finding.tensor, finding.first_step, finding.last_step, finding.key) == (
        "act/relu",
        25,
        29,
        "near-constant",
    )
    assert (
        finding.value == 0.0 and finding.message == "every element has the same value (variance 0)"
    )


def test_tensor_variance_quiet_on_converging_gradients_and_constant_1d_parameters(
    make_trace,
) -> None:
    tensors = healthy_tensors()
    tensors["norm.weight"] = {"values": [np.ones(32, np.float32)] * 40, "collection": "weights"}
    tensors["fc.bias"]["values"] = [np.full(32, 0.01, np.float32)] * 40
    tensors["grad/fc.bias"] = {"values": [np.zeros(32, np.float32)] * 40, "collection": "gradients"}
    path = make_trace(tensors=tensors)
    assert run_rule(path, "tensor-variance").status is RuleStatus.passed
    # The gradients shrink to a variance of about 1e-14 as "training" converges: an absolute
    # bound fires on them (and on the all-zero gradient), which is why it is unset by default.
    low = keyed(run_rule(path, "DBG402", min_threshold=1e-6), "too-small")
    assert {f.tensor for f in low} == {"grad/fc.weight", "grad/fc.bias", "norm.weight"}
    gradient = next(f for f in low if f.tensor == "grad/fc.weight")
    assert gradient.first_step == 13 and gradient.last_step == 39


def test_tensor_variance_max_threshold_and_disabling(make_trace) -> None:
    path = make_trace(tensors=healthy_tensors())
    high = keyed(run_rule(path, "DBG402", max_threshold=0.3), "too-large")
    assert [f.tensor for f in high] == ["act/relu"]
    constant = healthy_tensors()
    constant["act/relu"]["values"] = [np.full((64, 32), 3.0, np.float32)] * 40
    assert (
        run_rule(make_trace(tensors=constant), "DBG402", min_relative=0.0).status
        is RuleStatus.passed
    )


# -- DBG403 unchanged-tensor ----------------------------------------------------------------------


@pytest.fixture
def smdebug_unchanged_trace(make_trace) -> Path:
    """SageMaker Debugger 2019 ``test_unchanged.py``: foo_0..2 all ones at steps 0, 1, 2;
    boo_0..2 only at step 5."""
    tensors = {}
    for i in range(3):
        tensors[f"foo_{i}"] = {"values": [np.ones((10, 3, 2), np.float32)] * 3, "steps": [0, 1, 2]}
        tensors[f"boo_{i}"] = {"values": [np.ones((10, 3, 2), np.float32)], "steps": [5]}
    return make_trace(tensors=tensors)


def test_unchanged_smdebug_2019_cases(smdebug_unchanged_trace: Path) -> None:
    everything = {"collections": ""}  # tensor_regex='.*'
    assert (
        run_window(smdebug_unchanged_trace, "DBG403", 0, 2, **everything).status
        is RuleStatus.passed
    )
    fired = run_window(smdebug_unchanged_trace, "DBG403", 0, 3, **everything)
    assert sorted((f.tensor, f.first_step, f.last_step) for f in fired.findings) == [
        ("foo_0", 0, 2),
        ("foo_1", 0, 2),
        ("foo_2", 0, 2),
    ]
    assert all(f.value == 3 and "full tensors all-close" in f.message for f in fired.findings)
    # Evaluating from step 2 still sees steps 0 and 1 as history.
    assert len(run_window(smdebug_unchanged_trace, "DBG403", 2, 3, **everything).findings) == 3
    # boo_* has a single saved step: fewer than num_steps never fires.
    assert (
        run_window(smdebug_unchanged_trace, "DBG403", 3, 6, **everything).status
        is RuleStatus.passed
    )


def test_unchanged_frozen_layer_fires_from_full_tensors(make_trace) -> None:
    tensors = healthy_tensors()
    weights = tensors["fc.weight"]["values"]
    for step in range(20, 40):
        weights[step] = weights[19]  # type: ignore[index]
    result = run_rule(make_trace(tensors=tensors), "DBG403")
    (finding,) = keyed(result, "unchanged")
    # From step 19 on, the last record that differs from its predecessor.
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "fc.weight",
        19,
        39,
        21,
    )
    assert finding.value == 21 and finding.threshold == 3
    assert "full tensors all-close" in finding.message
    assert finding.severity is not None and finding.severity.value == "warning"
    path = make_trace(tensors=tensors)
    assert keyed(run_rule(path, "DBG403", num_steps=21), "unchanged")[0].first_step == 19
    assert run_rule(path, "DBG403", num_steps=22).status is RuleStatus.passed


def test_unchanged_quiet_on_training_weights_without_reading_them(make_trace, monkeypatch) -> None:
    path = make_trace(tensors=healthy_tensors(steps=60))
    masks: list[tuple[str, int | None]] = []
    original = reader.Trace.iter_raw

    def spy(self, tag, *, mask=None, **options):  # type: ignore[no-untyped-def]
        masks.append((tag, None if mask is None else int(mask.sum())))
        return original(self, tag, mask=mask, **options)

    monkeypatch.setattr(reader.Trace, "iter_raw", spy)
    assert run_rule(path, "unchanged-tensor").status is RuleStatus.passed
    assert masks == []  # statistics prove every record changed: no full tensor is read


def test_unchanged_reads_only_candidate_records(make_trace, monkeypatch) -> None:
    tensors = healthy_tensors()
    weights = tensors["fc.weight"]["values"]
    for step in (31, 32):
        weights[step] = weights[30]  # type: ignore[index]
    path = make_trace(tensors=tensors)
    fed: list[int] = []
    original = reader.Trace.iter_raw

    def spy(self, tag, *, mask=None, **options):  # type: ignore[no-untyped-def]
        for chunk in original(self, tag, mask=mask, **options):
            fed.extend(int(r) for r in chunk.records)
            yield chunk

    monkeypatch.setattr(reader.Trace, "iter_raw", spy)
    (finding,) = run_rule(path, "DBG403").findings
    assert (finding.first_step, finding.last_step) == (30, 32)
    assert sorted(fed) == [30, 31, 32]


def test_unchanged_falls_back_to_statistics_without_full_tensors(make_trace) -> None:
    tensors = healthy_tensors()
    tensors["fc.bias"]["values"] = [np.full(32, 0.1, np.float32)] * 40
    (finding,) = run_rule(make_trace(tensors=tensors, raw_every=0), "DBG403").findings
    assert (finding.tensor, finding.first_step, finding.last_step) == ("fc.bias", 0, 39)
    assert "statistics identical (full tensors not kept" in finding.message


def test_unchanged_tolerance_applies_to_full_tensors_only(make_trace) -> None:
    # A creep of 1e-7 relative per step is within rtol: all-close on full tensors, but the
    # statistics move, so the stricter fallback does not call it unchanged.
    base = np.random.default_rng(0).normal(0, 0.25, (32, 16))
    creeping = [(base * (1 + 1e-7 * t)).astype(np.float64) for t in range(10)]
    tensors = {"fc.weight": {"values": creeping, "collection": "weights"}}
    (finding,) = run_rule(make_trace(tensors=tensors), "DBG403").findings
    assert (finding.first_step, finding.last_step, finding.value) == (0, 9, 10)
    assert (
        run_rule(make_trace(tensors=tensors), "DBG403", rtol=0.0, atol=0.0).status
        is RuleStatus.passed
    )
    assert run_rule(make_trace(tensors=tensors, raw_every=0), "DBG403").status is RuleStatus.passed


def test_unchanged_compares_records_of_the_same_mode(make_trace) -> None:
    weights = sgd_weights((16, 8), 20)
    values, steps, modes = [], [], []
    for step, value in enumerate(weights):
        values.append(value)
        steps.append(step)
        modes.append("train")
        if step % 5 == 0:  # the same weights recorded again during evaluation
            values.append(value)
            steps.append(step)
            modes.append("eval")
    tensors = {
        "fc.weight": {"values": values, "steps": steps, "modes": modes, "collection": "weights"}
    }
    assert run_rule(make_trace(tensors=tensors), "DBG403").status is RuleStatus.passed


def test_unchanged_gradients_and_nan_options(make_trace) -> None:
    tensors = healthy_tensors()
    tensors["grad/fc.weight"]["values"] = [np.full((32, 16), np.nan, np.float32)] * 40
    path = make_trace(tensors=tensors)
    assert run_rule(path, "DBG403", collections="gradients").status is RuleStatus.passed
    (finding,) = run_rule(path, "DBG403", collections="gradients", equal_nan=True).findings
    assert (finding.tensor, finding.first_step) == ("grad/fc.weight", 0)


def test_unchanged_rejects_num_steps_below_two(make_trace) -> None:
    path = make_trace(tensors=healthy_tensors(steps=3))
    options = Options(select=("DBG403",), params={"DBG403": {"num_steps": 1}})
    (result,) = analyze_trace(path, configure(options), options).results
    assert result.status is RuleStatus.error and "num_steps must be at least 2" in result.reason


# -- DBG404 non-finite-tensor ---------------------------------------------------------------------


@pytest.fixture
def smdebug_invoker_trace(make_trace) -> Path:
    """SageMaker Debugger 2019 ``test_invoker.py``: foo_0..2 of shape (1,), NaN at steps 0 and
    2, ordinary data at step 1."""
    values = [
        np.array([np.nan], np.float32),
        np.array([0.5], np.float32),
        np.array([np.nan], np.float32),
    ]
    return make_trace(tensors={f"foo_{i}": {"values": values} for i in range(3)})


def test_non_finite_smdebug_2019_invoker_case(smdebug_invoker_trace: Path) -> None:
    from_zero = run_window(smdebug_invoker_trace, "DBG404", 0, 3)
    # SageMaker Debugger's invoker raises at steps 0 and 2; here each tensor's two episodes
    # are one finding, from step 0 to step 2.
    assert sorted(
        (f.tensor, f.first_step, f.last_step, f.episodes) for f in from_zero.findings
    ) == [(f"foo_{i}", 0, 2, 2) for i in range(3)]
    assert all(f.key == "nan" and f.value == 1 for f in from_zero.findings)
    from_one = run_window(smdebug_invoker_trace, "DBG404", 1, 3)
    assert sorted((f.tensor, f.first_step) for f in from_one.findings) == [
        (f"foo_{i}", 2) for i in range(3)
    ]


def test_non_finite_reports_nan_and_inf_in_any_collection(make_trace) -> None:
    tensors = healthy_tensors()
    tensors["labels"]["values"] = [v.astype(np.float32) for v in tensors["labels"]["values"]]  # type: ignore[union-attr]
    tensors["labels"]["values"][12][:3] = np.nan  # type: ignore[index]
    tensors["act/relu"]["values"][30][0, :2] = np.inf  # type: ignore[index]
    path = make_trace(tensors=tensors)
    result = run_rule(path, "DBG404")
    (nan,) = keyed(result, "nan")
    (inf,) = keyed(result, "inf")
    assert (nan.tensor, nan.first_step, nan.value, nan.message) == (
        "labels",
        12,
        3.0,
        "3 NaN elements",
    )
    assert (inf.tensor, inf.first_step, inf.value) == ("act/relu", 30, 2.0)
    assert inf.severity is not None and inf.severity.value == "error"
    only_nan = run_rule(path, "DBG404", only_nan=True)
    assert [f.key for f in only_nan.findings] == ["nan"]
    assert (
        run_rule(path, "DBG404", collections="weights,activations", only_nan=True).status
        is RuleStatus.passed
    )


def test_tensors_that_went_non_finite_after_the_loss_are_not_its_cause(tmp_path: Path) -> None:
    """A hand-written cross-entropy, -log(softmax(50 z))[y]: the softmax of a confidently
    wrong sample underflows to 0 and the loss is infinite, its backward NaN, and the update
    makes the weights NaN. While the loss was finite so were the weights and activations it
    was computed from; the NaN ones recorded after it (every 10th step) followed it (key
    after-loss), and the report leads with the non-finite loss, not with the first layer's
    NaN activations."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    from .helpers import analyze_path

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(512, 8)
    y = x[:, :4].argmax(dim=1)
    path = tmp_path / "underflow.h5"
    losses = []
    with attach(model, optimizer, path) as hook:
        for step in range(60):
            batch = slice(64 * (step % 8), 64 * (step % 8 + 1))
            optimizer.zero_grad()
            chosen = torch.softmax(model(x[batch]) * 50, dim=1)[torch.arange(64), y[batch]]
            loss = -torch.log(chosen).mean()
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    broke = next(step for step, value in enumerate(losses) if not np.isfinite(value))
    result = run_rule(path, "DBG404")
    spread = {f.tensor for f in keyed(result, "after-loss")}
    assert {"0.weight", "2.weight", "act/1"} <= spread
    (first,) = [f for f in keyed(result, "after-loss") if f.tensor == "0.weight"]
    assert f"the train loss went non-finite first, at step {broke}" in first.message
    report = analyze_path(path)
    assert report.findings[report.problems[0].cause].rule_id == "DBG306"


def test_non_finite_quiet_on_healthy_tensors(make_trace) -> None:
    assert (
        run_rule(make_trace(tensors=healthy_tensors()), "non-finite-tensor").status
        is RuleStatus.passed
    )


def test_tensor_rules_skip_without_tensors(make_trace) -> None:
    path = make_trace(scalars={"loss": [1.0, 0.5]})
    for rule in ("DBG401", "DBG402", "DBG403", "DBG404"):
        result = run_rule(path, rule)
        assert result.status is RuleStatus.skipped
        assert result.reason.startswith("no tensors")


def test_tensor_rules_skip_when_the_selected_collections_are_absent(make_trace) -> None:
    path = make_trace(tensors={"x": {"values": [np.ones(3)] * 3, "collection": "labels"}})
    skipped = run_rule(path, "DBG403")
    assert skipped.status is RuleStatus.skipped
    assert skipped.reason == "no tensors of role 'weights' or 'biases'"
    assert run_rule(path, "DBG403", collections="labels").status is not RuleStatus.skipped


def frozen_run(
    path: Path,
    *,
    declared: bool,
    stats_every: int = 10,
    only_the_last_bias: bool = False,
    steps: int = 12,
) -> Path:
    """A real PyTorch run of ``steps`` steps whose first layer never changes: frozen with
    ``requires_grad=False`` (``declared``, fine-tuning with a frozen backbone), or left out of
    the optimizer while its gradient flows (the classic bug). ``only_the_last_bias``: every
    parameter but the last bias is frozen (``requires_grad=False``) by mistake."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    if declared:
        model[0].requires_grad_(False)
    if only_the_last_bias:
        model.requires_grad_(False)
        model[2].bias.requires_grad_(True)
    optimizer = torch.optim.SGD([p for p in model[2].parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with attach(model, optimizer, path, stats_every=stats_every) as hook:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            hook.record_loss(loss)
    return path


def test_unchanged_tells_a_frozen_backbone_from_a_forgotten_layer(tmp_path: Path) -> None:
    frozen = run_rule(frozen_run(tmp_path / "frozen.h5", declared=True), "DBG403")
    assert {f.tensor for f in frozen.findings} == {"0.weight", "0.bias"}
    assert all(f.key == "frozen" and f.severity is Severity.info for f in frozen.findings)
    assert "requires_grad is False" in frozen.findings[0].message

    path = frozen_run(tmp_path / "forgotten.h5", declared=False)
    forgotten = run_rule(path, "DBG403")
    assert {f.tensor for f in forgotten.findings} == {"0.weight", "0.bias"}
    for finding in forgotten.findings:
        assert finding.key == "unchanged" and finding.severity is Severity.warning
        # The hook listed the layer among the parameters the optimizer does not hold.
        assert "it is in none of the optimizer's parameter groups" in finding.message
        # At the default stats_every=10 two records, 10 steps apart, are enough.
        assert (finding.first_step, finding.last_step, finding.steps) == (0, 10, 2)
    # Without that note (a trace written by hand) a gradient without updates is a guess.
    with h5py.File(path, "r+") as handle:
        metadata = json.loads(handle.attrs["metadata"])
        del metadata["parameters_not_in_optimizer"]
        handle.attrs["metadata"] = json.dumps(metadata)
    for finding in run_rule(path, "DBG403").findings:
        assert "never updated (not in the optimizer, or updates too small to show?)" in (
            finding.message
        )


def train_in_batches(model: Any, optimizer: Any, x: Any, y: Any, path: Path, *, steps: int) -> Path:
    """Train ``model`` on batches of 64 of ``x``, ``y`` (512 rows) in turn, recorded by the
    PyTorch hook at its defaults into ``path``."""
    import torch

    from dbgcli.torch import attach

    with attach(model, optimizer, path) as hook:
        for step in range(steps):
            batch = slice(64 * (step % 8), 64 * (step % 8 + 1))
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            hook.record_loss(loss)
    return path


def test_a_parameter_group_at_a_learning_rate_of_zero_is_frozen_on_purpose(
    tmp_path: Path,
) -> None:
    """Two parameter groups, the first layer's at lr 0: the hook notes which group holds
    each parameter, and the first layer, with a gradient and no update, is frozen by its
    group's rate, not a vanishing gradient's updates too small to show. The head trains and
    the loss comes down: a linear probe, on purpose."""
    torch = pytest.importorskip("torch")
    from dbgcli import open_trace

    torch.manual_seed(0)
    centres = 3 * torch.randn(4, 16)
    y = torch.randint(0, 4, (512,))
    x = centres[y] + torch.randn(512, 16)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    groups = [
        {"params": model[0].parameters(), "lr": 0.0},
        {"params": model[2].parameters(), "lr": 1e-2},
    ]
    path = train_in_batches(model, torch.optim.Adam(groups), x, y, tmp_path / "probe.h5", steps=200)
    with open_trace(path) as trace:
        assert trace.metadata["parameter_groups"] == {
            "0.weight": "lr",
            "0.bias": "lr",
            "2.weight": "lr/group1",
            "2.bias": "lr/group1",
        }
    findings = run_rule(path, "DBG403").findings
    assert {f.tensor for f in findings} == {"0.weight", "0.bias"}
    for finding in findings:
        assert (finding.key, finding.severity) == ("frozen", Severity.info)
        assert "the learning rate of its parameter group is 0 at every record" in finding.message


def test_unchanged_tells_updates_too_small_to_show_from_a_forgotten_layer(tmp_path: Path) -> None:
    """A bias right before a BatchNorm gets a gradient that is zero but for rounding (the norm
    subtracts the batch mean), so SGD's steps round away. The hook says the optimizer holds
    it: a note that its updates are too small to show, not a parameter missing from the
    optimizer. The same run with the layer left out of the optimizer warns, as a fact."""
    torch = pytest.importorskip("torch")

    def train(path: Path, *, forget_the_first_layer: bool) -> Path:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(8, 32),
            torch.nn.BatchNorm1d(32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 3),
        )
        trained = list(model[1:].parameters()) if forget_the_first_layer else model.parameters()
        optimizer = torch.optim.SGD(trained, lr=0.05)
        x = torch.randn(512, 8)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        return train_in_batches(model, optimizer, x, y, path, steps=60)

    held = run_rule(train(tmp_path / "bn.h5", forget_the_first_layer=False), "DBG403")
    assert [(f.tensor, f.key, f.severity) for f in held.findings] == [
        ("0.bias", "too-small", Severity.info)
    ]
    assert "it is in the optimizer (the recorder checked)" in held.findings[0].message

    forgotten = run_rule(train(tmp_path / "forgot.h5", forget_the_first_layer=True), "DBG403")
    by_tensor = {f.tensor: f for f in forgotten.findings}
    assert by_tensor["0.weight"].key == "unchanged"
    assert by_tensor["0.weight"].severity is Severity.warning
    assert "in none of the optimizer's parameter groups" in by_tensor["0.weight"].message


def test_a_freeze_that_leaves_nothing_to_learn_with_is_the_cause(tmp_path: Path) -> None:
    """Every layer's weights frozen and only a bias training: the loss cannot fall, and the
    freeze is the cause (a warning that explains the underfitting), not a fine-tune's
    design."""
    path = frozen_run(tmp_path / "all.h5", declared=False, only_the_last_bias=True, steps=120)
    result = run_rule(path, "DBG403")
    assert {f.tensor for f in result.findings} == {"0.weight", "0.bias", "2.weight"}
    for finding in result.findings:
        assert finding.key == "unchanged" and finding.severity is Severity.warning
        assert "leaves the model nothing to learn with" in finding.message
    report = analyze_path(path, select=("DBG303", "DBG403"))
    cause = report.findings[report.problems[0].cause]
    assert cause.rule_id == "DBG403"
    assert {report.findings[i].rule_id for i in report.problems[0].symptoms} >= {"DBG303"}


def test_a_freeze_whose_last_bias_undoes_a_bad_start_is_still_the_cause(tmp_path: Path) -> None:
    """Everything frozen but the last bias, which starts far off (one class's logit 4 above
    the others): tuning it brings the loss down by more than a fifth, from 4 to ln 3, the
    loss of a model that ignores its inputs, and no further. The loss fell, yet the model
    learned nothing: the freeze is the cause, as the run ends at chance."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model.requires_grad_(False)
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([4.0, 0.0, 0.0]))
    model[2].bias.requires_grad_(True)
    optimizer = torch.optim.SGD([model[2].bias], lr=0.05)
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "bias.h5"
    with attach(model, optimizer, path) as hook:
        for _ in range(300):
            x = torch.randn(64, 8, generator=generator)
            y = torch.randint(0, 3, (64,), generator=generator)  # nothing to learn from x
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            hook.record_loss(loss)
    result = run_rule(path, "DBG403")
    assert {f.tensor for f in result.findings} == {"0.weight", "0.bias", "2.weight"}
    for finding in result.findings:
        assert finding.key == "unchanged" and finding.severity is Severity.warning
        assert "the loss ends at chance" in finding.message
        assert "guessing among 3 classes" in finding.message


def test_a_backbone_frozen_by_mistake_under_a_training_head_is_the_cause(tmp_path: Path) -> None:
    """Most of the layers' weights frozen (requires_grad off on the backbone by mistake) and
    the head training on features that cannot separate the classes: the loss stays near its
    start, and the freeze, holding 80 % of the weights, is the cause of the underfitting."""
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR of two signs: random ReLU features barely help
    backbone = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU())
    backbone.requires_grad_(False)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model[1].parameters(), lr=0.01)
    path = train_in_batches(model, optimizer, x, y, tmp_path / "frozen.h5", steps=200)
    result = run_rule(path, "DBG403")
    weight = next(f for f in result.findings if f.tensor == "0.0.weight")
    assert weight.key == "unchanged" and weight.severity is Severity.warning
    assert "frozen, with 80% of the layers' weights" in weight.message
    report = analyze_path(path, select=("DBG303", "DBG403"))
    assert report.findings[report.problems[0].cause].rule_id == "DBG403"


def test_tuning_the_biases_alone_is_on_purpose_while_the_loss_comes_down(
    tmp_path: Path,
) -> None:
    """BitFit: a trained model's biases adapt it to shifted inputs, every weight matrix
    frozen. The loss comes down, so the freeze is the fine-tune's design, not the cause."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith("bias"))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    shifted = x + 1.0
    path = tmp_path / "bitfit.h5"
    losses = []
    with attach(model, optimizer, path) as hook:
        for _ in range(120):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(shifted), y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])  # it learns
    result = run_rule(path, "DBG403")
    assert result.findings and all(f.key == "frozen" for f in result.findings)


def branched_run(
    path: Path, *, used_until: dict[int, int], steps: int = 60, exclude: list[str] | None = None
) -> Path:
    """A real PyTorch run of a model with three branches (``branches.<i>.0`` and
    ``branches.<i>.2``, whose names share their words in another order), each in the optimizer
    and requiring a gradient; branch ``i`` takes part in the forward pass until step
    ``used_until[i]`` (0: never), as experts a router stops sending samples to."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from dbgcli.torch import attach

    torch.manual_seed(0)
    branches = nn.ModuleList(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)) for _ in range(3)
    )
    model = nn.Module()
    model.branches = branches
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    with attach(model, optimizer, path, exclude=exclude) as hook:
        for step in range(steps):
            optimizer.zero_grad()
            used = [b for i, b in enumerate(branches) if step < used_until.get(i, steps)]
            logits = sum(branch(x) for branch in used)
            loss = torch.nn.functional.cross_entropy(logits, y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    return path


def test_a_parameter_no_gradient_reaches_is_not_taken_for_a_frozen_one(tmp_path: Path) -> None:
    """A branch the forward pass never calls, and one it stops calling: PyTorch leaves their
    ``.grad`` None while they require one. Not frozen on purpose (the hook lists those), nor a
    parameter the optimizer forgot (it holds them): a note that the loss does not use them.
    ``branches.2.0.weight`` takes nothing from ``branches.0.2.weight``'s gradient."""
    path = branched_run(tmp_path / "branches.h5", used_until={1: 0, 2: 25})
    result = run_rule(path, "DBG403")
    assert {f.tensor for f in result.findings} == {
        f"branches.{i}.{j}.{p}" for i in (1, 2) for j in (0, 2) for p in ("weight", "bias")
    }
    for finding in result.findings:
        assert (finding.key, finding.severity) == ("unused", Severity.info), finding
        assert "no gradient reaches it, though it requires one" in finding.message
    # Branch 2 stood still from its last update on, not from the start.
    assert {f.first_step for f in result.findings if f.tensor.startswith("branches.2")} == {30}


def test_a_missing_gradient_is_not_read_as_unused_without_the_evidence(
    tmp_path: Path, make_trace
) -> None:
    """A branch the forward pass never calls, whose gradients the recorder was told to leave
    out (``exclude``), has no gradient records for another reason than the loss: not
    "unused". Nor is a parameter whose recorded gradient is NaN."""
    path = branched_run(tmp_path / "excluded.h5", used_until={1: 0}, exclude=["grad/branches.1.*"])
    result = run_rule(path, "DBG403")
    assert {f.tensor for f in result.findings} == {
        f"branches.1.{j}.{p}" for j in (0, 2) for p in ("weight", "bias")
    }
    assert all(f.key != "unused" for f in result.findings)

    rng = np.random.default_rng(0)
    moving = [rng.normal(size=(4, 4)) + step for step in range(10)]
    tensors = {
        "fc1.weight": {"values": [np.ones((4, 4))] * 10, "collection": "weights"},
        "fc2.weight": {"values": moving, "collection": "weights"},
        "grad/fc1.weight": {"values": [np.full((4, 4), np.nan)] * 10, "collection": "gradients"},
        "grad/fc2.weight": {"values": moving, "collection": "gradients"},
    }
    nan = make_trace(tensors=tensors, metadata={"frozen_parameters": []})
    (finding,) = run_rule(nan, "DBG403").findings
    assert (finding.tensor, finding.key, finding.severity) == (
        "fc1.weight",
        "unchanged",
        Severity.warning,
    )
    # Without the recorder's word on the optimizers, a parameter that requires a gradient and
    # gets none is still unused, without the claim that an optimizer holds it.
    del tensors["grad/fc1.weight"]
    (unheld,) = run_rule(
        make_trace(tensors=tensors, metadata={"frozen_parameters": []}), "DBG403"
    ).findings
    assert unheld.key == "unused"
    assert "though it requires one (the recorder checked)" in unheld.message


def test_a_parameter_frozen_after_attach_is_frozen_on_purpose(tmp_path: Path) -> None:
    """``requires_grad`` switched off once the run is under way (a backbone frozen after the
    head warmed up): the hook notes it at the next recorded step, whether its gradient is
    then None or a zeroed tensor (``zero_grad(set_to_none=False)``), and DBG403 reads it as
    declared. (With a zeroed gradient Adam's momentum keeps moving it for a while: SGD.)"""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    for set_to_none in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        x = torch.randn(64, 8)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        path = tmp_path / f"later-{set_to_none}.h5"
        with attach(model, optimizer, path) as hook:
            for step in range(60):
                if step == 15:
                    model[0].requires_grad_(False)
                optimizer.zero_grad(set_to_none=set_to_none)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                hook.record_loss(loss)
                loss.backward()
                optimizer.step()
        with reader.open_trace(path) as trace:
            assert trace.metadata["frozen_parameters"] == ["0.weight", "0.bias"]
        result = run_rule(path, "DBG403")
        assert {f.tensor for f in result.findings} == {"0.weight", "0.bias"}, set_to_none
        for finding in result.findings:
            assert (finding.key, finding.severity) == ("frozen", Severity.info)
            assert "requires_grad is False" in finding.message


def test_no_gradient_to_most_of_a_model_that_does_not_learn_is_the_cause(tmp_path: Path) -> None:
    """The backbone's output detached before the head, by mistake: no gradient reaches 80 %
    of the layers' weights, and the loss stays near its start. That is the cause of the
    underfitting, not a note."""
    torch = pytest.importorskip("torch")

    class Detached(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU())
            self.head = torch.nn.Linear(64, 2)

        def forward(self, x: Any) -> Any:
            return self.head(self.backbone(x).detach())

    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # random ReLU features barely tell the classes apart
    model = Detached()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    path = train_in_batches(model, optimizer, x, y, tmp_path / "detached.h5", steps=200)
    weight = next(f for f in run_rule(path, "DBG403").findings if f.tensor == "backbone.0.weight")
    assert (weight.key, weight.severity) == ("unchanged", Severity.warning)
    assert "nor 80% of the layers' weights, though they require one" in weight.message
    report = analyze_path(path, select=("DBG303", "DBG403"))
    assert report.findings[report.problems[0].cause].rule_id == "DBG403"


def test_unchanged_counts_its_run_in_steps_whatever_the_record_interval(tmp_path: Path) -> None:
    dense = frozen_run(tmp_path / "dense.h5", declared=False, stats_every=1)
    sparse = frozen_run(tmp_path / "sparse.h5", declared=False)  # records at steps 0 and 10
    # Recorded every step, 12 unchanged records cover 12 steps; every 10th step, records 0
    # and 10 stand for 20 steps: enough for num_steps=20, not for 21 (three records).
    for path, num_steps, fires in (
        (dense, 12, True),
        (dense, 13, False),
        (sparse, 20, True),
        (sparse, 21, False),
    ):
        result = run_rule(path, "DBG403", num_steps=num_steps)
        assert bool(result.findings) is fires, (path.name, num_steps)
