"""DBG301-DBG306: loss not decreasing, overfit, underfit, overtraining, oscillating, non-finite."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dbgcli.findings import Severity
from dbgcli.report.model import RuleStatus

from .helpers import analyze_path, keyed, run_rule, train_recording_data

EVAL_EVERY = 25

# SageMaker Debugger's 2019 LossNotDecreasing schedule and default (diff_percent = 0), spelled
# with this rule's explicit parameters.
SAGEMAKER_2019 = {"num_steps": 10, "smooth": False, "patience": 1, "z": 0.0}


def power_law(steps: int, *, initial: float = 2.3, exponent: float = 0.7) -> np.ndarray:
    """The expected loss of a healthy run: fast at first, then ever slower."""
    return initial * (1 + np.arange(steps) / 10) ** -exponent


def minibatch(level: np.ndarray, seed: int, batch: int = 64) -> np.ndarray:
    """Minibatch losses around ``level``: the mean of ``batch`` per-sample cross-entropies.

    Their spread grows as the loss falls (a few hard samples carry it), tight at
    initialisation and near a factor of two at a loss of 0.01, as in the healthy sample trace.
    """
    rng = np.random.default_rng(seed)
    std = np.sqrt(level * 0.5 / batch)
    sigma = np.sqrt(np.log1p((std / level) ** 2))
    return level * np.exp(sigma * rng.standard_normal(len(level)) - sigma**2 / 2)


def losses(train: np.ndarray, evals: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
    """A ``loss`` series (train every step, eval every 25 steps) for ``make_trace``."""
    parts: list[dict[str, Any]] = [{"values": list(train)}]
    if evals is not None:
        steps = range(0, EVAL_EVERY * len(evals), EVAL_EVERY)
        parts.append({"values": list(evals), "steps": steps, "mode": "eval"})
    return {"loss": parts, **extra}


def healthy(steps: int, seed: int, batch: int = 64, exponent: float = 0.7) -> dict[str, Any]:
    """A healthy run: noisy train loss, and an eval loss 5 % above the expected train loss."""
    level = power_law(steps, exponent=exponent)
    expected = level[::EVAL_EVERY]
    wobble = np.exp(0.01 * np.random.default_rng(seed + 1).standard_normal(len(expected)))
    return losses(minibatch(level, seed, batch), expected * 1.05 * wobble)


# DBG301 loss-not-decreasing


def test_loss_not_decreasing_sagemaker_2019_test_default(make_trace) -> None:
    path = make_trace(
        scalars={"loss": {"values": [0.3, 0.33, 0.31, 0.30, 0.28], "steps": range(0, 17, 4)}}
    )
    result = run_rule(path, "DBG301", **SAGEMAKER_2019, min_decrease_pct=0, max_increase_pct=None)
    (finding,) = keyed(result, "not-decreasing")
    # Fires first at step 12 (0.30 against 0.3 at step 0: not a strict decrease), and the
    # next check would be at step 22, so steps 13-16 do not fire.
    assert (finding.first_step, finding.last_step, finding.steps) == (12, 12, 1)
    assert finding.value == 0.0 and finding.threshold == 0.0
    assert finding.extra["compared_with_step"] == 0
    assert len(result.findings) == 1


def test_loss_not_decreasing_sagemaker_2019_test_min_diff(make_trace) -> None:
    values = [0.3, 0.33, 0.31, 0.30, 0.28, 0.2, 0.42]
    path = make_trace(scalars={"loss": {"values": values, "steps": range(0, 25, 4)}})
    result = run_rule(path, "DBG301", **SAGEMAKER_2019, min_decrease_pct=None, max_increase_pct=20)
    (finding,) = result.findings
    # Checks at 12 (against 0, unchanged) and 24 (against 12: 0.30 -> 0.42, +40 %).
    assert (finding.key, finding.first_step, finding.last_step) == ("increasing", 24, 24)
    assert finding.value == pytest.approx(40.0) and finding.extra["compared_with_step"] == 12
    # The documentation's reading of diff_percent=20 (a minimum decrease) fires at 12 instead.
    documented = run_rule(
        path, "DBG301", **SAGEMAKER_2019, min_decrease_pct=20, max_increase_pct=None
    )
    assert [f.first_step for f in documented.findings] == [12]


def test_loss_not_decreasing_fires_when_the_loss_gets_stuck(make_trace) -> None:
    # Learns linearly from 2.3 to ln 4 over 200 steps, then stuck at chance level like a dead
    # network: every sample's loss is ln 4, so the minibatch noise is tiny.
    rng = np.random.default_rng(0)
    level = np.r_[np.linspace(2.3, np.log(4), 200), np.full(400, np.log(4))]
    train = level * (1 + 0.002 * rng.standard_normal(600))
    result = run_rule(make_trace(scalars=losses(train)), "DBG301")
    (finding,) = keyed(result, "not-decreasing")
    # num_steps = 599 // 10 = 59: checks at 59, 118, ..., 590. The check at 295 still sees
    # the end of the descent in its earlier window (177, 236]; from 354 on both windows are flat.
    assert (finding.first_step, finding.last_step, finding.steps) == (354, 590, 5)
    assert finding.extra["num_steps"] == 59 and finding.extra["compared_with_step"] in range(
        295, 532, 59
    )
    assert abs(finding.value) < 0.1 and finding.threshold == 1.0 and finding.mode == "train"
    assert finding.severity is Severity.warning


def test_loss_not_decreasing_leaves_the_plateau_early_stopping_waits_out(make_trace) -> None:
    """A noisy task learned to its floor: 2.3 down to 1.25 by step 200 (above half the start),
    then flat, the eval loss least at step 200 and flat after. Early stopping on the
    validation loss (Lightning's notes no optimum: the eval loss's least value is it) waits
    that plateau out and keeps step 200's model; without it, the plateau is a warning, and
    with an optimum noted at step 500 it is judged up to there. A run that never learned
    keeps its warning under early stopping."""
    rng = np.random.default_rng(0)
    level = np.r_[np.linspace(2.3, 1.25, 200), np.full(400, 1.25)]
    train = level * (1 + 0.002 * rng.standard_normal(600))
    evals = np.r_[np.linspace(2.3, 1.3, 9), np.full(15, 1.31)]
    scalars = losses(train, evals)
    assert keyed(run_rule(make_trace(scalars=scalars), "DBG301"), "not-decreasing")
    watched = {"early_stopping": {"monitor": "val_loss", "patience": 3}}
    assert run_rule(make_trace(scalars=scalars, metadata=watched), "DBG301").status is (
        RuleStatus.passed
    )
    later = {"early_stopping": {"monitor": "val_loss", "best_step": 500}}
    (finding,) = keyed(
        run_rule(make_trace(scalars=scalars, metadata=later), "DBG301"), "not-decreasing"
    )
    assert finding.last_step <= 500 < 590
    # The optimum is the run's, whatever steps or mode the analysis looks at.
    stopped = make_trace(scalars=scalars, metadata=watched)
    for window in ({"mode": "train"}, {"start": 300}):
        report = analyze_path(stopped, select=("DBG301",), **window)
        assert not report.findings, window
    # A run that never learned has its optimum in a dip of the noise: its plateau stays.
    stalled = 2.3 * (1 + 0.002 * rng.standard_normal(150))
    dipped = np.array([2.31, 2.29, 2.30, 2.305, 2.30, 2.31])
    assert keyed(
        run_rule(make_trace(scalars=losses(stalled, dipped), metadata=watched), "DBG301"),
        "not-decreasing",
    )


def test_loss_not_decreasing_notes_a_plateau_the_loss_leaves(make_trace) -> None:
    """Stuck at chance for 300 steps, then learning down to 0.05: a recurrent network that
    finds the signal after a few epochs. The plateau is a note that says where the loss
    went, not a warning; stuck to the end, it stays a warning."""
    rng = np.random.default_rng(0)
    level = np.r_[np.full(300, np.log(4)), np.geomspace(np.log(4), 0.05, 300)]
    train = level * (1 + 0.002 * rng.standard_normal(600))
    (finding,) = keyed(run_rule(make_trace(scalars=losses(train)), "DBG301"), "not-decreasing")
    assert finding.severity is Severity.info
    assert "; a plateau the loss left: it fell to " in finding.message
    stuck = np.full(600, np.log(4)) * (1 + 0.002 * rng.standard_normal(600))
    (finding,) = keyed(run_rule(make_trace(scalars=losses(stuck)), "DBG301"), "not-decreasing")
    assert finding.severity is Severity.warning and "plateau the loss left" not in finding.message


def test_loss_not_decreasing_notes_a_plateau_the_loss_leaves_above_half(make_trace) -> None:
    """A small causal language model: ln 32 to 3.33 in 150 steps, flat for 150, then down to
    2.3 once its attention finds the context, above half the start (the data's own entropy
    keeps it there). The loss fell by more than a fifth below the plateau (DBG303's bar for
    having learned): a stage of training, a note. Leaving it by less stays a warning."""
    rng = np.random.default_rng(1)
    start = np.log(32)
    ramp = np.geomspace(start, 3.33, 150)
    plateau = np.full(150, 3.33)

    def run(end: float) -> Path:
        level = np.r_[ramp, plateau, np.geomspace(3.33, end, 200)]
        return make_trace(scalars=losses(level * (1 + 0.003 * rng.standard_normal(500))))

    (finding,) = keyed(run_rule(run(2.3), "DBG301"), "not-decreasing")
    assert finding.severity is Severity.info
    assert "; a plateau the loss left: it fell to " in finding.message
    (finding,) = keyed(run_rule(run(3.0), "DBG301"), "not-decreasing")
    assert finding.severity is Severity.warning


@pytest.mark.parametrize("steps, exponent", [(300, 0.7), (2000, 0.4), (5000, 0.3)])
def test_loss_not_decreasing_quiet_on_healthy_noisy_loss(
    make_trace, steps: int, exponent: float
) -> None:
    for seed in range(3):
        path = make_trace(scalars=healthy(steps, seed, exponent=exponent))
        assert run_rule(path, "DBG301").status is RuleStatus.passed


def test_loss_not_decreasing_raw_points_fire_on_minibatch_noise(make_trace) -> None:
    # Why the defaults smooth: SageMaker Debugger's point comparison every 10 steps flags a
    # healthy noisy loss over and over.
    path = make_trace(scalars=healthy(600, seed=0))
    raw = run_rule(path, "DBG301", **SAGEMAKER_2019, min_decrease_pct=0)
    assert sum(f.episodes for f in raw.findings) >= 3


def test_loss_not_decreasing_checks_the_eval_loss_on_request(make_trace) -> None:
    level = power_law(800)
    evals = level[::EVAL_EVERY].copy()
    evals[12:] = evals[12] * (1 + 0.05 * np.arange(20))  # rises 5 % per evaluation from step 300
    path = make_trace(scalars=losses(minibatch(level, seed=1), evals))
    assert run_rule(path, "DBG301").status is RuleStatus.passed
    result = run_rule(path, "DBG301", mode="eval")
    (finding,) = keyed(result, "increasing")
    # num_steps = max(775 // 10, 50, 5 * 25) = 125: checks at 125, 250, ..., 750. The window
    # (250, 375] still holds the minimum; from (375, 500] on each window is above the last.
    assert (finding.first_step, finding.last_step, finding.steps, finding.mode) == (
        500,
        750,
        3,
        "eval",
    )
    assert finding.value is not None and finding.value > 5.0


def sgdr(steps: int, restarts: tuple[int, ...], peak: float = 0.1) -> np.ndarray:
    """A cosine learning rate from ``peak`` to 0 that restarts at ``restarts`` (SGDR)."""
    edges = [0, *restarts, steps]
    parts = [
        peak * (1 + np.cos(np.pi * np.arange(end - start) / (end - start))) / 2
        for start, end in zip(edges, edges[1:])
    ]
    return np.concatenate(parts)


def test_a_warm_restart_raises_the_loss_by_design(make_trace) -> None:
    """SGDR restarts the learning rate at step 700: the loss rises 40 % and falls again as
    the rate anneals. The rise follows the schedule, not a problem; the same rise under a
    constant rate is one."""
    rng = np.random.default_rng(0)
    steps = np.arange(1100)
    # Still falling, above half its start: every check that does not fall counts.
    bump = np.interp(steps, [0, 700, 900, 1100], [0.0, 0.0, 0.2, 0.0])
    loss = np.exp(-steps / 2000) + bump + rng.normal(0, 0.003, 1100)
    restarted = make_trace(scalars={"loss": list(loss), "lr": list(sgdr(1100, (100, 300, 700)))})
    assert not run_rule(restarted, "DBG301").findings
    for rate in (0.05, 0.0):  # a rate of 0 raised nothing either
        constant = make_trace(scalars={"loss": list(loss), "lr": [rate] * 1100})
        assert keyed(run_rule(constant, "DBG301"), "increasing"), rate


def test_a_loss_below_zero_is_judged_against_its_range_and_only_above_zero(make_trace) -> None:
    """An actor-critic's loss falls below zero and drifts back towards it as the advantages
    shrink: -0.021 to -0.017 is a 19 % rise of the value, 1 % of the range the loss spans,
    and below zero a surrogate's value has no fixed meaning (a policy gradient's rises
    towards zero as the policy sharpens). A loss that climbs back above zero across most of
    its range is still a rise."""
    rng = np.random.default_rng(0)
    steps = np.arange(600)
    level = -0.3 * np.exp(-((steps - 80) ** 2) / 2000.0) + 0.3 * np.exp(-steps / 15)
    drifting = level - 0.02 * np.exp(-steps / 400) + 0.01 * rng.standard_normal(600)
    assert run_rule(make_trace(scalars={"loss": list(drifting)}), "DBG301").status is (
        RuleStatus.passed
    )
    sharpening = -0.3 + 0.2 * steps / 600 + 0.01 * rng.standard_normal(600)
    assert run_rule(make_trace(scalars={"loss": list(sharpening)}), "DBG301").status is (
        RuleStatus.passed
    )
    rising = -0.3 + 0.6 * np.clip((steps - 200) / 300, 0, 1) + 0.01 * rng.standard_normal(600)
    (finding,) = keyed(run_rule(make_trace(scalars={"loss": list(rising)}), "DBG301"), "increasing")
    assert finding.first_step >= 350
    assert ", of its range -0.3" in finding.message


def test_a_converged_loss_that_wobbles_near_zero_is_not_rising(make_trace) -> None:
    """From 1.4 to 0.002, then a few hard batches lift the late window means threefold: 0.3 %
    of the start, noise of a converged run. The same curve lifted to 0.1 -> 0.3 climbs by a
    seventh of its start, and that is a rise."""
    rng = np.random.default_rng(0)
    steps = np.arange(600)
    base = 1.4 * np.exp(-steps / 30) * np.exp(0.3 * rng.standard_normal(600))
    late = np.where(steps >= 450, 3.0, 1.0)
    for settled, found in ((0.002, False), (0.1, True)):
        loss = base + settled * late * np.exp(0.3 * rng.standard_normal(600))
        result = run_rule(make_trace(scalars={"loss": list(loss)}), "DBG301")
        assert bool(keyed(result, "increasing")) is found, settled


def test_soft_targets_put_the_floor_of_the_loss_at_their_entropy(make_trace) -> None:
    """A binary classifier trained on soft targets 0.1 / 0.9 cannot take its cross-entropy
    below their entropy, 0.325: flat at 0.36 from a start of 0.69 it has converged, which
    half of the start (0.347) would call a plateau. With hard labels it is one."""
    rng = np.random.default_rng(0)
    steps = np.arange(500)
    level = 0.36 + 0.33 * np.exp(-steps / 60)
    loss = {"loss": list(level * np.exp(0.01 * rng.standard_normal(500)))}
    hard = [rng.integers(0, 2, 64).astype(np.float32) for _ in range(50)]
    soft = [np.where(labels == 1, 0.9, 0.1).astype(np.float32) for labels in hard]
    record_steps = list(range(0, 500, 10))
    for labels, status in ((soft, RuleStatus.passed), (hard, RuleStatus.violated)):
        tensors = {"labels": {"values": labels, "steps": record_steps, "collection": "labels"}}
        result = run_rule(make_trace(scalars=loss, tensors=tensors), "DBG301")
        assert result.status is status


def test_loss_not_decreasing_skipped_without_a_train_loss(make_trace) -> None:
    result = run_rule(make_trace(scalars={"accuracy": [0.5, 0.6]}), "DBG301")
    assert result.status is RuleStatus.skipped
    assert result.reason == "no train loss series"


@pytest.mark.parametrize(
    ("logged", "expected"),
    [
        (
            {"logging_strategy": "steps", "logging_steps": 500, "global_step": 120},
            "no train loss series; Trainer logged no training loss (it logs every "
            "logging_steps=500 steps and the run took 120): set logging_steps=1",
        ),
        (
            {"logging_strategy": "no", "logging_steps": 500, "global_step": 120},
            "no train loss series; Trainer logged no training loss (logging_strategy='no')",
        ),
    ],
)
def test_a_trainer_run_that_logged_no_loss_is_told_why_in_the_skip_reason(
    make_trace, logged: dict[str, object], expected: str
) -> None:
    """The Hugging Face callback notes how Trainer logged (metadata ``trainer_logging``); a
    run shorter than ``logging_steps`` has no train loss, and every rule that needs one says
    what to change."""
    trace = make_trace(
        scalars={"eval_loss": {"values": [0.9, 0.5], "steps": [60, 120], "mode": "eval"}},
        metadata={"trainer_logging": {**logged, "train_loss_records": 0}},
    )
    for rule_id in ("DBG301", "DBG302", "DBG303"):
        result = run_rule(trace, rule_id)
        assert result.status is RuleStatus.skipped
        assert result.reason.startswith(expected), result.reason


def test_the_trainer_hint_needs_a_run_that_logged_nothing(make_trace) -> None:
    """Metadata of a run that logged its loss, or took no step, adds no hint."""
    for noted in ({"train_loss_records": 3, "global_step": 120}, {"train_loss_records": 0}):
        trace = make_trace(
            scalars={"accuracy": [0.5, 0.6]},
            metadata={"trainer_logging": {"logging_strategy": "steps", **noted}},
        )
        assert run_rule(trace, "DBG301").reason == "no train loss series"


# DBG302 overfit


def overfitting_run(seed: int = 0) -> dict[str, Any]:
    """The eval loss follows the train loss until step 150, then jumps more than half the
    initial loss above it and keeps climbing while training goes on."""
    level = 0.05 + 2.0 * np.exp(-np.arange(400) / 100)
    evals = level[::EVAL_EVERY].copy()
    evals[7:] = level[150] + 1.2 + 0.004 * (np.arange(7, 16) * EVAL_EVERY - 150)
    return losses(minibatch(level, seed), evals)


def test_overfit_fires_when_the_eval_loss_pulls_away(make_trace) -> None:
    result = run_rule(make_trace(scalars=overfitting_run()), "DBG302")
    (finding,) = keyed(result, "gap")
    # At 150 the eval loss still equals the curve; from 175 it is more than 1.03 (half the
    # initial 2.05) above it.
    assert (finding.tensor, finding.first_step, finding.last_step, finding.steps) == (
        "loss",
        175,
        375,
        9,
    )
    assert finding.value is not None and finding.value > 3.0 and finding.threshold == 0.1


def test_a_gap_the_run_closes_is_a_note_and_one_a_restart_shrinks_is_not(make_trace) -> None:
    """A zero-initialised residual CNN with batch norm at SGD lr 0.05 and momentum 0.9: its
    eval-mode loss jumped to 1.5-4.7 for five evaluations while its smooth train loss was
    0.2, then came down to 0.3-0.5 (the running statistics caught up with the weights).
    Overfitting does not undo itself: that is a note, not the overfitting warning. A gap that
    shrinks because the train loss rose, the eval loss staying where it was, is no closing."""
    level = 0.05 + 2.0 * np.exp(-np.arange(400) / 100)
    evals = level[::EVAL_EVERY].copy()
    evals[7:12] = [2.1, 1.7, 4.7, 1.6, 3.9]
    evals[12:] = level[300:400:EVAL_EVERY] + 0.3
    (note,) = run_rule(make_trace(scalars=losses(minibatch(level, 0), evals)), "DBG302").findings
    assert (note.key, note.severity, note.first_step, note.last_step) == (
        "closed",
        Severity.info,
        175,
        275,
    )
    assert "a gap the run closed: by step 375 the eval loss was down to 0.397" in note.message

    restarted = level.copy()
    restarted[300:] = 2.0  # a warm restart lifts the train loss to the eval loss's level
    evals = level[::EVAL_EVERY].copy()
    evals[7:] = 2.0
    (finding,) = run_rule(
        make_trace(scalars=losses(minibatch(restarted, 0), evals)), "DBG302"
    ).findings
    assert finding.key == "gap" and finding.severity is not Severity.info


def test_a_gap_there_before_the_model_fit_anything_is_no_overfitting(tmp_path: Path) -> None:
    """A classifier trained with the loss summed over batches of 64 and divided by 8, and
    evaluated the same way on 1,000 samples: the eval loss is 15.6 times the train loss from
    the first evaluation, when the train loss had not fallen at all. That gap is of scale, not
    of generalisation; the same run with a mean reduction has none."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6000, 16, generator=generator)
    y = (x[:, :4].argmax(1) + (x[:, 4] > 1).long()) % 4

    def train(name: str, reduction: str) -> Path:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def loss_fn(logits: Any, labels: Any) -> Any:
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction=reduction)
            return loss / 8 if reduction == "sum" else loss

        path = tmp_path / f"{name}.h5"
        with attach(model, optimizer, path) as hook:
            for step in range(300):
                batch = torch.randint(0, 5000, (64,), generator=generator)
                optimizer.zero_grad()
                loss = loss_fn(model(x[batch]), y[batch])
                hook.record_loss(loss)
                loss.backward()
                optimizer.step()
                if step % 25 == 0 or step == 299:
                    with torch.no_grad():
                        hook.record_loss(loss_fn(model(x[5000:]), y[5000:]), mode="eval")
        return path

    (finding,) = run_rule(train("summed", "sum"), "DBG302").findings
    assert finding.key == "from-start" and finding.severity is Severity.warning
    assert "the gap was there at step 1" in finding.message
    assert "while the train loss was still 100% of the initial loss" in finding.message
    assert run_rule(train("mean", "mean"), "DBG302").status is RuleStatus.passed


