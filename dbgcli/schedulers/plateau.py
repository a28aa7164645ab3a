"""ReduceLROnPlateau: lower the learning rate when the loss stops improving.

This reproduces ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (torch 2.13.0) float for float.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from dbgcli.schedulers import _validate as check
from dbgcli.schedulers._base import Scheduler, improvement_test, worst_metric

_WHERE = "plateau"


class PlateauState(NamedTuple):
    """State of :func:`reduce_on_plateau` between two losses."""

    lrs: tuple[float, ...]
    """Learning rate of each parameter group."""
    best: float
    """Best metric so far (updated during cooldown too, unlike GreedyLR)."""
    bad_steps: int
    """Current run of consecutive non-improvements outside cooldown."""
    cooldown_left: int
    """Steps left during which bad steps are not counted."""
    resets: int = 0
    """Always 0: ReduceLROnPlateau never resets."""


def reduce_on_plateau(
    *,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float | Sequence[float] = 0.0,
    eps: float = 1e-8,
) -> Scheduler:
    r"""ReduceLROnPlateau: multiply the learning rate by ``factor`` after a run of bad steps.

    Every loss :math:`x_t` is compared with the best value so far, :math:`b`, exactly as in
    :func:`~dbgcli.schedulers.greedy` (strict, ``"abs"`` or ``"rel"`` threshold, NaN never
    better); an improvement sets :math:`b = x_t` and clears the bad-step count :math:`k`,
    anything else increments it. During the ``cooldown`` steps after a decrease the comparison
    still runs (so :math:`b` keeps improving) but :math:`k` is held at 0. When :math:`k > p`,
    every group :math:`i` becomes

    .. math::

        \eta_i \leftarrow \max(\eta_i f,\ \eta^{\min}_i)

    if that lowers it by more than ``eps``, then the cooldown starts and :math:`k = 0`.

    Args:
        mode: ``"min"`` if a lower loss is better, ``"max"`` if a higher one is.
        factor: Multiplier of a decrease; in (0, 1).
        patience: The decrease happens on the ``patience + 1``-th consecutive bad step.
        threshold: Margin an improvement must beat (strictly).
        threshold_mode: ``"rel"`` (``best * (1 - threshold)``) or ``"abs"`` (``best - threshold``).
        cooldown: Steps after a decrease during which bad steps are not counted.
        min_lr: Floor of decreases, one float or one per group.
        eps: A new rate is written only if it is lower than the old one by more than this.

    Returns:
        The scheduler. Its state is a :class:`PlateauState`.

    Raises:
        ConfigError: If ``factor`` is outside (0, 1), ``patience`` or ``cooldown`` is negative,
            ``min_lr`` or ``eps`` is negative, ``mode`` or ``threshold_mode`` is unknown, a
            ``"rel"`` threshold is 1 or more in ``"min"`` mode or -1 or less in ``"max"`` mode, a
            value is NaN, or (at ``init``) a per-group ``min_lr`` does not have one value per
            group.

    Examples:
        >>> from dbgcli.schedulers import simulate
        >>> losses = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8]
        >>> simulate(losses, "plateau", lr=0.1, factor=0.5, patience=1).tolist()
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05]
    """
    # ``native``: torch computes with the objects it is given (see ``greedy``).
    mode, threshold_mode, threshold = check.improvement(
        _WHERE, mode, threshold_mode, threshold, native=True
    )
    factor = check.real(_WHERE, "factor", factor, above=0.0, below=1.0, native=True)
    patience = check.integer(_WHERE, "patience", patience, minimum=0)
    cooldown = check.integer(_WHERE, "cooldown", cooldown, minimum=0)
    floor = check.bound(_WHERE, "min_lr", min_lr, allow_inf=False, native=True)
    eps = check.real(_WHERE, "eps", eps, at_least=0.0, native=True)

    is_better = improvement_test(mode, threshold_mode, threshold)

    def lowered(lr: float, lr_min: float) -> float:
        old = float(lr)
        new = max(old * factor, lr_min)
        return new if old - new > eps else lr

    def init(lrs: Sequence[float]) -> PlateauState:
        lrs = check.learning_rates(_WHERE, lrs, native=True)
        check.per_group(_WHERE, "min_lr", floor, len(lrs))
        return PlateauState(lrs=lrs, best=worst_metric(mode), bad_steps=0, cooldown_left=0)

    def update(state: PlateauState, loss: float) -> PlateauState:
        metric = float(loss)
        if is_better(metric, state.best):
            state = state._replace(best=metric, bad_steps=0)
        else:
            state = state._replace(bad_steps=state.bad_steps + 1)
        if state.cooldown_left > 0:
            state = state._replace(cooldown_left=state.cooldown_left - 1, bad_steps=0)
        if state.bad_steps > patience:
            floors = check.per_group(_WHERE, "min_lr", floor, len(state.lrs))
            state = state._replace(
                lrs=tuple(map(lowered, state.lrs, floors)), cooldown_left=cooldown, bad_steps=0
            )
        return state

    return Scheduler(init, update)
