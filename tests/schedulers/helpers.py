"""Helpers shared by the scheduler tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dbgcli.schedulers import Scheduler, replay


def fold(scheduler: Scheduler, losses: Sequence[float], lrs: Sequence[float]) -> list[Any]:
    """Call ``update`` once per loss, by hand, and return every state (no fused loop)."""
    state = scheduler.init(lrs)
    states = []
    for loss in losses:
        state = scheduler.update(state, loss)
        states.append(state)
    return states


def same(a: Any, b: Any) -> bool:
    """Exact equality of nested tuples of floats in which NaN equals NaN."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def replay_rows(
    scheduler: str | Scheduler, losses: Sequence[float], lrs: Sequence[float], **params: Any
) -> tuple[list[list[float]], list[int]]:
    """``replay`` with a list of learning rates, as plain lists."""
    result = replay(losses, scheduler, list(lrs), **params)
    return result.lrs.tolist(), result.resets.tolist()