def test_overfit_patience_and_start_step(make_trace) -> None:
    path = make_trace(scalars=overfitting_run())
    assert keyed(run_rule(path, "DBG302", patience=9), "gap")[0].first_step == 175
    assert run_rule(path, "DBG302", patience=10).status is RuleStatus.passed
    assert keyed(run_rule(path, "DBG302", start_step=300), "gap")[0].first_step == 300


def test_overfit_under_early_stopping_is_judged_up_to_its_optimum(make_trace) -> None:
    # The gap opens at 175; early stopping on the loss kept step 150's model.
    stopped = {"early_stopping": {"monitor": "val_loss", "patience": 10, "best_step": 150}}
    path = make_trace(scalars=overfitting_run(), metadata=stopped)
    assert run_rule(path, "DBG302").status is RuleStatus.passed
    # An optimum later than the gap's start: judged up to it.
    later = {"early_stopping": {"best_step": 300}}
    (finding,) = keyed(
        run_rule(make_trace(scalars=overfitting_run(), metadata=later), "DBG302"), "gap"
    )
    assert (finding.first_step, finding.last_step) == (175, 300)
    # Watching the validation loss without noting its optimum (Lightning's EarlyStopping):
    # the optimum is where the eval loss was least, step 150.
    watched = {"early_stopping": {"monitor": "val_loss", "patience": 3}}
    path = make_trace(scalars=overfitting_run(), metadata=watched)
    assert run_rule(path, "DBG302").status is RuleStatus.passed
    # Early stopping on the accuracy, or without a known optimum: the whole run.
    for metadata in (
        {"early_stopping": {"monitor": "val_acc", "best_step": 150}},
        {"early_stopping": {}},
    ):
        (finding,) = keyed(
            run_rule(make_trace(scalars=overfitting_run(), metadata=metadata), "DBG302"), "gap"
        )
        assert finding.last_step == 375


def test_overfit_quiet_when_both_losses_approach_zero(make_trace) -> None:
    # Like the healthy sample trace: train loss near 0.003, eval near 0.007, both still falling.
    level = 0.003 + 2.3 * np.exp(-np.arange(300) / 15)
    evals = 0.004 + level[::EVAL_EVERY]
    path = make_trace(scalars=losses(minibatch(level, seed=2), evals))
    assert run_rule(path, "DBG302").status is RuleStatus.passed
    # Without the absolute floor the relative gap of two tiny losses passes for overfitting.
    assert keyed(run_rule(path, "DBG302", min_gap_fraction=0.0), "gap")


@pytest.mark.parametrize("batch", [64, 8])
def test_overfit_quiet_on_healthy_noisy_runs(make_trace, batch: int) -> None:
    for seed in range(3):
        path = make_trace(scalars=healthy(2000, seed, batch=batch, exponent=0.15))
        assert run_rule(path, "DBG302").status is RuleStatus.passed


def test_overfit_allows_for_the_noise_of_the_train_mean(make_trace) -> None:
    # A true gap of 5 %, but the mean of 25 batch-of-8 losses wanders by several percent.
    path = make_trace(scalars=healthy(2000, seed=0, batch=8, exponent=0.15))
    assert run_rule(path, "DBG302", min_gap_fraction=0.05).status is RuleStatus.passed
    # Without the allowance the noise makes gaps (which the run closes, being healthy).
    assert run_rule(path, "DBG302", min_gap_fraction=0.05, z=0.0).findings


def test_overfit_leaves_the_gap_of_boosted_trees_alone(make_trace) -> None:
    """Boosted trees drive the training loss far below the validation loss while the latter
    still improves: a gap of a third of the initial loss (as a healthy XGBoost run on noisy
    labels), below half of it."""
    rounds = np.arange(60)
    train = 0.65 * np.exp(-rounds / 40)
    evals = 0.36 + 0.29 * np.exp(-rounds / 25)
    scalars = {
        "loss": [
            {"values": list(train)},
            {"values": list(evals), "steps": range(60), "mode": "eval"},
        ]
    }
    assert run_rule(make_trace(scalars=scalars), "DBG302").status is RuleStatus.passed


def test_overfit_skipped_without_an_eval_loss(make_trace) -> None:
    result = run_rule(make_trace(scalars={"loss": [1.0, 0.9, 0.8]}), "DBG302")
    assert result.status is RuleStatus.skipped
    assert result.reason == "no eval loss series"


# DBG303 underfit


def stuck_at_chance(steps: int = 300, seed: int = 0) -> np.ndarray:
    return np.log(4) * (1 + 0.003 * np.random.default_rng(seed).standard_normal(steps))


def test_underfit_fires_when_the_loss_never_leaves_its_start(make_trace) -> None:
    result = run_rule(make_trace(scalars=losses(stuck_at_chance())), "DBG303")
    (finding,) = keyed(result, "loss-high")
    # High from the first record to the end (the run spans more than min_steps = 100 steps).
    assert (finding.first_step, finding.last_step, finding.steps) == (0, 299, 300)
    assert finding.value == pytest.approx(1.0, abs=0.01) and finding.threshold == 0.8
    assert "mean train loss of the last 50 records" in finding.message
    # A series of 8 records is smoothed over 2 of them, and the message says so.
    sparse = {"loss": {"values": list(stuck_at_chance(8)), "steps": list(range(0, 400, 50))}}
    (finding,) = keyed(run_rule(make_trace(scalars=sparse), "DBG303"), "loss-high")
    assert "mean train loss of the last 2 records" in finding.message
    assert run_rule(make_trace(scalars=losses(stuck_at_chance(80))), "DBG303").status is (
        RuleStatus.passed
    )
    # 100 records at steps 0-99 span 100 steps (100 boosting rounds): judged.
    assert keyed(run_rule(make_trace(scalars=losses(stuck_at_chance(100))), "DBG303"), "loss-high")
    assert run_rule(make_trace(scalars=losses(stuck_at_chance(99))), "DBG303").status is (
        RuleStatus.passed
    )


def test_underfit_stays_a_warning_unless_overtraining_holds_the_loss_up(make_trace) -> None:
    """A loss still at 87 % of its start: three evaluations whose last is a hair above the
    first is no overtraining (DBG304 asks ten evaluations past the best), and the run is
    underfitting; twenty past a best the held-out loss left while the training loss fell on
    is, and what holds the loss up is the data's noise, a note."""
    rng = np.random.default_rng(0)
    level = np.linspace(2.5, 2.175, 600)
    train = level * (1 + 0.01 * rng.standard_normal(600))
    few = losses(train, np.array([2.200, 2.201, 2.203]))
    few["loss"][1]["steps"] = [200, 400, 599]
    (warning,) = keyed(run_rule(make_trace(scalars=few), "DBG303"), "loss-high")
    assert warning.severity is Severity.warning
    held_out = np.r_[np.linspace(2.5, 2.3, 4), np.linspace(2.31, 2.4, 20)]
    (note,) = run_rule(make_trace(scalars=losses(train, held_out)), "DBG303").findings
    assert (note.key, note.severity) == ("high-floor", Severity.info)
    assert "the held-out loss has not improved for 20 evaluations" in note.message


def test_underfit_at_chance_even_after_an_unlucky_start(make_trace) -> None:
    """A binary classifier whose loss starts at 0.94 and ends at ln 2 = 0.69 has fallen 26 %
    and learned nothing: it is at chance for two classes."""
    rng = np.random.default_rng(5)
    level = np.log(2) + (0.94 - np.log(2)) * np.exp(-np.arange(300) / 20)
    train = level * (1 + 0.01 * rng.standard_normal(300))
    path = make_trace(scalars=losses(train), metadata={"num_classes": 2})
    (finding,) = keyed(run_rule(path, "DBG303"), "at-chance")
    assert finding.value == pytest.approx(1.0, abs=0.02) and finding.threshold == 0.9
    assert "ln 2" in finding.message
    # The number of classes can come from the model's output layer too.
    out = {"out.weight": {"values": [np.ones((2, 8))] * 300, "collection": "weights"}}
    assert keyed(run_rule(make_trace(scalars=losses(train), tensors=out), "DBG303"), "at-chance")


def test_underfit_quiet_on_healthy_and_late_learning_runs(make_trace) -> None:
    for seed in range(3):
        assert (
            run_rule(make_trace(scalars=healthy(600, seed)), "DBG303").status is RuleStatus.passed
        )
    # Stuck for 250 steps, then learns: what counts is the end of the run.
    late = np.r_[stuck_at_chance(250), minibatch(np.log(4) * np.exp(-np.arange(250) / 30), seed=3)]
    assert run_rule(make_trace(scalars=losses(late)), "DBG303").status is RuleStatus.passed


def test_underfit_fraction_and_accuracy_parameters(make_trace) -> None:
    # The loss falls to 60 % of its start and stays there; accuracy hovers at 0.3.
    level = 1.4 * (0.6 + 0.4 * np.exp(-np.arange(400) / 20))
    accuracy = 0.3 + 0.02 * np.random.default_rng(4).standard_normal(400)
    path = make_trace(scalars=losses(minibatch(level, seed=4), accuracy=list(accuracy)))
    # Without the number of classes, an accuracy that never rises and stays at or below 0.6
    # (AutoTrainer's not-converged gate) is underfitting.
    assert [f.key for f in run_rule(path, "DBG303").findings] == ["accuracy-flat"]
    (high,) = keyed(run_rule(path, "DBG303", max_loss_fraction=0.5), "loss-high")
    assert (high.first_step, high.last_step) == (0, 399)
    assert high.value == pytest.approx(0.6, abs=0.03)
    (low,) = keyed(run_rule(path, "DBG303", min_accuracy=0.5), "accuracy-low")
    assert (low.tensor, low.first_step, low.last_step) == ("accuracy", 0, 399)
    assert low.value == pytest.approx(0.3, abs=0.01) and low.threshold == 0.5


def test_underfit_on_the_eval_accuracy_is_an_eval_finding(make_trace) -> None:
    # No train accuracy: the eval accuracy (4 classes) sits at chance to the end.
    accuracy = {"values": [0.25, 0.26, 0.24, 0.25] * 3, "steps": range(0, 300, 25), "mode": "eval"}
    path = make_trace(scalars={**losses(stuck_at_chance()), "accuracy": accuracy})
    found = {f.tensor: f for f in run_rule(path, "DBG303", min_accuracy=0.5).findings}
    assert found["accuracy"].mode == "eval" and "mean eval accuracy" in found["accuracy"].message
    assert found["loss"].mode == "train"


def test_underfit_held_out_accuracy_at_chance_while_training_accuracy_rises(make_trace) -> None:
    """10 classes: the training accuracy climbs to 0.9 while the validation accuracy stays
    near 0.1 (memorising labels unrelated to the inputs); from where the training accuracy's
    window mean left chance, that is a validation finding. A validation accuracy that rises,
    or a training accuracy at chance too (the training finding), is none."""
    rng = np.random.default_rng(5)
    train_accuracy = list(0.1 + 0.8 * (1 - np.exp(-np.arange(500) / 150)))
    loss = list(2.3 - 0.8 * (1 - np.exp(-np.arange(500) / 150)))
    evals = range(0, 501, 50)

    def run(held_out: list[float], train: list[float] = train_accuracy) -> list:
        accuracy = [
            {"values": train},
            {"values": held_out, "steps": evals, "mode": "eval"},
        ]
        path = make_trace(
            scalars={"loss": loss, "accuracy": accuracy}, metadata={"num_classes": 10}
        )
        return run_rule(path, "DBG303").findings

    chance = list(0.1 + 0.02 * rng.standard_normal(len(evals)))
    (finding,) = run(chance)
    assert (finding.key, finding.tensor, finding.mode) == ("held-out-at-chance", "accuracy", "eval")
    # The training accuracy's mean over 50 records first tops 0.15 at step 49.
    assert (finding.first_step, finding.last_step) == (50, 500)
    assert finding.threshold == pytest.approx(0.15)
    assert "does not carry to data it has not seen" in finding.message
    assert not run(list(0.1 + 0.6 * (1 - np.exp(-np.arange(len(evals)) / 3))))
    flat = list(0.1 + 0.02 * rng.standard_normal(500))
    assert [f.key for f in run(chance, flat)] == ["at-chance"]


