"""DBG501 poor-weight-initialization and DBG502 update-ratio."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from dbgcli.findings import Severity
from dbgcli.report.model import RuleStatus
from dbgcli.trace import reader

from .helpers import analyze_path, keyed, run_rule


def he(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), size=shape).astype(np.float32)


def trained(
    initial: np.ndarray,
    steps: int,
    ratio: float | list[float] = 1e-3,
    seed: int = 0,
    dtype: type = np.float32,
) -> list[np.ndarray]:
    """``initial`` moved by random updates of ``ratio`` (per step, or one for all) times the
    weight norm."""
    rng = np.random.default_rng(seed)
    ratios = ratio if isinstance(ratio, list) else [ratio] * steps
    w = initial.astype(np.float64)
    out = []
    for t in range(steps):
        out.append(w.astype(dtype))
        step = rng.normal(size=w.shape)
        w = w + ratios[t] * np.linalg.norm(w) * step / np.linalg.norm(step)
    return out


def mlp(
    steps: int = 5, seed: int = 0, norm: bool = True, **overrides: np.ndarray
) -> dict[str, dict[str, object]]:
    """An 8-64-64-4 He-initialised MLP (PyTorch layout) with an embedding table and (with
    ``norm``) a LayerNorm scale, trained for ``steps`` steps; ``overrides`` replace initial
    weights."""
    rng = np.random.default_rng(seed)
    initial = {
        "embed.weight": rng.normal(0, 1, (100, 8)).astype(np.float32),
        "fc1.weight": he((64, 8), rng),
        "fc2.weight": he((64, 64), rng),
        "fc3.weight": he((4, 64), rng),
    }
    if norm:
        initial["norm.weight"] = np.ones(64, np.float32)
    initial.update(overrides)
    return {
        tag: {"values": trained(value, steps, seed=seed + i), "collection": "weights"}
        for i, (tag, value) in enumerate(initial.items())
    }


# -- DBG501 poor-weight-initialization ------------------------------------------------------------


def test_initialization_quiet_on_he_layers_norm_scales_and_embeddings(make_trace) -> None:
    assert (
        run_rule(make_trace(tensors=mlp()), "poor-weight-initialization").status
        is RuleStatus.passed
    )


def test_initialization_quiet_on_glorot_with_unequal_fans(make_trace) -> None:
    rng = np.random.default_rng(0)

    def glorot(out: int, fan_in: int) -> np.ndarray:
        return rng.normal(0, np.sqrt(2 / (fan_in + out)), (out, fan_in)).astype(np.float32)

    # An RGB-like stem (3 -> 512) has var x fan_in = 0.012 and a ratio of 160 to the last layer.
    tensors = {
        f"fc{i}.weight": {"values": [w], "collection": "weights"}
        for i, w in enumerate([glorot(512, 3), glorot(512, 512), glorot(10, 512)])
    }
    assert run_rule(make_trace(tensors=tensors), "DBG501").status is RuleStatus.passed


def test_initialization_quiet_on_gpt2_depth_scaled_projections(make_trace) -> None:
    rng = np.random.default_rng(0)
    std, residual = 0.02, 0.02 / np.sqrt(2 * 12)
    # One attention block of GPT-2 small (its MLP block scales the same way).
    shapes = {"attn.c_attn": ((2304, 768), std), "attn.c_proj": ((768, 768), residual)}
    tensors = {
        f"h0.{name}.weight": {
            "values": [s * rng.standard_normal(shape, dtype=np.float32)],
            "collection": "weights",
        }
        for name, (shape, s) in shapes.items()
    }
    path = make_trace(tensors=tensors)
    assert run_rule(path, "DBG501").status is RuleStatus.passed
    # SageMaker Debugger's across-layer threshold of 10 flags this healthy scheme.
    (ratio,) = run_rule(path, "DBG501", threshold=10.0).findings
    assert ratio.key == "layer-ratio" and ratio.value is not None and 20 < ratio.value < 30


def test_initialization_symmetric_units(make_trace) -> None:
    rng = np.random.default_rng(0)
    rows = he((64, 64), rng)
    rows[[3, 7]] = 0.25
    tensors = mlp(**{"fc2.weight": rows, "fc3.weight": np.full((4, 64), 0.1, np.float32)})
    # Identical units get identical updates: fc3 stays constant from record to record.
    tensors["fc3.weight"]["values"] = [
        np.full((4, 64), 0.1 + 0.01 * step, np.float32) for step in range(5)
    ]
    path = make_trace(tensors=tensors)
    result = run_rule(path, "DBG501")
    (constant,) = keyed(result, "constant")
    assert (constant.tensor, constant.first_step, constant.last_step) == ("fc3.weight", 0, 0)
    assert constant.value is not None and abs(constant.value - 0.1) < 1e-7
    (some_rows,) = keyed(result, "constant-rows")
    assert (some_rows.tensor, some_rows.value, some_rows.first_step) == ("fc2.weight", 2.0, 0)
    assert some_rows.message == "2 of 64 output units start with equal weights"
    assert some_rows.severity is not None and some_rows.severity.value == "warning"
    assert not keyed(result, "too-small") and not keyed(result, "layer-ratio")


def test_a_constant_layer_whose_units_differentiate_broke_its_symmetry(make_trace) -> None:
    """LoRA's B starts at zero beside a random A: its rows (units) differ after the first
    updates, so the constant start made no identical units. A tensor that stays alike is
    reported."""
    rng = np.random.default_rng(0)
    diverging = [np.zeros((4, 64), np.float32)] + [
        rng.normal(0, 0.01 * step, (4, 64)).astype(np.float32) for step in range(1, 5)
    ]
    tensors = mlp()
    tensors["lora_B.weight"] = {"values": diverging, "collection": "weights"}
    assert not run_rule(make_trace(tensors=tensors), "DBG501").findings
    tensors["lora_B.weight"]["values"] = [np.full((4, 64), 0.01 * s, np.float32) for s in range(5)]
    (alike,) = run_rule(make_trace(tensors=tensors), "DBG501").findings
    assert (alike.key, alike.tensor) == ("constant", "lora_B.weight")


def test_initialization_symmetry_reads_the_first_and_the_last_full_tensor(
    make_trace, monkeypatch
) -> None:
    path = make_trace(tensors=mlp(steps=30, **{"fc3.weight": np.zeros((4, 64), np.float32)}))
    fed: list[tuple[str, int]] = []
    original = reader.Trace.iter_raw

    def spy(self, tag, *, mask=None, **options):  # type: ignore[no-untyped-def]
        for chunk in original(self, tag, mask=mask, **options):
            fed.extend((tag, int(r)) for r in chunk.records)
            yield chunk

    monkeypatch.setattr(reader.Trace, "iter_raw", spy)
    (finding,) = run_rule(path, "DBG501").findings
    assert finding.key == "constant" and finding.value == 0.0
    assert sorted(fed) == [
        (tag, record)
        for tag in ("embed.weight", "fc1.weight", "fc2.weight", "fc3.weight")
        for record in (0, 29)
    ]


def test_initialization_constant_from_statistics_without_full_tensors(make_trace) -> None:
    rows = he((64, 64), np.random.default_rng(0))
    rows[5] = 1.0
    tensors = mlp(**{"fc2.weight": rows, "fc3.weight": np.full((4, 64), -0.5, np.float32)})
    (finding,) = run_rule(make_trace(tensors=tensors, raw_every=0), "DBG501").findings
    assert (finding.key, finding.tensor, finding.value) == ("constant", "fc3.weight", -0.5)
    assert "from statistics" in finding.message


def test_initialization_scale_out_of_range(make_trace) -> None:
    rng = np.random.default_rng(0)
    tensors = mlp(
        norm=False,
        **{
            "fc2.weight": rng.normal(0, 1, (64, 64)).astype(np.float32),
            "fc3.weight": rng.normal(0, 1e-3, (4, 64)).astype(np.float32),
        },
    )
    result = run_rule(make_trace(tensors=tensors), "DBG501")
    (large,) = keyed(result, "too-large")
    assert (large.tensor, large.first_step, large.threshold) == ("fc2.weight", 0, 10.0)
    assert large.value is not None and 55 < large.value < 75
    (small,) = keyed(result, "too-small")
    assert small.tensor == "fc3.weight" and small.value is not None and small.value < 1e-3
    loose = run_rule(
        make_trace(tensors=tensors), "DBG501", min_scaled_variance=1e-6, max_scaled_variance=100.0
    )
    assert not keyed(loose, "too-large") and not keyed(loose, "too-small")
    assert keyed(loose, "layer-ratio")[0].value is not None


def test_initialization_layer_ratio(make_trace) -> None:
    rng = np.random.default_rng(0)
    # Each layer alone is within bounds (0.015 > 0.01), but 130x under the others.
    odd = rng.normal(0, np.sqrt(0.015 / 64), (64, 64)).astype(np.float32)
    tensors = mlp(norm=False, **{"fc2.weight": odd, "fc3.weight": he((64, 64), rng)})
    result = run_rule(make_trace(tensors=tensors), "DBG501")
    (ratio,) = result.findings
    assert (ratio.key, ratio.tensor, ratio.threshold) == ("layer-ratio", "fc2.weight", 100.0)
    assert ratio.value is not None and 100 < ratio.value < 170
    assert ratio.extra["smallest"] == "fc2.weight"
    assert (
        run_rule(make_trace(tensors=tensors), "DBG501", threshold=200.0).status is RuleStatus.passed
    )


def test_a_small_initialisation_the_run_learned_through_is_a_note(make_trace) -> None:
    """SIREN scales its hidden layers down by 30 for a sin(30x) after them: "too small" and
    "inconsistent" by the He/Glorot yardstick, but the loss came down 2000-fold, so the
    signal got through: notes. The same scales under a loss that stays at its start, or
    beside a layer too large (which inflates the first loss), stay warnings."""
    rng = np.random.default_rng(0)
    siren = {
        "fc2.weight": rng.uniform(-1, 1, (64, 64)).astype(np.float32) * np.sqrt(6 / 64) / 30,
        "fc3.weight": rng.uniform(-1, 1, (4, 64)).astype(np.float32) * np.sqrt(6 / 64) / 30,
    }
    tensors = mlp(norm=False, **siren)
    learned = {"loss": list(0.6 * np.exp(-np.arange(400) / 40) + 3e-4)}
    stuck = {"loss": list(0.6 * (0.95 + 0.05 * np.exp(-np.arange(400) / 40)))}
    result = run_rule(make_trace(scalars=learned, tensors=tensors), "DBG501")
    assert {(f.key, f.severity) for f in result.findings} == {
        ("too-small", Severity.info),
        ("layer-ratio", Severity.info),
    }
    assert all(
        "; the run learned regardless: its training loss fell to 0.055% of its start" in f.message
        for f in result.findings
    )
    result = run_rule(make_trace(scalars=stuck, tensors=tensors), "DBG501")
    assert {f.severity for f in result.findings} == {Severity.warning}
    large = mlp(norm=False, **siren, **{"fc1.weight": rng.normal(0, 3, (64, 8)).astype(np.float32)})
    result = run_rule(make_trace(scalars=learned, tensors=large), "DBG501")
    assert keyed(result, "too-large") and {f.severity for f in result.findings} == {
        Severity.warning
    }


def test_initialization_scale_is_not_judged_with_normalisation_layers(make_trace) -> None:
    """A transformer initialises every matrix at std 0.02 whatever its width, and GPT-2 scales
    its residual projections down further: with LayerNorm between them, that is by design."""
    rng = np.random.default_rng(1)
    tensors = mlp(
        **{
            "fc2.weight": rng.normal(0, 0.02, (64, 64)).astype(np.float32),
            "fc3.weight": rng.normal(0, 0.005, (4, 64)).astype(np.float32),
        }
    )
    assert run_rule(make_trace(tensors=tensors), "DBG501").status is RuleStatus.passed
    without = {k: v for k, v in tensors.items() if k != "norm.weight"}
    assert keyed(run_rule(make_trace(tensors=without), "DBG501"), "too-small")


def test_initialization_scale_is_not_judged_on_weight_normalised_layers(tmp_path: Path) -> None:
    """torch's weight_norm splits a layer's weight into a magnitude per unit (``original0``,
    shape ``(out, 1)``, from the rows' norms) and a direction (``original1``) that the layer
    divides by its norm: neither has the layer's scale. Their raw scales read "too small"
    and 2,300 times apart across layers; the recorded parameters of the plain layers beside
    them are still judged."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.parametrizations import weight_norm

    from dbgcli.torch import attach

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        weight_norm(torch.nn.Linear(20, 128)),
        torch.nn.ReLU(),
        weight_norm(torch.nn.Linear(128, 5)),
        torch.nn.ReLU(),
        torch.nn.Linear(5, 5),
    )
    with torch.no_grad():
        model[4].weight.mul_(0.01)  # a plain layer started too small
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    path = tmp_path / "weight-norm.h5"
    with attach(model, optimizer, path) as hook:
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    findings = run_rule(path, "DBG501").findings
    assert {(f.tensor, f.key) for f in findings} == {("4.weight", "too-small")}


