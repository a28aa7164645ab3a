"""The scheduler contract shared by every learning-rate scheduler in :mod:`dbgcli.schedulers`.

A scheduler is a pair of pure functions, in the style of optax:

* ``init(lrs) -> state``: the state before any loss has been seen, given one initial learning
  rate per parameter group;
* ``update(state, loss) -> state``: the state after one more loss.

States are NamedTuples of Python scalars and tuples, rebuilt with ``_replace``; ``state.lrs`` is
the learning rate of every group in effect after the last update, and ``state.resets`` counts
the resets so far (only GreedyLR ever resets; for every other scheduler it stays 0).

A scheduler may also carry ``scan``: a fused loop that folds ``update`` over a whole loss
sequence faster than calling it once per loss. It must produce exactly the states that the fold
produces; the test suite checks this against the reference implementations and against
``update`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from dbgcli.schedulers._validate import learning_rates


class State(Protocol):
    """What :func:`~dbgcli.schedulers.replay` reads from a scheduler state."""

    @property
    def lrs(self) -> tuple[float, ...]:
        """Learning rate of each parameter group, in effect after the last update."""

    @property
    def resets(self) -> int:
        """Number of resets (learning rates restored to their initial values) so far."""


class ScanResult(NamedTuple):
    """What a fused loop returns after folding ``update`` over a loss sequence."""

    state: Any
    """The final state."""
    lrs: list[tuple[float, ...]]
    """``lrs[i]`` is ``state.lrs`` after the update with ``losses[i]``."""
    resets: list[int]
    """Indices ``i`` at which the update with ``losses[i]`` reset the scheduler."""


Scan = Callable[[Any, Sequence[float]], ScanResult]
"""``scan(state, losses)``: a fused equivalent of calling ``update`` once per loss."""


class Scheduler(NamedTuple):
    """A learning-rate scheduler as a pair of pure functions (plus an optional fused loop)."""

    init: Callable[[Sequence[float]], State]
    """``init(lrs)``: the state before the first loss, from one learning rate per group."""
    update: Callable[[Any, float], State]
    """``update(state, loss)``: the state after one more loss."""
    scan: Scan | None = None
    """Optional fused loop, equivalent to folding ``update``; used by ``replay`` when present."""


Schedule = Callable[[int, float, float], float]
"""A loss-independent schedule in torch's recursive ("chainable") form.

``schedule(step, lr, base_lr)`` returns the learning rate at ``step`` given the learning rate
``lr`` at ``step - 1`` and the group's initial learning rate ``base_lr``. Step 0 is what a torch
scheduler does in its constructor (there ``lr == base_lr``); step ``t >= 1`` is its ``t``-th call
to ``step()``. Torch computes most schedules by multiplying the previous learning rate, so a
closed form ``base_lr * f(t)`` would differ from it in the last bits; this form reproduces it.
"""


class ScheduleState(NamedTuple):
    """State of a loss-independent schedule lifted by :func:`from_schedule`."""

    step: int
    """Number of updates so far (torch's ``last_epoch``)."""
    base_lrs: tuple[float, ...]
    """Initial learning rate of each group."""
    lrs: tuple[float, ...]
    """Learning rate of each group after the last update."""
    resets: int = 0
    """Always 0: schedules never reset."""


def from_schedule(name: str, schedule: Schedule) -> Scheduler:
    """Lift a loss-independent :data:`Schedule` to a :class:`Scheduler` that ignores the losses.

    Args:
        name: Name of the scheduler, used in error messages.
        schedule: The schedule, applied to every group with the group's own learning rates.

    Returns:
        A scheduler whose ``update`` advances the step count and ignores the loss value.
    """

    def init(lrs: Sequence[float]) -> ScheduleState:
        base_lrs = learning_rates(name, lrs)
        return ScheduleState(
            step=0, base_lrs=base_lrs, lrs=tuple(schedule(0, lr, lr) for lr in base_lrs)
        )

    def update(state: ScheduleState, loss: float) -> ScheduleState:
        step = state.step + 1
        lrs = tuple(
            schedule(step, lr, base) for lr, base in zip(state.lrs, state.base_lrs, strict=True)
        )
        return state._replace(step=step, lrs=lrs)

    return Scheduler(init, update)


def improvement_bar(mode: str, threshold_mode: str, threshold: float) -> Callable[[float], float]:
    """Return ``bar(best)``, the value a metric must beat, strictly, to improve on ``best``.

    The expressions are those of torch's ReduceLROnPlateau (and of the GreedyLR reference):
    ``best - threshold`` or ``best * (1 - threshold)`` in ``"min"`` mode, ``best + threshold``
    or ``best * (1 + threshold)`` in ``"max"`` mode.
    """
    if mode == "min" and threshold_mode == "rel":
        return lambda best: best * (1.0 - threshold)
    if mode == "min":
        return lambda best: best - threshold
    if threshold_mode == "rel":
        return lambda best: best * (1.0 + threshold)
    return lambda best: best + threshold


def improvement_test(
    mode: str, threshold_mode: str, threshold: float
) -> Callable[[float, float], bool]:
    """Return ``is_better(metric, best)``: ``metric`` beats ``bar(best)`` in the mode's direction.

    Every comparison with NaN is false, so a NaN metric is never an improvement.
    """
    bar = improvement_bar(mode, threshold_mode, threshold)
    if mode == "min":
        return lambda metric, best: metric < bar(best)
    return lambda metric, best: metric > bar(best)


def worst_metric(mode: str) -> float:
    """The value ``best`` starts from: anything finite improves on it."""
    return float("inf") if mode == "min" else float("-inf")