def test_underfit_held_out_at_chance_from_the_training_loss_without_a_training_accuracy(
    make_trace,
) -> None:
    """Only a validation accuracy recorded, near 0 for 10 classes (training labels coded one
    class off): a training loss that falls far below ln 10 shows the model fits its training
    labels, from where it left the chance band. A training loss stuck at ln 10 is the plain
    at-chance finding on the validation accuracy."""
    evals = range(0, 501, 50)
    held_out = {"values": [0.003] * len(evals), "steps": evals, "mode": "eval"}
    fits = list(np.log(10) * np.exp(-np.arange(500) / 60))
    path = make_trace(scalars={"loss": fits, "accuracy": held_out}, metadata={"num_classes": 10})
    (finding,) = keyed(run_rule(path, "DBG303"), "held-out-at-chance")
    assert finding.mode == "eval" and "while the training loss fell below chance" in (
        finding.message
    )
    # The 50-record mean of the loss falls under 0.9 ln 10 at step 13; the first evaluation
    # after it is at step 50.
    assert finding.first_step == 50
    stuck = make_trace(
        scalars={"loss": list(np.full(500, np.log(10))), "accuracy": held_out},
        metadata={"num_classes": 10},
    )
    keys = {(f.key, f.mode) for f in run_rule(stuck, "DBG303").findings}
    assert ("at-chance", "eval") in keys and ("held-out-at-chance", "eval") not in keys


def test_underfit_held_out_loss_never_beating_chance_while_the_training_loss_fits(
    make_trace,
) -> None:
    """No accuracy recorded, 10 classes: the training loss falls far below ln 10 while the
    validation loss, measured every 25 steps, never goes below ln 10 (labels unrelated to
    their inputs). One that dipped below chance once (the model learned, then overfit), one
    watched too rarely while the training loss came down, or one summed over the held-out
    set instead of averaged, is none."""
    fits = np.log(10) * (0.1 + 0.9 * np.exp(-np.arange(500) / 300))
    rising = np.log(10) * (1.002 + 0.4 * (1 - np.exp(-np.arange(21) / 8)))

    def run(evals: np.ndarray, every: int = EVAL_EVERY, classes: int = 10) -> list:
        held_out = {"values": list(evals), "steps": range(0, every * len(evals), every)}
        path = make_trace(
            scalars={"loss": [{"values": list(fits)}, {**held_out, "mode": "eval"}]},
            metadata={"num_classes": classes},
        )
        return keyed(run_rule(path, "DBG303"), "held-out-at-chance")

    (finding,) = run(rising)
    # From the first evaluation after the first update, at step 25.
    assert (finding.tensor, finding.mode, finding.first_step, finding.last_step) == (
        "loss",
        "eval",
        25,
        500,
    )
    # Calibrated predictions right 15 % of the time (chance, 10 %, and the accuracy checks'
    # margin) score 99.47 % of ln 10: the bar; a best of 99.5 % is at chance, 99.4 % is not.
    assert finding.steps == 21 and finding.threshold == pytest.approx(0.99469, abs=1e-5)
    assert finding.value == pytest.approx(1.002, abs=1e-6)
    assert run(rising - 0.007 * np.log(10))
    assert not run(rising - 0.008 * np.log(10))
    # The trailing mean of 50 records falls under 0.9 ln 10 = 2.07 at step 61, after three
    # evaluations.
    assert "from step 61" in finding.message and "never beat chance, 2.3" in finding.message
    learned_then_overfit = rising.copy()
    learned_then_overfit[3] = 0.95 * np.log(10)
    assert not run(learned_then_overfit)
    # Evaluated every 100 steps: once (step 0) before the training loss fit; or at steps 0
    # and 61 only, where the training loss fell below the band: none watched it since.
    assert not run(rising[::4], every=100)
    assert not run(rising[:2], every=61)
    assert not run(rising * 400)
    # The same losses on a 3-class head: the validation loss is far above ln 3, not at it.
    assert not run(rising, classes=3)


def test_held_out_loss_chance_is_what_a_model_of_no_inputs_scores_there(make_trace) -> None:
    """A long-tailed training set (entropy 1.64) and a balanced validation set of 10 classes
    (chance ln 10 = 2.30): a validation loss that bottoms at 2.23 learned something, though
    it never went below the training labels' entropy. With the validation labels recorded,
    or without them (ln C), no finding; at ln 10 itself, a finding."""
    rng = np.random.default_rng(0)
    fits = np.log(10) * (0.1 + 0.9 * np.exp(-np.arange(500) / 300))
    shares = 100.0 ** (-np.arange(10) / 9)
    shares /= shares.sum()
    train_labels = [rng.choice(10, 64, p=shares) for _ in range(10)]
    held_out_labels = [np.repeat(np.arange(10), 10) for _ in range(6)]
    learned = 2.23 + 0.1 * (1 - np.exp(-np.arange(21) / 8))

    def run(evals: np.ndarray, with_held_out_labels: bool) -> list:
        labels = [{"values": train_labels, "steps": range(0, 500, 50), "collection": "labels"}]
        if with_held_out_labels:
            labels.append({"values": held_out_labels, "steps": range(0, 600, 100), "mode": "eval"})
        path = make_trace(
            scalars={
                "loss": [
                    {"values": list(fits)},
                    {"values": list(evals), "steps": range(0, 525, 25), "mode": "eval"},
                ]
            },
            tensors={"labels": labels},
            metadata={"num_classes": 10},
        )
        return keyed(run_rule(path, "DBG303"), "held-out-at-chance")

    assert not run(learned, True) and not run(learned, False)
    (finding,) = run(learned + 0.08, True)
    assert finding.message.startswith("the validation loss never beat chance, 2.303 (best 2.31")


def test_held_out_chance_after_a_balanced_training_set_is_ln_2(make_trace) -> None:
    """Two classes balanced for training, 9 % positive in validation (the natural rate):
    the validation labels' entropy, 0.30, is no model of no inputs' score there, since such
    a model learned the training frequencies, 50/50, which score ln 2 on any labels. A
    validation loss that fell to 0.40 learned; one that stayed at ln 2 did not. With 30 %
    positives in both, the training frequencies score 0.611 on the validation labels, and a
    validation loss that stays there learned nothing either."""
    rng = np.random.default_rng(0)
    fits = np.log(2) * (0.1 + 0.9 * np.exp(-np.arange(500) / 300))
    balanced = [rng.integers(0, 2, 64) for _ in range(10)]
    natural = [(rng.random(600) < 0.09).astype(np.int64) for _ in range(6)]

    def run(
        evals: np.ndarray,
        train_labels: list[np.ndarray] = balanced,
        held_out_labels: list[np.ndarray] = natural,
    ) -> list:
        path = make_trace(
            scalars={
                "loss": [
                    {"values": list(fits)},
                    {"values": list(evals), "steps": range(0, 525, 25), "mode": "eval"},
                ]
            },
            tensors={
                "labels": [
                    {"values": train_labels, "steps": range(0, 500, 50), "collection": "labels"},
                    {"values": held_out_labels, "steps": range(0, 600, 100), "mode": "eval"},
                ]
            },
            metadata={"num_classes": 2},
        )
        return keyed(run_rule(path, "DBG303"), "held-out-at-chance")

    assert not run(0.40 + 0.3 * np.exp(-np.arange(21) / 5))
    (finding,) = run(np.full(21, np.log(2) + 0.01))
    assert finding.message.startswith("the validation loss never beat chance, 0.6931")
    # 30 % positives, in training and in validation.
    trained, held_out = np.repeat([0, 1], [448, 192]), np.repeat([0, 1], [420, 180])
    (same,) = run(np.full(21, 0.615), [trained[i::10] for i in range(10)], [held_out] * 6)
    assert "predicting the training labels' class frequencies scores 0.611" in same.message


def test_a_run_that_weighs_its_classes_is_not_held_against_chance(tmp_path: Path) -> None:
    """XGBoost with scale_pos_weight 50 on balanced labels: its predictions lean towards the
    positives by design, so the validation logloss, which does not weigh them, never goes
    below ln 2 (best 0.82) while the model ranks the validation rows well. The weighting is
    the finding (DBG601); "nothing learned that generalises" would be false. The same run
    unweighted learns, and the validation loss shows it."""
    xgb = pytest.importorskip("xgboost")
    from dbgcli.xgboost import DbgCallback

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 20))
    y = (x[:, 0] * 1.5 - x[:, 1] + rng.normal(size=6000) > 0).astype(float)
    train, held_out = xgb.DMatrix(x[:5000], label=y[:5000]), xgb.DMatrix(x[5000:], label=y[5000:])

    def run(name: str, **weighting: float) -> Path:
        path = tmp_path / f"{name}.h5"
        xgb.train(
            {"objective": "binary:logistic", "eta": 0.1, "max_depth": 4, "nthread": 1, **weighting},
            train,
            300,
            evals=[(train, "train"), (held_out, "validation")],
            callbacks=[DbgCallback(path, data=train)],
            verbose_eval=False,
        )
        return path

    weighted = analyze_path(run("weighted", scale_pos_weight=50.0))
    assert any(
        f.rule_id == "DBG601" and "scale_pos_weight 50.0" in f.message for f in weighted.findings
    )
    assert not [f for f in weighted.findings if f.key == "held-out-at-chance"]
    plain = analyze_path(run("plain"))
    assert not [f for f in plain.findings if f.rule_id in ("DBG303", "DBG601")]


def test_a_weighted_loss_validated_alike_is_held_against_ln_c(tmp_path: Path) -> None:
    """CrossEntropyLoss(weight=inverse class frequencies) for training and validation, labels
    drawn apart from the inputs: a model that learned nothing scores ln 3 on the weighted
    validation loss whatever the weights, and this one never beat it while it memorised its
    training labels. Only XGBoost's scale_pos_weight, which no evaluation metric weighs,
    leaves the held-out loss unjudged."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    shares = torch.tensor([0.7, 0.2, 0.1])
    x, y = torch.randn(256, 16), torch.multinomial(shares, 256, replacement=True)
    x_held, y_held = torch.randn(256, 16), torch.multinomial(shares, 256, replacement=True)
    counts = torch.bincount(y, minlength=3).float()
    loss_of = torch.nn.CrossEntropyLoss(weight=counts.sum() / (3 * counts))
    model = torch.nn.Sequential(torch.nn.Linear(16, 256), torch.nn.ReLU(), torch.nn.Linear(256, 3))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    path = tmp_path / "weighted.h5"
    weighting = {"CrossEntropyLoss.weight": loss_of.weight.tolist()}
    with attach(model, optimizer, path, metadata={"class_weighting": weighting}) as hook:
        for step in range(401):
            if step % 20 == 0:
                model.eval()
                with torch.no_grad():
                    hook.record_loss(loss_of(model(x_held), y_held), mode="eval")
                model.train()
            if step == 400:
                break
            batch = torch.randint(0, 256, (64,))
            optimizer.zero_grad()
            loss = loss_of(model(x[batch]), y[batch])
            hook.record_loss(loss)
            loss.backward()
            optimizer.step()
    (finding,) = keyed(run_rule(path, "DBG303"), "held-out-at-chance")
    assert finding.message.startswith("the validation loss never beat chance, 1.099")


def test_a_held_out_loss_that_is_no_cross_entropy_is_not_held_against_chance(make_trace) -> None:
    """The validation loss is a classification loss plus a regression's (a multi-task sum):
    with the validation labels and logits kept in full, it is not their cross-entropy, and
    stays above ln 10 however the classifier does. The same losses as that cross-entropy
    make a finding."""
    rng = np.random.default_rng(0)
    fits = np.log(10) * (0.1 + 0.9 * np.exp(-np.arange(500) / 300))
    evaluated = range(0, 525, 25)
    labels = [rng.integers(0, 10, 100) for _ in evaluated]
    logits = [rng.normal(0.0, 0.05, (100, 10)) for _ in evaluated]

    def cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(y)), y].mean())

    at_chance = [cross_entropy(z, y) for z, y in zip(logits, labels, strict=True)]

    def run(evals: list[float]) -> list:
        path = make_trace(
            scalars={
                "loss": [
                    {"values": list(fits)},
                    {"values": evals, "steps": evaluated, "mode": "eval"},
                ]
            },
            tensors={
                "labels": {"values": labels, "steps": evaluated, "mode": "eval"},
                "predictions": {"values": logits, "steps": evaluated, "mode": "eval"},
            },
            metadata={"num_classes": 10},
        )
        return keyed(run_rule(path, "DBG303"), "held-out-at-chance")

    assert run(at_chance)
    assert not run([value + 0.3 for value in at_chance])


def test_held_out_loss_at_chance_is_no_symptom_of_badly_scaled_inputs(make_trace) -> None:
    """Inputs far off-centre (DBG602) explain a model that cannot fit its training data, not
    one that fits them and generalises nothing: the held-out finding stays its own
    diagnosis."""
    rng = np.random.default_rng(0)
    fits = np.log(10) * (0.1 + 0.9 * np.exp(-np.arange(500) / 300))
    rising = np.log(10) * (1.002 + 0.4 * (1 - np.exp(-np.arange(21) / 8)))
    inputs = [rng.normal(5.0, 1.0, (64, 8)).astype(np.float32) for _ in range(10)]
    path = make_trace(
        scalars={
            "loss": [
                {"values": list(fits)},
                {"values": list(rising), "steps": range(0, 525, 25), "mode": "eval"},
            ]
        },
        tensors={"inputs": {"values": inputs, "steps": range(0, 500, 50), "collection": "inputs"}},
        metadata={"num_classes": 10},
    )
    report = analyze_path(path)
    causes = {
        (report.findings[p.cause].rule_id, report.findings[p.cause].key) for p in report.problems
    }
    assert ("DBG303", "held-out-at-chance") in causes
    assert any(rule == "DBG602" for rule, _ in causes)


@pytest.mark.parametrize("with_accuracy", [True, False])
def test_memorised_random_labels_are_named_before_the_overfitting_they_show(
    tmp_path, with_accuracy: bool
) -> None:
    """A real run: an MLP memorises 120 samples whose labels are random. Its training loss
    falls and the validation loss rises, which DBG302 reports as overfitting, but the
    validation accuracy never leaves chance, nor the validation loss when no accuracy is
    recorded: the report names that first."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    x, x_val = torch.randn(120, 20), torch.randn(400, 20)
    y, y_val = torch.randint(0, 10, (120,)), torch.randint(0, 10, (400,))
    model = torch.nn.Sequential(torch.nn.Linear(20, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = tmp_path / "memorised.h5"
    with attach(model, optimizer, path) as hook:
        for step in range(400):
            rows = torch.randint(0, 120, (40,), generator=torch.Generator().manual_seed(step))
            optimizer.zero_grad()
            output = model(x[rows])
            loss = torch.nn.functional.cross_entropy(output, y[rows])
            hook.record_loss(loss)
            if with_accuracy:
                accuracy = (output.argmax(1) == y[rows]).float().mean().item()
                hook.record_scalar("accuracy", accuracy)
            loss.backward()
            optimizer.step()
            if step % 25 == 0 or step == 399:
                with torch.no_grad():
                    held_out = model(x_val)
                hook.record_loss(torch.nn.functional.cross_entropy(held_out, y_val), mode="eval")
                if with_accuracy:
                    accuracy = (held_out.argmax(1) == y_val).float().mean().item()
                    hook.record_scalar("accuracy", accuracy, mode="eval")
    report = analyze_path(path)
    found = {(f.rule_id, f.key) for f in report.findings}
    assert any(rule == "DBG302" for rule, _ in found)
    cause = report.findings[report.problems[0].cause]
    assert (cause.rule_id, cause.key) == ("DBG303", "held-out-at-chance")
    assert report.problems[0].title == "nothing learned that generalises"


def test_underfit_skipped_without_a_train_loss(make_trace) -> None:
    result = run_rule(
        make_trace(scalars={"val_loss": {"values": [1.0, 0.9], "mode": "eval"}}), "DBG303"
    )
    assert result.status is RuleStatus.skipped
    assert result.reason == "no train loss series"


def test_underfit_at_the_entropy_of_the_label_frequencies(make_trace) -> None:
    """Labels shuffled apart from their inputs, 20 % positives: the model learns only how
    often each class occurs and its loss settles at their entropy, 0.50, 72 % of ln 2. With
    the labels recorded that is chance; a model that learns goes well below it."""
    rng = np.random.default_rng(0)
    labels = [(rng.random(64) < 0.2).astype(np.int64) for _ in range(20)]
    recorded = {"labels": {"values": labels, "steps": range(0, 400, 20), "collection": "labels"}}
    prior = -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))
    settles = prior + (np.log(2) - prior) * np.exp(-np.arange(400) / 30)
    stuck = make_trace(scalars={"loss": list(settles)}, tensors=recorded)
    (finding,) = keyed(run_rule(stuck, "DBG303"), "at-chance")
    assert (
        "predicting the labels' class frequencies alone, ignoring the inputs, scores their "
        "entropy 0.5; guessing among 2 classes scores ln 2 = 0.693" in finding.message
    )
    assert finding.value is not None and abs(finding.value - 1.0) < 0.01
    learns = make_trace(scalars={"loss": list(0.05 + settles - prior)}, tensors=recorded)
    assert not run_rule(learns, "DBG303").findings
    # Without the labels, ln 2 is chance and 0.50 is well below it.
    assert not run_rule(make_trace(scalars={"loss": list(settles)}), "DBG303").findings