def test_initialization_leaves_the_padding_row_of_an_embedding_alone(make_trace) -> None:
    table = np.random.default_rng(2).normal(0, 1, (100, 8)).astype(np.float32)
    table[0] = 0.0  # padding_idx=0
    tensors = mlp(**{"embed.weight": table})
    assert run_rule(make_trace(tensors=tensors), "DBG501").status is RuleStatus.passed


def test_initialization_skips_without_weights(make_trace) -> None:
    path = make_trace(tensors={"grad/w": {"values": [np.ones((4, 4))], "collection": "gradients"}})
    result = run_rule(path, "DBG501")
    assert result.status is RuleStatus.skipped and result.reason == "no tensors of role 'weights'"


# -- DBG502 update-ratio --------------------------------------------------------------------------


def sgd_layer(
    steps: int = 60, ratio: float | list[float] = 1e-3, seed: int = 0, dtype: type = np.float32
) -> list[np.ndarray]:
    return trained(
        he((32, 16), np.random.default_rng(seed)), steps, ratio=ratio, seed=seed, dtype=dtype
    )


def network(
    ratios: dict[str, float | list[float]], steps: int = 60, dtype: type = np.float32
) -> dict[str, dict[str, object]]:
    """Weight matrices moved by the given per-step update ratios (one per layer)."""
    return {
        tag: {
            "values": trained(
                he((32, 16), np.random.default_rng(seed)), steps, ratio, seed, dtype=dtype
            ),
            "collection": "weights",
        }
        for seed, (tag, ratio) in enumerate(ratios.items())
    }


