"""``dbgcli.torch.GreedyLR`` as a drop-in replacement for ``transformers.optimization.GreedyLR``.

The first part restates, in dbg's words, every behaviour that transformers' own tests of the
class check (``tests/optimization/test_greedy_lr.py``, class ``GreedyLRTest``, 26 tests), except
the three about transformers' factory functions (``get_greedy_schedule`` twice, ``get_scheduler``
once), plus the two ``StreamingAverageTest`` tests through the scheduler's ``_streaming_avg``.
Where those tests accept "almost equal", these assert ``==``. Each runs against both classes, so
it shows that the two behave alike, not only that dbg behaves as dbg expects.

The second part covers what a drop-in needs beyond those tests: positional arguments, every
attribute the reference has, state dicts moved between the classes in the middle of a real
training run, pickling, numpy parameters, ``verbose`` and assignments to attributes.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from transformers.optimization import GreedyLR as ReferenceGreedyLR

from dbgcli.errors import ConfigError
from dbgcli.schedulers import simulate
from dbgcli.torch import GreedyLR

from .helpers import make_problem

Scheduler = Any  # either class: they have the same interface, which is what is under test


@pytest.fixture(params=[ReferenceGreedyLR, GreedyLR], ids=["reference", "dbg"])
def cls(request: pytest.FixtureRequest) -> type:
    """The class under test: every test of this kind runs against both."""
    return request.param  # type: ignore[no-any-return]


def build(cls: type, lr: float = 0.1, **params: Any) -> tuple[torch.optim.SGD, Scheduler]:
    """An SGD optimizer over ``nn.Linear(10, 10)`` and a scheduler with the upstream settings."""
    optimizer = torch.optim.SGD(torch.nn.Linear(10, 10).parameters(), lr=lr)
    settings = {
        "mode": "min",
        "factor": 0.9,
        "patience": 3,
        "min_lr": 1e-6,
        "max_lr": 1.0,
        "cooldown": 0,
        "warmup": 0,
        "verbose": False,
        **params,
    }
    return optimizer, cls(optimizer, **settings)


def run(scheduler: Scheduler, metrics: Sequence[float]) -> list[float]:
    """Step ``scheduler`` with each metric; return the first group's rate after each step."""
    rates = []
    for metric in metrics:
        scheduler.step(metric)
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
    return rates


def geometric(start: float, ratio: float, n: int) -> list[float]:
    """``start * ratio``, ``start * ratio**2``, ... computed one multiplication at a time."""
    values = []
    for _ in range(n):
        start *= ratio
        values.append(start)
    return values


# Part 1: the behaviours transformers' own tests check -------------------------------------------


def test_constructor_stores_the_parameters(cls: type) -> None:
    optimizer, scheduler = build(cls)
    assert (scheduler.mode, scheduler.factor, scheduler.patience) == ("min", 0.9, 3)
    assert len(scheduler.min_lrs) == len(scheduler.max_lrs) == len(optimizer.param_groups)
    assert scheduler._last_lr == [0.1]


def test_max_mode_starts_from_minus_infinity(cls: type) -> None:
    _, scheduler = build(cls, mode="max")
    assert scheduler.mode == "max"
    assert scheduler.best == -math.inf


@pytest.mark.parametrize("factor", [1.0, 1.5])
def test_factor_of_one_or_more_is_a_value_error(cls: type, factor: float) -> None:
    with pytest.raises(ValueError):
        build(cls, factor=factor)


@pytest.mark.parametrize("name", ["mode", "threshold_mode"])
def test_unknown_mode_is_a_value_error(cls: type, name: str) -> None:
    with pytest.raises(ValueError):
        build(cls, **{name: "unknown"})


def test_non_optimizer_is_a_type_error(cls: type) -> None:
    with pytest.raises(TypeError):
        cls("not_an_optimizer")