@pytest.mark.parametrize("objective", ["count:poisson", "reg:tweedie", "reg:gamma"])
def test_a_likelihood_metric_falls_toward_its_saturated_floor(
    tmp_path: Path, objective: str
) -> None:
    """XGBoost's count:poisson, whose poisson-nloglik keeps ln y!: counts of mean about 1
    leave the model that predicts every label exactly a loss of 0.77, so a good fit ends near
    1.2 from 1.51 (its last 50 rounds' mean is 80 % of its start, but 60 % of the way down to
    that floor). It learned; the same model boosted at a learning rate a hundred times lower
    did not. The same holds for reg:tweedie's tweedie-nloglik@1.5 (a good fit goes from 3.61
    to 3.27, 91 % of its start, towards a floor of 2.8) and reg:gamma's gamma-nloglik; each
    floor is XGBoost's own metric at predictions equal to the labels. Without the training
    labels the floor is unknown, and the rule is skipped."""
    xgboost = pytest.importorskip("xgboost")
    from dbgcli.xgboost import DbgCallback

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 12))
    mean = np.exp(0.5 * x[:, 0] - 0.3 * x[:, 1])
    y = {
        "count:poisson": rng.poisson(mean).astype(float),
        "reg:tweedie": np.where(rng.random(5000) < 0.3, 0.0, rng.gamma(2.0, mean / 2.0)),
        "reg:gamma": rng.gamma(2.0, mean / 2.0),
    }[objective]
    train = xgboost.DMatrix(x[:4000], label=y[:4000])
    valid = xgboost.DMatrix(x[4000:], label=y[4000:])
    # The loss of predicting each training label exactly, per the metric's formula.
    labels = y[:4000]
    if objective == "count:poisson":
        log_factorial = np.array([math.lgamma(v + 1) for v in labels])
        floor = np.mean(labels - labels * np.log(np.where(labels > 0, labels, 1)) + log_factorial)
    elif objective == "reg:tweedie":
        floor = np.mean(labels**0.5 / 0.25)  # y^(2-ρ) / ((ρ-1)(2-ρ)) at ρ = 1.5
    else:
        floor = np.mean(1 + np.log(labels))
    # reg:gamma's own metric is its deviance, zero at the saturated model.
    params = {"objective": objective, "max_depth": 4} | (
        {"eval_metric": "gamma-nloglik"} if objective == "reg:gamma" else {}
    )
    # XGBoost's own metric agrees: a model whose predictions are the labels (as base margins
    # on the log link, learning nothing more at eta 0) scores that floor.
    exact = xgboost.DMatrix(x[:4000], label=labels, base_margin=np.log(np.maximum(labels, 1e-12)))
    saturated = xgboost.train(params | {"eta": 0.0}, exact, num_boost_round=1)
    own = float(saturated.eval(exact).rpartition(":")[2])
    assert own == pytest.approx(floor, rel=1e-5)

    def boost(name: str, eta: float, labelled: bool = True) -> Path:
        path = tmp_path / f"{name}.h5"
        xgboost.train(
            params | {"eta": eta},
            train,
            num_boost_round=200,
            evals=[(train, "train"), (valid, "valid")],
            callbacks=[DbgCallback(path, data=train if labelled else None)],
            verbose_eval=False,
        )
        return path

    assert run_rule(boost("fits", 0.1), "DBG303").status is RuleStatus.passed
    # Without the labels the floor is unknown, and how far the loss fell says nothing.
    unlabelled = run_rule(boost("unlabelled", 0.1, labelled=False), "DBG303")
    assert unlabelled.status is RuleStatus.skipped
    assert "whose floor (the loss of predicting every label exactly)" in unlabelled.reason
    (finding,) = run_rule(boost("crawls", 0.001), "DBG303").findings
    assert finding.key == "loss-high"
    assert "of the way down from the initial loss" in finding.message
    assert f"to its floor {floor:.4g}" in finding.message


def test_a_cox_partial_likelihood_is_not_judged_against_its_start(tmp_path: Path) -> None:
    """XGBoost's survival:cox: its cox-nloglik starts at the loss of equal risks and even the
    true risk function scores only a few percent below it, as the noise of the survival times
    leaves every ranking uncertain (4 % here). A model that ranks well (held-out C-index 0.72)
    ends at 94 % of its start: neither underfitting (DBG303 is skipped, saying why) nor a plateau (DBG301)."""
    xgboost = pytest.importorskip("xgboost")
    from dbgcli.xgboost import DbgCallback

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8))
    risk = 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2]
    time = rng.exponential(np.exp(-risk))
    censored = rng.random(3000) < 0.4
    label = np.where(censored, -time, time)  # XGBoost's coding: negative times are censored

    def partial_likelihood(eta: np.ndarray, rows: slice) -> float:
        t, event, e = time[rows], ~censored[rows], eta[rows]
        order = np.argsort(-t)  # risk sets, by cumulative sums from the latest time
        at_risk = np.log(np.cumsum(np.exp(e[order])))
        return float(np.mean((at_risk - e[order])[event[order]]))

    train = slice(0, 2400)
    equal, true = partial_likelihood(np.zeros(3000), train), partial_likelihood(risk, train)
    assert 0.9 * equal < true < equal  # the premise: the best ranking is close to the start

    path = tmp_path / "cox.h5"
    xgboost.train(
        {"objective": "survival:cox", "eta": 0.05, "max_depth": 3},
        xgboost.DMatrix(x[train], label=label[train]),
        num_boost_round=200,
        evals=[(xgboost.DMatrix(x[train], label=label[train]), "train")],
        callbacks=[DbgCallback(path)],
        verbose_eval=False,
    )
    underfit = run_rule(path, "DBG303")
    assert underfit.status is RuleStatus.skipped
    assert "partial likelihood" in underfit.reason and "no record gives" in underfit.reason
    assert not keyed(run_rule(path, "DBG301"), "not-decreasing")


def test_a_held_out_auc_at_chance_is_nothing_learned_that_generalises(tmp_path: Path) -> None:
    """XGBoost, binary:logistic with scale_pos_weight for 10 % positives, training labels
    shuffled apart from their inputs: the trees fit them (training AUC near 1) and rank the
    held-out data at random. The weight shifts every score, so the losses say nothing of
    chance; the AUC does, 0.5 whatever the shift. With the labels in place the held-out AUC
    is high and nothing is reported."""
    xgboost = pytest.importorskip("xgboost")
    from dbgcli.xgboost import DbgCallback

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 10))
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=3000) > 1.5).astype(float)
    valid = xgboost.DMatrix(x[2000:], label=y[2000:])
    for shuffled in (True, False):
        labels = rng.permutation(y[:2000]) if shuffled else y[:2000]
        train = xgboost.DMatrix(x[:2000], label=labels)
        path = tmp_path / f"shuffled-{shuffled}.h5"
        xgboost.train(
            {
                "objective": "binary:logistic",
                "eval_metric": ["logloss", "auc"],
                "scale_pos_weight": float((labels == 0).sum() / labels.sum()),
                "max_depth": 6,
                "eta": 0.1,
            },
            train,
            num_boost_round=200,
            evals=[(train, "train"), (valid, "valid")],
            callbacks=[DbgCallback(path)],
            verbose_eval=False,
        )
        found = keyed(run_rule(path, "DBG303"), "held-out-at-chance")
        assert bool(found) is shuffled
        if shuffled:
            assert found[0].tensor == "auc" and found[0].value <= 0.55
            assert "validation AUC" in found[0].message


def test_a_held_out_auc_is_a_roc_auc_and_below_chance_is_inverted(make_trace) -> None:
    """A model that fits (train loss 0.69 to 0.08 on two classes) with a held-out PR AUC of
    0.46 on 5 % positives is good: the PR curve's chance level is the positives' share, and
    only a ROC AUC is judged against 0.5. A held-out ROC AUC of 0.06 ranks inverted (the
    held-out labels coded the other way round), which the finding says."""
    train = list(0.08 + 0.61 * np.exp(-np.arange(400) / 40))
    evals = range(0, 400, 20)
    for name, values, found in (
        ("pr_auc", np.linspace(0.30, 0.46, 20), False),
        ("roc_auc", np.linspace(0.5, 0.06, 20), True),
    ):
        scalars = {
            "loss": list(train),
            name: {"values": list(values), "steps": evals, "mode": "eval"},
        }
        path = make_trace(scalars=scalars, metadata={"num_classes": 2})
        chance = keyed(run_rule(path, "DBG303"), "held-out-at-chance")
        assert bool(chance) is found, name
        if found:
            assert "below chance, a ranking inverted" in chance[0].message


def test_chance_runs_from_the_labels_entropy_to_uniform_guessing(make_trace) -> None:
    """Shares 70/10/10/10: a model stuck at ln 4 (constant logits) guesses uniformly and is
    at chance too, above the labels' entropy 0.94. Regression targets recorded as labels
    set no chance level, and a run that weighs its classes is judged against ln C."""
    rng = np.random.default_rng(1)
    shares = [0.7, 0.1, 0.1, 0.1]
    labels = [rng.choice(4, size=64, p=shares) for _ in range(20)]
    steps = range(0, 400, 20)
    recorded = {"labels": {"values": labels, "steps": steps, "collection": "labels"}}
    uniform = list(np.log(4) + 3.0 * np.exp(-np.arange(400) / 30))
    stuck = make_trace(scalars={"loss": uniform}, tensors=recorded)
    assert keyed(run_rule(stuck, "DBG303"), "at-chance")
    prior = -sum(p * np.log(p) for p in shares)
    at_prior = list(prior + 0.4 * np.exp(-np.arange(400) / 30))
    weighted = make_trace(
        scalars={"loss": at_prior}, tensors=recorded, metadata={"class_weighting": "weights"}
    )
    assert not run_rule(weighted, "DBG303").findings  # 68 % of ln 4, not at chance
    targets = [rng.normal(size=64) for _ in steps]
    regression = {"labels": {"values": targets, "steps": steps, "collection": "labels"}}
    mse = list(0.66 + 0.9 * np.exp(-np.arange(400) / 30))
    assert not run_rule(make_trace(scalars={"loss": mse}, tensors=regression), "DBG303").findings


def test_a_loss_that_ends_above_ln_c_from_large_first_logits_is_worse_than_chance(
    make_trace,
) -> None:
    """Four classes, first logits large enough to start the loss at 1.8 ln 4: a rate far too
    low takes it down in a straight line to 1.15 ln 4, 64 % of its start and still worse than
    guessing uniformly. It learned nothing usable. A run that ends within the band reads as at
    chance as before, and one that gets below it has learned."""
    start, steps = 1.8 * np.log(4), np.arange(600)
    for end, stuck in ((1.15, True), (1.0, True), (0.7, False)):
        loss = start + (end * np.log(4) - start) * steps / 599
        path = make_trace(scalars={"loss": list(loss)}, metadata={"num_classes": 4})
        found = keyed(run_rule(path, "DBG303"), "at-chance")
        assert bool(found) is stuck, end
        if end > 1.11:
            assert "worse than chance" in found[0].message
    # One that learned (down to 0.2) and then diverged far above ln 4 is no model that
    # learned nothing: the divergence is DBG301's and DBG503's.
    diverged = np.r_[np.linspace(np.log(4), 0.2, 300), np.geomspace(0.2, 50, 300)]
    path = make_trace(scalars={"loss": list(diverged)}, metadata={"num_classes": 4})
    assert not keyed(run_rule(path, "DBG303"), "at-chance")


def test_a_loss_far_above_ln_c_is_no_classifier_at_chance(make_trace) -> None:
    """A VAE's summed reconstruction loss over 64 sigmoid pixels falls from 44.7 to 25 and
    stays six times ln 64: not a softmax over 64 classes guessing, so not at chance. A loss
    at ln C is."""
    level = 25 + 19.7 * np.exp(-np.arange(600) / 60)
    vae = make_trace(scalars={"loss": list(level)}, metadata={"num_classes": 64})
    assert not run_rule(vae, "DBG303").findings
    guessing = make_trace(
        scalars={"loss": list(np.log(64) * (1 + 0.5 * np.exp(-np.arange(600) / 60)))},
        metadata={"num_classes": 64},
    )
    assert keyed(run_rule(guessing, "DBG303"), "at-chance")


# DBG304 overtraining


def overtraining_run(seed: int = 0, steps: int = 1001) -> dict[str, Any]:
    """The eval loss bottoms out at step 300 and creeps up; the train loss keeps falling."""
    level = power_law(steps)
    evals = level[::EVAL_EVERY] * 1.05
    evals[13:] = evals[12] * (1 + 0.005 * np.arange(1, len(evals) - 12))
    return losses(minibatch(level, seed), evals)


def test_overtraining_fires_after_patience_validation_evaluations(make_trace) -> None:
    result = run_rule(make_trace(scalars=overtraining_run()), "DBG304")
    (finding,) = keyed(result, "validation-stalled")
    # Best eval loss at step 300 (evaluation 12); ten evaluations later is step 550.
    assert (finding.first_step, finding.last_step, finding.steps) == (550, 1000, 19)
    assert finding.extra["best_step"] == 300
    assert finding.value == 28.0 and finding.threshold == 10.0 and finding.mode == "eval"


def test_overtraining_is_a_stall_no_later_evaluation_ends(make_trace) -> None:
    """The same stall, then the eval loss beats its best at the last evaluations: the stall
    was a plateau (early stopping there would have missed the better model), not the
    optimum, and is not reported."""
    run = overtraining_run()
    evals = run["loss"][1]["values"]
    evals[-3:] = [0.98 * min(evals)] * 3
    assert run_rule(make_trace(scalars=run), "DBG304").status is RuleStatus.passed


def test_overtraining_at_a_loss_near_zero_is_measured_against_the_start(make_trace) -> None:
    """The same curves, both losses a thousandth of their level after the first 20 steps (a
    boosted model that found a leaked column): the eval loss's creep and the train loss's
    fall are noise next to where the loss started, and count against a tenth of it."""
    run = overtraining_run()
    for part in run["loss"]:
        steps = part.get("steps", range(len(part["values"])))
        part["values"] = [
            value * (0.001 if step > 20 else 1.0)
            for step, value in zip(steps, part["values"], strict=True)
        ]
    path = make_trace(scalars=run)
    assert run_rule(path, "DBG304").status is RuleStatus.passed
    assert keyed(run_rule(path, "DBG304", floor=0.0), "validation-stalled")


def test_overtraining_is_not_judged_while_a_restart_keeps_the_rate_up(make_trace) -> None:
    """The same eval curve as above (best at step 300, then creeping up) under SGDR restarted
    at step 310 for one long cycle: while the restart keeps the rate above twice its low
    before the best evaluation, the rise is the schedule's; once the cycle has annealed it
    back below that, at the last evaluation, the stall is judged, and found."""
    restarted = {**overtraining_run(), "lr": list(sgdr(1001, (310,)))}
    (finding,) = keyed(run_rule(make_trace(scalars=restarted), "DBG304"), "validation-stalled")
    assert (finding.first_step, finding.last_step) == (1000, 1000)


def test_overtraining_patience_validation(make_trace) -> None:
    path = make_trace(scalars=overtraining_run())
    assert (
        keyed(run_rule(path, "DBG304", patience_validation=20), "validation-stalled")[0].first_step
        == 800
    )
    assert run_rule(path, "DBG304", patience_validation=29).status is RuleStatus.passed


def test_overtraining_quiet_on_healthy_runs_and_on_plateaus(make_trace) -> None:
    for seed in range(3):
        path = make_trace(scalars=healthy(5000, seed, exponent=0.3))
        assert run_rule(path, "DBG304").status is RuleStatus.passed
        # SageMaker Debugger's combination alone: the slowly improving, noisy eval loss
        # misses a 1 % optimum for ten evaluations while a train window sets one (seed 1),
        # but sets one later: a plateau, not the optimum.
        lenient = run_rule(path, "DBG304", min_train_lead=0.0, delta=0.01)
        assert lenient.status is RuleStatus.passed
    # Both curves flat: converged or stuck, not overtrained.
    flat = make_trace(scalars=losses(stuck_at_chance(1000), np.full(40, np.log(4))))
    assert run_rule(flat, "DBG304").status is RuleStatus.passed


