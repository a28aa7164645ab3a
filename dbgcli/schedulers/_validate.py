"""Argument checks shared by the scheduler factories.

Every check raises :class:`~dbgcli.errors.ConfigError` with a message that names the scheduler,
the parameter and the offending value, and returns the value converted to a plain Python type:
numpy scalars are turned into ``float``/``int`` here so that all later arithmetic is ordinary
double-precision Python arithmetic, which is what the torch references do with Python numbers.

The exception is ``native=True``, for a reference that computes with the parameter object it was
given: there a numpy floating scalar of another precision than double (``np.float32``,
``np.float16``, ``np.longdouble``) is returned unchanged, because ``lr * np.float32(0.5)`` is
rounded to single precision (numpy's promotion rules) and converting the scalar to ``float``
would silently compute something else. ``np.float64`` is a ``float`` already and computes alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from typing import cast

import numpy as np

from dbgcli.errors import ConfigError


def integer(where: str, name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an ``int`` after checking it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}: {name} must be >= {minimum}, got {value!r}")
    return int(value)


def real(
    where: str,
    name: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    allow_inf: bool = False,
    native: bool = False,
) -> float:
    """Return ``value`` as a ``float`` after checking it is a number inside the given bounds.

    NaN is always rejected; infinities only with ``allow_inf``. With ``native``, a numpy
    floating scalar that is not a double is returned as it is (see the module docstring).
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise ConfigError(f"{where}: {name} must be finite, got {value!r}")
    if above is not None and not number > above:
        raise ConfigError(f"{where}: {name} must be > {above}, got {value!r}")
    if at_least is not None and not number >= at_least:
        raise ConfigError(f"{where}: {name} must be >= {at_least}, got {value!r}")
    if below is not None and not number < below:
        raise ConfigError(f"{where}: {name} must be < {below}, got {value!r}")
    if at_most is not None and not number <= at_most:
        raise ConfigError(f"{where}: {name} must be <= {at_most}, got {value!r}")
    if native and isinstance(value, np.floating) and not isinstance(value, float):
        return cast(float, value)
    return number


def choice(where: str, name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    valid = tuple(choices)
    if not isinstance(value, str) or value not in valid:
        raise ConfigError(
            f"{where}: {name} must be one of {', '.join(map(repr, valid))}, got {value!r}"
        )
    return value


def improvement(
    where: str, mode: object, threshold_mode: object, threshold: object, *, native: bool = False
) -> tuple[str, str, float]:
    """Return ``(mode, threshold_mode, threshold)``, the arguments that define an improvement.

    A ``"rel"`` threshold of 1 or more in ``"min"`` mode, or of -1 or less in ``"max"`` mode, is
    refused: ``best * (1 - threshold)`` (``best * (1 + threshold)``) would never be beaten.
    """
    mode = choice(where, "mode", mode, ("min", "max"))
    threshold_mode = choice(where, "threshold_mode", threshold_mode, ("abs", "rel"))
    threshold = real(where, "threshold", threshold, native=native)
    if threshold_mode == "rel" and mode == "min" and threshold >= 1.0:
        raise ConfigError(
            f"{where}: threshold must be < 1 with threshold_mode='rel' in 'min' mode "
            f"(best * (1 - threshold) would never be beaten), got {threshold!r}"
        )
    if threshold_mode == "rel" and mode == "max" and threshold <= -1.0:
        raise ConfigError(
            f"{where}: threshold must be > -1 with threshold_mode='rel' in 'max' mode "
            f"(best * (1 + threshold) would never be beaten), got {threshold!r}"
        )
    return mode, threshold_mode, threshold


def bound(
    where: str, name: str, value: object, *, allow_inf: bool, native: bool = False
) -> float | tuple[float, ...]:
    """Return a learning-rate bound: one non-negative float, or a tuple with one per group."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{where}: {name} must not be an empty list")
        return tuple(
            real(where, f"{name}[{i}]", v, at_least=0.0, allow_inf=allow_inf, native=native)
            for i, v in enumerate(value)
        )
    return real(where, name, value, at_least=0.0, allow_inf=allow_inf, native=native)


def per_group(
    where: str, name: str, value: float | tuple[float, ...], groups: int
) -> tuple[float, ...]:
    """Expand a bound from :func:`bound` to one value per parameter group."""
    if isinstance(value, tuple):
        if len(value) != groups:
            raise ConfigError(
                f"{where}: {name} has {len(value)} values but there "
                + (f"are {groups} parameter groups" if groups != 1 else "is 1 parameter group")
            )
        return value
    return (value,) * groups


def ordered_bounds(
    where: str, low: float | tuple[float, ...], high: float | tuple[float, ...]
) -> None:
    """Check ``min_lr <= max_lr`` group by group (a scalar stands for every group)."""
    if not isinstance(low, tuple) and not isinstance(high, tuple):
        if low > high:
            raise ConfigError(f"{where}: min_lr ({low!r}) must not exceed max_lr ({high!r})")
        return
    sizes = [len(b) for b in (low, high) if isinstance(b, tuple)]
    if len(set(sizes)) > 1:
        raise ConfigError(
            f"{where}: min_lr has {sizes[0]} values but max_lr has {sizes[1]}; "
            "give one per parameter group"
        )
    groups = sizes[0]
    lows = per_group(where, "min_lr", low, groups)
    highs = per_group(where, "max_lr", high, groups)
    for i, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        if lo > hi:
            raise ConfigError(
                f"{where}: min_lr of group {i} ({lo!r}) must not exceed max_lr ({hi!r})"
            )


def learning_rates(where: str, lrs: Sequence[float], *, native: bool = False) -> tuple[float, ...]:
    """Return the initial learning rates as a tuple of floats, one per parameter group."""
    if len(lrs) == 0:
        raise ConfigError(
            f"{where}: lr must hold at least one learning rate (one per parameter group)"
        )
    if len(lrs) == 1:
        return (real(where, "lr", lrs[0], at_least=0.0, native=native),)
    return tuple(
        real(where, f"lr[{i}]", lr, at_least=0.0, native=native) for i, lr in enumerate(lrs)
    )
