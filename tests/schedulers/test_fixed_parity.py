"""Loss-independent schedules against their torch 2.13.0 counterparts, exactly.

Torch computes these learning rates in Python floats, mostly from the previous learning rate
(``group["lr"] * gamma`` and similar), and the schedules reproduce that recursion, so equality is
exact; no case needs a tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as tl

from dbgcli.errors import ConfigError
from dbgcli.schedulers import simulate

from .helpers import replay_rows

LRS = [0.1, 0.037, 1.0]

# (id, registry name, our parameters, torch scheduler factory, number of steps)
CASES: list[tuple[str, str, dict[str, Any], Callable[[torch.optim.Optimizer], Any], int]] = [
    ("constant_default", "constant", {}, lambda o: tl.ConstantLR(o, factor=1.0, total_iters=0), 50),
    (
        "constant_scaled",
        "constant",
        {"factor": 1 / 3, "total_iters": 5},
        lambda o: tl.ConstantLR(o, factor=1 / 3, total_iters=5),
        60,
    ),
    (
        "constant_0_7",
        "constant",
        {"factor": 0.7, "total_iters": 1},
        lambda o: tl.ConstantLR(o, factor=0.7, total_iters=1),
        10,
    ),
    ("step", "step", {"step_size": 7}, lambda o: tl.StepLR(o, step_size=7), 300),
    (
        "step_gamma",
        "step",
        {"step_size": 1, "gamma": 0.97},
        lambda o: tl.StepLR(o, step_size=1, gamma=0.97),
        500,
    ),
    (
        "multistep",
        "multistep",
        {"milestones": [3, 10, 11, 200]},
        lambda o: tl.MultiStepLR(o, milestones=[3, 10, 11, 200]),
        300,
    ),
    (
        "multistep_gamma",
        "multistep",
        {"milestones": [1, 50], "gamma": 0.3},
        lambda o: tl.MultiStepLR(o, milestones=[1, 50], gamma=0.3),
        100,
    ),
    (
        "exponential",
        "exponential",
        {"gamma": 0.99},
        lambda o: tl.ExponentialLR(o, gamma=0.99),
        2000,
    ),
    (
        "exponential_growth",
        "exponential",
        {"gamma": 1.01},
        lambda o: tl.ExponentialLR(o, gamma=1.01),
        500,
    ),
    ("linear_default", "linear", {}, lambda o: tl.LinearLR(o), 20),
    (
        "linear_ramp",
        "linear",
        {"start_factor": 0.01, "end_factor": 1.0, "total_iters": 97},
        lambda o: tl.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=97),
        150,
    ),
    (
        "linear_decay_to_zero",
        "linear",
        {"start_factor": 1.0, "end_factor": 0.0, "total_iters": 40},
        lambda o: tl.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=40),
        60,
    ),
    ("cosine", "cosine", {"total_steps": 100}, lambda o: tl.CosineAnnealingLR(o, T_max=100), 100),
    (
        "cosine_past_t_max",
        "cosine",
        {"total_steps": 37, "eta_min": 1e-3},
        lambda o: tl.CosineAnnealingLR(o, T_max=37, eta_min=1e-3),
        400,
    ),
    ("cosine_t_max_1", "cosine", {"total_steps": 1}, lambda o: tl.CosineAnnealingLR(o, T_max=1), 9),
    (
        "cosine_warmup",
        "cosine",
        {"total_steps": 120, "warmup_steps": 20, "warmup_start_factor": 0.1, "eta_min": 1e-4},
        lambda o: tl.SequentialLR(
            o,
            [
                tl.LinearLR(o, start_factor=0.1, total_iters=20),
                tl.CosineAnnealingLR(o, T_max=100, eta_min=1e-4),
            ],
            milestones=[20],
        ),
        250,
    ),
    (
        "cosine_warmup_1",
        "cosine",
        {"total_steps": 10, "warmup_steps": 1},
        lambda o: tl.SequentialLR(
            o,
            [tl.LinearLR(o, start_factor=0.1, total_iters=1), tl.CosineAnnealingLR(o, T_max=9)],
            milestones=[1],
        ),
        30,
    ),
    (
        "onecycle_cos",
        "onecycle",
        {"total_steps": 100},
        lambda o: tl.OneCycleLR(o, max_lr=LRS, total_steps=100),
        100,
    ),
    (
        "onecycle_linear_three_phase",
        "onecycle",
        {"total_steps": 250, "anneal_strategy": "linear", "three_phase": True, "pct_start": 0.25},
        lambda o: tl.OneCycleLR(
            o,
            max_lr=LRS,
            total_steps=250,
            anneal_strategy="linear",
            three_phase=True,
            pct_start=0.25,
        ),
        250,
    ),
    (
        "onecycle_factors",
        "onecycle",
        {"total_steps": 77, "pct_start": 0.5, "div_factor": 3.0, "final_div_factor": 10.0},
        lambda o: tl.OneCycleLR(
            o, max_lr=LRS, total_steps=77, pct_start=0.5, div_factor=3.0, final_div_factor=10.0
        ),
        77,
    ),
    (
        "onecycle_three_phase_cos",
        "onecycle",
        {"total_steps": 31, "three_phase": True},
        lambda o: tl.OneCycleLR(o, max_lr=LRS, total_steps=31, three_phase=True),
        31,
    ),
]


@pytest.mark.parametrize(
    ("name", "params", "make", "steps"),
    [pytest.param(name, params, make, steps, id=case) for case, name, params, make, steps in CASES],
)
def test_matches_torch(
    reference_torch: Callable[..., list[list[float]]],
    name: str,
    params: dict[str, Any],
    make: Callable[[torch.optim.Optimizer], Any],
    steps: int,
) -> None:
    losses = [float(i % 5) for i in range(steps)]
    expected = reference_torch(make, losses, LRS)
    got, resets = replay_rows(name, losses, LRS, **params)
    assert got == expected
    assert resets == []


def test_values_of_losses_are_ignored() -> None:
    flat = simulate([1.0] * 30, "cosine", lr=0.1, total_steps=30)
    noisy = simulate([float("nan"), -1e9, 3.0] * 10, "cosine", lr=0.1, total_steps=30)
    assert flat.tolist() == noisy.tolist()


def test_onecycle_stops_after_total_steps() -> None:
    assert len(simulate([0.0] * 10, "onecycle", lr=0.1, total_steps=10)) == 10
    with pytest.raises(ConfigError, match="total_steps=10"):
        simulate([0.0] * 11, "onecycle", lr=0.1, total_steps=10)