def test_overtraining_does_not_count_the_untrained_start_as_a_fall(make_trace) -> None:
    """A new head on a frozen encoder, evaluated every 25 steps from step 25: the train loss
    falls from 1.5 to 0.07 within the first window and stays there, the eval loss is at its
    best at the second evaluation and flat after it. Both have converged. The first window
    starts from the untrained model, which no evaluation saw, and is no level to measure
    the train loss's fall from once the validation optimum is past it."""
    steps = np.arange(401)
    level = 0.07 + 1.45 * np.exp(-steps / 5)
    eval_steps = list(range(25, 401, 25))
    overtrained = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        train = level * np.exp(0.5 * rng.standard_normal(len(steps)) - 0.125)
        evals = [0.044, 0.029, *(0.0295 + 0.01 * rng.random(len(eval_steps) - 2))]
        scalars = {
            "loss": [
                {"values": list(train)},
                {"values": evals, "steps": eval_steps, "mode": "eval"},
            ]
        }
        overtrained += bool(run_rule(make_trace(scalars=scalars), "DBG304").findings)
    # One window of 25 records is the train level at the optimum: its noise, at one
    # standard error in the run's favour, passes now and then (2 of 20 here); measured from
    # the untrained start the runs read as overtrained in 15 of 20.
    assert overtrained <= 3


def test_overtraining_not_judged_under_early_stopping(make_trace) -> None:
    stopped = {"early_stopping": {"monitor": "val_loss", "patience": 30, "best_step": 300}}
    result = run_rule(make_trace(scalars=overtraining_run(), metadata=stopped), "DBG304")
    assert result.status is RuleStatus.skipped
    assert result.reason == (
        "early stopping watched the run (metadata early_stopping, best at step 300): the "
        "evaluations after the optimum were its patience"
    )
    # Early stopping on the accuracy lets the loss climb: judged.
    on_accuracy = {"early_stopping": {"monitor": "val_acc", "patience": 30}}
    result = run_rule(make_trace(scalars=overtraining_run(), metadata=on_accuracy), "DBG304")
    assert keyed(result, "validation-stalled")


def test_overtraining_skipped_without_an_eval_loss(make_trace) -> None:
    result = run_rule(make_trace(scalars=losses(stuck_at_chance())), "DBG304")
    assert result.status is RuleStatus.skipped
    assert result.reason == "no eval loss series"


# DBG305 oscillating-loss


