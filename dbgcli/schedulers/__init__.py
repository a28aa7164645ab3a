"""Learning-rate schedulers as pure functions of a loss sequence, and the loop that replays them.

Every scheduler is built by a factory that validates its parameters and returns a
:class:`Scheduler`, a pair of pure functions ``init(lrs) -> state`` and
``update(state, loss) -> state`` (optax style); ``state.lrs`` holds the learning rate of each
parameter group. :func:`simulate` and :func:`replay` run a whole loss sequence through one.

GreedyLR (:func:`greedy`) matches ``transformers.optimization.GreedyLR`` and
:func:`reduce_on_plateau` matches torch's ``ReduceLROnPlateau`` float for float; the
loss-independent schedules match their torch counterparts. Nothing here imports torch.

Example:
    >>> from dbgcli.schedulers import simulate
    >>> simulate([1.0, 0.5, 0.25, 0.2, 0.2, 0.2], "greedy", lr=0.1, factor=0.5, patience=1).tolist()
    [0.1, 0.2, 0.2, 0.4, 0.4, 0.2]
"""

from __future__ import annotations

from dbgcli.schedulers._base import (
    Scan,
    ScanResult,
    Schedule,
    Scheduler,
    ScheduleState,
    State,
    from_schedule,
)
from dbgcli.schedulers._replay import SCHEDULERS, Replay, replay, simulate
from dbgcli.schedulers.fixed import (
    constant,
    cosine,
    exponential_decay,
    linear,
    multistep_decay,
    one_cycle,
    step_decay,
)
from dbgcli.schedulers.greedy import GreedyState, greedy
from dbgcli.schedulers.plateau import PlateauState, reduce_on_plateau

__all__ = [
    "SCHEDULERS",
    "GreedyState",
    "PlateauState",
    "Replay",
    "Scan",
    "ScanResult",
    "Schedule",
    "ScheduleState",
    "Scheduler",
    "State",
    "constant",
    "cosine",
    "exponential_decay",
    "from_schedule",
    "greedy",
    "linear",
    "multistep_decay",
    "one_cycle",
    "reduce_on_plateau",
    "replay",
    "simulate",
    "step_decay",
]
