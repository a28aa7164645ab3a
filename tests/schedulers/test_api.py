"""The public surface of ``dbgcli.schedulers``: registry, ``simulate``, doctests, imports."""

from __future__ import annotations

import doctest
import importlib
import math
import subprocess
import sys

import numpy as np
import pytest

from dbgcli.errors import ConfigError
from dbgcli.schedulers import (
    SCHEDULERS,
    Replay,
    Scheduler,
    ScheduleState,
    from_schedule,
    greedy,
    replay,
    simulate,
)

REQUIRED = {
    "step": {"step_size": 2},
    "multistep": {"milestones": [2]},
    "exponential": {"gamma": 0.9},
    "cosine": {"total_steps": 10},
    "onecycle": {"total_steps": 10},
}


def test_registry_names_are_stable() -> None:
    assert list(SCHEDULERS) == [
        "greedy",
        "plateau",
        "constant",
        "step",
        "multistep",
        "exponential",
        "linear",
        "cosine",
        "onecycle",
    ]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_replays_scalar_and_grouped_rates(name: str) -> None:
    losses = [3.0, 2.0, 2.5, math.nan, 1.0, 1.0, 1.0]
    params = REQUIRED.get(name, {})
    scalar = simulate(losses, name, lr=0.1, **params)
    grouped = simulate(losses, name, lr=[0.1, 0.1, 0.02], **params)
    assert scalar.shape == (7,)
    assert scalar.dtype == np.float64
    assert grouped.shape == (7, 3)
    assert grouped[:, 0].tolist() == scalar.tolist() == grouped[:, 1].tolist()


def test_simulate_accepts_arrays_and_keeps_float64_values() -> None:
    losses32 = np.array([1.0, 0.9, 0.7, 0.8, 0.9, 1.3], dtype=np.float32)
    as_floats = [float(x) for x in losses32]
    assert (
        simulate(losses32, "greedy", lr=np.float64(0.1), patience=0).tolist()
        == simulate(as_floats, "greedy", lr=0.1, patience=0).tolist()
    )


def test_empty_losses_give_an_empty_curve() -> None:
    assert simulate([], "greedy", lr=0.1).shape == (0,)
    assert simulate([], "plateau", lr=[0.1, 0.2]).shape == (0, 2)


def test_replay_reports_reset_steps() -> None:
    result = replay(
        [1.0] + [10.0] * 10, "greedy", lr=0.1, factor=0.5, patience=1, min_lr=0.01, reset_start=2
    )
    assert isinstance(result, Replay)
    assert result.resets.tolist() == [10]
    assert result.resets.dtype == np.int64


def test_replay_without_scan_uses_update() -> None:
    fused = greedy(patience=1, factor=0.5, smooth=True, window_size=3, min_lr=0.01, reset_start=1)
    plain = Scheduler(fused.init, fused.update)
    losses = np.random.default_rng(0).random(500).tolist()
    a, b = replay(losses, fused, lr=0.1), replay(losses, plain, lr=0.1)
    assert a.lrs.tolist() == b.lrs.tolist()
    assert a.resets.tolist() == b.resets.tolist()
    assert len(a.resets) > 0


def test_custom_schedule_through_from_schedule() -> None:
    halving = from_schedule("halving", lambda step, lr, base: base / 2**step)
    assert halving.init([1.0]) == ScheduleState(step=0, base_lrs=(1.0,), lrs=(1.0,))
    assert simulate([0.0] * 3, halving, lr=1.0).tolist() == [0.5, 0.25, 0.125]


def test_unknown_scheduler_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown scheduler 'greddy'; valid: greedy, plateau"):
        simulate([1.0], "greddy")


def test_unknown_parameter_names_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match="greedy: unknown parameter.*patients.*valid: mode, factor"
    ):
        simulate([1.0], "greedy", patients=3)


def test_missing_required_parameter() -> None:
    with pytest.raises(ConfigError, match="cosine: missing required parameter.*total_steps"):
        simulate([1.0], "cosine")


def test_parameters_with_a_scheduler_object_are_an_error() -> None:
    with pytest.raises(ConfigError, match="patience"):
        simulate([1.0], greedy(), patience=3)


def test_losses_must_be_one_dimensional() -> None:
    with pytest.raises(ConfigError, match=r"one-dimensional.*\(2, 2\)"):
        simulate([[1.0, 2.0], [3.0, 4.0]], "greedy")


def test_states_are_namedtuples_rebuilt_not_mutated() -> None:
    scheduler = greedy(patience=0, factor=0.5)
    state = scheduler.init([0.1])
    after = scheduler.update(state, 1.0)
    assert state.lrs == (0.1,)
    assert after.lrs == (0.2,)
    assert after._fields[0] == "lrs"


def test_importing_schedulers_does_not_import_torch() -> None:
    code = (
        "import sys, dbgcli.schedulers\n"
        "dbgcli.schedulers.simulate([1.0, 2.0], 'greedy')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "module",
    [
        "dbgcli.schedulers",
        "dbgcli.schedulers._replay",
        "dbgcli.schedulers.greedy",
        "dbgcli.schedulers.plateau",
        "dbgcli.schedulers.fixed",
        "dbgcli.torch._scheduler",
    ],
)
def test_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_factory_documents_maths_and_a_six_step_example(name: str) -> None:
    doc = SCHEDULERS[name].__doc__ or ""
    summary, _, body = doc.partition("\n\n")
    assert summary and "\n" not in summary.strip()
    assert ".. math::" in body or ":math:" in body
    example = [line for line in body.splitlines() if ">>> losses = [" in line]
    assert len(example) == 1 and example[0].count(",") == 5
    assert "simulate(losses" in body