def test_plateau_lowers_the_rate_by_factor_after_patience_plus_one_bad_steps(cls: type) -> None:
    _, scheduler = build(cls, patience=3)
    assert run(scheduler, [5.0, 10.0, 10.0, 10.0, 10.0]) == [0.1, 0.1, 0.1, 0.1, 0.1 * 0.9]


def test_improvements_raise_the_rate_by_factor_after_patience_plus_one(cls: type) -> None:
    _, scheduler = build(cls, patience=3)
    assert run(scheduler, geometric(10.0, 0.8, 4)) == [0.1, 0.1, 0.1, 0.1 / 0.9]


def test_rate_never_goes_below_min_lr(cls: type) -> None:
    _, scheduler = build(cls, patience=1, min_lr=0.01, factor=0.5)
    rates = run(scheduler, [1.0] + [10.0] * 50)
    assert min(rates) == 0.01  # reached, and never passed
    assert rates[-1] == 0.01


def test_rate_never_goes_above_max_lr(cls: type) -> None:
    _, scheduler = build(cls, patience=1, max_lr=0.2, factor=0.5)
    rates = run(scheduler, geometric(10.0, 0.8, 50))
    assert max(rates) == 0.2
    assert rates[-1] == 0.2


def test_cooldown_holds_the_rate_after_a_decrease(cls: type) -> None:
    _, scheduler = build(cls, patience=2, cooldown=3)
    rates = run(scheduler, [5.0] + [10.0] * 6)
    assert rates[3] == 0.1 * 0.9
    assert rates[4:] == [rates[3]] * 3


def test_warmup_holds_the_rate_after_an_increase(cls: type) -> None:
    _, scheduler = build(cls, patience=2, warmup=3)
    rates = run(scheduler, geometric(10.0, 0.8, 6))
    assert rates[2] == 0.1 / 0.9
    assert rates[3:] == [rates[2]] * 3


def test_smoothing_keeps_the_last_window_size_metrics(cls: type) -> None:
    _, scheduler = build(cls, smooth=True, window_size=3, patience=10)
    assert scheduler._streaming_avg.window_size == 3
    run(scheduler, [10.0, 8.0, 6.0, 4.0])
    window = scheduler._streaming_avg
    assert window.values == [8.0, 6.0, 4.0]
    assert window.sum / len(window.values) == 6.0


def test_smoothed_metric_is_the_mean_of_the_window(cls: type) -> None:
    _, scheduler = build(cls, smooth=True, window_size=3)
    means = []
    for metric in [1.0, 2.0, 3.0, 4.0]:
        scheduler.step(metric)
        window = scheduler._streaming_avg
        means.append(window.sum / len(window.values))
    assert means == [1.0, 1.5, 2.0, 3.0]


def test_no_smoothing_by_default(cls: type) -> None:
    _, scheduler = build(cls)
    assert scheduler._streaming_avg is None


def test_state_dict_round_trip_continues_identically(cls: type) -> None:
    optimizer1, scheduler1 = build(cls, smooth=True, window_size=5)
    run(scheduler1, [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 6.0, 7.0])
    optimizer2, scheduler2 = build(cls, smooth=True, window_size=5)
    scheduler2.load_state_dict(scheduler1.state_dict())
    for name in (
        "best",
        "num_bad_epochs",
        "num_good_epochs",
        "last_epoch",
        "cooldown_counter",
        "warmup_counter",
    ):
        assert getattr(scheduler2, name) == getattr(scheduler1, name), name
    assert scheduler2._streaming_avg.state_dict() == scheduler1._streaming_avg.state_dict()
    assert optimizer2.param_groups[0]["lr"] == optimizer1.param_groups[0]["lr"]
    assert run(scheduler2, [5.0, 4.0, 3.0]) == run(scheduler1, [5.0, 4.0, 3.0])