def test_update_ratio_flags_the_layer_out_of_line(make_trace) -> None:
    """A parameter group with its own, far larger learning rate."""
    fast = [1e-3] * 10 + [0.5] * 20 + [1e-3] * 30
    path = make_trace(tensors=network({"fc1.weight": fast, "fc2.weight": 1e-3, "out.weight": 2e-3}))
    (finding,) = keyed(run_rule(path, "DBG502"), "too-large")
    # Records 11-30 were made by updates of 0.5 (record t by the update since t - 1).
    assert (finding.tensor, finding.first_step, finding.last_step) == ("fc1.weight", 11, 30)
    assert finding.value == pytest.approx(0.5, rel=1e-3) and finding.threshold == 0.1
    assert finding.severity is not None and finding.severity.value == "warning"
    # One layer is the parameter group's problem, not the learning rate's.
    assert run_rule(path, "DBG503").status is RuleStatus.passed


def test_update_ratio_quiet_on_a_small_layer_moving_a_few_times_faster(make_trace) -> None:
    """GPT-2's residual projections start small, so Adam moves them relatively faster: 0.12
    against 0.03 for the others is not an order of magnitude."""
    path = make_trace(
        tensors=network({"c_proj.weight": [0.12] * 15 + [0.01] * 45, "c_fc.weight": 0.03})
    )
    assert run_rule(path, "DBG502").status is RuleStatus.passed


