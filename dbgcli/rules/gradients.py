"""DBG1xx: gradients that vanish or explode."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np

from dbgcli.findings import Finding
from dbgcli.rules._context import (
    RuleContext,
    TensorView,
    episode_findings,
    sustained,
    trailing_median,
)
from dbgcli.rules._registry import Need, rule

GRADIENTS = Need.tensors(collection="gradients")


@rule("DBG101", "vanishing-gradient", severity="error", category="gradients", requires=GRADIENTS)
def vanishing_gradient(
    ctx: RuleContext,
    *,
    threshold: float = 1e-7,
    ratio: float = 1e-3,
    ratio_below: float = 1e-4,
    min_steps: int = 1,
) -> Iterator[Finding]:
    """Gradients shrink towards zero, so the weights they reach stop learning.

    Two conditions, each evaluated per recorded step:

    * **absolute** (SageMaker Debugger's VanishingGradient): a gradient tensor's mean absolute
      value ``mean(|g|) < threshold`` (statistic ``abs_mean``).
    * **across layers** (AutoTrainer's gradient-ratio check, generalised): among the gradient
      tensors recorded at one step, the smallest ``abs_mean`` is below ``ratio`` times the
      largest *and* below ``ratio_below`` in absolute terms (AutoTrainer's second bound, which
      keeps a blow-up of the other layers from passing for vanishing), i.e. signal dies on its
      way through the network. Reported on the tensor with the smallest gradient; tensors with
      a zero gradient are left to the absolute check.

    A condition must hold for ``min_steps`` consecutive records of a tensor to be reported;
    findings are one per tensor and episode, with the smallest value seen.

    Why it matters: layers whose gradients vanish keep their initial weights; the loss
    plateaus early, typically well above what the model can reach.

    Typical causes: deep stacks of saturating activations (sigmoid, tanh), poor initialisation,
    a learning rate so small that the network never leaves the flat region, missing
    normalisation or residual connections.

    Fix: ReLU-family activations, He/Xavier initialisation, batch or layer normalisation,
    residual connections, gradient-norm monitoring per layer.

    Args:
        threshold: Mean absolute gradient below which a tensor counts as vanished.
        ratio: Smallest-to-largest ``abs_mean`` ratio across gradient tensors below which the
            smallest counts as vanished.
        ratio_below: The smallest ``abs_mean`` must also be below this for the ratio check.
        min_steps: Consecutive records a condition must hold before it is reported.
    """
    views = ctx.tensors(collection="gradients")
    across = _AcrossLayers(views) if len(views) >= 2 else None
    for row, view in enumerate(views):
        values = view.stat("abs_mean")
        violating = sustained(values < threshold, min_steps)
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=values,
            violating=violating,
            threshold=threshold,
            key="vanished",
            worst="min",
            modes=view.modes,
            message=lambda e, v: f"mean |gradient| fell to {v:.3g} (< {threshold:g})",
        )
        if across is not None:
            across.add(row, values)
    if across is not None:
        yield from across.findings(ratio, ratio_below, min_steps)


class _AcrossLayers:
    """Per step, the smallest and largest positive finite ``abs_mean`` among gradient tensors.

    Fed one tensor at a time, so that only one tensor's statistics are needed at once.
    """

    def __init__(self, views: list[TensorView]) -> None:
        self.views = views
        first = views[0].steps
        increasing = len(first) < 2 or bool(np.all(np.diff(first) > 0))
        self.aligned = increasing and all(np.array_equal(v.steps, first) for v in views)
        # The usual case: every gradient recorded once at the same steps.
        self.steps = first if self.aligned else np.unique(np.concatenate([v.steps for v in views]))
        self.smallest = np.full(len(self.steps), np.inf)
        self.smallest_row = np.full(len(self.steps), -1)
        self.largest = np.full(len(self.steps), -np.inf)
        self.present = np.zeros(len(self.steps), dtype=np.int64)

    def columns(self, view: TensorView) -> slice | np.ndarray:
        return slice(None) if self.aligned else np.searchsorted(self.steps, view.steps)

    def add(self, row: int, values: np.ndarray) -> None:
        """Fold in the ``abs_mean`` of ``views[row]``; zero or non-finite values do not count."""
        columns = self.columns(self.views[row])
        with np.errstate(invalid="ignore"):
            counted = np.isfinite(values) & (values > 0)
        positive = np.where(counted, values, np.inf)
        smaller = positive < self.smallest[columns]
        self.smallest[columns] = np.where(smaller, positive, self.smallest[columns])
        self.smallest_row[columns] = np.where(smaller, row, self.smallest_row[columns])
        self.largest[columns] = np.fmax(self.largest[columns], np.where(counted, values, -np.inf))
        self.present[columns] += counted

    def findings(self, ratio: float, below: float, min_steps: int) -> Iterator[Finding]:
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.where(self.present >= 2, self.smallest / self.largest, np.nan)
        for row, view in enumerate(self.views):
            positions = self.columns(view)
            mine = (
                (self.smallest_row[positions] == row)
                & (relative[positions] < ratio)
                & (self.smallest[positions] < below)
            )
            yield from episode_findings(
                tensor=view.tag,
                steps=view.steps,
                values=relative[positions],
                violating=sustained(mine, min_steps),
                threshold=ratio,
                key="vanished-relative",
                worst="min",
                modes=view.modes,
                message=lambda e, v: f"gradient {v:.3g}x the largest layer's (< {ratio:g})",
            )


@rule(
    "DBG102",
    "exploding-gradient",
    severity="error",
    category="gradients",
    requires=GRADIENTS,
    per_tensor=True,
)
def exploding_gradient(
    ctx: RuleContext, *, growth: float = 100.0, window: int = 10, max_abs_mean: float = 1e6
) -> Iterator[Finding]:
    """Gradients blow up: non-finite values, a sudden jump in norm, or huge magnitudes.

    Three conditions per gradient tensor and recorded step:

    * **non-finite**: any NaN or ±inf element (``nan_count + inf_count > 0``); SageMaker
      Debugger's ExplodingTensor restricted to gradients.
    * **growth**: the L2 norm exceeds ``growth`` times the tensor's typical norm: the larger
      of the median of the previous ``window`` records and the median of its first ``window``
      records (a jump of two orders of magnitude by default; the first ``window`` records only
      serve as history). Taking the larger keeps gradients that recover after vanishing for a
      while from counting as an explosion.
    * **magnitude**: ``mean(|g|) > max_abs_mean`` (TheDeepChecker's bound).

    Why it matters: exploding gradients throw the weights far from any useful region in one
    step; the loss jumps, often to NaN, and training rarely recovers.

    Typical causes: a learning rate far too high, no gradient clipping in recurrent networks,
    poor initialisation (large weights), a loss with a division or log near zero, fp16
    overflow without loss scaling.

    Fix: lower the learning rate or use warmup, clip the gradient norm, check the loss for
    unsafe operations, use mixed precision with a gradient scaler.

    Args:
        growth: Factor over the trailing median norm that counts as an explosion.
        window: Records of history the trailing median uses.
        max_abs_mean: Mean absolute gradient above which a tensor counts as exploded.
    """
    for view in ctx.tensors(collection="gradients"):
        nonfinite = view.stat("nan_count") + view.stat("inf_count")
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=nonfinite,
            violating=nonfinite > 0,
            threshold=0.0,
            key="nonfinite",
            modes=view.modes,
            message=lambda e, v: f"{v:.0f} NaN/inf gradient elements",
        )
        norms = view.stat("l2")
        # The baseline is the larger of the recent and the initial typical norm, so that
        # gradients recovering from a vanished stretch do not pass for an explosion.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN start has no median
            initial = float(np.nanmedian(norms[:window])) if len(norms) > window else np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            jump = norms / initial
            # The baseline is at least the initial median: only records that jumped over
            # that can have jumped over the recent median, so only they need it.
            possible = np.flatnonzero(~(jump <= growth))
            recent = trailing_median(norms, window, at=possible)
            jump[possible] = norms[possible] / np.fmax(recent[possible], initial)
        jumped = np.isfinite(jump) & (jump > growth)
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=jump,
            violating=jumped,
            threshold=growth,
            key="norm-growth",
            modes=view.modes,
            message=lambda e, v: (
                f"gradient norm jumped {v:.3g}x over its recent median (> {growth:g}x)"
            ),
        )
        magnitude = view.stat("abs_mean")
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=magnitude,
            violating=magnitude > max_abs_mean,
            threshold=max_abs_mean,
            key="magnitude",
            modes=view.modes,
            message=lambda e, v: f"mean |gradient| reached {v:.3g} (> {max_abs_mean:g})",
        )