def test_state_dict_has_the_reference_keys(cls: type) -> None:
    _, scheduler = build(cls, smooth=True)
    scheduler.step(10.0)
    assert set(scheduler.state_dict()) == {
        "factor",
        "min_lrs",
        "max_lrs",
        "patience",
        "verbose",
        "cooldown",
        "warmup",
        "cooldown_counter",
        "warmup_counter",
        "mode",
        "threshold",
        "threshold_mode",
        "best",
        "num_bad_epochs",
        "num_good_epochs",
        "eps",
        "last_epoch",
        "smooth",
        "window_size",
        "reset_start",
        "reset_start_original",
        "_last_lr",
        "_init_lrs",
        "_streaming_avg",
    }


def test_partial_state_dict_loads_and_keeps_the_rest(cls: type) -> None:
    _, scheduler = build(cls)
    scheduler.load_state_dict({"factor": 0.8, "patience": 5, "best": 5.0, "num_bad_epochs": 3})
    assert (scheduler.factor, scheduler.patience) == (0.8, 5)
    assert (scheduler.best, scheduler.num_bad_epochs) == (5.0, 3)
    assert scheduler.cooldown_counter == 0
    # The loaded values are the ones in use: the next bad steps decrease by the new factor.
    assert run(scheduler, [6.0, 6.0, 6.0]) == [0.1, 0.1, 0.1 * 0.8]


def test_get_last_lr_is_a_list_with_one_rate_per_group(cls: type) -> None:
    optimizer, scheduler = build(cls)
    scheduler.step(10.0)
    assert scheduler.get_last_lr() == [group["lr"] for group in optimizer.param_groups] == [0.1]


def test_reset_restores_the_initial_rate(cls: type) -> None:
    _, scheduler = build(cls, patience=1, min_lr=0.01, factor=0.5, reset_start=2)
    rates = run(scheduler, [1.0] + [10.0] * 100)
    assert min(rates) == 0.01
    assert rates[-1] == 0.1


def test_max_mode_falling_metric_lowers_the_rate(cls: type) -> None:
    _, scheduler = build(cls, mode="max", patience=2)
    assert run(scheduler, [10.0, 1.0, 1.0, 1.0]) == [0.1, 0.1, 0.1, 0.1 * 0.9]


def test_max_mode_rising_metric_raises_the_rate(cls: type) -> None:
    _, scheduler = build(cls, mode="max", patience=2)
    assert run(scheduler, geometric(1.0, 1.5, 3)) == [0.1, 0.1, 0.1 / 0.9]


def test_relative_threshold_makes_a_small_gain_a_bad_step(cls: type) -> None:
    _, scheduler = build(cls, threshold_mode="rel", threshold=0.1, patience=2)
    scheduler.step(10.0)
    scheduler.step(9.5)  # must beat 10 * (1 - 0.1) = 9
    assert (scheduler.num_bad_epochs, scheduler.best) == (1, 10.0)


def test_every_group_is_scaled(cls: type) -> None:
    model = torch.nn.Linear(10, 10)
    optimizer = torch.optim.SGD(
        [{"params": model.weight, "lr": 0.1}, {"params": model.bias, "lr": 0.01}]
    )
    scheduler = cls(optimizer, patience=2, factor=0.9, min_lr=1e-6)
    assert len(scheduler.min_lrs) == len(scheduler.max_lrs) == 2
    run(scheduler, [5.0, 10.0, 10.0, 10.0])
    assert [group["lr"] for group in optimizer.param_groups] == [0.1 * 0.9, 0.01 * 0.9]


# Part 2: what else a drop-in needs -------------------------------------------------------------

POSITIONAL = ("max", 0.5, 2, 1e-4, "rel", 1, 2, 1e-3, 0.4, 1e-9, False, True, 7, 9)
"""mode, factor, patience, threshold, threshold_mode, cooldown, warmup, min_lr, max_lr, eps,
verbose, smooth, window_size, reset_start: the reference's order."""