def test_update_ratio_single_spikes_are_not_typical(make_trace) -> None:
    spikes = [1e-3] * 60
    spikes[10] = spikes[30] = 2.0
    path = make_trace(tensors=network({"fc1.weight": spikes, "fc2.weight": 1e-3}))
    assert run_rule(path, "DBG502").status is RuleStatus.passed
    assert keyed(run_rule(path, "DBG502", window=1), "too-large")


def test_update_ratio_is_per_step_and_its_window_counted_in_steps(make_trace) -> None:
    """Records 10 steps apart: the update between two of them is divided by 10, and each
    record is its own window of 5 steps (it already averages 10 updates): the large
    updates of those 10 steps are found, as every-step records find them."""
    ratios = [1e-3] * 60
    ratios[1] = 3.0  # weights moved by 3x their norm between the records at steps 10 and 20
    tensors = network({"fc1.weight": ratios, "fc2.weight": 1e-3, "out.weight": 1e-3})
    for spec in tensors.values():
        spec["steps"] = [10 * i for i in range(60)]
    (large,) = keyed(run_rule(make_trace(tensors=tensors), "DBG502"), "too-large")
    assert (large.tensor, large.first_step, large.last_step) == ("fc1.weight", 20, 20)
    assert large.value == pytest.approx(0.3, rel=1e-3)  # per step
    # A window of 50 steps holds 5 records again: one large record is not typical.
    assert not keyed(run_rule(make_trace(tensors=tensors), "DBG502", window=50), "too-large")


def test_update_ratio_too_small(make_trace) -> None:
    # float64 weights, so that updates of 1e-7 survive rounding.
    slow = [1e-3] * 20 + [1e-7] * 40
    tensors = network(
        {"fc1.weight": slow, "fc2.weight": 1e-3, "out.weight": 1e-3}, dtype=np.float64
    )
    stuck = {"loss": list(np.linspace(1.4, 1.3, 60))}
    (small,) = keyed(run_rule(make_trace(scalars=stuck, tensors=tensors), "DBG502"), "too-small")
    assert (small.tensor, small.first_step, small.last_step) == ("fc1.weight", 21, 59)
    assert small.value == pytest.approx(1e-7, rel=0.01) and small.threshold == 1e-5
    # A model that has fitted its data rightly makes tiny updates.
    fitted = {"loss": [1.4 * 0.8**t for t in range(60)]}
    assert run_rule(make_trace(scalars=fitted, tensors=tensors), "DBG502").status is (
        RuleStatus.passed
    )


def test_update_ratio_ignores_eval_records_and_zero_weights(make_trace) -> None:
    weights = [np.zeros((32, 16), np.float32)] + sgd_layer(ratio=1e-3)[1:30]
    values, steps, modes = [], [], []
    for step, value in enumerate(weights):
        values.append(value)
        steps.append(step)
        modes.append("train")
        if step % 10 == 0:
            values.append(value)
            steps.append(step)
            modes.append("eval")
    tensors = {
        "fc.weight": {"values": values, "steps": steps, "modes": modes, "collection": "weights"}
    }
    assert run_rule(make_trace(tensors=tensors), "DBG502").status is RuleStatus.passed


def test_update_ratio_from_full_tensors_of_a_hand_written_trace(tmp_path: Path) -> None:
    path = tmp_path / "hand.h5"
    layers = {"fc1.weight": sgd_layer(steps=10, ratio=1e-3), "fc2.weight": sgd_layer(steps=10)}
    for step in range(4, 9):
        layers["fc1.weight"][step] = layers["fc1.weight"][step - 1] * 5  # updates 4x the weights
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "dbg-trace"
        f.attrs["format_version"] = "1.0"
        for tag, weights in layers.items():
            group = f.create_group(f"tensors/{tag}")
            group.attrs["collection"] = "weights"
            group["step"] = np.arange(10)
            group["values"] = np.stack(weights)
    (finding,) = run_rule(path, "DBG502").findings
    assert (finding.key, finding.tensor) == ("too-large", "fc1.weight")
    assert finding.value == pytest.approx(4.0, rel=1e-5)


def test_update_ratio_skips_without_update_norms(make_trace) -> None:
    tensors = {
        "fc.weight": {"values": sgd_layer(steps=5), "collection": "weights", "track_updates": False}
    }
    result = run_rule(make_trace(tensors=tensors), "DBG502")
    assert result.status is RuleStatus.skipped
    assert result.reason == "no update norms (statistic update_l2) of weights tensors"
    no_weights = run_rule(make_trace(scalars={"loss": [1.0]}), "DBG502")
    assert no_weights.reason.startswith("no tensors of role 'weights'")


# -- DBG503 learning-rate -------------------------------------------------------------------------