def oscillating_run(seed: int = 0) -> np.ndarray:
    """Healthy for 200 steps, then the loss swings between 0.3 and 1.6 in turns of 5 steps
    (initial loss 2.3), as batches sorted by class make it."""
    train = minibatch(0.3 + 2.0 * np.exp(-np.arange(200) / 20), seed)
    return np.r_[train, np.where((np.arange(200, 300) // 5) % 2, 1.6, 0.3)]


def test_oscillating_loss_fires_on_large_reversals(make_trace) -> None:
    result = run_rule(make_trace(scalars=losses(oscillating_run())), "DBG305")
    (finding,) = keyed(result, "oscillating")
    # Blocks of 5 records: from the block of steps 205-209 on, every block is a turn by
    # more than the level; the last block (295-299) has no successor.
    assert (finding.first_step, finding.last_step, finding.steps) == (205, 294, 18)
    assert finding.value == 1.0 and finding.threshold == 0.2


def test_oscillating_loss_swing_and_ratio(make_trace) -> None:
    path = make_trace(scalars=losses(oscillating_run()))
    # The swing of 1.3 is up to 4.3 times the level: the median block mean of the windows
    # that reach back into the healthy stretch is 0.3.
    assert run_rule(path, "DBG305", swing=5.0).status is RuleStatus.passed
    assert run_rule(path, "DBG305", ratio=0.51).status is RuleStatus.passed


def test_oscillating_loss_from_one_step_to_the_next_averages_out(make_trace) -> None:
    """An overshoot at every step is the learning rate's finding (DBG503): a block of 5
    records holds both sides of it."""
    train = np.r_[oscillating_run()[:200], np.where(np.arange(200, 300) % 2, 1.6, 0.3)]
    assert run_rule(make_trace(scalars=losses(train)), "DBG305").status is RuleStatus.passed


@pytest.mark.parametrize("batch", [64, 16])
def test_oscillating_loss_quiet_on_minibatch_noise(make_trace, batch: int) -> None:
    for seed in range(3):
        path = make_trace(scalars=healthy(2000, seed, batch=batch, exponent=0.3))
        assert run_rule(path, "DBG305").status is RuleStatus.passed


def converged_with_hard_batches(seed: int, settled_steps: int = 900) -> np.ndarray:
    """A classifier fitted at batch 4 (initial loss 1.6): most batches near 0.005, one in eight
    holds a sample it still gets wrong (0.2 to 1.0)."""
    rng = np.random.default_rng(seed)
    settled = 0.005 * np.exp(rng.standard_normal(settled_steps))
    hard = rng.random(settled_steps) < 0.125
    settled[hard] = rng.uniform(0.2, 1.0, hard.sum())
    return np.r_[1.6 * np.exp(-np.arange(100) / 15), settled]


def test_oscillating_loss_quiet_on_a_converged_models_hard_batches(make_trace) -> None:
    """A hard batch lifts its block's mean by the loss's level, and the block after it falls
    back: as many turns as a swinging model makes, but the next record forgets each one. The
    same records in lasting swings (each run of 20 from its hardest batch down, as batches
    sorted by class make them) oscillate."""
    for seed in range(3):
        values = converged_with_hard_batches(seed)
        assert run_rule(make_trace(scalars=losses(values)), "DBG305").status is RuleStatus.passed
        swings = np.r_[values[:100], -np.sort(-values[100:].reshape(-1, 20), axis=1).ravel()]
        (finding,) = keyed(run_rule(make_trace(scalars=losses(swings)), "DBG305"), "oscillating")
        assert finding.extra["rank_autocorrelation"] >= finding.extra["bar"] >= 3 / np.sqrt(50)


def test_oscillating_loss_a_long_run_is_no_likelier_to_pass_by_chance(make_trace) -> None:
    """Fifty times as many windows of hard batches turn, in many short episodes; the chance
    each may pass is shared out among them, so the run as a whole is no likelier to read as
    oscillating. A swing that lasts all run long is one episode, found however long."""
    for seed in range(3):
        values = converged_with_hard_batches(seed, settled_steps=45_000)
        assert run_rule(make_trace(scalars=losses(values)), "DBG305").status is RuleStatus.passed
    # Turns every block (lag-1 rank autocorrelation 0.63, 1 - 2/5 and the ties): one
    # episode of 20,000 records is held to one window's bar.
    swinging = np.where((np.arange(20_000) // 5) % 2, 0.3, 1.5)
    (finding,) = keyed(run_rule(make_trace(scalars=losses(swinging)), "DBG305"), "oscillating")
    assert finding.extra["bar"] < 0.46 < finding.extra["rank_autocorrelation"]


def test_oscillating_loss_a_late_swing_is_judged_on_its_own(make_trace) -> None:
    """Hard batches of a fitted model turn some windows by chance, in many short episodes;
    an oscillation that starts after them is an episode of its own, judged on its own
    windows, not pooled with the chance episodes around it."""
    for seed in range(3):
        values = converged_with_hard_batches(seed, settled_steps=6_000)
        late = np.where((np.arange(300) // 10) % 2, 0.3, 1.5)
        result = run_rule(make_trace(scalars=losses(np.r_[values, late])), "DBG305")
        (finding,) = keyed(result, "oscillating")
        # Its first window may reach back one window (50 records) into the hard batches.
        assert finding.first_step >= len(values) - 50
        assert finding.extra["rank_autocorrelation"] >= finding.extra["bar"]


def test_oscillating_loss_finds_swings_with_batch_noise_on_top(make_trace) -> None:
    """Turns every 10 records between 0.3 and 1.6, each batch scattered by a factor of about
    1.6 (log-normal, sigma 0.5): within a level the ranks are random, and the swings still
    show as one oscillation."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        levels = np.where((np.arange(400) // 10) % 2, 1.6, 0.3)
        train = np.r_[2.3, levels * np.exp(0.5 * rng.standard_normal(400))]
        (finding,) = keyed(run_rule(make_trace(scalars=losses(train)), "DBG305"), "oscillating")
        assert finding.extra["rank_autocorrelation"] >= finding.extra["bar"]


def test_oscillating_loss_a_stricter_dependence_test_finds_less(make_trace) -> None:
    """The clean swings of the test's oscillation pass the default bar; one too strict for
    any window (a chance too small for a float at 40) lets none pass, and runs."""
    path = make_trace(scalars=losses(oscillating_run()))
    assert keyed(run_rule(path, "DBG305"), "oscillating")
    assert run_rule(path, "DBG305", independence=40.0).status is RuleStatus.passed


def test_oscillating_loss_alternating_evaluations_with_blocks_of_one(make_trace) -> None:
    """``block=1`` reads every evaluation on its own: an eval loss that alternates between 0.4
    and 1.2 swings by more than its level at every record. Blocks that short resolve swings
    of one record, which no serial dependence can tell from a spike: the turns decide."""
    rng = np.random.default_rng(0)
    evals = np.where(np.arange(60) % 2, 1.2, 0.4) * np.exp(0.05 * rng.standard_normal(60))
    path = make_trace(scalars=losses(healthy(1500, 0)["loss"][0]["values"], evals))
    (finding,) = keyed(run_rule(path, "DBG305", mode="eval", block=1), "oscillating")
    assert "autocorrelation" not in finding.message and finding.extra == {}


def test_oscillating_loss_swing_separates_heavy_noise(make_trace) -> None:
    # Independent noise with a standard deviation of 40 % of its level (small batches of a
    # hard task): block means of 5 move by 18 %, rarely by their whole level; a quarter of
    # it is crossed often, but seldom by 3 standard errors of chance (3 x 0.2 x sqrt(2/5)).
    for seed in range(3):
        noise = 0.5 * (1 + 0.4 * np.random.default_rng(seed).standard_normal(1999))
        path = make_trace(scalars=losses(np.r_[2.3, noise]))
        assert run_rule(path, "DBG305").status is RuleStatus.passed
        assert keyed(
            run_rule(path, "DBG305", swing=0.25, noise=0.0, independence=0.0), "oscillating"
        )


def test_oscillating_loss_below_zero_is_measured_from_its_lowest(make_trace) -> None:
    """A Poisson negative log-likelihood without its constant term settles near -2 with
    single batches scattered by 1: its median is no level, chance moves its block means by
    0.6, and the same swings as a positive loss's still count."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        settled = -2.0 + 3.0 * np.exp(-np.arange(400) / 40) + rng.standard_normal(400)
        path = make_trace(scalars=losses(settled))
        assert run_rule(path, "DBG305").status is RuleStatus.passed
    (finding,) = keyed(
        run_rule(make_trace(scalars=losses(oscillating_run() - 3.0)), "DBG305"), "oscillating"
    )
    assert (finding.first_step, finding.last_step) == (205, 294)


def test_oscillating_loss_skipped_without_a_train_loss(make_trace) -> None:
    result = run_rule(make_trace(scalars={"accuracy": [0.5, 0.6]}), "DBG305")
    assert result.status is RuleStatus.skipped
    assert result.reason == "no train loss series"


# DBG306 non-finite-loss


def broken_losses() -> dict[str, Any]:
    train = list(power_law(100))
    train[40] = np.nan
    train[60:70] = [np.inf] * 10
    evals = list(power_law(100)[::EVAL_EVERY])
    evals[3] = np.nan
    aux = [0.1] * 100
    aux[10] = -np.inf
    accuracy = [0.5] * 100
    accuracy[20] = np.nan
    return losses(np.array(train), np.array(evals), **{"aux_loss": aux, "accuracy": accuracy})


def test_non_finite_loss_reports_every_loss_series_and_mode(make_trace) -> None:
    result = run_rule(make_trace(scalars=broken_losses()), "DBG306")
    found = {
        (f.tensor, f.mode, f.first_step, f.last_step, f.steps): f
        for f in keyed(result, "nonfinite")
    }
    # The two episodes of the train loss (a NaN at 40, infinities at 60-69) are one finding.
    assert set(found) == {
        ("loss", "train", 40, 69, 11),
        ("loss", "eval", 75, 75, 1),
        ("aux_loss", "train", 10, 10, 1),
    }
    assert found[("loss", "train", 40, 69, 11)].episodes == 2
    assert found[("aux_loss", "train", 10, 10, 1)].value == -np.inf
    assert all(f.severity is Severity.error for f in result.findings)


def test_non_finite_loss_says_when_the_loss_diverged_first(make_trace) -> None:
    """A learning rate far too high: the loss climbs by orders of magnitude, then overflows.
    A NaN from one bad batch in a healthy run is no divergence."""
    climbing = [2.3, 2.1, 40.0, 9e3, 5e8, np.inf] + [np.nan] * 10
    (finding,) = run_rule(make_trace(scalars={"loss": climbing}), "DBG306").findings
    assert finding.first_step == 5
    assert finding.message.endswith(
        "after the loss rose to 5e+08, 2.36e+07x the median 21.1 of the last 4 records "
        "before: it diverged"
    )
    broken = run_rule(make_trace(scalars=broken_losses()), "DBG306").findings
    assert broken and not [f for f in broken if "diverged" in f.message]
    # A converged run's noisy minibatch losses, one of them exactly 0, then one bad batch.
    rng = np.random.default_rng(0)
    converged = [*(0.02 * rng.exponential(size=200)), 0.0, 0.013, np.nan]
    (bad_batch,) = run_rule(make_trace(scalars={"loss": converged}), "DBG306").findings
    assert "diverged" not in bad_batch.message


def test_non_finite_loss_step_range_and_severity(make_trace) -> None:
    path = make_trace(scalars=broken_losses())
    early = analyze_path(path, select=("DBG306",), stop=50, severities={"DBG306": "warning"})
    (result,) = early.results
    assert sorted((f.tensor, f.first_step) for f in result.findings) == [
        ("aux_loss", 10),
        ("loss", 40),
    ]
    assert all(f.severity is Severity.warning for f in result.findings)


def test_non_finite_loss_quiet_on_finite_losses(make_trace) -> None:
    assert run_rule(make_trace(scalars=healthy(300, seed=0)), "DBG306").status is RuleStatus.passed


def test_non_finite_loss_skipped_without_loss_series(make_trace) -> None:
    result = run_rule(make_trace(scalars={"accuracy": [0.5, np.nan]}), "DBG306")
    assert result.status is RuleStatus.skipped
    assert result.reason.startswith(
        "no loss series (a scalar named like loss, val_loss, train/loss, validation_0-logloss)"
    )


# All of them


@pytest.mark.parametrize(
    "rule, params, message",
    [
        ("DBG301", {"num_steps": 0}, "DBG301 num_steps must be positive, got 0"),
        ("DBG302", {"patience": 0}, "DBG302 patience must be positive, got 0"),
        ("DBG303", {"window": -5}, "DBG303 window must be positive, got -5"),
        (
            "DBG304",
            {"patience_validation": 0},
            "DBG304 patience_validation must be positive, got 0",
        ),
        ("DBG305", {"swing": 0.0}, "DBG305 swing must be positive, got 0"),
        ("DBG305", {"independence": -1.0}, "DBG305 independence must be a number >= 0, got -1"),
    ],
)
def test_loss_rules_refuse_nonsensical_parameters(
    make_trace, rule: str, params: dict[str, Any], message: str
) -> None:
    report = analyze_path(
        make_trace(scalars=healthy(100, seed=0)), select=(rule,), params={rule: params}
    )
    assert report.error == message


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_rules_quiet_on_a_healthy_run(make_trace, seed: int) -> None:
    path = make_trace(scalars=healthy(1000, seed))
    report = analyze_path(path, select=("loss",))
    assert [r.id for r in report.results] == [
        "DBG301",
        "DBG302",
        "DBG303",
        "DBG304",
        "DBG305",
        "DBG306",
        "DBG307",
        "DBG308",
        "DBG309",
        "DBG310",
        "DBG311",
        "DBG312",
    ]
    # DBG307-DBG312 read the recorded predictions, which this trace has none of.
    reading = ("DBG307", "DBG308", "DBG309", "DBG310", "DBG311", "DBG312")
    judged = [r for r in report.results if r.id not in reading]
    assert all(r.status is RuleStatus.passed for r in judged), [(r.id, r.findings) for r in judged]
    assert all(r.status is RuleStatus.skipped for r in report.results if r.id in reading)


# Runs resumed from a checkpoint (run metadata resumed_from_step)

RESUMED_AT = 600


def resumed(
    train_level: np.ndarray, eval_level: np.ndarray, *, start: int = RESUMED_AT
) -> dict[str, Any]:
    """A ``loss`` series recorded from ``start`` on: train losses of batches of 1,024 around
    ``train_level``, and an evaluation every 25 steps at ``eval_level``."""
    steps = range(start, start + len(train_level))
    eval_steps = range(start + EVAL_EVERY, start + EVAL_EVERY * (len(eval_level) + 1), EVAL_EVERY)
    return {
        "loss": [
            {"values": list(minibatch(train_level, seed=3, batch=1024)), "steps": steps},
            {"values": list(eval_level), "steps": eval_steps, "mode": "eval"},
        ]
    }


def converged_continuation() -> dict[str, Any]:
    """The second half of a healthy classifier's run, resumed from its checkpoint: a train
    loss near its floor (0.05) and an evaluation loss a steady 0.08 above it."""
    return resumed(np.full(600, 0.05), np.full(24, 0.13))


@pytest.mark.parametrize("rule_id", ["DBG301", "DBG302", "DBG303"])
def test_a_resumed_run_is_not_judged_by_its_first_trained_loss(make_trace, rule_id: str) -> None:
    """Taken as an untrained model's, the first loss of a resumed run makes a converged model
    look stalled (DBG301, DBG303) and its ordinary generalisation gap look like overfitting
    (DBG302). With ``resumed_from_step`` it is judged against ln C, an untrained classifier's
    loss, when the number of classes is known."""
    noted = {"resumed_from_step": RESUMED_AT}
    as_untrained = make_trace(scalars=converged_continuation())
    assert run_rule(as_untrained, rule_id).findings  # the false alarm without the note
    known = make_trace(scalars=converged_continuation(), metadata={**noted, "num_classes": 10})
    result = run_rule(known, rule_id)
    assert result.status is RuleStatus.passed, result.findings
    unknown = make_trace(scalars=converged_continuation(), metadata=noted)
    result = run_rule(unknown, rule_id)
    assert not result.findings
    if rule_id == "DBG302":  # the gap needs the scale
        assert result.status is RuleStatus.skipped
        assert result.reason.startswith("the run resumed at step 600, so its first loss is")


def test_a_resumed_loss_above_chance_is_not_scaled_by_ln_c(make_trace) -> None:
    """A loss summed over the batch starts far above ln 10 however trained the model: ln C is
    no scale for it, and the loss-high check is not made without one."""
    summed = resumed(np.geomspace(6.4, 3.3, 600), np.full(24, 3.5))
    path = make_trace(scalars=summed, metadata={"resumed_from_step": RESUMED_AT, "num_classes": 10})
    assert not run_rule(path, "DBG303").findings


def test_a_resumed_run_that_overfits_or_diverges_is_still_found(make_trace) -> None:
    """The gap is measured against ln 10 and still found; a loss that rises is reported at
    any level, known scale or not."""
    train = np.geomspace(0.1, 0.005, 600)
    overfit = resumed(train, np.linspace(0.3, 2.0, 24))
    path = make_trace(
        scalars=overfit, metadata={"resumed_from_step": RESUMED_AT, "num_classes": 10}
    )
    (finding,) = run_rule(path, "DBG302").findings
    assert "0.5 of ln 10 = 2.303, an untrained classifier's loss (the run resumed at step 600)" in (
        finding.message
    )
    rising = make_trace(
        scalars=resumed(np.geomspace(0.05, 0.5, 600), np.full(24, 0.5)),
        metadata={"resumed_from_step": RESUMED_AT},
    )
    assert keyed(run_rule(rising, "DBG301"), "increasing")


def test_a_trace_that_holds_the_run_from_its_start_keeps_its_first_loss(make_trace) -> None:
    """``resume=True`` appends the resumed run to the trace of the first one: its first loss
    is the untrained model's, and a plateau near it is reported as before."""
    stalled = resumed(np.full(1200, 2.2), np.full(48, 2.25), start=0)
    path = make_trace(
        scalars=stalled, metadata={"resumed_from_step": RESUMED_AT, "num_classes": 10}
    )
    (finding,) = keyed(run_rule(path, "DBG303"), "loss-high")
    assert "of the initial loss 2.2" in finding.message
    assert keyed(run_rule(path, "DBG301"), "not-decreasing")


def fine_tune(path: Path, *, pretrained: bool) -> Path:
    """A 5-class MLP fine-tuned with a fresh Adam at lr 1e-4 for 6 epochs, labels and
    predictions recorded every 10th step; ``pretrained``: trained on the same task for 5
    epochs at lr 1e-3 before the hook is attached (the trace starts from a trained model)."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 20)) * 3 / np.sqrt(2)
    y_all = np.repeat(np.arange(5), 240)
    x_all = (centres[y_all] + 2.0 * rng.normal(size=(len(y_all), 20))).astype(np.float32)
    order = rng.permutation(len(y_all))
    x, y = torch.tensor(x_all[order[:1000]]), torch.tensor(y_all[order[:1000]])
    x_eval, y_eval = torch.tensor(x_all[order[1000:]]), torch.tensor(y_all[order[1000:]])
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 5),
    )
    loss_of = torch.nn.functional.cross_entropy

    def epoch(optimizer: Any, hook: Any = None) -> None:
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            logits = model(x[batch])
            loss = loss_of(logits, y[batch])
            if hook is not None:
                hook.record_loss(loss)
                if hook.step % 10 == 0:
                    hook.record(labels=y[batch], predictions=logits)
            loss.backward()
            optimizer.step()

    if pretrained:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(5):
            epoch(optimizer)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    with attach(model, optimizer, path) as hook:
        for _ in range(6):
            epoch(optimizer, hook)
            model.eval()
            with torch.no_grad():
                hook.record_loss(loss_of(model(x_eval), y_eval))
            model.train()
    return path


def test_a_fine_tune_of_a_trained_classifier_is_judged_against_chance(tmp_path: Path) -> None:
    """Its first predictions are a trained model's, so its first loss is no untrained
    model's: taken as one, the fine-tune's noise at its floor read as a loss that stopped
    falling, stayed high, swung and overfitted. Judged against ln 5, the run is healthy; a
    model that starts untrained keeps its first loss as the scale."""
    from dbgcli.rules._context import RuleContext
    from dbgcli.rules._known import initial_loss
    from dbgcli.trace.reader import open_trace

    tuned = fine_tune(tmp_path / "tuned.h5", pretrained=True)
    report = analyze_path(tuned, select=("DBG301", "DBG302", "DBG303", "DBG305"))
    assert not report.findings, [f.message for f in report.findings]
    fresh = fine_tune(tmp_path / "fresh.h5", pretrained=False)
    with open_trace(tuned) as trace:
        scale = initial_loss(RuleContext(trace))
        assert scale is not None and scale.value == pytest.approx(np.log(5))
        assert "it was trained before the trace began" in scale.name
    with open_trace(fresh) as trace:
        scale = initial_loss(RuleContext(trace))
        assert scale is not None and scale.name.startswith("the initial loss")


def test_a_loss_divided_by_the_batch_twice_is_no_trained_model(make_trace) -> None:
    """A cross-entropy divided by the batch size once more starts at ln 4 / 64 = 0.022, below
    half of ln 4. First predictions that beat a constant guess (inputs that tell the classes
    apart) made that read as a model trained before the trace began, and a run that fell 10 %
    in 200 steps as healthy. Those predictions' own cross-entropy is an untrained model's,
    1.36: the recorded loss is a scaled one, its first value the scale, and the run
    underfits. The same first predictions made confident (a logit of 6 on the right class)
    are a trained model's."""
    from dbgcli.rules._context import RuleContext
    from dbgcli.rules._known import initial_loss
    from dbgcli.trace.reader import open_trace

    labels = np.tile(np.arange(4), 16)
    predicted = (labels + (np.arange(64) < 4)) % 4  # 60 of 64 right

    def run(logit: float) -> Path:
        logits = np.zeros((64, 4), np.float32)
        logits[np.arange(64), predicted] = logit
        return make_trace(
            scalars={"loss": list(np.linspace(1.0, 0.9, 200) * np.log(4) / 64)},
            tensors={
                "labels": {"values": [labels], "collection": "labels"},
                "predictions": {"values": [logits], "collection": "predictions"},
            },
        )

    scaled, confident = run(0.1), run(6.0)
    with open_trace(scaled) as trace:
        scale = initial_loss(RuleContext(trace))
        assert scale is not None and scale.value == pytest.approx(np.log(4) / 64)
    (finding,) = run_rule(scaled, "DBG303").findings
    assert finding.key == "loss-high"
    assert "is still 91% of the initial loss 0.02166" in finding.message
    with open_trace(confident) as trace:
        scale = initial_loss(RuleContext(trace))
        assert scale is not None and "it was trained before the trace began" in scale.name
    assert not run_rule(confident, "DBG303").findings


def classifier_run(
    path: Path,
    *,
    head: str | None = None,
    record: str = "output",
    steps: int = 120,
    raw: bool | None = True,
    smoothing: float = 0.0,
    penalty: float = 0.0,
) -> Path:
    """A 4-class MLP trained with F.cross_entropy, labels and predictions of every 10th batch
    recorded (``raw=None``: full tensors at the hook's default, every 100th step only).
    ``head``: a module after the last Linear, ``"softmax"`` (the loss then applies its
    log_softmax to probabilities) or ``"relu"`` (the logits clamped at zero). ``record``: the
    predictions recorded, the model's ``"output"`` as it is or its ``"probabilities"``.
    ``smoothing``: the loss's label smoothing; ``penalty``: times the squared weights, added
    to the loss."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    heads = {None: [], "softmax": [torch.nn.Softmax(dim=1)], "relu": [torch.nn.ReLU()]}
    layers = [torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4), *heads[head]]
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(1024, 8)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    with attach(model, optimizer, path) as hook:
        for step in range(steps):
            batch = slice(64 * (step % 16), 64 * (step % 16 + 1))
            optimizer.zero_grad()
            output = model(x[batch])
            loss = torch.nn.functional.cross_entropy(output, y[batch], label_smoothing=smoothing)
            if penalty:
                loss = loss + penalty * sum((p**2).sum() for p in model.parameters())
            hook.record_loss(loss)
            if step % 10 == 0:
                scores = output if record == "output" else output.softmax(dim=1)
                hook.record(labels=y[batch], predictions=scores.detach(), raw=raw)
            loss.backward()
            optimizer.step()
    return path


def test_softmax_applied_twice_is_told_from_probabilities_recorded_beside_logits(
    tmp_path: Path,
) -> None:
    """A model ending in Softmax fed to cross_entropy: the recorded loss is the cross-entropy
    of its probabilities read as logits, an error from the first step. Recording softmax
    outputs while the loss takes the logits is fine."""
    twice = run_rule(classifier_run(tmp_path / "twice.h5", head="softmax"), "DBG307")
    (finding,) = twice.findings
    assert (finding.key, finding.severity, finding.first_step) == ("twice", Severity.error, 0)
    assert finding.message.startswith(
        "the training loss is the cross-entropy of the predictions read as logits, but they "
        "are probabilities (softmax applied twice"
    )
    once = run_rule(classifier_run(tmp_path / "once.h5", record="probabilities"), "DBG307")
    assert once.status is RuleStatus.passed
    # At the hook's default only every 100th step keeps full tensors; those are compared.
    sparse = classifier_run(tmp_path / "sparse.h5", head="softmax", steps=320, raw=None)
    (finding,) = run_rule(sparse, "DBG307").findings
    assert finding.steps == 3 and finding.last_step == 300


@pytest.mark.parametrize("outputs", [1, 3])
def test_sigmoid_applied_twice_is_told_from_probabilities_recorded_beside_logits(
    tmp_path: Path, outputs: int
) -> None:
    """A binary model (or a multi-label one, three 0/1 indicators per sample) ending in Sigmoid
    fed to BCEWithLogitsLoss: the recorded loss is the binary cross-entropy of its
    probabilities read as logits, element by element. Recording sigmoid outputs while the
    loss takes the logits is fine."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    def run(path: Path, *, sigmoid_head: bool) -> Path:
        torch.manual_seed(0)
        layers = [torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, outputs)]
        model = torch.nn.Sequential(*layers, *([torch.nn.Sigmoid()] if sigmoid_head else []))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        x = torch.randn(1024, 8)
        y = (x[:, :outputs] + x[:, 1 : outputs + 1] > 0).float()
        if outputs == 1:
            y = y.squeeze(1)
        with attach(model, optimizer, path) as hook:
            for step in range(120):
                batch = slice(64 * (step % 16), 64 * (step % 16 + 1))
                optimizer.zero_grad()
                output = model(x[batch])
                if outputs == 1:
                    output = output.squeeze(1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(output, y[batch])
                hook.record_loss(loss)
                if step % 10 == 0:
                    scores = output if sigmoid_head else output.sigmoid()
                    hook.record(labels=y[batch], predictions=scores.detach(), raw=True)
                loss.backward()
                optimizer.step()
        return path

    (finding,) = run_rule(run(tmp_path / "twice.h5", sigmoid_head=True), "DBG307").findings
    assert (finding.key, finding.severity, finding.first_step) == ("sigmoid", Severity.error, 0)
    assert "(sigmoid applied twice: a model ending in Sigmoid fed to BCEWithLogitsLoss?)" in (
        finding.message
    )
    once = run_rule(run(tmp_path / "once.h5", sigmoid_head=False), "DBG307")
    assert once.status is RuleStatus.passed


# DBG308 clamped-logits


def test_logits_clamped_by_a_final_relu_are_an_error_and_logits_as_they_are_pass(
    tmp_path: Path,
) -> None:
    """A classifier ending in ReLU: its scores are never negative and many are exactly 0.
    The same model's plain logits, and their softmax, pass."""
    clamped = run_rule(classifier_run(tmp_path / "relu.h5", head="relu"), "DBG308")
    (finding,) = clamped.findings
    assert (finding.key, finding.severity) == ("clamped", Severity.error)
    assert finding.message.startswith(
        "the class scores are clamped at zero (a ReLU after the last layer?): none is negative"
    )
    assert finding.steps == finding.extra["steps_compared"] == 12
    assert 0.3 < finding.value < 0.9
    for name, record in (("logits.h5", "output"), ("probabilities.h5", "probabilities")):
        result = run_rule(classifier_run(tmp_path / name, record=record), "DBG308")
        assert result.status is RuleStatus.passed, name


def test_clamped_logits_leave_sparse_probabilities_and_hard_decisions_alone(make_trace) -> None:
    """Exact zeros are a clamp's only in scores: sparsemax-like probability rows and one-hot
    decisions recorded as floats hold them by design, and class ids have no class axis."""
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 4, 32) for _ in range(6)]
    sparse = []
    for _ in range(6):
        rows = np.maximum(rng.normal(size=(32, 4)), 0) + np.eye(4)[rng.integers(0, 4, 32)]
        sparse.append((rows / rows.sum(axis=1, keepdims=True)).astype(np.float32))
    hard = [np.eye(4, dtype=np.float32)[rng.integers(0, 4, 32)] for _ in range(6)]
    clamped = [np.maximum(rng.normal(size=(32, 4)), 0).astype(np.float32) * 3 for _ in range(6)]
    # A regression's non-negative targets, several per sample, behind a deliberate ReLU.
    amounts = [np.abs(rng.normal(size=(32, 4))).astype(np.float32) for _ in range(6)]
    trace = make_trace(
        tensors={
            "labels": {"values": amounts, "collection": "labels"},
            "predictions": {"values": clamped, "collection": "predictions"},
        }
    )
    assert run_rule(trace, "DBG308").status is not RuleStatus.violated
    for predictions, status in (
        (sparse, RuleStatus.passed),
        (hard, RuleStatus.passed),
        ([p.argmax(axis=1) for p in clamped], RuleStatus.passed),
        (clamped, RuleStatus.violated),
    ):
        trace = make_trace(
            tensors={
                "labels": {"values": labels, "collection": "labels"},
                "predictions": {"values": predictions, "collection": "predictions"},
            }
        )
        assert run_rule(trace, "DBG308").status is status


def test_a_regression_clamped_at_zero_beside_negative_targets_is_an_error(tmp_path: Path) -> None:
    """A real regression on standardised targets (about half negative) whose model ends in
    ReLU: its outputs never go below 0, half of them sit exactly at 0, and its loss stays
    near 0.6 where the same model without the ReLU reaches 0.02. That run passes."""
    torch = pytest.importorskip("torch")

    def run(path: Path, relu: bool) -> Path:
        torch.manual_seed(0)
        x = torch.randn(2048, 8)
        y = x[:, :3].sum(1, keepdim=True) + 0.3 * torch.sin(3 * x[:, 3:4])
        y = (y - y.mean()) / y.std()
        layers = [torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)]
        model = torch.nn.Sequential(*layers, *([torch.nn.ReLU()] if relu else []))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

        def batch(step: int) -> tuple[Any, Any]:
            rows = torch.randint(0, 2048, (64,), generator=torch.Generator().manual_seed(step))
            return x[rows], y[rows]

        mse = torch.nn.functional.mse_loss
        return train_recording_data(model, optimizer, path, batch, mse, steps=200)

    (finding,) = run_rule(run(tmp_path / "relu.h5", relu=True), "DBG308").findings
    assert (finding.key, finding.severity) == ("clamped-outputs", Severity.error)
    assert finding.message.startswith(
        "the outputs are clamped at zero (a ReLU after the last layer?): none is negative"
    )
    assert "of the targets are negative" in finding.message
    assert finding.steps >= 15 and 0.3 < finding.value < 0.7
    assert run_rule(run(tmp_path / "linear.h5", relu=False), "DBG308").status is (RuleStatus.passed)


def regression_run(
    path: Path,
    targets: Callable[[Any], Any],
    *,
    lr: float,
    steps: int,
    head: Any = None,
    divisor: float = 1.0,
) -> Path:
    """A real MLP regression (8 inputs, 32 ReLU units, one output, then ``head``) trained by
    Adam at ``lr`` on ``targets(y)`` of a smooth function ``y`` of the inputs, in batches of
    64, its mean squared error taken against the targets over ``divisor``; the labels and
    predictions of every 20th step kept in full."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=generator)
    y = targets(x[:, :3].sum(1) + 0.3 * torch.sin(3 * x[:, 3]))
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)]
    model = torch.nn.Sequential(*layers, *([head] if head is not None else []))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def batch(step: int) -> tuple[Any, Any]:
        rows = torch.randint(0, 2048, (64,), generator=torch.Generator().manual_seed(step))
        return x[rows], y[rows]

    def mse(output: Any, target: Any) -> Any:
        return torch.nn.functional.mse_loss(output.squeeze(-1), target / divisor)

    return train_recording_data(model, optimizer, path, batch, mse, steps=steps, every=20)


@pytest.mark.parametrize(
    ("head", "scale", "found"),
    [
        ("Sigmoid", "units", True),  # targets around 3 in [0, 1]'s place
        ("Sigmoid", "min-max", False),  # targets scaled into [0, 1]: the head fits them
        # Fractions a little past [0, 1]: 15 % outside, but the range costs 6 % of their
        # variance.
        ("Sigmoid", "spill", False),
        ("Tanh", "standard", True),  # a third of standardised targets beyond ±1
        # The raw targets recorded, the loss given them over 8: the head reaches those.
        ("Sigmoid", "scaled-in-the-loss", False),
    ],
)
def test_a_regression_squashed_by_its_last_activation(
    tmp_path: Path, head: str, scale: str, found: bool
) -> None:
    """A real regression whose model ends in a sigmoid (or tanh), as the hook notes its
    output layer: targets outside the activation's range are out of reach, and the report
    names the head with the floor it sets the loss. Targets scaled into the range pass."""
    torch = pytest.importorskip("torch")
    path = regression_run(
        tmp_path / "head.h5",
        lambda y: {
            "units": 3 + 2 * y / y.std(),
            "min-max": (y - y.min()) / (y.max() - y.min()),
            "spill": 0.5 + 0.35 * y / y.std(),
            "standard": (y - y.mean()) / y.std(),
            "scaled-in-the-loss": 3 + 2 * y / y.std(),
        }[scale],
        head=getattr(torch.nn, head)(),
        lr=3e-3,
        steps=200,
        divisor=8.0 if scale == "scaled-in-the-loss" else 1.0,
    )
    report = analyze_path(path)
    squashed = [f for f in report.findings if f.key == "squashed-outputs"]
    if not found:
        assert not squashed
        return
    (finding,) = squashed
    assert (finding.rule_id, finding.severity, finding.steps) == ("DBG308", Severity.error, 10)
    low = "0" if head == "Sigmoid" else "-1"
    kind = head.lower()
    assert (
        f"the outputs never leave [{low}, 1], the range of the model's last activation, a {kind}"
        in (finding.message)
    )
    assert "a mean squared error cannot fall below" in finding.message
    assert report.findings[report.problems[0].cause] == finding


@pytest.mark.parametrize("scale", ["raw", "standard", "scaled-in-the-loss"])
def test_regression_targets_beyond_the_outputs_reach_are_named_first(
    tmp_path: Path, scale: str
) -> None:
    """A real regression whose targets are in raw units, 20,000 +- 14,000: Adam at 1e-3
    moves the outputs a few units in 300 steps, so a constant at the targets' mean fits
    better to the end, and the report names the targets' scale first. Standardised, the
    same model fits them; so it does the raw targets recorded and divided inside the loss,
    whose loss is then below what the recorded pairs allow."""

    def targets(y: Any) -> Any:
        standard = (y - y.mean()) / y.std()
        return standard if scale == "standard" else 2e4 + 1.4e4 * standard

    divisor = 2e4 if scale == "scaled-in-the-loss" else 1.0
    path = regression_run(tmp_path / "raw.h5", targets, lr=1e-3, steps=300, divisor=divisor)
    report = analyze_path(path)
    unreached = [f for f in report.findings if f.key == "unreached-targets"]
    if scale != "raw":
        assert not unreached
        return
    (finding,) = unreached
    assert (finding.rule_id, finding.severity, finding.first_step) == ("DBG308", Severity.error, 0)
    assert "lie beyond every output" in finding.message
    assert report.findings[report.problems[0].cause] == finding


def test_label_smoothing_is_read_from_the_loss_and_sets_its_floor(tmp_path: Path) -> None:
    """cross_entropy with label_smoothing=0.9 (0.09 meant) over 4 classes: no loss falls below
    its targets' entropy, 1.372, 99 % of ln 4, so the model that fits them was "underfitting"
    and "at chance". The smoothing is read from the recorded loss and logits; the loss sits
    at its floor, which a note says. 0.1 is read too; a plain loss, and one with a weight
    penalty added, are not taken for smoothing."""
    from dbgcli.rules._context import RuleContext
    from dbgcli.rules.loss import label_smoothing
    from dbgcli.trace.reader import open_trace

    def smoothing_of(path: Path) -> tuple[float, int] | None:
        with open_trace(path) as trace:
            return label_smoothing(RuleContext(trace))

    strong = classifier_run(tmp_path / "strong.h5", steps=300, smoothing=0.9)
    found = smoothing_of(strong)
    assert found is not None and found[0] == pytest.approx(0.9, abs=1e-3) and found[1] == 4
    report = analyze_path(strong, select=("DBG301", "DBG303"))
    (note,) = report.findings
    assert (note.rule_id, note.key, note.severity) == ("DBG303", "high-floor", Severity.info)
    assert note.message.startswith(
        "the training loss cannot fall far: its floor is label smoothing 0.90 over 4 classes "
        "(the true class's target 0.33), whose targets' entropy is 1.372, 97% of the initial loss"
    )
    mild = smoothing_of(classifier_run(tmp_path / "mild.h5", smoothing=0.1))
    assert mild is not None and mild[0] == pytest.approx(0.1, abs=1e-3)
    assert smoothing_of(classifier_run(tmp_path / "plain.h5")) is None
    assert smoothing_of(classifier_run(tmp_path / "penalty.h5", penalty=1e-2)) is None


def test_a_noted_label_smoothing_sets_the_floor_without_logits(make_trace) -> None:
    """The Hugging Face Trainer's ``label_smoothing_factor`` 0.5 over 4 classes (its
    hyperparameters and ``num_labels``, no logits recorded): the targets' entropy, 1.074, is
    the floor, and a loss that fell from ln 4 to 1.126 has come 83 % of the way. Without the
    note it is still 81 % of its start: "underfitting"."""
    loss = {"loss": list(1.126 + (np.log(4) - 1.126) * np.exp(-np.arange(300) / 40))}
    noted = {"hyperparameters": {"label_smoothing_factor": 0.5}, "num_labels": 4}
    report = analyze_path(make_trace(scalars=loss, metadata=noted), select=("DBG301", "DBG303"))
    assert not report.findings, [f.message for f in report.findings]
    bare = analyze_path(make_trace(scalars=loss), select=("DBG303",))
    assert [f.key for f in bare.findings] == ["loss-high"]


def log_softmax_run(path: Path, dim: int, *, record: str = "output", in_loss: bool = False) -> Path:
    """A 4-class MLP ending in LogSoftmax(dim) under NLLLoss, batch 32, its predictions of
    every 10th batch recorded (``record="probabilities"``: their exp). ``in_loss``: the model
    ends in its logits, recorded, and the loss applies the log_softmax."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    torch.manual_seed(0)
    head = [] if in_loss else [torch.nn.LogSoftmax(dim)]
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4), *head
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(1024, 8)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    with attach(model, optimizer, path) as hook:
        for step in range(60):
            batch = slice(32 * (step % 32), 32 * (step % 32 + 1))
            optimizer.zero_grad()
            output = model(x[batch])
            scored = output.log_softmax(dim) if in_loss else output
            loss = torch.nn.functional.nll_loss(scored, y[batch])
            hook.record_loss(loss)
            if step % 10 == 0:
                scores = output if record == "output" else output.exp()
                hook.record(labels=y[batch], predictions=scores.detach(), raw=True)
            loss.backward()
            optimizer.step()
    return path


def test_a_softmax_over_the_batch_axis_is_an_error(tmp_path: Path) -> None:
    """LogSoftmax(dim=0) for dim=1: every class's log-probabilities sum to 1 over the 32
    samples of a batch, recorded as they are or as probabilities. Over the classes, it
    passes."""
    (finding,) = run_rule(log_softmax_run(tmp_path / "batch.h5", 0), "DBG309").findings
    assert (finding.key, finding.severity, finding.steps) == ("batch-axis", Severity.error, 6)
    assert finding.message == (
        "the predictions are normalised over the batch, not over the classes (softmax(dim=0)?): "
        "each class's probabilities sum to 1 over the 32 samples of a batch (train, step 50), "
        "and no sample's over its 4 classes; 6 of 6 steps read"
    )
    exp = log_softmax_run(tmp_path / "exp.h5", 0, record="probabilities")
    assert [f.key for f in run_rule(exp, "DBG309").findings] == ["batch-axis"]
    classes = log_softmax_run(tmp_path / "classes.h5", 1)
    assert run_rule(classes, "DBG309").status is RuleStatus.passed


def test_a_log_softmax_over_the_batch_in_the_loss_is_read_from_the_logits(
    make_trace, tmp_path: Path
) -> None:
    """The model returns logits, recorded, and the loss takes log_softmax(dim=0): the recorded
    loss is the labels' log-likelihood over the batch axis, not the classes'. A sequence-first
    output, (time, batch) with a softmax over time and one label per sample, is not read: its
    first axis is not the labels'."""
    (finding,) = run_rule(log_softmax_run(tmp_path / "loss.h5", 0, in_loss=True), "DBG309").findings
    assert finding.message.startswith(
        "the predictions are normalised over the batch, not over the classes (softmax(dim=0)?): "
        "the training loss is the log-likelihood of the logits normalised over the 32 samples "
        "of a batch (log_softmax(dim=0) in the loss?)"
    )
    rng = np.random.default_rng(0)
    over_time = [np.exp(z) / np.exp(z).sum(axis=0) for z in rng.normal(size=(5, 10, 32))]
    trace = make_trace(
        tensors={
            "predictions": {"values": over_time, "collection": "predictions"},
            "labels": {"values": list(rng.integers(0, 10, size=(5, 32))), "collection": "labels"},
        }
    )
    assert run_rule(trace, "DBG309").status is RuleStatus.passed


# -- DBG310 inflated-initial-loss -----------------------------------------------------------------


def head_scaled_run(path: Path, *, head_std: float | None, lr: float, steps: int = 200) -> Path:
    """A 4-class MLP with LayerNorm before its head (DBG501 leaves the scales of such models
    alone), the head's weights drawn with ``head_std`` (None: PyTorch's default), SGD at
    ``lr``; labels and logits of every 10th batch recorded in full."""
    torch = pytest.importorskip("torch")

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.LayerNorm(64), torch.nn.Linear(64, 4)
    )
    if head_std is not None:
        torch.nn.init.normal_(model[3].weight, std=head_std)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.randn(1024, 8)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()

    def batch(step: int) -> tuple[Any, Any]:
        rows = slice(64 * (step % 16), 64 * (step % 16 + 1))
        return x[rows], y[rows]

    ce = torch.nn.functional.cross_entropy
    return train_recording_data(model, optimizer, path, batch, ce, steps=steps)


def test_a_head_initialised_too_large_starts_confidently_wrong(tmp_path: Path) -> None:
    """The head drawn from N(0, 1) over 64 normalised features: logits of standard deviation
    8, a first cross-entropy over five times ln 4. At a learning rate too small to shrink them
    the outputs stay so, the cause of the run's underfitting; at a working one the loss falls
    below chance and the start is a note. PyTorch's default head starts near ln 4."""
    stuck = head_scaled_run(tmp_path / "stuck.h5", head_std=1.0, lr=1e-4)
    (finding,) = run_rule(stuck, "DBG310").findings
    assert (finding.key, finding.severity, finding.first_step) == (
        "inflated",
        Severity.warning,
        0,
    )
    assert finding.value > 5
    assert "its outputs start confidently wrong" in finding.message
    report = analyze_path(stuck, select=("DBG303", "DBG310"))
    assert report.findings[report.problems[0].cause].rule_id == "DBG310"
    assert {report.findings[i].rule_id for i in report.problems[0].symptoms} == {"DBG303"}

    learned = head_scaled_run(tmp_path / "learned.h5", head_std=1.0, lr=0.05)
    (note,) = run_rule(learned, "DBG310").findings
    assert (note.key, note.severity) == ("start", Severity.info)
    assert note.extra["cross_entropy"] > 5 * math.log(4)

    default = head_scaled_run(tmp_path / "default.h5", head_std=None, lr=0.05)
    assert run_rule(default, "DBG310").status is RuleStatus.passed


def test_an_initial_loss_read_against_evenly_spread_targets_too(make_trace) -> None:
    """A first batch of one class (unshuffled data) under an untrained model whose bias
    favours another: 2.2 times ln 4 on that batch's labels, but a model that is only mildly
    confident over the classes as a whole (1.7 times): not a confident start. Four times
    the logits are confident whatever the labels."""
    rng = np.random.default_rng(0)
    logits = (np.array([3.0, 0.0, 0.0, 0.0]) + rng.normal(0, 0.1, (64, 4))).astype(np.float32)
    labels = {"values": [np.ones(64, dtype=np.int64)], "collection": "labels"}

    def trace(scores: np.ndarray) -> Path:
        predictions = {"values": [scores], "collection": "predictions"}
        return make_trace(
            scalars={"loss": [3.1]}, tensors={"labels": labels, "predictions": predictions}
        )

    assert run_rule(trace(logits), "DBG310").status is RuleStatus.passed
    scaled = 4 * logits
    (finding,) = run_rule(trace(scaled), "DBG310").findings
    evenly = np.log(np.exp(scaled.astype(np.float64)).sum(1)) - scaled.mean(1)
    assert finding.value == pytest.approx(evenly.mean() / np.log(4), rel=1e-5)


def test_an_initial_loss_reads_one_hot_labels_as_classes_and_starts_at_training(
    make_trace,
) -> None:
    """One-hot labels of the logits' shape are one class per sample, not ten binary
    targets: logits all about 5 are a uniform softmax, ln 10, not a confident start. An
    evaluation recorded before the first training step does not hide the training start.
    An inflated start that shrank and then diverged is a note: the run failed for its own
    reason."""
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 10, 64)

    def trace(scores: list[np.ndarray], labels: np.ndarray, **extra: Any) -> Path:
        tensors = {
            "labels": {"values": [labels] * len(scores), "collection": "labels"},
            "predictions": {"values": scores, "collection": "predictions"},
        }
        return make_trace(scalars={"loss": [2.3] * len(scores)}, tensors={**tensors, **extra})

    flat = [(5.0 + 0.1 * rng.normal(size=(64, 10))).astype(np.float32) for _ in range(3)]
    assert run_rule(trace(flat, np.eye(10)[ids]), "DBG310").status is RuleStatus.passed

    sure = [(6 * rng.normal(size=(64, 10))).astype(np.float32) for _ in range(3)]
    path = make_trace(
        scalars={"loss": {"values": [15.0, 15.0, 15.0], "steps": [1, 2, 3]}},
        tensors={
            "labels": [
                {"values": [ids], "steps": [0], "mode": "eval", "collection": "labels"},
                {"values": [ids] * 3, "steps": [1, 2, 3], "collection": "labels"},
            ],
            "predictions": [
                {"values": [sure[0]], "steps": [0], "mode": "eval", "collection": "predictions"},
                {"values": sure, "steps": [1, 2, 3], "collection": "predictions"},
            ],
        },
    )
    assert [f.first_step for f in run_rule(path, "DBG310").findings] == [1]

    # Soft targets (mixup, label smoothing) name no class per sample; one logit per sample
    # against labels that are all 1 is a binary head's batch.
    soft = np.full((64, 10), 0.1, np.float32)
    assert run_rule(trace(sure, soft), "DBG310").status is RuleStatus.skipped
    single = [(6 * rng.normal(size=(64, 1))).astype(np.float32) for _ in range(3)]
    (binary,) = run_rule(trace(single, np.ones((64, 1))), "DBG310").findings
    assert "binary cross-entropy" in binary.message

    learned = (8 * np.eye(10)[ids]).astype(np.float32)
    diverged = [sure[0], learned, learned, (40 * rng.normal(size=(64, 10))).astype(np.float32)]
    (finding,) = run_rule(trace(diverged, ids), "DBG310").findings
    assert (finding.key, finding.severity) == ("start", Severity.info)


