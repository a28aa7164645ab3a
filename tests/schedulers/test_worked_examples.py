"""The worked examples and quirks of ``docs/reference/greedylr-spec.md``, one named test each.

Every example is checked twice: against the numbers written in the spec, and against the
reference implementation itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from transformers.optimization import StreamingAverage

from dbgcli.schedulers import greedy, simulate

from .helpers import fold, replay_rows

Reference = Callable[..., tuple[list[list[float]], list[int]]]


def lrs_of(
    reference_greedy: Reference, losses: list[float], lr: float = 0.1, **params: object
) -> list[float]:
    history, _ = reference_greedy(losses, [lr], **params)
    return [row[0] for row in history]


def test_reset_example_section_3_4(reference_greedy: Reference) -> None:
    losses = [1.0] + [10.0] * 10
    params = {"factor": 0.5, "patience": 1, "min_lr": 0.01, "reset_start": 2}
    expected = [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125, 0.01, 0.01, 0.1]
    rows, resets = replay_rows("greedy", losses, [0.1], **params)
    assert [row[0] for row in rows] == expected
    assert lrs_of(reference_greedy, losses, **params) == expected
    # The decrease landing exactly on min_lr (step 8) uses up the first of the two attempts;
    # the second at-floor attempt (step 10) resets.
    assert resets == [10]


def test_reset_is_followed_by_a_cooldown(reference_greedy: Reference) -> None:
    losses = [10.0] * 12
    params = {
        "factor": 0.5,
        "patience": 0,
        "min_lr": 0.05,
        "max_lr": 0.1,
        "reset_start": 2,
        "cooldown": 2,
    }
    rows, resets = replay_rows("greedy", losses, [0.1], **params)
    got = [row[0] for row in rows]
    assert got == lrs_of(reference_greedy, losses, **params)
    # Step 1 lands on the floor (first attempt), steps 2-3 are the cooldown, step 4 is the
    # second at-floor attempt: reset, and then again two hold steps before the next compare.
    assert got == [0.1, 0.05, 0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.1]
    assert resets == [4, 11]
    states = fold(greedy(**params), losses, [0.1])
    assert [s.cooldown_left for s in states[4:8]] == [2, 1, 0, 0]
    assert states[7].best == 10.0


def test_stale_best_after_a_hold_section_3_6(reference_greedy: Reference) -> None:
    losses = [1.0, 2.0, 2.0, 0.1, 0.1, 0.9, 0.8, 0.95]
    params = {"factor": 0.5, "patience": 1, "cooldown": 2}
    got = simulate(losses, "greedy", lr=0.1, **params).tolist()
    assert got == lrs_of(reference_greedy, losses, **params)
    states = fold(greedy(**params), losses, [0.1])
    # Both 0.1 values fall inside the cooldown, so best is still 1.0 when 0.9 and 0.8 arrive:
    # two improvements, and the learning rate goes up.
    assert states[4].best == 1.0
    assert states[5].best == 0.9
    assert got[5:7] == [0.05, 0.1]


def test_concrete_divergence_from_reduce_on_plateau_section_5(
    reference_greedy: Reference,
    reference_torch: Callable[..., list[list[float]]],
) -> None:
    losses = [1.0, 2.0, 2.0, 0.1, 0.1, 0.9, 0.8, 0.95, 0.95, 0.95]
    common = {
        "factor": 0.5,
        "patience": 1,
        "cooldown": 2,
        "threshold": 1e-6,
        "threshold_mode": "abs",
        "min_lr": 1e-4,
    }
    plateau = simulate(losses, "plateau", lr=0.1, **common).tolist()
    greedy_lrs = simulate(losses, "greedy", lr=0.1, max_lr=0.1, **common).tolist()
    assert plateau == [0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025]
    assert greedy_lrs == [0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.1, 0.05, 0.05]
    torch_plateau = reference_torch(
        lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **common), losses, [0.1]
    )
    assert plateau == [row[0] for row in torch_plateau]
    assert greedy_lrs == lrs_of(reference_greedy, losses, max_lr=0.1, **common)


def test_increases_every_p_plus_1_plus_warmup_steps_section_3_6(
    reference_greedy: Reference,
) -> None:
    losses = [float(20 - i) for i in range(20)]
    params = {"factor": 0.5, "patience": 2, "warmup": 3, "max_lr": 100.0}
    got = simulate(losses, "greedy", lr=0.1, **params)
    increases = [i for i in range(1, len(got)) if got[i] > got[i - 1]]
    assert increases == [2, 8, 14]
    assert got.tolist() == lrs_of(reference_greedy, losses, **params)


def test_running_sum_drift(reference_greedy: Reference) -> None:
    # A generator that reproduces the spec's figure: 50 Gaussian values, then a constant 0.3.
    random.seed(37)
    losses = [random.gauss(0.0, 1.0) for _ in range(50)] + [0.3] * 100
    reference_window = StreamingAverage(50)
    reference_means = [reference_window.streamavg(x) for x in losses]
    assert reference_means[-1] == 0.29999999999999993

    params = {"smooth": True, "window_size": 50, "threshold": 0.0, "patience": 1}
    states = fold(greedy(**params), losses, [0.1])
    means = [s.window_sum / len(s.window) for s in states]
    assert means == reference_means
    assert means[-1] != 0.3
    assert simulate(losses, "greedy", lr=0.1, **params).tolist() == lrs_of(
        reference_greedy, losses, **params
    )


def test_nan_poisons_the_smoothing_window_until_a_reset(reference_greedy: Reference) -> None:
    losses = [1 / (i + 1) for i in range(20)] + [math.nan] + [1 / (i + 1) for i in range(20, 80)]
    params = {
        "smooth": True,
        "window_size": 5,
        "patience": 1,
        "factor": 0.5,
        "min_lr": 0.01,
        "reset_start": 2,
        "max_lr": 10.0,
    }
    result = replay_rows("greedy", losses, [0.1], **params)
    got = [row[0] for row in result[0]]
    assert got == lrs_of(reference_greedy, losses, **params)
    states = fold(greedy(**params), losses, [0.1])
    (reset_step,) = result[1]
    # The NaN leaves the window after 5 steps, but the running sum stays NaN: every step until
    # the reset is bad, and the learning rate falls from max_lr to min_lr although the loss
    # keeps improving.
    assert all(math.isnan(s.window_sum) for s in states[20:reset_step])
    assert got[20] == 10.0
    assert got[reset_step - 1] == 0.01
    poisoned = got[20:reset_step]
    assert poisoned == sorted(poisoned, reverse=True)
    assert got[reset_step] == 0.1
    assert not math.isnan(states[reset_step + 1].window_sum)
    assert got[-1] == 10.0


def test_without_smoothing_nan_is_one_bad_step(reference_greedy: Reference) -> None:
    losses = [1 / (i + 1) for i in range(20)] + [math.nan] + [1 / (i + 1) for i in range(20, 40)]
    params = {"patience": 1, "factor": 0.5, "max_lr": 10.0}
    got = simulate(losses, "greedy", lr=0.1, **params).tolist()
    assert got == lrs_of(reference_greedy, losses, **params)
    assert min(got[20:]) == 10.0


def test_first_finite_metric_is_an_improvement(reference_greedy: Reference) -> None:
    got = simulate([5.0], "greedy", lr=0.1, patience=0, factor=0.5).tolist()
    assert got == [0.2] == lrs_of(reference_greedy, [5.0], patience=0, factor=0.5)


def test_minus_inf_becomes_best_and_nothing_improves_on_it(reference_greedy: Reference) -> None:
    losses = [1.0, -math.inf] + [float(-i) for i in range(30)]
    params = {"patience": 1, "factor": 0.5, "min_lr": 0.0}
    states = fold(greedy(**params), losses, [0.1])
    assert states[-1].best == -math.inf
    assert all(s.good_steps == 0 for s in states[2:])
    got = simulate(losses, "greedy", lr=0.1, **params).tolist()
    assert got == lrs_of(reference_greedy, losses, **params)
    assert got[-1] < 1e-5


def test_drops_of_exactly_the_threshold_never_move_the_lr(reference_greedy: Reference) -> None:
    losses, value = [], 1.0
    for _ in range(200):
        losses.append(value)
        value = value - 1e-6
    states = fold(greedy(patience=1), losses, [0.1])
    # Bad and good steps alternate, so neither run ever exceeds patience 1.
    assert {s.good_steps + s.bad_steps for s in states} == {1}
    got = simulate(losses, "greedy", lr=0.1, patience=1).tolist()
    assert got == [0.1] * 200 == lrs_of(reference_greedy, losses, patience=1)


def test_lr_below_min_lr_can_only_go_up(reference_greedy: Reference) -> None:
    # transformers' default min_lr=1e-3 with a typical fine-tuning rate of 5e-5.
    losses = [1.0] * 50 + [1.0 - i / 100 for i in range(50)]
    got = simulate(losses, "greedy", lr=5e-5, patience=2)
    assert got.tolist() == lrs_of(reference_greedy, losses, lr=5e-5, patience=2)
    assert got[:50].tolist() == [5e-5] * 50
    assert got[-1] > 5e-5


def test_lr_above_max_lr_is_never_clamped(reference_greedy: Reference) -> None:
    losses = [1.0 - i / 100 for i in range(40)]
    got = simulate(losses, "greedy", lr=2.0, patience=1)
    assert got.tolist() == [2.0] * 40 == lrs_of(reference_greedy, losses, lr=2.0, patience=1)


def test_eps_gates_increases_and_can_freeze_the_lr(reference_greedy: Reference) -> None:
    losses = [1.0 - i / 100 for i in range(30)] + [1.0] * 30
    params = {"eps": 0.002, "factor": 0.9, "patience": 0}
    got = simulate(losses, "greedy", lr=0.01, **params).tolist()
    assert got == [0.01] * 60 == lrs_of(reference_greedy, losses, lr=0.01, **params)


def test_repeated_multiplication_is_not_a_power(reference_greedy: Reference) -> None:
    losses = [1.0] + [2.0] * 40  # a decrease every second step: twenty of them
    params = {"factor": 0.95, "patience": 1, "min_lr": 0.0}
    got = simulate(losses, "greedy", lr=0.1, **params).tolist()
    assert got[-1] == 0.035848592240854196 != 0.1 * 0.95**20
    assert got == lrs_of(reference_greedy, losses, **params)


def test_without_a_ceiling_the_lr_overflows_to_inf_and_sticks(reference_greedy: Reference) -> None:
    # Not in the spec: with max_lr=inf, 1027 doublings overflow to inf; inf * factor is inf and
    # inf - inf is NaN, so no decrease ever passes the eps gate again, and inf > min_lr means
    # no reset either. The quirk is kept (max_lr=inf is accepted, as by the reference).
    losses = [float(2000 - i) for i in range(1100)] + [5.0] * 50
    params = {"factor": 0.5, "patience": 0, "max_lr": math.inf}
    got = simulate(losses, "greedy", lr=0.1, **params).tolist()
    assert got == lrs_of(reference_greedy, losses, **params)
    assert got.index(math.inf) == 1027
    assert got[-1] == math.inf