def test_learning_rate_too_high_needs_large_updates_and_a_loss_that_shows_it(make_trace) -> None:
    tensors = network(
        {"fc1.weight": [0.5] * 20 + [0.01] * 40, "fc2.weight": 0.4, "out.weight": 0.3}
    )
    diverging = {"loss": [1.4, 3.0, 5.0] + [1.39] * 57, "lr": [1.0] * 60}
    (high,) = run_rule(make_trace(scalars=diverging, tensors=tensors), "DBG503").findings
    assert (high.key, high.tensor, high.first_step) == ("too-high", "lr", 0)
    assert high.value == pytest.approx(0.4, rel=1e-3) and high.threshold == 0.1
    assert (
        "rose to 5, 3.57x its start" in high.message and "learning rate of up to 1" in high.message
    )
    # Large updates whose loss falls well are not a problem.
    falling = {"loss": [1.4 * 0.95**t for t in range(60)], "lr": [1.0] * 60}
    assert run_rule(make_trace(scalars=falling, tensors=tensors), "DBG503").status is (
        RuleStatus.passed
    )
    # Falling from huge first logits (30) to chance (ln 32, the last layer's 32 outputs) and
    # no further: the updates killed the network, the loss did not fall well.
    to_chance = {"loss": [np.log(32) + 27 * 0.8**t for t in range(60)], "lr": [1.0] * 60}
    (dead,) = run_rule(make_trace(scalars=to_chance, tensors=tensors), "DBG503").findings
    assert dead.key == "too-high" and "the loss ended at chance" in dead.message


def test_learning_rate_too_low_needs_every_layer_starved_and_a_stuck_loss(make_trace) -> None:
    tensors = network(
        {"fc1.weight": 1e-6, "fc2.weight": 2e-6, "out.weight": 5e-6}, dtype=np.float64
    )
    stuck = {"loss": list(np.linspace(1.40, 1.38, 60))}
    (low,) = run_rule(make_trace(scalars=stuck, tensors=tensors), "DBG503").findings
    assert (low.key, low.threshold) == ("too-low", 1e-4)
    assert low.value == pytest.approx(2e-6, rel=0.01)
    # Tiny updates that shrink huge first logits (30) to just above chance (ln 32, the last
    # layer's 32 outputs) learned nothing, though the loss fell to an eighth of its start.
    to_chance = {"loss": [np.log(32) + 0.2 + 27 * 0.8**t for t in range(60)]}
    (low,) = run_rule(make_trace(scalars=to_chance, tensors=tensors), "DBG503").findings
    assert low.key == "too-low"
    assert "the training loss ended at 3.67, not below chance (guessing among 32" in low.message
    # The same fall to well below chance is learning: not reported.
    learned = {"loss": [1.0 + 29 * 0.8**t for t in range(60)]}
    assert run_rule(make_trace(scalars=learned, tensors=tensors), "DBG503").status is (
        RuleStatus.passed
    )
    # Vanishing gradients starve the first layers while the last still moves: not the rate.
    tensors["out.weight"] = network({"out.weight": 1e-2})["out.weight"]
    assert run_rule(make_trace(scalars=stuck, tensors=tensors), "DBG503").status is (
        RuleStatus.passed
    )


def test_learning_rate_decayed_to_nothing_early(make_trace) -> None:
    """A step decay stepped every batch: the rate is 1e-6 of its peak from step 40 of 200.
    The finding starts where the fall began: the first step of a schedule that only falls,
    the end of a warmup that comes first (the loss that stays high from the start is its
    symptom)."""
    lr = [0.1] * 20 + [1e-3] * 20 + [1e-7] * 160
    tensors = network({"fc1.weight": 1e-3, "fc2.weight": 1e-3}, steps=200)
    path = make_trace(scalars={"lr": lr, "loss": [1.0] * 200}, tensors=tensors)
    (decayed,) = keyed(run_rule(path, "DBG503"), "decayed")
    assert (decayed.tensor, decayed.first_step, decayed.last_step) == ("lr", 0, 199)
    assert decayed.value == pytest.approx(1e-6) and "80% of the run" in decayed.message
    assert "fell from 0.1 at step 0 to below 0.0001 of its peak 0.1 at step 40" in (decayed.message)
    warmed = list(np.linspace(0.01, 0.1, 10)) + [0.1] * 10 + [1e-7] * 180
    path = make_trace(scalars={"lr": warmed, "loss": [1.0] * 200}, tensors=tensors)
    (decayed,) = keyed(run_rule(path, "DBG503"), "decayed")
    assert decayed.first_step == 9
    # One lucky batch at a tenth of the start where the rate starves is no fitted model.
    lucky = [1.0] * 200
    lucky[40] = 0.05
    path = make_trace(scalars={"lr": lr, "loss": lucky}, tensors=tensors)
    assert keyed(run_rule(path, "DBG503"), "decayed")
    # A warmup from 0 and a linear decay to 0 at the end stay there only for a sliver.
    schedule = list(np.r_[np.linspace(0, 0.1, 20), np.linspace(0.1, 0, 180)])
    healthy = make_trace(scalars={"lr": schedule, "loss": [1.0] * 200}, tensors=tensors)
    assert not keyed(run_rule(healthy, "DBG503"), "decayed")