def test_an_initial_loss_of_a_language_model_is_read_on_the_next_token(make_trace) -> None:
    """Labels that repeat the input ids (Hugging Face's causal language models shift them
    inside): a model that is sure of each next token, recorded from its first step, is
    right, not confidently wrong about the token it was given. Unshifted, the same logits
    would read as inflated."""
    rng = np.random.default_rng(0)
    vocab, steps = 16, 3
    ids = rng.integers(0, vocab, (steps, 8, 12))
    # Each position's logits point at the next token, 10 above the rest.
    logits = np.zeros((steps, 8, 12, vocab), dtype=np.float32)
    logits[..., :-1, :][np.eye(vocab, dtype=bool)[ids[..., 1:]]] = 10.0
    records = [{"values": [ids[i]], "steps": [i]} for i in range(steps)]
    tensors = {
        "inputs": [{**r, "collection": "inputs"} for r in records],
        "labels": [{**r, "collection": "labels"} for r in records],
        "predictions": [
            {"values": [logits[i]], "steps": [i], "collection": "predictions"} for i in range(steps)
        ],
    }
    path = make_trace(scalars={"loss": [0.1, 0.1, 0.1]}, tensors=tensors)
    assert run_rule(path, "DBG310").status is RuleStatus.passed
    as_classes = make_trace(
        scalars={"loss": [0.1, 0.1, 0.1]},
        tensors={k: v for k, v in tensors.items() if k != "inputs"},
    )
    assert [f.key for f in run_rule(as_classes, "DBG310").findings] == ["inflated"]


