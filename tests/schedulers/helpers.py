"""Helpers shared by the scheduler tests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

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


def make_problem(seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP and a noisy regression data set, identical for equal seeds."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(256, 8, generator=generator)
    targets = torch.sin(inputs @ torch.randn(8, 1, generator=generator)) + 0.1 * torch.randn(
        256, 1, generator=generator
    )
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return model, inputs, targets
