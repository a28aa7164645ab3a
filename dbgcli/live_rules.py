"""The cheap rules, judged inside the training process (``attach(..., stop_on="error")``).

For users who cannot run ``dbg watch`` beside training. The checks use only numbers the hooks
already computed for the trace (the loss, and each gradient's NaN/inf counts and L2 norm),
keep a few numbers of state per series, and cost microseconds per step. They follow the rules
of the same ids, with their default parameters (``dbg rules explain ID``):

* DBG306 non-finite-loss (error): the training loss is NaN or infinite;
* DBG102 exploding-gradient (error): a gradient holds NaN or infinite values;
* DBG102 exploding-gradient (warning): a gradient's norm exceeds ``growth`` times the larger
  of the median of its previous ``window`` norms and the median of its first ``window`` norms;
* DBG301 loss-not-decreasing (warning): the mean training loss of a block of ``num_steps``
  records did not fall by more than ``min_decrease_pct`` percent (with ``z`` standard errors to
  spare) from the block before, ``patience`` blocks in a row, while still above
  ``converged_fraction`` of the first block's mean.

A check that fires at or above the ``stop_on`` level returns a :class:`LiveFinding`; the hook
then asks its writer to stop the run (recorded in the trace like a ``dbg watch --stop``).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbgcli.trace.roles import scalar_meaning

if TYPE_CHECKING:
    from dbgcli.trace.writer import TraceWriter

STOP_LEVELS = ("warning", "error")


@dataclass(frozen=True)
class LiveFinding:
    """A check that fired: the rule, the severity, the step and what was seen."""

    rule_id: str
    rule: str
    severity: str
    step: int
    message: str

    @property
    def reason(self) -> str:
        return f"{self.rule_id} {self.rule}: {self.message} (step {self.step})"


def stop_if(writer: TraceWriter, finding: LiveFinding | None) -> None:
    """Ask ``writer``'s run to stop when a check fired (recorded as by ``stop_on``)."""
    if finding is not None:
        writer.request_stop(
            finding.reason, by="stop_on (in-process)", rule=finding.rule_id, step=finding.step
        )


@functools.lru_cache(maxsize=256)
def is_loss(tag: str) -> bool:
    """Whether a scalar series is a loss by its name (as the rules find it)."""
    return scalar_meaning(tag).quantity == "loss"


def check_stop_on(stop_on: str | None) -> None:
    """Reject a ``stop_on`` level other than None, ``"warning"`` and ``"error"``."""
    if stop_on is not None and stop_on not in STOP_LEVELS:
        raise ValueError(f"stop_on must be None, 'warning' or 'error', got {stop_on!r}")


class _Norms:
    """The history exploding-gradient compares a norm with: first and last ``window`` norms."""

    def __init__(self, window: int) -> None:
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)
        self.window = window
        self.first_median: float | None = None

    def baseline(self) -> float | None:
        if len(self.recent) < self.window:
            return None
        assert self.first_median is not None
        return max(self.first_median, statistics.median(self.recent))

    def add(self, norm: float) -> None:
        if len(self.first) < self.window:
            self.first.append(norm)
            if len(self.first) == self.window:
                self.first_median = statistics.median(self.first)
        self.recent.append(norm)


class LiveRules:
    """Judge a run as it trains; feed it with :meth:`loss` and :meth:`gradient`.

    Args:
        stop_on: The lowest severity that stops the run: ``"error"`` or ``"warning"``.
    """

    def __init__(
        self,
        stop_on: str,
        *,
        growth: float = 300.0,
        window: int = 10,
        num_steps: int = 50,
        min_decrease_pct: float = 1.0,
        z: float = 1.0,
        patience: int = 2,
        converged_fraction: float = 0.5,
    ) -> None:
        check_stop_on(stop_on)
        self.warnings = stop_on == "warning"
        self.growth = growth
        self.window = window
        self.num_steps = num_steps
        self.min_decrease_pct = min_decrease_pct
        self.z = z
        self.patience = patience
        self.converged_fraction = converged_fraction
        self._norms: dict[str, _Norms] = {}
        self._block: list[float] = []
        self._previous: tuple[float, float] | None = None  # mean, standard error
        self._first_mean: float | None = None
        self._flat_checks = 0

    def loss(self, value: float, step: int) -> LiveFinding | None:
        """A training loss record."""
        if not math.isfinite(value):
            return LiveFinding(
                "DBG306", "non-finite-loss", "error", step, f"the training loss is {value}"
            )
        if not self.warnings:
            return None
        self._block.append(value)
        if len(self._block) < self.num_steps:
            return None
        mean = statistics.fmean(self._block)
        error = statistics.stdev(self._block) / math.sqrt(len(self._block))
        self._block.clear()
        previous, self._previous = self._previous, (mean, error)
        if self._first_mean is None:
            self._first_mean = mean
        if previous is None or previous[0] == 0:
            return None
        change = (mean - previous[0]) / abs(previous[0]) * 100
        change_error = math.hypot(error, previous[1]) / abs(previous[0]) * 100
        high = mean > self.converged_fraction * self._first_mean
        flat = -change - self.z * change_error <= self.min_decrease_pct and high
        self._flat_checks = self._flat_checks + 1 if flat else 0
        if self._flat_checks < self.patience:
            return None
        return LiveFinding(
            "DBG301",
            "loss-not-decreasing",
            "warning",
            step,
            f"the mean training loss changed by {change:+.3g}% over the last "
            f"{self.num_steps} records ({self._flat_checks} checks in a row)",
        )

    def gradient(self, tag: str, nonfinite: float, norm: float, step: int) -> LiveFinding | None:
        """A gradient record: its NaN plus infinite element count and its L2 norm."""
        if nonfinite > 0:
            return LiveFinding(
                "DBG102",
                "exploding-gradient",
                "error",
                step,
                f"{tag} holds {nonfinite:.0f} NaN/inf elements",
            )
        if not self.warnings or not math.isfinite(norm):
            return None
        history = self._norms.get(tag)
        if history is None:
            history = self._norms[tag] = _Norms(self.window)
        baseline = history.baseline()
        history.add(norm)
        if baseline is not None and baseline > 0 and norm > self.growth * baseline:
            return LiveFinding(
                "DBG102",
                "exploding-gradient",
                "warning",
                step,
                f"{tag} norm {norm:.4g} is {norm / baseline:.3g} times its typical {baseline:.4g}",
            )
        return None
