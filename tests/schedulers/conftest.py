"""Fixtures for the scheduler tests: the reference implementations, driven the way users drive them.

torch and transformers are imported directly, not with ``importorskip``: without them the parity
suite cannot run, and a CI job must fail rather than silently skip it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch
from transformers.optimization import GreedyLR as ReferenceGreedyLR

from .losses import loss_sequences

OptimizerFor = Callable[[Sequence[float]], torch.optim.SGD]


@pytest.fixture(scope="package", autouse=True)
def single_torch_thread() -> Iterator[None]:
    """Run torch on one thread while these tests run.

    The models here are tiny, and on a busy machine a thread pool competing with other
    processes makes each training step many times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sequences() -> dict[str, list[float]]:
    """The named loss sequences of ``losses.py``."""
    return loss_sequences()


@pytest.fixture(scope="session")
def optimizer_for() -> OptimizerFor:
    """Return an SGD optimizer with one parameter group per learning rate, reused across tests.

    Building optimizers dominates a parity run of a few hundred steps, so one optimizer per
    group count is kept and reset: each group's ``lr`` is set and the keys torch schedulers add
    to groups (``initial_lr`` is only set if absent) are removed.
    """
    cache: dict[int, torch.optim.SGD] = {}

    def get(lrs: Sequence[float]) -> torch.optim.SGD:
        optimizer = cache.get(len(lrs))
        if optimizer is None:
            groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in lrs]
            optimizer = torch.optim.SGD(groups, lr=1.0)
            cache[len(lrs)] = optimizer
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
            for key in ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"):
                group.pop(key, None)
        return optimizer

    return get


@pytest.fixture(scope="session")
def reference_greedy(
    optimizer_for: OptimizerFor,
) -> Callable[..., tuple[list[list[float]], list[int]]]:
    """Run ``transformers.optimization.GreedyLR`` over losses.

    Returns ``get_last_lr()`` after every step and the step indices at which it reset (found by
    wrapping its private ``_reset``).
    """

    def run(
        losses: Sequence[float], lrs: Sequence[float], **params: Any
    ) -> tuple[list[list[float]], list[int]]:
        scheduler = ReferenceGreedyLR(optimizer_for(lrs), **params)
        history: list[list[float]] = []
        reset_steps: list[int] = []
        reset = scheduler._reset

        def recording_reset() -> None:
            reset_steps.append(len(history))
            reset()

        scheduler._reset = recording_reset  # type: ignore[method-assign]
        for loss in losses:
            scheduler.step(loss)
            history.append(list(scheduler.get_last_lr()))
        return history, reset_steps

    return run


@pytest.fixture(scope="session")
def reference_torch(optimizer_for: OptimizerFor) -> Callable[..., list[list[float]]]:
    """Run a torch scheduler over losses and return ``get_last_lr()`` after every step.

    ``make(optimizer)`` builds the scheduler; ``ReduceLROnPlateau`` is stepped with the loss,
    every other scheduler without it.
    """

    def run(
        make: Callable[[torch.optim.Optimizer], Any], losses: Sequence[float], lrs: Sequence[float]
    ) -> list[list[float]]:
        optimizer = optimizer_for(lrs)
        scheduler = make(optimizer)
        # torch warns when a scheduler steps before its optimizer ever has; an optimizer step
        # with no gradients changes nothing and records that it happened.
        optimizer.step()
        with_metric = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        history: list[list[float]] = []
        for loss in losses:
            if with_metric:
                scheduler.step(loss)
            else:
                scheduler.step()
            history.append([float(lr) for lr in scheduler.get_last_lr()])
        return history

    return run
