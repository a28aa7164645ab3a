"""GreedyLR against ``transformers.optimization.GreedyLR`` (5.23.0): every learning rate, exactly.

Each case runs the reference, ``replay`` (which uses the fused ``scan``), the plain ``update``
called once per loss, and the torch class, over the same losses, and asserts that every learning
rate of every group at every step is equal with ``==``, that resets happen at the same steps,
and that ``scan`` and ``update`` end in the same state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dbgcli.schedulers import greedy
from dbgcli.torch import GreedyLR

from .helpers import fold, replay_rows, same

# (id, initial learning rates, parameters): together they set every parameter to a default,
# a typical and an extreme value, and combine the ones that interact.
NAMED_CONFIGS: list[tuple[str, list[float], dict[str, Any]]] = [
    ("defaults", [0.1], {}),
    ("lr_below_min_lr", [5e-5], {}),
    ("lr_above_max_lr", [2.0], {"patience": 2}),
    ("max_mode", [0.1], {"mode": "max", "patience": 2}),
    ("rel_min", [0.1], {"threshold_mode": "rel", "threshold": 1e-3, "patience": 2}),
    ("rel_max", [0.1], {"mode": "max", "threshold_mode": "rel", "threshold": 1e-3, "patience": 2}),
    ("threshold_zero", [0.1], {"threshold": 0.0, "patience": 1}),
    ("threshold_large", [0.1], {"threshold": 0.05, "patience": 1}),
    ("threshold_negative", [0.1], {"threshold": -1e-3, "patience": 2}),
    ("patience_zero", [0.1], {"patience": 0, "factor": 0.9}),
    ("patience_one_half", [0.1], {"patience": 1, "factor": 0.5, "min_lr": 0.01}),
    ("patience_five", [0.1], {"patience": 5, "factor": 0.8}),
    ("factor_tiny", [0.1], {"patience": 1, "factor": 1e-3, "min_lr": 1e-9, "max_lr": 1e6}),
    ("factor_near_one", [0.1], {"patience": 1, "factor": 0.999}),
    ("cooldown", [0.1], {"patience": 1, "factor": 0.5, "cooldown": 2, "min_lr": 1e-4}),
    ("cooldown_long", [0.1], {"patience": 0, "factor": 0.7, "cooldown": 7}),
    ("warmup", [0.1], {"patience": 1, "factor": 0.5, "warmup": 3}),
    ("cooldown_and_warmup", [0.1], {"patience": 2, "factor": 0.6, "cooldown": 3, "warmup": 2}),
    ("smooth_window_1", [0.1], {"smooth": True, "window_size": 1, "patience": 1}),
    ("smooth_window_3", [0.1], {"smooth": True, "window_size": 3, "patience": 1, "factor": 0.7}),
    (
        "smooth_window_10_threshold_0",
        [0.1],
        {"smooth": True, "window_size": 10, "threshold": 0.0, "patience": 2},
    ),
    ("smooth_window_50", [0.1], {"smooth": True, "patience": 3, "factor": 0.8}),
    (
        "smooth_with_holds_and_resets",
        [0.1],
        {
            "smooth": True,
            "window_size": 5,
            "patience": 1,
            "factor": 0.5,
            "cooldown": 2,
            "warmup": 1,
            "min_lr": 0.01,
            "reset_start": 2,
        },
    ),
    ("eps_zero", [0.1], {"eps": 0.0, "patience": 1, "factor": 0.5}),
    ("eps_blocks_small_steps", [0.1], {"eps": 1e-3, "patience": 1, "factor": 0.9, "min_lr": 0.0}),
    ("eps_freezes_lr", [0.01], {"eps": 0.002, "factor": 0.9, "patience": 0}),
    (
        "eps_strands_above_min",
        [0.0105],
        {"eps": 1e-3, "factor": 0.95, "patience": 0, "min_lr": 0.01, "reset_start": 1},
    ),
    ("min_lr_zero", [0.1], {"min_lr": 0.0, "patience": 1, "factor": 0.5}),
    ("max_lr_inf", [0.1], {"max_lr": math.inf, "patience": 0, "factor": 0.5}),
    ("max_lr_equals_lr", [0.1], {"max_lr": 0.1, "patience": 1, "factor": 0.5, "min_lr": 1e-4}),
    ("reset_start_1", [0.1], {"patience": 0, "factor": 0.5, "min_lr": 0.01, "reset_start": 1}),
    ("reset_start_2", [0.1], {"patience": 1, "factor": 0.5, "min_lr": 0.01, "reset_start": 2}),
    (
        "reset_start_3_cooldown",
        [0.1],
        {"patience": 0, "factor": 0.3, "min_lr": 0.02, "reset_start": 3, "cooldown": 1},
    ),
    ("two_groups", [0.1, 0.01], {"patience": 1, "factor": 0.5, "min_lr": 1e-4}),
    (
        "two_groups_per_group_bounds",
        [0.1, 0.01],
        {
            "patience": 1,
            "factor": 0.5,
            "min_lr": [0.01, 1e-4],
            "max_lr": [0.2, 0.05],
            "reset_start": 2,
        },
    ),
    (
        "three_groups_one_out_of_range",
        [0.1, 5e-5, 2.0],
        {
            "patience": 1,
            "factor": 0.7,
            "min_lr": [0.01, 1e-3, 0.1],
            "max_lr": [0.5, 0.5, 1.0],
            "reset_start": 3,
        },
    ),
    (
        "three_groups_smooth_rel_max",
        [0.3, 0.03, 0.003],
        {
            "mode": "max",
            "threshold_mode": "rel",
            "smooth": True,
            "window_size": 4,
            "patience": 1,
            "factor": 0.8,
            "min_lr": 0.0,
            "cooldown": 1,
            "warmup": 1,
        },
    ),
]


def check_parity(
    reference_greedy: Callable[..., tuple[list[list[float]], list[int]]],
    losses: list[float],
    lrs: list[float],
    params: dict[str, Any],
    label: str,
) -> None:
    expected, expected_resets = reference_greedy(losses, lrs, **params)
    scheduler = greedy(**params)

    scanned, resets = replay_rows(scheduler, losses, lrs)
    assert scanned == expected, f"{label}: replay (scan) differs from the reference"
    assert resets == expected_resets, f"{label}: resets at {resets}, reference {expected_resets}"

    states = fold(scheduler, losses, lrs)
    assert [list(state.lrs) for state in states] == expected, f"{label}: update differs"
    assert scheduler.scan is not None
    final = scheduler.scan(scheduler.init(lrs), losses).state
    assert same(final, states[-1]), f"{label}: scan ends in {final}, update in {states[-1]}"


@pytest.mark.parametrize(
    ("lrs", "params"),
    [pytest.param(lrs, params, id=name) for name, lrs, params in NAMED_CONFIGS],
)
def test_named_config_on_every_sequence(
    reference_greedy: Callable[..., tuple[list[list[float]], list[int]]],
    sequences: dict[str, list[float]],
    lrs: list[float],
    params: dict[str, Any],
) -> None:
    for name, losses in sequences.items():
        check_parity(reference_greedy, losses, lrs, params, name)


@pytest.mark.parametrize(
    ("lrs", "params"),
    [pytest.param(lrs, params, id=name) for name, lrs, params in NAMED_CONFIGS],
)
def test_torch_class_matches_reference(
    reference_greedy: Callable[..., tuple[list[list[float]], list[int]]],
    optimizer_for: Callable[[list[float]], Any],
    sequences: dict[str, list[float]],
    lrs: list[float],
    params: dict[str, Any],
) -> None:
    for name in ("walk_a", "spikes", "nonfinite_mix", "long_flat"):
        losses = sequences[name]
        expected, _ = reference_greedy(losses, lrs, **params)
        optimizer = optimizer_for(lrs)
        scheduler = GreedyLR(optimizer, **params)
        got = []
        for loss in losses:
            scheduler.step(loss)
            got.append(scheduler.get_last_lr())
            assert scheduler.get_last_lr() == [g["lr"] for g in optimizer.param_groups]
        assert got == expected, name


def random_config(rng: np.random.Generator) -> tuple[list[float], dict[str, Any]]:
    """Draw initial rates and a parameter setting, every parameter from a grid of its own."""

    def pick(*options: Any) -> Any:
        return options[int(rng.integers(len(options)))]

    groups = pick(1, 1, 2, 3)
    lrs = [pick(0.1, 0.01, 1.0, 5e-5, 0.5, 0.0123) for _ in range(groups)]
    per_group = groups > 1 and bool(rng.random() < 0.5)
    min_lr: Any = (
        [pick(0.0, 1e-4, 1e-3, 0.01) for _ in range(groups)]
        if per_group
        else pick(0.0, 1e-4, 1e-3, 0.01, 0.05)
    )
    low = max(min_lr) if isinstance(min_lr, list) else min_lr
    max_lr: Any = pick(0.2, 1.0, math.inf, 0.05 + low)
    params = {
        "mode": pick("min", "max"),
        "factor": pick(0.1, 0.5, 0.7, 0.9, 0.95, 0.99),
        "patience": pick(0, 1, 2, 3, 10),
        "threshold": pick(0.0, 1e-6, 1e-4, 0.01, 0.1),
        "threshold_mode": pick("abs", "rel"),
        "cooldown": pick(0, 0, 1, 3),
        "warmup": pick(0, 0, 1, 4),
        "min_lr": min_lr,
        "max_lr": max_lr,
        "eps": pick(0.0, 1e-8, 1e-4, 2e-3),
        "smooth": pick(False, True),
        "window_size": pick(1, 2, 5, 20, 50),
        "reset_start": pick(1, 2, 5, 500),
    }
    return lrs, params


@pytest.mark.parametrize("seed", range(160))
def test_random_config_on_random_sequences(
    reference_greedy: Callable[..., tuple[list[list[float]], list[int]]],
    sequences: dict[str, list[float]],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    lrs, params = random_config(rng)
    names = sorted(sequences)
    for index in rng.choice(len(names), size=3, replace=False):
        name = names[int(index)]
        losses = sequences[name]
        if seed % 2:  # a fresh variation of the sequence: rescaled, shifted and re-noised
            noise = rng.normal(0.0, 0.01, len(losses))
            losses = (np.asarray(losses) * rng.uniform(0.5, 2.0) + noise).tolist()
        check_parity(reference_greedy, losses, lrs, params, f"{name} {lrs} {params}")


def test_parity_over_many_thousand_steps_with_repeated_resets(
    reference_greedy: Callable[..., tuple[list[list[float]], list[int]]],
) -> None:
    rng = np.random.default_rng(7)
    # Long stretches of noise (bad steps) with occasional improving runs, so the scheduler
    # decays to the floor, resets, and is sometimes pushed back up before it can reset.
    losses: list[float] = []
    for _ in range(60):
        losses += (1.0 + rng.random(int(rng.integers(50, 250)))).tolist()
        losses += np.linspace(1.0, 0.5, int(rng.integers(1, 8))).tolist()
    params = {
        "patience": 2,
        "factor": 0.5,
        "min_lr": 0.01,
        "reset_start": 3,
        "cooldown": 1,
        "smooth": True,
        "window_size": 7,
    }
    expected, resets = reference_greedy(losses, [0.1], **params)
    assert len(losses) > 5000
    assert len(resets) > 20
    check_parity(reference_greedy, losses, [0.1], params, "long resets")