def test_positional_arguments_follow_the_reference_order(cls: type) -> None:
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    scheduler = cls(optimizer, *POSITIONAL)
    assert (
        scheduler.mode,
        scheduler.factor,
        scheduler.patience,
        scheduler.threshold,
        scheduler.threshold_mode,
        scheduler.cooldown,
        scheduler.warmup,
        scheduler.min_lrs,
        scheduler.max_lrs,
        scheduler.eps,
        scheduler.verbose,
        scheduler.smooth,
        scheduler.window_size,
        scheduler.reset_start_original,
    ) == (*POSITIONAL[:7], [1e-3], [0.4], *POSITIONAL[9:])


LOSSES = (
    [1.0, 2.0, 2.0, 2.0, 0.5, 0.4, 0.3, 0.2, 0.1]
    + [5.0] * 60  # a plateau long enough to reach the floor and reset
    + [math.sin(i / 5) + 0.01 * i for i in range(120)]
)
RUN_PARAMS: dict[str, Any] = {
    "factor": 0.6,
    "patience": 2,
    "cooldown": 1,
    "warmup": 2,
    "min_lr": [1e-3, 1e-4],
    "max_lr": 0.3,
    "smooth": True,
    "window_size": 4,
    "reset_start": 3,
}


def two_group_optimizer() -> torch.optim.SGD:
    return torch.optim.SGD(
        [
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.05},
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01},
        ]
    )


def assert_same_attributes(ours: GreedyLR, reference: ReferenceGreedyLR) -> None:
    """Every attribute the reference has, ours has too, with an equal value."""
    for name, value in vars(reference).items():
        if name == "optimizer":
            assert [g["lr"] for g in ours.optimizer.param_groups] == [
                g["lr"] for g in value.param_groups
            ]
        elif name == "_streaming_avg":
            assert ours._streaming_avg is not None and value is not None
            assert ours._streaming_avg.state_dict() == value.state_dict()
        else:
            assert getattr(ours, name) == value, name
    assert ours.state_dict() == reference.state_dict()


def test_every_attribute_and_the_state_dict_equal_the_reference_at_every_step() -> None:
    ours = GreedyLR(two_group_optimizer(), **RUN_PARAMS)
    reference = ReferenceGreedyLR(two_group_optimizer(), **RUN_PARAMS)
    assert_same_attributes(ours, reference)
    for loss in LOSSES:
        ours.step(loss)
        reference.step(loss)
        assert_same_attributes(ours, reference)
    assert ours.state.resets > 0  # the run went through a reset


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["abs", "rel"])
@pytest.mark.parametrize("threshold", [0.0, 0.1, np.float32(1e-3)], ids=repr)
def test_is_better_answers_as_the_reference(
    mode: str, threshold_mode: str, threshold: float
) -> None:
    params = {"mode": mode, "threshold_mode": threshold_mode, "threshold": threshold}
    ours = GreedyLR(two_group_optimizer(), **params)
    reference = ReferenceGreedyLR(two_group_optimizer(), **params)
    values = [-math.inf, -2.0, -1.0, -0.999, 0.0, 0.9, 0.999, 1.0, 1.0005, 1.1, math.inf]
    answers = [ours.is_better(a, b) for a in values for b in values]
    assert answers == [reference.is_better(a, b) for a in values for b in values]
    assert True in answers and False in answers


def test_attributes_assigned_mid_run_act_as_in_the_reference() -> None:
    ours = GreedyLR(two_group_optimizer(), **RUN_PARAMS)
    reference = ReferenceGreedyLR(two_group_optimizer(), **RUN_PARAMS)
    changes: dict[int, dict[str, Any]] = {
        20: {"factor": 0.8, "patience": 1},
        40: {"best": 0.5, "num_bad_epochs": 1, "cooldown": 3},
        60: {"min_lrs": [0.01, 0.001], "reset_start": 1, "threshold": 0.05},
        90: {"mode": "max", "best": -math.inf, "_init_lrs": [0.2, 0.02]},
    }
    for step, loss in enumerate(LOSSES):
        for name, value in changes.get(step, {}).items():
            setattr(ours, name, value)
            setattr(reference, name, value)
        ours.step(loss)
        reference.step(loss)
        assert_same_attributes(ours, reference)


