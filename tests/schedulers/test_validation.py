"""Every parameter value the factories reject, and the accepted edge values they keep."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from dbgcli.errors import ConfigError, DbgError
from dbgcli.schedulers import (
    Scheduler,
    constant,
    cosine,
    exponential_decay,
    greedy,
    linear,
    multistep_decay,
    one_cycle,
    reduce_on_plateau,
    simulate,
    step_decay,
)

# (factory, keyword arguments, text that must appear in the message): each message must name
# the parameter and show the bad value.
REJECTED: list[tuple[Callable[..., Scheduler], dict[str, Any], list[str]]] = [
    (greedy, {"factor": 0.0}, ["factor", "0.0"]),
    (greedy, {"factor": -0.5}, ["factor", "-0.5"]),
    (greedy, {"factor": 1.0}, ["factor", "1.0"]),
    (greedy, {"factor": 1.5}, ["factor", "1.5"]),
    (greedy, {"factor": math.nan}, ["factor", "nan"]),
    (greedy, {"patience": -1}, ["patience", "-1"]),
    (greedy, {"patience": 2.5}, ["patience", "2.5"]),
    (greedy, {"cooldown": -1}, ["cooldown", "-1"]),
    (greedy, {"warmup": -3}, ["warmup", "-3"]),
    (greedy, {"window_size": 0}, ["window_size", "0"]),
    (greedy, {"reset_start": 0}, ["reset_start", "0"]),
    (greedy, {"reset_start": -5}, ["reset_start", "-5"]),
    (greedy, {"min_lr": -1e-3}, ["min_lr", "-0.001"]),
    (greedy, {"min_lr": 0.5, "max_lr": 0.1}, ["min_lr", "0.5", "max_lr", "0.1"]),
    (greedy, {"min_lr": [0.01, 0.5], "max_lr": [1.0, 0.2]}, ["min_lr of group 1", "0.5", "0.2"]),
    (greedy, {"min_lr": [0.01, 0.5], "max_lr": 0.2}, ["min_lr of group 1", "0.5", "0.2"]),
    (greedy, {"min_lr": [0.0, 0.0], "max_lr": [1.0, 1.0, 1.0]}, ["min_lr has 2", "max_lr has 3"]),
    (greedy, {"min_lr": []}, ["min_lr", "empty"]),
    (greedy, {"min_lr": [0.1, -0.1]}, ["min_lr[1]", "-0.1"]),
    (greedy, {"max_lr": math.nan}, ["max_lr", "nan"]),
    (greedy, {"eps": -1e-8}, ["eps", "-1e-08"]),
    (greedy, {"mode": "minimum"}, ["mode", "'minimum'", "'min'", "'max'"]),
    (greedy, {"threshold_mode": "relative"}, ["threshold_mode", "'relative'"]),
    (greedy, {"threshold": math.nan}, ["threshold", "nan"]),
    (greedy, {"threshold_mode": "rel", "threshold": 1.0}, ["threshold", "1.0", "rel"]),
    (greedy, {"mode": "max", "threshold_mode": "rel", "threshold": -1.0}, ["threshold", "-1.0"]),
    (
        reduce_on_plateau,
        {"mode": "max", "threshold_mode": "rel", "threshold": -3.0},
        ["threshold", "-3.0", "'max' mode"],
    ),
    (greedy, {"smooth": "yes"}, ["smooth", "'yes'"]),
    (reduce_on_plateau, {"factor": 0.0}, ["factor", "0.0"]),
    (reduce_on_plateau, {"factor": 1.0}, ["factor", "1.0"]),
    (reduce_on_plateau, {"patience": -1}, ["patience", "-1"]),
    (reduce_on_plateau, {"cooldown": -2}, ["cooldown", "-2"]),
    (reduce_on_plateau, {"min_lr": -1.0}, ["min_lr", "-1.0"]),
    (reduce_on_plateau, {"eps": -1.0}, ["eps", "-1.0"]),
    (reduce_on_plateau, {"mode": "up"}, ["mode", "'up'"]),
    (reduce_on_plateau, {"threshold_mode": "pct"}, ["threshold_mode", "'pct'"]),
    (reduce_on_plateau, {"threshold": 2.0}, ["threshold", "2.0"]),
    (constant, {"factor": 0.0, "total_iters": 3}, ["factor", "0.0"]),
    (constant, {"factor": 1.5, "total_iters": 3}, ["factor", "1.5"]),
    (constant, {"factor": 0.5}, ["total_iters=0", "factor=0.5"]),
    (constant, {"total_iters": -1}, ["total_iters", "-1"]),
    (step_decay, {"step_size": 0}, ["step_size", "0"]),
    (step_decay, {"step_size": 3, "gamma": 0.0}, ["gamma", "0.0"]),
    (multistep_decay, {"milestones": []}, ["milestones", "[]"]),
    (multistep_decay, {"milestones": [5, 5]}, ["milestones", "strictly increasing", "[5, 5]"]),
    (multistep_decay, {"milestones": [10, 3]}, ["milestones", "[10, 3]"]),
    (multistep_decay, {"milestones": [0, 3]}, ["milestones[0]", "0"]),
    (multistep_decay, {"milestones": "10"}, ["milestones", "'10'"]),
    (exponential_decay, {"gamma": -0.9}, ["gamma", "-0.9"]),
    (exponential_decay, {"gamma": math.inf}, ["gamma", "inf"]),
    (linear, {"start_factor": 0.0}, ["start_factor", "0.0"]),
    (linear, {"start_factor": 1.1}, ["start_factor", "1.1"]),
    (linear, {"end_factor": -0.1}, ["end_factor", "-0.1"]),
    (linear, {"total_iters": 0}, ["total_iters", "0"]),
    (cosine, {"total_steps": 0}, ["total_steps", "0"]),
    (cosine, {"total_steps": 10, "warmup_steps": 10}, ["total_steps", "10"]),
    (cosine, {"total_steps": 10, "warmup_steps": -1}, ["warmup_steps", "-1"]),
    (cosine, {"total_steps": 10, "eta_min": -1.0}, ["eta_min", "-1.0"]),
    (
        cosine,
        {"total_steps": 10, "warmup_steps": 2, "warmup_start_factor": 0.0},
        ["warmup_start_factor", "0.0"],
    ),
    (one_cycle, {"total_steps": 0}, ["total_steps", "0"]),
    (one_cycle, {"total_steps": 10, "pct_start": 1.5}, ["pct_start", "1.5"]),
    (one_cycle, {"total_steps": 10, "anneal_strategy": "cosine"}, ["anneal_strategy", "'cosine'"]),
    (one_cycle, {"total_steps": 10, "div_factor": 0.0}, ["div_factor", "0.0"]),
    (one_cycle, {"total_steps": 10, "final_div_factor": -1.0}, ["final_div_factor", "-1.0"]),
    (one_cycle, {"total_steps": 10, "pct_start": 0.1}, ["pct_start", "zero length"]),
    (one_cycle, {"total_steps": 10, "pct_start": 1.0}, ["pct_start", "zero length"]),
    (one_cycle, {"total_steps": 10, "three_phase": 1}, ["three_phase", "1"]),
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "needles"),
    [
        pytest.param(factory, kwargs, needles, id=f"{factory.__name__}-{'-'.join(kwargs)}-{i}")
        for i, (factory, kwargs, needles) in enumerate(REJECTED)
    ],
)
def test_rejected(
    factory: Callable[..., Scheduler], kwargs: dict[str, Any], needles: list[str]
) -> None:
    arguments = dict(kwargs)
    if factory is step_decay:
        arguments.setdefault("step_size", 3)
    if factory is multistep_decay:
        arguments.setdefault("milestones", [3])
    if factory is exponential_decay:
        arguments.setdefault("gamma", 0.9)
    with pytest.raises(ConfigError) as info:
        factory(**arguments)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, DbgError)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("lr", "params", "needles"),
    [
        pytest.param(
            [0.1, 0.01],
            {"min_lr": [0.0, 0.0, 0.0]},
            ["min_lr has 3", "are 2 parameter groups"],
            id="min_lr-length",
        ),
        pytest.param(
            [0.1],
            {"max_lr": [1.0, 1.0]},
            ["max_lr has 2", "is 1 parameter group"],
            id="max_lr-length",
        ),
        pytest.param(-0.1, {}, ["lr", "-0.1"], id="negative-lr"),
        pytest.param([0.1, math.nan], {}, ["lr[1]", "nan"], id="nan-lr"),
        pytest.param([], {}, ["lr", "at least one"], id="no-lr"),
    ],
)
def test_rejected_at_init(lr: Any, params: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        simulate([1.0, 2.0], "greedy", lr=lr, **params)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    "params",
    [
        {"factor": 1e-12},
        {"factor": 0.999999},
        {"patience": 0, "cooldown": 0, "warmup": 0},
        {"threshold": -0.5},
        {"threshold": 0.0},
        {"threshold_mode": "rel", "threshold": 5.0, "mode": "max"},
        {"threshold_mode": "rel", "threshold": -0.99, "mode": "max"},
        {"min_lr": 0.0, "max_lr": 0.0},
        {"min_lr": 0.3, "max_lr": 0.3},
        {"max_lr": math.inf},
        {"eps": 0.0},
        {"window_size": 1, "smooth": True},
        {"reset_start": 1},
        {"min_lr": [0.0, 1e-3], "max_lr": [1.0, 1e-3]},
    ],
    ids=repr,
)
def test_accepted_edge_values(params: dict[str, Any]) -> None:
    lr = [0.1, 0.1] if isinstance(params.get("min_lr"), list) else 0.1
    result = simulate([3.0, 2.0, 1.0, 1.0, 1.0], "greedy", lr=lr, **params)
    assert result.shape[0] == 5
    assert not any(math.isnan(v) for v in result.ravel())