def test_an_initial_loss_is_not_judged_after_a_resume_or_for_a_regression(make_trace) -> None:
    """Two steps of logits sure of a wrong class are inflated; the same records in a run
    resumed from a checkpoint are no untrained model's, and a regression's outputs are no
    class scores."""
    logits = (np.array([8.0, 0.0, 0.0, 0.0]) * np.ones((64, 1))).astype(np.float32)
    steps = [600, 610]
    tensors = {
        "labels": {"values": [np.full(64, 2)] * 2, "collection": "labels"},
        "predictions": {"values": [logits] * 2, "collection": "predictions"},
    }
    inflated = make_trace(scalars={"loss": [8.0, 8.0]}, tensors=tensors)
    assert [f.key for f in run_rule(inflated, "DBG310").findings] == ["inflated"]
    resumed = make_trace(
        scalars={"loss": {"values": [8.0, 8.0], "steps": steps}},
        tensors={tag: {**spec, "steps": steps} for tag, spec in tensors.items()},
        metadata={"resumed_from_step": 600},
    )
    skipped = run_rule(resumed, "DBG310")
    assert skipped.status is RuleStatus.skipped
    assert skipped.reason == "the run resumed at step 600: the trace holds no untrained model"
    regression = make_trace(
        scalars={"loss": [8.0, 8.0]}, tensors=tensors, metadata={"task": "regression"}
    )
    assert run_rule(regression, "DBG310").status is RuleStatus.skipped
    decided = make_trace(
        scalars={"loss": [8.0, 8.0]},
        tensors={
            **tensors,
            "predictions": {"values": [np.zeros(64)] * 2, "collection": "predictions"},
        },
    )
    assert run_rule(decided, "DBG310").reason == (
        "no class scores with their labels kept in full at the run's first training step"
    )
    refused = analyze_path(inflated, select=("DBG310",), params={"DBG310": {"ratio": 1.0}})
    assert refused.error == "DBG310 ratio must be above 1, got 1.0"


def kept_predictions(
    make_trace: Any,
    kept: range,
    labels: list[np.ndarray],
    predictions: list[np.ndarray],
    loss_at_kept: list[float] | None = None,
) -> Path:
    """A trace whose labels and predictions are kept in full at the ``kept`` steps, with a
    training loss of 2 at every step up to the last kept one plus a hundred, and
    ``loss_at_kept`` at the kept ones."""
    loss = np.full(kept[-1] + 100, 2.0)
    if loss_at_kept is not None:
        loss[list(kept)] = loss_at_kept
    return make_trace(
        scalars={"loss": list(loss)},
        tensors={
            "labels": {"values": labels, "steps": kept, "collection": "labels"},
            "predictions": {"values": predictions, "steps": kept, "collection": "predictions"},
        },
    )


# -- DBG311 broadcast-loss ------------------------------------------------------------------------


def _regression_run(
    tmp_path: Path, name: str, loss_of: Any, *, steps: int = 300, whole: bool = False
) -> Path:
    """A real regression: an MLP with a ``Linear(32, 1)`` head on targets that depend on the
    inputs (``whole``: rounded to ratings 1-5), its ``(N, 1)`` outputs recorded as they come,
    against ``(N,)`` targets."""
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=generator)
    y = torch.tanh(x @ torch.randn(8, generator=generator) / 2) * 2
    if whole:
        y = (y + 3).round().clamp(1, 5)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(step: int) -> tuple[Any, Any]:
        rows = torch.randint(0, 2000, (64,), generator=torch.Generator().manual_seed(step))
        return x[rows], y[rows]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PyTorch's own broadcast warning
        return train_recording_data(
            model, optimizer, tmp_path / f"{name}.h5", batch, loss_of, steps=steps, every=50
        )


@pytest.mark.parametrize(
    ("loss", "kind", "whole"),
    [
        ("mse_loss", "mean squared error", False),
        ("l1_loss", "mean absolute error", False),
        ("mse_loss", "mean squared error", True),  # ratings: whole-number targets
    ],
)
def test_broadcast_loss_on_a_real_regression(tmp_path, loss: str, kind: str, whole: bool) -> None:
    """``F.mse_loss(output, y)`` (or ``l1_loss``) with a ``(64, 1)`` output and a ``(64,)``
    target averages all 64 x 64 pairs: the model learns the mean, and the report names the
    shapes as the cause of the stalled loss. The same run with ``output.squeeze(-1)`` in the
    loss, its outputs still recorded ``(64, 1)``, learns and gives no finding."""
    torch = pytest.importorskip("torch")
    function = getattr(torch.nn.functional, loss)
    broadcast = _regression_run(tmp_path, f"broadcast-{loss}", function, whole=whole)
    report = analyze_path(broadcast)
    cause = report.findings[report.problems[0].cause]
    assert (cause.rule_id, cause.tensor) == ("DBG311", "predictions")
    assert f"predictions (64, 1) against targets (64,): the training loss is the {kind}" in (
        cause.message
    )
    assert "broadcast to 64 x 64" in cause.message and cause.steps == 6
    assert report.problems[0].title == "loss broadcast over the batch"
    if not whole:
        # Centred targets: the mean it learns is where it started, "underfitting".
        assert {report.findings[i].rule_id for i in report.problems[0].symptoms} >= {"DBG303"}

    squeezed = _regression_run(
        tmp_path,
        f"squeezed-{loss}",
        lambda output, y: function(output.squeeze(-1), y),
        whole=whole,
    )
    assert run_rule(squeezed, "DBG311").status is RuleStatus.passed


def test_broadcast_loss_needs_the_recorded_loss_to_be_the_broadcast_one(make_trace) -> None:
    """Predictions shaped ``(N, 1)`` that covary with ``(N,)`` targets: a recorded loss that
    is their mean squared error over every pair is a finding, dated from the first loss; the
    elementwise one (a loss given ``output.squeeze(-1)``, as a Hugging Face model computes
    its own), a loss with other terms, or predictions that do not covary with the targets
    (the two pairings then the same loss) give none."""
    rng = np.random.default_rng(0)
    targets = [rng.normal(0.0, 2.0, 64) for _ in range(6)]
    learned = [(0.5 * y + rng.normal(0.0, 0.5, 64)).reshape(64, 1) for y in targets]
    flat = [np.full((64, 1), 0.1) + rng.normal(0.0, 1e-4, (64, 1)) for _ in targets]
    kept = range(0, 300, 50)

    def pairwise(outputs: list[np.ndarray]) -> list[float]:
        return [
            float(np.mean((p.reshape(-1)[:, None] - y[None, :]) ** 2))
            for p, y in zip(outputs, targets, strict=True)
        ]

    def run(outputs: list[np.ndarray], loss_at_kept: list[float]) -> list:
        path = kept_predictions(make_trace, kept, targets, outputs, loss_at_kept)
        return run_rule(path, "DBG311").findings

    (finding,) = run(learned, pairwise(learned))
    assert (finding.first_step, finding.last_step, finding.steps) == (0, 250, 6)
    assert "the mean squared error of every prediction against every target" in finding.message
    elementwise = [
        float(np.mean((p.reshape(-1) - y) ** 2)) for p, y in zip(learned, targets, strict=True)
    ]
    assert not run(learned, elementwise)
    assert not run(learned, [1.5 * value for value in pairwise(learned)])
    assert not run(flat, pairwise(flat))


# -- DBG312 targets-outside-the-loss --------------------------------------------------------------


def _classifier_run(tmp_path: Path, name: str, targets: Any, outputs: int, loss_of: Any) -> Path:
    """A real run: an MLP on 20 features whose targets come from the inputs, trained for 300
    steps with the labels and predictions of every 50th step kept in full."""
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 20, generator=generator)
    y = targets(x, generator)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, outputs)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def batch(step: int) -> tuple[Any, Any]:
        rows = torch.randint(0, 2000, (64,), generator=torch.Generator().manual_seed(step))
        return x[rows], y[rows]

    return train_recording_data(
        model, optimizer, tmp_path / f"{name}.h5", batch, loss_of, steps=300, every=50
    )


def test_class_ids_given_to_a_binary_cross_entropy(tmp_path) -> None:
    """Class ids 0-4, as floats, fed to ``BCEWithLogitsLoss`` of a one-output model: the loss
    has no minimum and runs negative, which read as a healthy falling loss. The report names
    the targets; the same model on 0/1 targets gives no finding."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional

    def class_ids(x: Any, generator: Any) -> Any:
        return torch.bucketize(x[:, 0].contiguous(), torch.tensor([-0.8, -0.25, 0.25, 0.8])).float()

    def bce(output: Any, target: Any) -> Any:
        return functional.binary_cross_entropy_with_logits(output.squeeze(-1), target)

    report = analyze_path(_classifier_run(tmp_path, "ids", class_ids, 1, bce))
    cause = report.findings[report.problems[0].cause]
    assert (cause.rule_id, cause.key, cause.severity) == ("DBG312", "binary-range", Severity.error)
    assert "outside [0, 1], from 0 to 4" in cause.message and "6 of 6 steps" in cause.message
    assert report.problems[0].title == "binary targets outside [0, 1]"

    def positive(x: Any, generator: Any) -> Any:
        return (x[:, 0] > 0).float()

    fine = _classifier_run(tmp_path, "binary", positive, 1, bce)
    assert run_rule(fine, "DBG312").status is RuleStatus.passed


def test_multi_label_targets_given_to_a_softmax_cross_entropy(tmp_path) -> None:
    """Six labels per sample, several on at once, fed to ``F.cross_entropy`` as float targets:
    the softmax spreads each sample over its labels and the loss stalls; the report names the
    targets. The same indicators in ``BCEWithLogitsLoss``, the loss meant for them, give no
    finding, nor do label-smoothed targets, whose rows sum to 1."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional

    def indicators(x: Any, generator: Any) -> Any:
        return (x @ torch.randn(20, 6, generator=generator) > 0.8).float()

    wrong = _classifier_run(tmp_path, "softmax", indicators, 6, functional.cross_entropy)
    (finding,) = run_rule(wrong, "DBG312").findings
    assert (finding.key, finding.first_step, finding.last_step) == ("not-distributions", 0, 250)
    assert "rows sum to other than 1" in finding.message
    right = _classifier_run(
        tmp_path, "sigmoid", indicators, 6, functional.binary_cross_entropy_with_logits
    )
    assert run_rule(right, "DBG312").status is RuleStatus.passed

    def smoothed(x: Any, generator: Any) -> Any:
        return functional.one_hot((x[:, 0] > 0).long(), 6).float() * 0.9 + 0.1 / 6

    soft = _classifier_run(tmp_path, "smoothed", smoothed, 6, functional.cross_entropy)
    assert run_rule(soft, "DBG312").status is RuleStatus.passed


def test_multi_label_targets_of_a_sequence_given_to_a_softmax_cross_entropy(tmp_path) -> None:
    """A per-token tagger, scores (N, T, K) and multi-hot tags (N, T, K), with the classes
    moved to the second axis for ``F.cross_entropy`` as it takes a sequence's scores: the
    targets are read with the classes on either axis, and the recorded loss says which.
    ``BCEWithLogitsLoss`` on the same tags gives no finding."""
    torch = pytest.importorskip("torch")
    from dbgcli.torch import attach

    functional = torch.nn.functional
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 12, 8, generator=generator)
    tags = (x @ torch.randn(8, 5, generator=generator) > 0.5).float()

    def run(name: str, loss_of: Any) -> Path:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 5)
        optimizer = torch.optim.Adam(model.parameters(), 1e-2)
        path = tmp_path / f"{name}.h5"
        with attach(model, optimizer, path) as hook:
            for step in range(60):
                batch = torch.randint(0, 512, (32,), generator=generator)
                scores = model(x[batch])
                loss = loss_of(scores, tags[batch])
                hook.record_loss(loss)
                hook.record(labels=tags[batch], predictions=scores.detach(), raw=step % 10 == 0)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return path

    def softmax(scores: Any, target: Any) -> Any:
        return functional.cross_entropy(scores.transpose(1, 2), target.transpose(1, 2))

    (finding,) = run_rule(run("softmax", softmax), "DBG312").findings
    assert finding.key == "not-distributions"
    # The rows of the reading the loss matched: one a token, 32 x 12 of them a batch.
    assert "of 384 rows sum to other than 1" in finding.message
    right = run("sigmoid", functional.binary_cross_entropy_with_logits)
    assert run_rule(right, "DBG312").status is RuleStatus.passed


def test_targets_outside_the_loss_need_the_recorded_loss_to_be_that_loss(make_trace) -> None:
    """Targets 0-4 beside one score each, but a recorded loss that is not their binary
    cross-entropy (a regression's, say): no finding; with it, a finding."""
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 5, 64).astype(np.float64) for _ in range(4)]
    scores = [rng.normal(0.0, 1.0, 64) for _ in range(4)]
    bce = [
        float(np.mean(np.logaddexp(0.0, z) - y * z)) for z, y in zip(scores, targets, strict=True)
    ]
    kept = range(0, 400, 100)

    def run(loss_at_kept: list[float]) -> list:
        path = kept_predictions(make_trace, kept, targets, scores, loss_at_kept)
        return run_rule(path, "DBG312").findings

    (finding,) = run(bce)
    assert (finding.key, finding.steps, finding.extra["steps_compared"]) == ("binary-range", 4, 4)
    assert not run([value + 0.5 for value in bce])


def test_soft_targets_rounded_or_masked_are_distributions(make_trace) -> None:
    """Mixup's targets in bfloat16 sum to 1 within a few thousandths, and a masked sample's
    row is all zeros: with the recorded loss their softmax cross-entropy, no finding. Rows of
    two labels each are a finding."""
    rng = np.random.default_rng(0)
    kept = range(0, 400, 100)
    scores = [rng.normal(0.0, 1.0, (64, 6)) for _ in kept]

    def run(targets: list[np.ndarray]) -> list:
        def soft(z: np.ndarray, t: np.ndarray) -> float:
            log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            return float(np.mean(-(t * log_p).sum(axis=1)))

        losses = [soft(z, t) for z, t in zip(scores, targets, strict=True)]
        return run_rule(
            kept_predictions(make_trace, kept, targets, scores, losses), "DBG312"
        ).findings

    def mixed() -> np.ndarray:
        lam = rng.uniform(0.0, 1.0, (64, 1))
        first, second = np.eye(6)[rng.integers(0, 6, 64)], np.eye(6)[rng.integers(0, 6, 64)]
        rows = lam * first + (1 - lam) * second
        return rows * rng.uniform(0.998, 1.002, (64, 1))  # bfloat16's rounding

    rounded = [mixed() for _ in kept]
    for rows in rounded:
        rows[:8] = 0.0  # masked samples
    assert not run(rounded)
    # Attributes coded -1/1 (CelebA's) given to BCEWithLogitsLoss: a binary cross-entropy
    # outside [0, 1], not a softmax's targets.
    signs = [np.where(rng.random((64, 6)) < 0.5, -1.0, 1.0) for _ in kept]
    bce = [float(np.mean(np.logaddexp(0.0, z) - y * z)) for z, y in zip(scores, signs, strict=True)]
    (finding,) = run_rule(kept_predictions(make_trace, kept, signs, scores, bce), "DBG312").findings
    assert finding.key == "binary-range"
    pairs = [np.eye(6)[rng.integers(0, 6, 64)] + np.eye(6)[rng.integers(0, 6, 64)] for _ in kept]
    (finding,) = run([np.minimum(rows, 1.0) for rows in pairs])
    assert finding.key == "not-distributions"


def test_softmax_over_batch_reads_integer_multi_hot_labels_without_crashing(make_trace) -> None:
    """Multi-hot labels stored as integers beside logits: no class id per sample, so the
    batch-axis check has nothing to read (it indexed the logits by the flattened labels)."""
    rng = np.random.default_rng(0)
    kept = range(0, 300, 100)
    labels = [(rng.random((64, 6)) > 0.6).astype(np.int64) for _ in kept]
    scores = [rng.normal(0.0, 1.0, (64, 6)) for _ in kept]
    path = kept_predictions(make_trace, kept, labels, scores)
    assert run_rule(path, "DBG309").status is RuleStatus.passed
