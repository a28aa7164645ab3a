"""The registry of named schedulers and the one loop that replays losses through any of them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from dbgcli.errors import ConfigError
from dbgcli.schedulers._base import Scheduler
from dbgcli.schedulers.fixed import (
    constant,
    cosine,
    exponential_decay,
    linear,
    multistep_decay,
    one_cycle,
    step_decay,
)
from dbgcli.schedulers.greedy import greedy
from dbgcli.schedulers.plateau import reduce_on_plateau

SCHEDULERS: dict[str, Callable[..., Scheduler]] = {
    "greedy": greedy,
    "plateau": reduce_on_plateau,
    "constant": constant,
    "step": step_decay,
    "multistep": multistep_decay,
    "exponential": exponential_decay,
    "linear": linear,
    "cosine": cosine,
    "onecycle": one_cycle,
}
"""Every built-in scheduler factory under its stable name."""


class Replay(NamedTuple):
    """A loss sequence replayed through a scheduler."""

    lrs: npt.NDArray[np.float64]
    """``lrs[i]``: learning rate(s) in effect after the scheduler has seen ``losses[i]``; shape
    ``(n,)`` for a scalar initial ``lr``, ``(n, groups)`` for a list."""
    resets: npt.NDArray[np.int64]
    """Indices ``i`` at which the update with ``losses[i]`` reset the scheduler (GreedyLR only)."""


def replay(
    losses: Sequence[float] | npt.ArrayLike,
    scheduler: str | Scheduler = "greedy",
    lr: float | Sequence[float] = 0.1,
    **params: Any,
) -> Replay:
    """Feed ``losses`` to a scheduler one at a time and record its learning rates and resets.

    Element ``i`` of the result is what ``get_last_lr()`` of the equivalent torch (or
    transformers) scheduler returns right after ``step(losses[i])``: the learning rate that
    the optimizer step following ``losses[i]`` would use. Loss-independent schedulers ignore the
    values but advance one step per loss.

    Args:
        losses: One-dimensional sequence of loss (or metric) values; NaN and infinities allowed.
        scheduler: A name from :data:`SCHEDULERS` or a :class:`Scheduler`.
        lr: Initial learning rate, or a list with one per parameter group.
        **params: Parameters of the named scheduler's factory (only with a name).

    Returns:
        The learning rates and the reset steps.

    Raises:
        ConfigError: If the scheduler name or a parameter is unknown, a required parameter is
            missing, a value is invalid, ``losses`` is not one-dimensional, or ``params`` are
            given along with a :class:`Scheduler`.
    """
    resolved = _resolve(scheduler, params)
    values = np.asarray(losses, dtype=np.float64)
    if values.ndim != 1:
        raise ConfigError(f"losses must be one-dimensional, got shape {values.shape}")
    scalar_lr = np.ndim(lr) == 0
    initial = [cast(float, lr)] if scalar_lr else list(cast(Sequence[float], lr))
    state = resolved.init(initial)
    groups = len(state.lrs)
    losses_list: list[float] = values.tolist()

    if resolved.scan is not None:
        _, history, reset_steps = resolved.scan(state, losses_list)
    else:
        history, reset_steps = [], []
        for i, loss in enumerate(losses_list):
            new_state = resolved.update(state, loss)
            if new_state.resets != state.resets:
                reset_steps.append(i)
            history.append(new_state.lrs)
            state = new_state

    flat = np.fromiter(chain.from_iterable(history), dtype=np.float64, count=len(history) * groups)
    table = flat.reshape(len(history), groups)
    return Replay(table[:, 0] if scalar_lr else table, np.array(reset_steps, dtype=np.int64))


def simulate(
    losses: Sequence[float] | npt.ArrayLike,
    scheduler: str | Scheduler = "greedy",
    lr: float | Sequence[float] = 0.1,
    **params: Any,
) -> npt.NDArray[np.float64]:
    """Return the learning rates a scheduler produces over ``losses`` (see :func:`replay`).

    Args:
        losses: One-dimensional sequence of loss (or metric) values.
        scheduler: A name from :data:`SCHEDULERS` or a :class:`Scheduler`.
        lr: Initial learning rate, or a list with one per parameter group.
        **params: Parameters of the named scheduler's factory (only with a name).

    Returns:
        ``lrs[i]``, the learning rate(s) after ``losses[i]``: shape ``(n,)`` for a scalar
        ``lr``, ``(n, groups)`` for a list.

    Raises:
        ConfigError: As :func:`replay`.

    Examples:
        >>> losses = [3.0, 2.0, 1.0, 1.0, 1.0, 1.0]
        >>> simulate(losses, "greedy", lr=0.1, factor=0.5, patience=1).tolist()
        [0.1, 0.2, 0.2, 0.2, 0.1, 0.1]
        >>> simulate(losses[:3], "greedy", lr=[0.1, 0.01], factor=0.5, patience=1).tolist()
        [[0.1, 0.01], [0.2, 0.02], [0.2, 0.02]]
    """
    return replay(losses, scheduler, lr, **params).lrs


def _resolve(scheduler: str | Scheduler, params: dict[str, Any]) -> Scheduler:
    if isinstance(scheduler, Scheduler):
        if params:
            raise ConfigError(
                f"parameters {sorted(params)} only apply to a scheduler given by name; "
                "pass them to the factory instead"
            )
        return scheduler
    factory = SCHEDULERS.get(scheduler) if isinstance(scheduler, str) else None
    if factory is None:
        raise ConfigError(f"unknown scheduler {scheduler!r}; valid: {', '.join(SCHEDULERS)}")
    signature = inspect.signature(factory).parameters
    unknown = sorted(set(params) - set(signature))
    if unknown:
        raise ConfigError(
            f"{scheduler}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(signature)}"
        )
    missing = [
        name
        for name, p in signature.items()
        if p.default is inspect.Parameter.empty and name not in params
    ]
    if missing:
        raise ConfigError(f"{scheduler}: missing required parameter(s) {', '.join(missing)}")
    return factory(**params)