def test_an_invalid_assignment_is_rejected_and_changes_nothing() -> None:
    optimizer, scheduler = build(GreedyLR)
    saved = scheduler.state_dict()
    with pytest.raises(ConfigError, match="factor must be < 1"):
        scheduler.factor = 1.5
    with pytest.raises(ConfigError, match="num_bad_epochs must be >= 0"):
        scheduler.num_bad_epochs = -1
    with pytest.raises(ConfigError, match="min_lr has 2 values but there is 1 parameter group"):
        scheduler.min_lrs = [0.0, 0.0]
    assert scheduler.state_dict() == saved


def test_a_dict_that_is_not_a_greedylr_state_is_rejected() -> None:
    optimizer, scheduler = build(GreedyLR)
    with pytest.raises(ConfigError, match="not a GreedyLR state dict"):
        scheduler.load_state_dict(optimizer.state_dict())


def fresh_training(seed: int) -> tuple[torch.nn.Module, torch.optim.SGD]:
    model, _, _ = make_problem(seed)
    optimizer = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.05},
            {"params": model[2].parameters(), "lr": 0.02},
        ]
    )
    return model, optimizer


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Scheduler,
    steps: range,
    seed: int,
) -> list[list[float]]:
    """Minibatch SGD over ``steps``; return the rates after each scheduler step."""
    _, inputs, targets = make_problem(seed)
    rates = []
    for step in steps:
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step(loss.detach())
        rates.append([group["lr"] for group in optimizer.param_groups])
    return rates


TRAIN_PARAMS: dict[str, Any] = {
    "factor": 0.7,
    "patience": 3,
    "cooldown": 2,
    "warmup": 1,
    "min_lr": 1e-3,
    "max_lr": 0.5,
    "smooth": True,
    "window_size": 5,
    "reset_start": 3,
}


@pytest.mark.parametrize(
    ("saver", "loader"),
    [(ReferenceGreedyLR, GreedyLR), (GreedyLR, ReferenceGreedyLR)],
    ids=["reference-to-dbg", "dbg-to-reference"],
)
@pytest.mark.parametrize("save_at", [7, 120])
def test_a_checkpoint_moves_between_the_classes_mid_training(
    saver: type, loader: type, save_at: int
) -> None:
    steps, seed = 300, 5
    model, optimizer = fresh_training(seed)
    scheduler = saver(optimizer, **TRAIN_PARAMS)
    uninterrupted = train(model, optimizer, scheduler, range(steps), seed)
    final_weights = [p.detach().clone() for p in model.parameters()]

    model, optimizer = fresh_training(seed)
    scheduler = saver(optimizer, **TRAIN_PARAMS)
    rates = train(model, optimizer, scheduler, range(save_at), seed)
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    # A new process would build everything again, with the other class, then load.
    model, optimizer = fresh_training(seed)
    resumed = loader(optimizer, **TRAIN_PARAMS)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["scheduler"])
    assert resumed.state_dict() == checkpoint["scheduler"]
    rates += train(model, optimizer, resumed, range(save_at, steps), seed)

    assert rates == uninterrupted
    assert len({row[0] for row in rates[save_at:]}) > 3  # the rates kept moving after the load
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), final_weights, strict=True))