def test_a_plateau_scheduler_cutting_a_converged_runs_rate_starves_nothing(tmp_path) -> None:
    """ReduceLROnPlateau without a floor, stepped on the held-out loss every 25 steps: once
    the model has fitted 256 samples of four overlapping blobs, the held-out loss stops
    improving and the scheduler cuts the rate again and again, to below 1e-4 of its peak
    for most of the run. The flat loss there is convergence: neither a schedule that
    decayed early nor a stalled loss."""
    import torch
    from torch import nn

    from dbgcli.torch import attach

    torch.manual_seed(0)
    centres = torch.randn(4, 16)
    y = torch.randint(0, 4, (2304,))
    x = centres[y] + 1.5 * torch.randn(2304, 16)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=2)
    path = tmp_path / "plateau.h5"
    with attach(model, optimizer, path) as hook:
        for step in range(800):
            batch = slice(64 * (step % 4), 64 * (step % 4 + 1))
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
            if step % 25 == 24:
                with torch.no_grad():
                    held_out = nn.functional.cross_entropy(model(x[256:]), y[256:])
                hook.record_loss(held_out, mode="eval")
                plateau.step(held_out)
    assert optimizer.param_groups[0]["lr"] < 1e-4 * 0.05
    results = {r.id: r for r in analyze_path(path, select=("DBG301", "DBG503")).results}
    assert not keyed(results["DBG503"], "decayed")
    assert not keyed(results["DBG301"], "not-decreasing")


def test_a_schedule_is_no_symptom_of_the_data(make_trace) -> None:
    """Inputs off-centre from step 0 explain updates out of scale, not the recorded schedule:
    a step decay stepped every batch is its own problem, whatever started with it."""
    lr = [0.1] * 20 + [1e-3] * 20 + [1e-7] * 160
    tensors = {
        **network({"fc1.weight": 1e-3, "fc2.weight": 1e-3}, steps=200),
        "inputs": {
            "values": [
                3.0 + np.random.default_rng(step).standard_normal((64, 8)) for step in range(10)
            ],
            "steps": list(range(0, 200, 20)),
            "collection": "inputs",
        },
    }
    path = make_trace(scalars={"lr": lr, "loss": [1.0] * 200}, tensors=tensors)
    report = analyze_path(path, select=("DBG503", "DBG602"))
    causes = {
        (report.findings[p.cause].rule_id, report.findings[p.cause].key) for p in report.problems
    }
    assert {("DBG602", "mean"), ("DBG503", "decayed")} <= causes, causes


def clipped_run(path: Path, max_norm: float) -> Path:
    """A real PyTorch MLP on four separable blobs, SGD at 0.1, its gradients clipped to a
    total norm of ``max_norm`` before every step; tensors every 10 steps, as by default."""
    import torch
    from torch import nn

    from dbgcli.torch import attach

    torch.manual_seed(0)
    centres = 3 * torch.randn(4, 16)
    y = torch.randint(0, 4, (2048,))
    x = centres[y] + torch.randn(2048, 16)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with attach(model, optimizer, path) as hook:
        for step in range(200):
            batch = slice(64 * (step % 32), 64 * (step % 32 + 1))
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            hook.record_loss(loss)
    return path


def test_learning_rate_names_gradients_clipped_to_nothing(tmp_path: Path) -> None:
    """clip_grad_norm_ with max_norm 1e-4 starves every layer at an ordinary learning rate:
    the gradients' total norm is the bound at every recorded step. Clipped at 1, the same run
    learns, and nothing is said."""
    (clipped,) = run_rule(clipped_run(tmp_path / "tight.h5", 1e-4), "DBG503").findings
    assert clipped.key == "clipped"
    assert "the gradients' total norm is 0.0001 at every step" in clipped.message
    assert run_rule(clipped_run(tmp_path / "loose.h5", 1.0), "DBG503").status is (RuleStatus.passed)


def test_gradients_clipped_below_the_vanishing_bar_name_the_clipping(tmp_path: Path) -> None:
    """Clipped to a total norm of 1e-6, every weight gradient's mean falls below DBG101's
    1e-7: the gradients did not vanish through the network, the bound cut them, and the
    first diagnosis says so."""
    report = analyze_path(clipped_run(tmp_path / "run.h5", 1e-6), select=("DBG101", "DBG503"))
    vanished = [f for f in report.findings if f.rule_id == "DBG101"]
    assert vanished and {f.key for f in vanished} == {"clipped"}
    assert "the gradients' total norm is 1e-06 at every step" in vanished[0].message
    assert report.verdict.startswith("unhealthy: gradients clipped to nothing")


