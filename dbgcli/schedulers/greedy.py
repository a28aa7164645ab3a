"""GreedyLR: raise the learning rate while the loss keeps improving, lower it while it does not.

This reproduces ``transformers.optimization.GreedyLR`` (transformers 5.23.0) float for float,
including its quirks (see ``docs/schedulers.md``), and rejects the parameter values that the
reference accepts but mishandles.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from operator import gt
from typing import NamedTuple

from dbgcli.errors import ConfigError
from dbgcli.schedulers import _validate as check
from dbgcli.schedulers._base import (
    ScanResult,
    Scheduler,
    improvement_bar,
    improvement_test,
    worst_metric,
)

_WHERE = "greedy"


class GreedyState(NamedTuple):
    """State of :func:`greedy` between two losses."""

    lrs: tuple[float, ...]
    """Learning rate of each parameter group."""
    init_lrs: tuple[float, ...]
    """Learning rates restored by a reset."""
    best: float
    """Best compared metric since the start or the last reset (stale during holds)."""
    good_steps: int
    """Current run of consecutive improvements."""
    bad_steps: int
    """Current run of consecutive non-improvements."""
    cooldown_left: int
    """Hold steps left after a decrease."""
    warmup_left: int
    """Hold steps left after an increase."""
    resets_left: int
    """Decrease attempts ending with every group at its floor still allowed before a reset."""
    window: tuple[float, ...]
    """Last ``window_size`` raw metrics (empty unless ``smooth``)."""
    window_sum: float
    """Running sum of ``window``, updated incrementally as the reference does (it drifts)."""
    resets: int
    """Number of resets so far."""


def greedy(
    *,
    mode: str = "min",
    factor: float = 0.95,
    patience: int = 10,
    threshold: float = 1e-6,
    threshold_mode: str = "abs",
    cooldown: int = 0,
    warmup: int = 0,
    min_lr: float | Sequence[float] = 1e-3,
    max_lr: float | Sequence[float] = 1.0,
    eps: float = 1e-8,
    smooth: bool = False,
    window_size: int = 50,
    reset_start: int = 500,
) -> Scheduler:
    r"""GreedyLR: raise the learning rate after a run of improvements, lower it after a run without.

    Each loss :math:`x_t` (or, with ``smooth``, its running mean over the last ``window_size``
    losses) is compared with the best value so far, :math:`b`. In ``"min"`` mode it is an
    improvement iff :math:`x_t < b - \tau` (``"abs"``) or :math:`x_t < b\,(1 - \tau)` (``"rel"``);
    ``"max"`` mode mirrors this. With :math:`g` consecutive improvements and :math:`k`
    consecutive non-improvements, for every group :math:`i`:

    .. math::

        \eta_i \leftarrow \min(\eta_i / f,\ \eta^{\max}_i) \quad\text{when } g > p, \qquad
        \eta_i \leftarrow \max(\eta_i f,\ \eta^{\min}_i) \quad\text{when } k > p,

    but a group's rate is only written when it moves by strictly more than ``eps``. An increase
    is followed by ``warmup`` hold steps and a decrease by ``cooldown`` hold steps; a hold step
    makes no comparison (``best`` is left as it was) but still feeds the smoothing window. Every
    decrease attempt that ends with every group at or below its ``min_lr`` uses up one of
    ``reset_start`` attempts (an increase restores them); when none is left the scheduler
    resets: initial rates, ``best`` and counters cleared, empty window, then a cooldown.

    Args:
        mode: ``"min"`` if a lower loss is better, ``"max"`` if a higher one is.
        factor: Multiplier of a decrease (an increase divides by it); in (0, 1).
        patience: A change happens on the ``patience + 1``-th consecutive good or bad step.
        threshold: Margin an improvement must beat (strictly).
        threshold_mode: ``"abs"`` (``best - threshold``) or ``"rel"`` (``best * (1 - threshold)``).
        cooldown: Hold steps after a decrease.
        warmup: Hold steps after an increase (not a learning-rate ramp).
        min_lr: Floor of decreases, one float or one per group. An initial rate below it is
            never raised to it: it just cannot decrease.
        max_lr: Ceiling of increases, one float or one per group; ``inf`` means no ceiling.
        eps: A new rate is written only if it differs from the old one by more than this.
        smooth: Compare the running mean of the last ``window_size`` losses instead of the loss.
        window_size: Length of the smoothing window.
        reset_start: Decrease attempts at the floor before a reset.

    A numpy scalar of single (or half, or extended) precision given as ``factor``, ``threshold``,
    a bound or ``eps`` is computed with as it is, as the reference does: numpy rounds
    ``lr * np.float32(f)`` to single precision, so such a run follows the reference bit for bit
    rather than the double-precision run of ``float(f)``.

    Returns:
        The scheduler. Its state is a :class:`GreedyState`.

    Raises:
        ConfigError: If a parameter is out of range: ``factor`` outside (0, 1), a negative
            ``patience``/``cooldown``/``warmup``, ``window_size`` or ``reset_start`` below 1,
            ``min_lr`` negative or above ``max_lr``, ``eps`` negative, an unknown ``mode`` or
            ``threshold_mode``, a ``"rel"`` threshold of 1 or more in ``"min"`` mode or of -1 or
            less in ``"max"`` mode, NaN anywhere, or (at ``init``) per-group bounds whose length
            is not the number of groups.

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.8, 0.7, 0.9, 0.95]
        >>> simulate(losses, "greedy", lr=0.1, factor=0.5, patience=1).tolist()
        [0.1, 0.2, 0.2, 0.4, 0.4, 0.2]
    """
    # ``native``: the reference computes with the objects it is given, so a np.float32 factor
    # (or bound, eps, threshold) rounds every move to single precision; keep it to do the same.
    mode, threshold_mode, threshold = check.improvement(
        _WHERE, mode, threshold_mode, threshold, native=True
    )
    factor = check.real(_WHERE, "factor", factor, above=0.0, below=1.0, native=True)
    patience = check.integer(_WHERE, "patience", patience, minimum=0)
    cooldown = check.integer(_WHERE, "cooldown", cooldown, minimum=0)
    warmup = check.integer(_WHERE, "warmup", warmup, minimum=0)
    floor = check.bound(_WHERE, "min_lr", min_lr, allow_inf=False, native=True)
    ceiling = check.bound(_WHERE, "max_lr", max_lr, allow_inf=True, native=True)
    check.ordered_bounds(_WHERE, floor, ceiling)
    eps = check.real(_WHERE, "eps", eps, at_least=0.0, native=True)
    if not isinstance(smooth, bool):
        raise ConfigError(f"{_WHERE}: smooth must be True or False, got {smooth!r}")
    window_size = check.integer(_WHERE, "window_size", window_size, minimum=1)
    reset_start = check.integer(_WHERE, "reset_start", reset_start, minimum=1)

    is_better = improvement_test(mode, threshold_mode, threshold)
    bar = improvement_bar(mode, threshold_mode, threshold)
    minimize = mode == "min"
    worst = worst_metric(mode)

    # The reference reads the rate as ``float(lr)`` for the arithmetic but leaves an unmoved group
    # holding the object it held, which the at-the-floor test then compares: both matter when
    # that object is a numpy scalar (a np.float32 compares with a float in single precision).
    def lowered(lr: float, lr_min: float) -> float:
        old = float(lr)
        new = max(old * factor, lr_min)
        return new if old - new > eps else lr

    def raised(lr: float, lr_max: float) -> float:
        old = float(lr)
        new = min(old / factor, lr_max)
        return new if new - old > eps else lr

    def init(lrs: Sequence[float]) -> GreedyState:
        lrs = check.learning_rates(_WHERE, lrs, native=True)
        check.per_group(_WHERE, "min_lr", floor, len(lrs))
        check.per_group(_WHERE, "max_lr", ceiling, len(lrs))
        return fresh(lrs, resets=0)

    def fresh(lrs: tuple[float, ...], resets: int) -> GreedyState:
        return GreedyState(
            lrs=lrs,
            init_lrs=lrs,
            best=worst,
            good_steps=0,
            bad_steps=0,
            cooldown_left=0,
            warmup_left=0,
            resets_left=reset_start,
            window=(),
            window_sum=0.0,
            resets=resets,
        )

    def smoothed(state: GreedyState, metric: float) -> tuple[GreedyState, float]:
        # The reference never recomputes the sum from the window: add first, then subtract the
        # value that leaves, so rounding error accumulates exactly as it does there.
        window = (*state.window, metric)
        window_sum = state.window_sum + metric
        if len(window) > window_size:
            window_sum = window_sum - window[0]
            window = window[1:]
        return state._replace(window=window, window_sum=window_sum), window_sum / len(window)

    def increase(state: GreedyState) -> GreedyState:
        ceilings = check.per_group(_WHERE, "max_lr", ceiling, len(state.lrs))
        return state._replace(lrs=tuple(map(raised, state.lrs, ceilings)), resets_left=reset_start)

    def decrease(state: GreedyState) -> GreedyState:
        floors = check.per_group(_WHERE, "min_lr", floor, len(state.lrs))
        lrs = tuple(map(lowered, state.lrs, floors))
        if any(map(gt, lrs, floors)):
            return state._replace(lrs=lrs)
        resets_left = state.resets_left - 1
        if resets_left > 0:
            return state._replace(lrs=lrs, resets_left=resets_left)
        return reset(state)

    def reset(state: GreedyState) -> GreedyState:
        return fresh(state.init_lrs, resets=state.resets + 1)

    def update(state: GreedyState, loss: float) -> GreedyState:
        metric = float(loss)
        if smooth:
            state, metric = smoothed(state, metric)
        if state.cooldown_left > 0:
            return state._replace(cooldown_left=state.cooldown_left - 1, good_steps=0, bad_steps=0)
        if state.warmup_left > 0:
            return state._replace(warmup_left=state.warmup_left - 1, good_steps=0, bad_steps=0)
        if is_better(metric, state.best):
            state = state._replace(best=metric, good_steps=state.good_steps + 1, bad_steps=0)
        else:
            state = state._replace(good_steps=0, bad_steps=state.bad_steps + 1)
        if state.good_steps > patience:
            return increase(state)._replace(warmup_left=warmup, good_steps=0)
        if state.bad_steps > patience:
            return decrease(state)._replace(cooldown_left=cooldown, bad_steps=0)
        return state

    def scan(state: GreedyState, losses: Sequence[float]) -> ScanResult:
        # ``update`` folded over ``losses`` with the state unpacked into local variables: the
        # same operations in the same order, several times faster because no NamedTuple is
        # built per step. Each commented branch mirrors the function of the same name above.
        # ``is_better(metric, best)`` is ``metric < bar(best)`` (or ``>``): ``bar(best)`` is
        # kept in ``target`` and recomputed only when ``best`` changes.
        (
            lrs,
            init_lrs,
            best,
            good,
            bad,
            cooldown_left,
            warmup_left,
            resets_left,
            window_values,
            window_sum,
            resets,
        ) = state
        floors = check.per_group(_WHERE, "min_lr", floor, len(lrs))
        ceilings = check.per_group(_WHERE, "max_lr", ceiling, len(lrs))
        window = deque(window_values)
        target = bar(best)
        history: list[tuple[float, ...]] = []
        record = history.append
        reset_steps: list[int] = []
        for i, loss in enumerate(losses):
            metric = float(loss)
            if smooth:  # smoothed
                window.append(metric)
                window_sum = window_sum + metric
                if len(window) > window_size:
                    window_sum = window_sum - window.popleft()
                metric = window_sum / len(window)
            if cooldown_left > 0:
                cooldown_left -= 1
                good = bad = 0
            elif warmup_left > 0:
                warmup_left -= 1
                good = bad = 0
            else:
                if metric < target if minimize else metric > target:
                    best = metric
                    target = bar(best)
                    good += 1
                    bad = 0
                else:
                    good = 0
                    bad += 1
                if good > patience:  # increase
                    lrs = tuple(map(raised, lrs, ceilings))
                    resets_left = reset_start
                    warmup_left = warmup
                    good = 0
                elif bad > patience:  # decrease
                    lrs = tuple(map(lowered, lrs, floors))
                    if not any(map(gt, lrs, floors)):
                        resets_left -= 1
                        if resets_left <= 0:  # reset
                            lrs = init_lrs
                            best = worst
                            target = bar(best)
                            good = 0
                            warmup_left = 0
                            resets_left = reset_start
                            window.clear()
                            window_sum = 0.0
                            resets += 1
                            reset_steps.append(i)
                    cooldown_left = cooldown
                    bad = 0
            record(lrs)
        final = GreedyState(
            lrs,
            init_lrs,
            best,
            good,
            bad,
            cooldown_left,
            warmup_left,
            resets_left,
            tuple(window),
            window_sum,
            resets,
        )
        return ScanResult(final, history, reset_steps)

    return Scheduler(init, update, scan)