@pytest.mark.parametrize("duplicate", [pickle.loads, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_a_copy_continues_exactly_as_the_original(
    cls: type, duplicate: Callable[[Any], Any]
) -> None:
    scheduler = cls(two_group_optimizer(), **RUN_PARAMS)
    run(scheduler, LOSSES[:50])
    copied = duplicate(pickle.dumps(scheduler) if duplicate is pickle.loads else scheduler)
    assert copied.optimizer is not scheduler.optimizer
    assert copied.state_dict() == scheduler.state_dict()
    assert run(copied, LOSSES[50:]) == run(scheduler, LOSSES[50:])
    assert copied.state_dict() == scheduler.state_dict()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(
    "params",
    [
        {"factor": 0.7, "patience": 1, "min_lr": 1e-4, "max_lr": 0.3},
        {"factor": 0.9, "patience": 0, "threshold": 0.01, "threshold_mode": "rel", "eps": 1e-6},
        {"factor": 0.5, "patience": 1, "min_lr": 0.01, "reset_start": 2, "smooth": True},
        {"factor": 0.8, "patience": 2, "mode": "max", "threshold": 1e-3, "max_lr": 0.25},
    ],
    ids=["bounds", "rel_eps", "resets", "max"],
)
def test_numpy_parameters_compute_as_the_reference_does(
    dtype: type, params: dict[str, Any], sequences: dict[str, list[float]]
) -> None:
    numeric = ("factor", "threshold", "min_lr", "max_lr", "eps")
    typed = {k: dtype(v) if k in numeric else v for k, v in params.items()}
    losses = sequences["sine_noise"] + sequences["staircase"]
    ours = GreedyLR(two_group_optimizer(), **typed)
    reference = ReferenceGreedyLR(two_group_optimizer(), **typed)
    for loss in losses:
        ours.step(loss)
        reference.step(loss)
        # Same values, and the same types in the optimizer (numpy scalars where it wrote them).
        held = [(type(g["lr"]), g["lr"]) for g in ours.optimizer.param_groups]
        assert held == [(type(g["lr"]), g["lr"]) for g in reference.optimizer.param_groups]
    assert ours.state_dict() == reference.state_dict()
    # The pure replay computes the same way.
    replayed = simulate(losses, "greedy", lr=[0.05, 0.01], **typed)
    assert replayed[-1].tolist() == [float(lr) for lr in reference.get_last_lr()]
    # Not a vacuous check: in double precision the same run ends elsewhere.
    doubled = simulate(losses, "greedy", lr=[0.05, 0.01], **params)
    assert not np.array_equal(replayed, doubled)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_numpy_rates_in_the_optimizer_compute_as_the_reference_does(
    dtype: type, sequences: dict[str, list[float]]
) -> None:
    # The reference computes with float(lr) but compares the object the group holds with its
    # floor; a numpy rate and a Python factor take both paths.
    losses = sequences["sine_noise"] + sequences["staircase"]
    params = {"factor": 0.7, "patience": 1, "min_lr": 1e-3, "eps": 1e-5, "reset_start": 2}
    optimizers = two_group_optimizer(), two_group_optimizer()
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = dtype(group["lr"])
    ours = GreedyLR(optimizers[0], **params)
    reference = ReferenceGreedyLR(optimizers[1], **params)
    assert run(ours, losses) == run(reference, losses)
    assert ours.state_dict() == reference.state_dict()
    assert ours.state.resets > 0


@pytest.mark.parametrize("threshold", [-1.0, -2.5])
def test_max_mode_relative_threshold_of_minus_one_or_less_is_rejected(threshold: float) -> None:
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="threshold must be > -1 with threshold_mode='rel'"):
        GreedyLR(optimizer, mode="max", threshold_mode="rel", threshold=threshold)
    # What it would do: best * (1 + threshold) is never beaten, so the rate only ever falls.
    reference = ReferenceGreedyLR(
        optimizer, mode="max", threshold_mode="rel", threshold=threshold, patience=0
    )
    run(reference, [1.0, 2.0, 4.0, 8.0])
    assert reference.best == -math.inf
    assert optimizer.param_groups[0]["lr"] < 0.1


def test_verbose_prints_what_the_reference_prints(capsys: pytest.CaptureFixture[str]) -> None:
    params = {**RUN_PARAMS, "verbose": True}
    outputs = []
    for scheduler_class in (ReferenceGreedyLR, GreedyLR):
        scheduler = scheduler_class(two_group_optimizer(), **params)
        scheduler.step(1.0, epoch=10)  # an explicit epoch is what the messages show
        run(scheduler, LOSSES)
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "increasing learning rate of group 1" in outputs[1]
    assert "reducing learning rate of group 0" in outputs[1]
    assert "Scheduler reset to initial state." in outputs[1]