def test_learning_rate_raised_until_the_loss_diverged(make_trace) -> None:
    """A step schedule whose factor is 10 instead of 0.1 multiplies the rate every 50 steps:
    the loss falls at the first rates and blows up at a later one. The rising schedule is the
    cause of what follows (the effects of a rate too high), not a warmup that left the run
    starved, whose message put a loss of 1e30 at some percent of its start. A loss that
    blew up before the rate doubled did not starve either, and is left to the other rules."""
    tensors = network({"fc1.weight": 1e-3, "fc2.weight": 1e-3}, steps=200)
    loss = np.geomspace(2.3, 0.01, 200)
    loss[160:] = np.geomspace(5.0, 1e30, 40)
    loss[190:] = np.nan
    raised = {"lr": list(np.repeat([1e-3, 1e-2, 1e-1, 1.0], 50)), "loss": list(loss)}
    (finding,) = keyed(
        run_rule(make_trace(scalars=raised, tensors=tensors), "DBG503"), "rose-until-diverged"
    )
    assert (finding.tensor, finding.first_step, finding.last_step) == ("lr", 0, 160)
    assert finding.value == pytest.approx(1000.0)
    assert (
        "lowest at step 159 (0.0298, at a rate of 1), rose to 5 at step 160 at 1, 1e+03x the "
        "first rate, and stayed there" in finding.message
    )
    report = analyze_path(make_trace(scalars=raised, tensors=tensors))
    assert report.verdict.startswith("unhealthy: learning rate raised until the loss diverged")
    # A warmup from exactly 0 (Hugging Face's schedules) is judged from its first positive rate.
    from_zero = {**raised, "lr": [0.0, *raised["lr"][1:]]}
    (finding,) = keyed(
        run_rule(make_trace(scalars=from_zero, tensors=tensors), "DBG503"), "rose-until-diverged"
    )
    assert finding.value == pytest.approx(1000.0)
    # One heavy-tailed batch, back at the loss's level at the next, is no divergence.
    # Nor is it in the last records, where fewer follow to show it stayed.
    for spike in (150, 198, 199):
        blip = {**raised, "loss": list(np.geomspace(2.3, 0.01, 200))}
        blip["loss"][spike] = 40.0
        assert not keyed(
            run_rule(make_trace(scalars=blip, tensors=tensors), "DBG503"), "rose-until-diverged"
        ), spike
    # Up 1.8x when it blew up: still warming up, but the rise did not take it there.
    early = {
        **raised,
        "lr": list(np.r_[np.linspace(1e-3, 1.8e-3, 161), np.linspace(2e-3, 4e-3, 39)]),
    }
    assert not run_rule(make_trace(scalars=early, tensors=tensors), "DBG503").findings


def test_learning_rate_still_warming_up_at_the_end(make_trace) -> None:
    """A linear warmup over the whole run (its length in epochs, meant in steps) never
    reaches the rate the run was tuned for, and the loss stays near its start. A warmup of a
    tenth of the run followed by a constant rate is a schedule, as is any that learns."""
    tensors = network({"fc1.weight": 1e-3, "fc2.weight": 1e-3}, steps=200)
    warming = list(np.linspace(1e-5, 1e-3, 200))
    stuck = {"lr": warming, "loss": list(np.linspace(2.3, 2.1, 200))}
    (finding,) = keyed(
        run_rule(make_trace(scalars=stuck, tensors=tensors), "DBG503"), "still-rising"
    )
    assert (finding.tensor, finding.first_step, finding.last_step) == ("lr", 0, 199)
    assert finding.value == pytest.approx(1e-3)
    warmed = {**stuck, "lr": list(np.r_[np.linspace(1e-5, 1e-3, 20), np.full(180, 1e-3)])}
    assert not keyed(
        run_rule(make_trace(scalars=warmed, tensors=tensors), "DBG503"), "still-rising"
    )
    # One noisy record early on is no divergence that would say the run did not starve.
    blip = {**stuck, "loss": [2.3, 3.7, *stuck["loss"][2:]]}
    assert keyed(run_rule(make_trace(scalars=blip, tensors=tensors), "DBG503"), "still-rising")
    learns = {**stuck, "loss": list(np.geomspace(2.3, 0.1, 200))}
    assert not keyed(
        run_rule(make_trace(scalars=learns, tensors=tensors), "DBG503"), "still-rising"
    )


def test_a_warmup_restarted_every_epoch_is_told_from_warm_restarts(make_trace) -> None:
    """A scheduler created inside the epoch loop: the warmup rises from 0 for the 20 steps of
    an epoch and starts again, 9 times, whatever the loss does. SGDR's cosine cycles, a
    triangular cyclic rate, a single warmup, and two rates alternating in one series are not
    that."""
    tensors = network({"fc1.weight": 1e-3, "fc2.weight": 1e-3}, steps=200)
    learns = list(np.geomspace(2.3, 0.1, 200))
    steps = np.arange(200)

    def found(lr: np.ndarray) -> list:
        trace = make_trace(scalars={"lr": list(lr), "loss": learns}, tensors=tensors)
        return keyed(run_rule(trace, "DBG503"), "warmup-restarted")

    (finding,) = found(1e-3 * (steps % 20) / 30)
    assert (finding.value, finding.first_step, finding.last_step) == (9.0, 0, 199)
    assert finding.message == (
        "the learning rate rose from 0 and fell back to it 9 times, every 20 steps, without "
        "ever decaying: a warmup restarted before it ends (a scheduler created inside the "
        "epoch loop?), cut at 0.000633 at most"
    )
    sgdr = 1e-3 * 0.5 * (1 + np.cos(np.pi * (steps % 50) / 50))
    triangular = 1e-4 + 9e-4 * (1 - np.abs((steps % 40) / 20 - 1))
    warmup = 1e-3 * np.minimum(1.0, (steps + 1) / 20)
    alternating = np.where(steps % 2, 5e-2, 1e-3)
    for lr in (sgdr, triangular, warmup, alternating):
        assert not found(lr)


