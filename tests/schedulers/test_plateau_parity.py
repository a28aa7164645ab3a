"""ReduceLROnPlateau against torch's ``ReduceLROnPlateau`` (torch 2.13.0), exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from dbgcli.schedulers import reduce_on_plateau

from .helpers import fold, replay_rows

PLATEAU_CONFIGS: list[tuple[str, list[float], dict[str, Any]]] = [
    ("defaults", [0.1], {}),
    ("max_mode", [0.1], {"mode": "max", "patience": 2}),
    ("abs_threshold", [0.1], {"threshold_mode": "abs", "threshold": 1e-3, "patience": 1}),
    ("abs_max", [0.1], {"mode": "max", "threshold_mode": "abs", "threshold": 0.0, "patience": 1}),
    ("rel_large_threshold", [0.1], {"threshold": 0.2, "patience": 1, "factor": 0.5}),
    ("negative_threshold", [0.1], {"threshold": -1e-3, "patience": 1, "factor": 0.5}),
    ("patience_zero", [0.1], {"patience": 0, "factor": 0.5}),
    ("cooldown", [0.1], {"patience": 1, "factor": 0.5, "cooldown": 2}),
    ("cooldown_long", [1.0], {"patience": 0, "factor": 0.9, "cooldown": 9}),
    ("min_lr", [0.1], {"patience": 0, "factor": 0.3, "min_lr": 0.01}),
    ("lr_below_min_lr", [1e-4], {"patience": 0, "factor": 0.5, "min_lr": 1e-3}),
    ("eps_freezes_lr", [0.01], {"patience": 0, "factor": 0.9, "eps": 0.002}),
    ("eps_zero", [0.1], {"patience": 1, "factor": 0.5, "eps": 0.0}),
    ("factor_tiny", [0.1], {"patience": 1, "factor": 1e-6}),
    ("two_groups", [0.1, 0.01], {"patience": 1, "factor": 0.5}),
    (
        "three_groups_per_group_min_lr",
        [0.1, 0.01, 1.0],
        {"patience": 1, "factor": 0.5, "min_lr": [0.02, 0.0, 0.3], "cooldown": 1},
    ),
]


def check_plateau(
    reference_torch: Callable[..., list[list[float]]],
    losses: list[float],
    lrs: list[float],
    params: dict[str, Any],
    label: str,
) -> None:
    expected = reference_torch(
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **params), losses, lrs
    )
    got, resets = replay_rows("plateau", losses, lrs, **params)
    assert got == expected, label
    assert resets == []
    states = fold(reduce_on_plateau(**params), losses, lrs)
    assert [list(s.lrs) for s in states] == expected, label


@pytest.mark.parametrize(
    ("lrs", "params"),
    [pytest.param(lrs, params, id=name) for name, lrs, params in PLATEAU_CONFIGS],
)
def test_plateau_config_on_every_sequence(
    reference_torch: Callable[..., list[list[float]]],
    sequences: dict[str, list[float]],
    lrs: list[float],
    params: dict[str, Any],
) -> None:
    for name, losses in sequences.items():
        check_plateau(reference_torch, losses, lrs, params, name)


@pytest.mark.parametrize("seed", range(40))
def test_plateau_random_config(
    reference_torch: Callable[..., list[list[float]]],
    sequences: dict[str, list[float]],
    seed: int,
) -> None:
    rng = np.random.default_rng(1000 + seed)

    def pick(*options: Any) -> Any:
        return options[int(rng.integers(len(options)))]

    lrs = [pick(0.1, 1.0, 0.003) for _ in range(pick(1, 2))]
    params = {
        "mode": pick("min", "max"),
        "factor": pick(0.1, 0.5, 0.9),
        "patience": pick(0, 1, 3, 10),
        "threshold": pick(0.0, 1e-4, 0.05),
        "threshold_mode": pick("rel", "abs"),
        "cooldown": pick(0, 1, 4),
        "min_lr": pick(0.0, 1e-3, 0.05),
        "eps": pick(0.0, 1e-8, 1e-3),
    }
    names = sorted(sequences)
    for index in rng.choice(len(names), size=4, replace=False):
        name = names[int(index)]
        check_plateau(reference_torch, sequences[name], lrs, params, f"{name} {params}")


def test_nan_and_inf_are_bad_steps_like_torch(
    reference_torch: Callable[..., list[list[float]]],
) -> None:
    losses = [1.0, math.nan, math.inf, math.nan, 0.5, -math.inf, 0.1, 0.0, math.nan, math.nan]
    check_plateau(reference_torch, losses, [0.1], {"patience": 1, "factor": 0.5}, "nonfinite")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_numpy_parameters_compute_as_torch_does(
    reference_torch: Callable[..., list[list[float]]],
    sequences: dict[str, list[float]],
    dtype: type,
) -> None:
    # torch multiplies by the factor object it was given, so a np.float32 factor rounds every
    # decrease to single precision; the replay must do the same, not compute with float(factor).
    params = {"patience": 1, "factor": 0.7, "threshold": 1e-3, "min_lr": [1e-4, 0.0], "eps": 1e-9}
    typed = {
        key: [dtype(v) for v in value] if isinstance(value, list) else dtype(value)
        for key, value in params.items()
        if key != "patience"
    }
    typed["patience"] = 1
    losses = sequences["sine_noise"] + sequences["staircase"]
    check_plateau(reference_torch, losses, [0.1, 0.03], typed, str(dtype))
    doubled, _ = replay_rows("plateau", losses, [0.1, 0.03], **params)
    assert replay_rows("plateau", losses, [0.1, 0.03], **typed)[0] != doubled
