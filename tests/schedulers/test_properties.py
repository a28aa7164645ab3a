"""Property tests: arbitrary floats (NaN, infinities, subnormals, huge values) and parameters.

Hypothesis runs derandomized, so every run draws the same examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dbgcli.schedulers import greedy, reduce_on_plateau

from .helpers import fold, replay_rows, same

metrics = st.lists(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=-2.0, max_value=2.0),
        st.sampled_from([0.0, -0.0, 1.0, 1.0 - 1e-6, 5e-324, math.nan]),
    ),
    max_size=120,
)


@st.composite
def greedy_setups(draw: st.DrawFn) -> tuple[list[float], dict[str, Any]]:
    groups = draw(st.integers(1, 3))
    lrs = draw(
        st.lists(st.sampled_from([0.1, 1e-4, 0.5, 2.0, 0.0]), min_size=groups, max_size=groups)
    )
    min_lr = draw(st.sampled_from([0.0, 1e-3, 0.05]))
    params = {
        "mode": draw(st.sampled_from(["min", "max"])),
        "factor": draw(st.sampled_from([0.05, 0.5, 0.9, 0.95])),
        "patience": draw(st.integers(0, 4)),
        "threshold": draw(st.sampled_from([0.0, 1e-6, 0.01, -0.01])),
        "threshold_mode": draw(st.sampled_from(["abs", "rel"])),
        "cooldown": draw(st.integers(0, 3)),
        "warmup": draw(st.integers(0, 3)),
        "min_lr": min_lr,
        "max_lr": draw(st.sampled_from([min_lr, 0.3, 1.0, math.inf])),
        "eps": draw(st.sampled_from([0.0, 1e-8, 1e-3])),
        "smooth": draw(st.booleans()),
        "window_size": draw(st.integers(1, 6)),
        "reset_start": draw(st.integers(1, 4)),
    }
    return lrs, params


@settings(max_examples=300, deadline=None, derandomize=True)
@given(setup=greedy_setups(), losses=metrics)
def test_greedy_scan_update_and_reference_agree(
    reference_greedy: Callable[..., tuple[list[list[float]], list[int]]],
    setup: tuple[list[float], dict[str, Any]],
    losses: list[float],
) -> None:
    lrs, params = setup
    expected, expected_resets = reference_greedy(losses, lrs, **params)
    scheduler = greedy(**params)
    rows, resets = replay_rows(scheduler, losses, lrs)
    assert rows == expected
    assert resets == expected_resets
    states = fold(scheduler, losses, lrs)
    assert [list(s.lrs) for s in states] == expected
    assert scheduler.scan is not None
    final = scheduler.scan(scheduler.init(lrs), losses).state
    assert same(final, states[-1] if states else scheduler.init(lrs))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    losses=metrics,
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["abs", "rel"]),
    patience=st.integers(0, 3),
    cooldown=st.integers(0, 3),
    min_lr=st.sampled_from([0.0, 0.01]),
)
def test_plateau_matches_torch_on_arbitrary_floats(
    reference_torch: Callable[..., list[list[float]]],
    losses: list[float],
    mode: str,
    threshold_mode: str,
    patience: int,
    cooldown: int,
    min_lr: float,
) -> None:
    params = {
        "mode": mode,
        "threshold_mode": threshold_mode,
        "patience": patience,
        "cooldown": cooldown,
        "min_lr": min_lr,
        "factor": 0.5,
    }
    expected = reference_torch(
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **params), losses, [0.1]
    )
    rows, _ = replay_rows(reduce_on_plateau(**params), losses, [0.1])
    assert rows == expected