def vit_run(path: Path) -> Path:
    """A real PyTorch run of a tiny ViT-style encoder, 30 steps: a positional table ``pos``
    and a ``cls_token`` registered at zero, a LayerScale ``gamma`` at 1e-5 (as timm and CaiT
    do), and one ``nn.Linear`` whose weight is zeroed by mistake."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from dbgcli.torch import attach

    class Tiny(nn.Module):
        def __init__(self, d: int = 32) -> None:
            super().__init__()
            self.inp = nn.Linear(8, d)
            self.pos = nn.Parameter(torch.zeros(1, 8, d))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
            layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.gamma = nn.Parameter(1e-5 * torch.ones(1, 1, d))
            self.proj = nn.Linear(d, d)
            nn.init.zeros_(self.proj.weight)
            self.head = nn.Linear(d, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x.view(-1, 8, 8)) + self.pos
            h = torch.cat([self.cls_token.expand(len(h), -1, -1), h], dim=1)
            h = h + self.gamma * self.enc(h)
            return self.head(torch.relu(self.proj(h[:, 0])))

    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    with attach(model, optimizer, path, stats_every=1) as hook:
        for _ in range(30):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            hook.record_loss(loss)
    return path


def test_initialization_and_update_ratio_leave_added_and_scaling_parameters_alone(
    tmp_path: Path,
) -> None:
    """Positional tables, tokens and layer scales start constant on purpose and are added to
    the activations or scale a branch: no unit symmetry, no fan-in, and a relative update of
    something that starts at zero says nothing. A layer's zeroed weight is still reported (and
    its updates, as large as its weights, too)."""
    path = vit_run(tmp_path / "vit.h5")
    init = run_rule(path, "DBG501")
    assert [(f.tensor, f.key) for f in init.findings] == [("proj.weight", "constant")]
    updates = run_rule(path, "DBG502")
    assert [(f.tensor, f.key) for f in updates.findings] == [("proj.weight", "too-large")]


def test_initialization_judges_the_parameters_by_their_own_name(make_trace) -> None:
    """A positional ``nn.Embedding`` table (``pos_embedding.weight``) is a table, judged as one
    (wholly constant: reported); a free ``pos_embedding`` or ``cls_token`` is not judged."""
    zeros = np.zeros((8, 8), np.float32)
    tensors = mlp(**{"pos_embedding.weight": zeros, "pos_embedding": zeros[None]})
    tensors.update(mlp(**{"vit.embeddings.cls_token": np.zeros((1, 1, 8), np.float32)}))
    found = run_rule(make_trace(tensors=tensors), "DBG501").findings
    assert [(f.tensor, f.key) for f in found] == [("pos_embedding.weight", "constant")]


# -- DBG504 weights-collapsed ----------------------------------------------------------------------


def shrinking(factor_per_step: float, steps: int = 30) -> dict[str, dict]:
    """A 32 x 16 layer at He scale whose weights are multiplied by ``factor_per_step`` at
    every step, recorded every step, beside a 1-D scale and a zero-initialised position table
    that shrink alike."""
    rng = np.random.default_rng(3)
    start = rng.normal(0.0, np.sqrt(2 / 16), size=(32, 16))
    return {
        name: {
            "values": [(base * factor_per_step**step).astype(np.float32) for step in range(steps)],
            "collection": "weights",
        }
        for name, base in (
            ("fc.weight", start),
            ("norm.weight", np.ones(16)),
            ("pos_embed", np.zeros((4, 16))),
        )
    }


def test_weights_collapsed_when_a_layer_falls_below_a_hundredth_of_its_start(make_trace) -> None:
    collapsing = make_trace(tensors=shrinking(0.75))
    (finding,) = run_rule(collapsing, "DBG504").findings
    assert (finding.tensor, finding.key, finding.first_step, finding.last_step) == (
        "fc.weight",
        "collapsed",
        0,
        29,
    )
    # It starts where the decline did and counts the records under the bar: 0.75 ** 17 is
    # the first below 0.01, so steps 17-29.
    assert finding.steps == 13
    assert finding.value == pytest.approx(0.75**29, rel=1e-3) and finding.threshold == 0.01
    assert finding.message.endswith("< 0.01) (a weight decay too strong?)")
    # Weight decay over a healthy run takes a fraction off, not orders of magnitude.
    assert run_rule(make_trace(tensors=shrinking(0.99)), "DBG504").status is RuleStatus.passed


def test_weights_collapsed_starts_a_zero_initialised_layer_at_its_first_values(
    make_trace,
) -> None:
    """An output layer initialised to zero has no scale at step 0: its start is the first
    record with one, and a layer that grows from there passes (it crashed the rule)."""
    values = [np.zeros((4, 8))] + [np.full((4, 8), 1e-3 * (step + 1)) for step in range(9)]
    trace = make_trace(tensors={"fc.weight": {"values": values, "collection": "weights"}})
    assert run_rule(trace, "DBG504").status is RuleStatus.passed


def test_weights_collapsed_names_the_optimizer_weight_decay(make_trace) -> None:
    for decay, ending in (
        (0.5, ": the optimizer's weight decay is 0.5 (too strong?)"),
        (0.0, " without weight decay (a penalty in the loss, or weights rescaled in place?)"),
    ):
        path = make_trace(
            tensors=shrinking(0.75),
            metadata={"optimizer": {"type": "SGD", "groups": [{"weight_decay": decay}]}},
        )
        (finding,) = run_rule(path, "DBG504").findings
        assert finding.message.endswith(ending) and finding.extra["weight_decay"] == decay
