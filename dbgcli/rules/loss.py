"""DBG3xx: the loss and accuracy curves.

Not decreasing, overfitting, underfitting, overtraining, oscillating, non-finite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np

from dbgcli.errors import RuleConfigError, RuleSkipped
from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import (
    RuleContext,
    TensorView,
    covered,
    episode_findings,
    episodes,
    sustained,
)
from dbgcli.rules._known import (
    FITTED,
    LEARNED,
    LEARNING_RATE_BY_UPDATES,
    STARVED_LR,
    class_count,
    converged,
    initial_loss,
    kept_steps,
    labels_are_the_inputs,
    language_tokens,
    linear_booster,
    loss_metric,
    lr_below,
    lr_raised,
    resumed_without_start,
)
from dbgcli.rules._registry import Need, rule
from dbgcli.rules.activations import model_output_tags
from dbgcli.rules.data import (
    LABELS,
    PREDICTIONS,
    chance_loss,
    class_axis,
    class_ids,
    held_out_chance,
    plan_class_ids,
    refuse_unclassed,
    regression_targets,
    saturated_loss,
    scored_labels,
    soft_target_entropy,
)
from dbgcli.trace import roles, schema
from dbgcli.trace.reader import Series

Mode = Literal["train", "eval"]
T = TypeVar("T")


def _diverged_before(values: np.ndarray) -> str:
    """How the finite records before a non-finite one rose, when they did: the last of them
    more than ``_DIVERGED`` times the median of the ``_DIVERGED_WINDOW`` before it, all
    positive, means the loss was diverging (a learning rate far too high) before it
    overflowed, which no NaN recorded later can say. One bad batch after a converged run's
    noisy minibatch losses is not that."""
    finite = values[np.isfinite(values)][-(_DIVERGED_WINDOW + 1) :]
    if len(finite) < 2 or not (finite > 0).all():
        return ""
    level, last = float(np.median(finite[:-1])), float(finite[-1])
    if not last > _DIVERGED * level:
        return ""
    return (
        f", after the loss rose to {last:.3g}, {last / level:.3g}x the median {level:.3g} of "
        f"the {_last_records(len(finite) - 1)} before: it diverged"
    )


# A loss that rises to this many times its recent level before it overflows has diverged.
_DIVERGED = 10.0
_DIVERGED_WINDOW = 10


def _is_loss_tag(tag: str) -> bool:
    return roles.scalar_meaning(tag).quantity == "loss"


TRAIN_LOSS = Need.loss("train")
EVAL_LOSS = Need.loss("eval")
LOSS_SCALARS = Need(
    "loss series (a scalar named like loss, val_loss, train/loss, validation_0-logloss)",
    lambda ctx: any(
        _is_loss_tag(info.tag) and ctx.scalar(info.tag) is not None
        for info in ctx.trace.tags(scalar=True)
    ),
    looks_at="scalars",
)


def _positive(rule_id: str, **values: float | None) -> None:
    """Refuse counts and sizes that are not positive (an unset optional one is fine)."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise RuleConfigError(f"{rule_id} {name} must be positive, got {value:g}")


def _finite(series: Series) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of the finite records, in step order (non-finite ones are DBG306's)."""
    keep = np.isfinite(series.values)
    steps, values = series.steps[keep], series.values[keep].astype(np.float64)
    order = np.argsort(steps, kind="stable")
    return steps[order], values[order]


def _window_sums(values: np.ndarray) -> np.ndarray:
    """Prefix sums with a leading 0, so ``sums[j] - sums[i]`` is ``values[i:j].sum()``."""
    return np.concatenate(([0.0], np.cumsum(values)))


def _trailing_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sum of each entry and the ``window - 1`` before it (fewer at the start)."""
    sums = _window_sums(values)
    ends = np.arange(1, len(values) + 1)
    totals: np.ndarray = sums[ends] - sums[np.maximum(ends - window, 0)]
    return totals


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each entry and the ``window - 1`` before it (fewer at the start)."""
    counts = np.minimum(np.arange(1, len(values) + 1), max(window, 1))
    return _trailing_sum(values, window) / counts


@rule(
    "DBG301",
    "loss-not-decreasing",
    severity="warning",
    category="loss",
    requires=Need.loss_of("mode"),
    label={"increasing": "loss increasing", "*": "loss not decreasing"},
)
def loss_not_decreasing(
    ctx: RuleContext,
    *,
    mode: Mode = "train",
    num_steps: int | None = None,
    min_decrease_pct: float | None = 1.0,
    max_increase_pct: float | None = 5.0,
    smooth: bool = True,
    z: float = 1.0,
    patience: int = 2,
    converged_fraction: float | None = 0.5,
    rise_floor: float = 0.1,
) -> Iterator[Finding]:
    """The loss stops going down while still high (or goes up) from one check to the next.

    **Schedule** (SageMaker Debugger's LossNotDecreasing, identical in all its documents): keep
    the step ``e`` of the last check, starting at the first recorded step; at each recorded step
    ``s >= e + num_steps``, take ``prev``, the newest recorded step ``<= s - num_steps``, compare
    the loss level at ``s`` with the level at ``prev``, and set ``e = s``. Non-finite records
    are left out (DBG306 reports them). By default ``num_steps`` is a tenth of the steps the
    series spans, but at least 50 steps and 5 records' worth (5 times the median step
    interval): a fixed spacing that suits a 300-step run compares points whose true
    difference, late in a long run, is far below the noise.

    **Level**: with ``smooth`` (the default), the mean ``m`` of the records in the
    ``num_steps`` steps ending at the step, ``(s - num_steps, s]``, so consecutive checks
    compare adjacent, disjoint windows, with its standard error ``se = std / sqrt(n)`` (sample
    standard deviation of the window's ``n`` records; 0 for one record). Single minibatch
    losses are far too noisy to compare: near convergence they scatter over more than a
    factor of ten (from 0.0007 to 0.026 after step 150 on the healthy sample trace, where a
    record lies above the one 50 steps earlier 40 % of the time). Without ``smooth`` the
    level is the single record and ``se = 0``, as in SageMaker Debugger.

    **Comparison**, with ``change = (m(s) - m(prev)) / |m(prev)| * 100`` and its standard error
    ``se_change = sqrt(se(s)^2 + se(prev)^2) / |m(prev)| * 100`` (checks where ``m(prev) = 0``
    are skipped); for a loss that goes below zero, the range of the checks' levels takes the
    place of ``|m(prev)|``. A check fails when

    * it rose by ``max_increase_pct`` or more even allowing ``z`` standard errors in the
      loss's favour: ``change - z * se_change >= max_increase_pct`` (key ``increasing``), or
    * it did not fall by more than ``min_decrease_pct`` with ``z`` standard errors to spare:
      ``-change - z * se_change <= min_decrease_pct`` (key ``not-decreasing``); with 0 and
      ``z = 0`` this means "did not strictly decrease".

    So a rise must be certain, and so must a fall: a loss whose windows cannot show a
    decrease beyond the noise of its minibatches is not decreasing. A flat loss over noisy
    batches moves its window means by a few percent either way, which is more than the 1 %
    a plateau must stay under, so asking for certainty of a plateau (as this rule once did)
    left real plateaus unreported. Healthy runs stay quiet because they fall fast while their
    loss is high and converge below half their start, where a plateau is not judged (see
    below); ``patience = 2`` keeps a single flat stretch, such as a warmup starting from a
    learning rate of 0, from counting.

    The public SageMaker Debugger sources disagree on the sign of its ``diff_percent``: the
    documentation reads it as a minimum decrease, the 2019 unit tests as a minimum increase
    (they fire at a 40 % rise with ``diff_percent=20`` and, with the 2019 default 0, at an
    unchanged loss). Both readings are available here under unambiguous names: with
    ``num_steps=10, smooth=false, patience=1`` (their exact schedule), the tests'
    ``diff_percent=0`` is ``min_decrease_pct=0`` and their ``diff_percent=20`` is
    ``max_increase_pct=20`` (with ``min_decrease_pct=none``). ``max_increase_pct`` also stands
    in for the documented ``increase_threshold_percent`` (5 %), whose interplay with
    ``diff_percent`` is not public.

    **Convergence is not a stall.** A "fell too little" check counts only while the later
    level is above ``converged_fraction`` (one half) of the first finite loss (measured from
    the loss's floor: 0, or the mean entropy of recorded soft targets or of the targets of a
    label-smoothed cross-entropy, or for XGBoost's likelihood metrics the loss of predicting
    every label exactly, as DBG303 reads them, below which the loss does not fall; a
    likelihood metric whose labels are not recorded, or XGBoost's ``cox-nloglik``, whose
    floor no record gives, leaves plateaus unjudged; so does a linear booster, whose loss
    is convex in its weights and stops falling only at its model's optimum): a loss that
    has more than halved and then flattens has converged (or reached the floor that label
    smoothing, weight decay or the noise of the data set), which is what training is for; a
    plateau above half the starting loss is a run that stopped learning early. Except when
    the recorded learning rate has fallen below 1e-4 of its peak at the check: a flat loss
    there is starved, not converged, unless the model has fitted its data (the mean of the
    last training losses, or the held-out loss, at a tenth of its start, DBG101's bar), as a
    ``ReduceLROnPlateau`` cutting a converged run's rate finds it. A loss
    that goes below zero (a policy-gradient or surrogate objective, a likelihood without its
    constant) is no discrepancy that falls to 0: its changes are measured against the range
    its levels span, it is still high in the upper half of that range, and only where it is
    above zero is it judged (below, a surrogate's value has no fixed meaning: a policy
    gradient's rises towards zero as the policy sharpens). A plateau above that half that
    the loss leaves (a later check's level is below that half, or below 80 % of the
    plateau's, DBG303's bar for having learned, both measured from the floor) was a stage of
    training, such as a recurrent network that finds the signal after a few epochs at
    chance, or a language model's before its attention finds the context: its finding is a
    note (severity info) that says where the loss went. A rising loss is reported at any
    level, its rise measured against its level before or ``rise_floor`` (a tenth) of the
    first finite loss, whichever is larger (DBG305's floor): a converged loss near 0 doubles
    with the noise of one hard batch (a healthy LSTM's window mean went from 0.0019 to 0.0064,
    0.3 % of its start, on one batch of 0.18), while a run that gets worse in earnest climbs
    by a sizeable part of where it started. A run resumed
    from a checkpoint (run metadata ``resumed_from_step``, with no loss recorded before it),
    or one whose first training predictions already beat chance (a fine-tune of a trained
    classifier, a hook attached after some training), starts from a trained model: its
    starting loss is then that of an untrained classifier, ``ln C``, when the metadata,
    predictions or labels give the number of classes ``C``; without it, a resumed run's
    plateau is not judged.

    **A raised learning rate is no failure.** A rise is not counted when the recorded
    learning rate at the check is at least twice the lowest it was in the earlier window: a
    schedule raised it since the loss was at that level (SGDR's warm restarts, a cyclic
    schedule's climb, a warmup), and a higher rate raises the loss by design (the restarts
    are there to leave the minimum the loss had settled in). A loss that keeps rising once
    the rate stops climbing is reported by the checks after.

    Under early stopping on a loss whose optimum is known (as DBG302 reads it), a flat loss
    after the optimum is not judged, when the mean of the last 10 training losses up to the
    optimum had fallen below 80 % of the first (DBG303's bar): it is what early stopping's
    patience waits out before it stops the run. A loss that had not fallen by then never
    learned, and its optimum is a dip of the noise.

    A finding needs ``patience`` consecutive failing checks (so one bump, such as a loss spike
    the run recovers from, is not reported); runs of failing checks are merged into one
    finding per key, ``increasing`` for checks that rose by ``max_increase_pct`` or more,
    ``not-decreasing`` for the others. The value is, for the worst check, the decrease in %
    (``not-decreasing``) or the rise in % (``increasing``); ``extra["compared_with_step"]``
    is that check's ``prev``.

    Why it matters: a loss that does not go down means the model is not learning (any more);
    every further step costs compute and, on a CI gate, hides a broken configuration.

    Typical causes: a learning rate far too small or far too large, dead or saturated units,
    frozen parameters, a bug in the loss or the labels, data not shuffled, or simply
    convergence.

    Fix: check that the loss can overfit one small batch; tune the learning rate (a range
    test); check that gradients reach every layer (DBG1xx, DBG2xx); stop training or decay the
    learning rate once the loss has converged.

    Args:
        mode: Which loss to check: the training (``train``) or validation (``eval``) loss.
        num_steps: Steps between the two compared levels, and width of the smoothing window;
            by default (none) a tenth of the series' span, at least 50 steps and 5 records' worth.
        min_decrease_pct: A check fails when the loss fell by this percentage or less
            (0: unless it strictly decreased); none disables the check.
        max_increase_pct: A check fails when the loss rose by this percentage or more;
            none disables the check.
        smooth: Compare means over ``num_steps`` steps instead of single records.
        z: Standard errors of the change a rise, or a fall, must clear to count (0: compare
            as is).
        patience: Consecutive failing checks needed for a finding.
        converged_fraction: "Fell too little" counts only while the loss is above this
            fraction of its first value (none: at any level).
        rise_floor: A rise is measured against the level before it, but no less than this
            fraction of the initial loss.
    """
    _positive("DBG301", num_steps=num_steps, patience=patience)
    series = ctx.loss(mode)
    if series is None:
        return
    steps, values = _finite(series)
    if len(steps) < 2:
        return
    if num_steps is None:
        span = int(steps[-1] - steps[0])
        interval = max(int(np.median(np.diff(steps))), 1)
        num_steps = max(span // 10, 50, 5 * interval)
    sums, squares = _window_sums(values), _window_sums(values**2)

    def level(index: int) -> tuple[float, float]:
        """The level at record ``index`` and its standard error."""
        if not smooth:
            return float(values[index]), 0.0
        begin = int(np.searchsorted(steps, steps[index] - num_steps, side="right"))
        count = index + 1 - begin
        mean = (sums[index + 1] - sums[begin]) / count
        if count < 2:
            return float(mean), 0.0
        variance = max((squares[index + 1] - squares[begin] - count * mean**2) / (count - 1), 0.0)
        return float(mean), float(np.sqrt(variance / count))

    checked, compared, before, after, noise = [], [], [], [], []
    last_check = int(steps[0])
    for index, step in enumerate(steps):
        if step < last_check + num_steps:
            continue
        previous = int(np.searchsorted(steps, step - num_steps, side="right")) - 1
        last_check = int(step)
        (earlier, earlier_se), (later, later_se) = level(previous), level(index)
        checked.append(int(step))
        compared.append(int(steps[previous]))
        before.append(earlier)
        after.append(later)
        noise.append(float(np.hypot(earlier_se, later_se)))
    # A loss that stays above zero changes relative to its level (its distance from 0). One
    # that goes below (a policy-gradient or surrogate objective, a likelihood without its
    # constant) has no floor to measure from: its changes are measured against the range
    # its levels span.
    low, high = (min(*before, *after), max(*before, *after)) if checked else (0.0, 0.0)
    below_zero = low < 0
    scale = np.full(len(before), high - low) if below_zero else np.abs(np.array(before))
    kept = scale > 0
    if not kept.any():
        return
    checked = [step for step, keep in zip(checked, kept) if keep]
    compared = [step for step, keep in zip(compared, kept) if keep]
    levels_before, levels_after = np.array(before)[kept], np.array(after)[kept]
    change = (levels_after - levels_before) / scale[kept] * 100.0
    margin = z * np.array(noise)[kept] / scale[kept] * 100.0
    never = np.zeros(len(change), dtype=bool)
    initial = initial_loss(ctx, mode)
    # A converged loss near 0 doubles by the noise of a batch or two: a rise counts against
    # a tenth of the initial loss at least (DBG305's floor).
    least = 0.0 if initial is None or below_zero else rise_floor * abs(initial.value)
    rise = (levels_after - levels_before) / np.fmax(scale[kept], least) * 100.0
    rise_margin = z * np.array(noise)[kept] / np.fmax(scale[kept], least) * 100.0
    rose = rise - rise_margin >= max_increase_pct if max_increase_pct is not None else never
    flat = -change - margin <= min_decrease_pct if min_decrease_pct is not None else never
    # A schedule that raises the learning rate (a warm restart, a cyclic or warmup phase)
    # raises the loss by design: neither a rise nor a fall too small to see is a failure.
    compared_at = np.array(compared)
    raised = lr_raised(ctx, compared_at - num_steps, compared_at, np.array(checked))
    rose &= ~raised
    flat &= ~(raised & (change > 0))
    if below_zero:
        # Below zero a loss has no fixed meaning: a surrogate objective's (a policy
        # gradient's) rises towards zero as the policy sharpens. Above it, it is judged.
        rose &= levels_after > 0
        flat &= levels_after > 0
    converged_at = None
    floor = 0.0
    if converged_fraction is not None:
        if initial is None or _unknown_floor(ctx) is not None or linear_booster(ctx):
            # A resumed run, or a floor the trace does not give: convergence cannot be told
            # from a stall. A convex loss stops falling at its optimum only.
            flat[:] = False
        else:
            # Converged: down to the fraction of the way from the start to the floor. Below
            # zero the way is the loss's own range; otherwise the floor is 0, or the entropy
            # of soft or smoothed targets, below which no cross-entropy against them falls.
            floor = low if below_zero else _floor_value(ctx)
            way = high - low if below_zero else initial.value - floor
            if way > 0:
                # Starved, unless fitted: a plateau scheduler cuts a converged run's rate.
                checks = np.array(checked)
                fitted = converged(ctx, checks, FITTED, latest=False)
                starved = lr_below(ctx, checks, STARVED_LR) & ~fitted
                converged_at = levels_after - floor <= converged_fraction * way
                flat &= ~converged_at | starved
    best = _learned_optimum(ctx)
    if best is not None:
        # Past the optimum early stopping watches for, a flat loss is what its patience waits
        # out before it stops the run.
        flat &= np.array(checked) <= best
    failing = sustained(rose | flat, patience)
    what = f"{'mean ' if smooth else ''}{mode} loss"
    for episode in episodes(failing):
        span_of = slice(episode.first, episode.last + 1)
        increasing = bool(rose[span_of].any())
        measured, doubt = (rise, rise_margin) if increasing else (change, margin)
        worst = episode.first + int(np.argmax(measured[span_of]))
        a, b, pct = levels_before[worst], levels_after[worst], float(measured[worst])
        moved = (
            f"{'rose' if pct > 0 else 'fell only'} {abs(pct):.3g}% (± {doubt[worst]:.2g}) over "
            f"{num_steps} steps ({a:.4g} -> {b:.4g}"
        )
        if increasing and initial is not None and least > abs(a):
            moved += f"; measured against {rise_floor:g} of {initial.name}"
        if below_zero:
            moved += f", of its range {low:.4g} to {high:.4g}"
        if increasing:
            message = f"{what} {moved}; a rise of {max_increase_pct:g}% or more fails)"
            threshold, value = max_increase_pct, pct
        else:
            message = f"{what} {moved}; must fall more than {min_decrease_pct:g}%)"
            threshold, value = min_decrease_pct, -pct
        # A plateau above the converged level that a later check finds below it, or a fifth
        # below the plateau (DBG303's bar for having learned): a stage of training, such as a
        # language model's before its attention finds the context. One that counts because
        # the learning rate starved below that level is no such plateau.
        left = None
        if not increasing and converged_at is not None and not converged_at[span_of].any():
            plateau = levels_after[episode.last] - floor
            later = converged_at | (levels_after - floor <= LEARNED * plateau)
            left = np.flatnonzero(later[episode.last + 1 :])
        if left is not None and len(left):
            # The plateau ended: the loss went on down, so the run did learn.
            at = episode.last + 1 + int(left[0])
            message += (
                f"; a plateau the loss left: it fell to {levels_after[at]:.4g} by step "
                f"{checked[at]}"
            )
        yield Finding(
            message=message,
            severity=Severity.info if left is not None and len(left) else None,
            tensor=(ctx.loss_tag(mode) or "loss"),
            first_step=checked[episode.first],
            last_step=checked[episode.last],
            steps=episode.count,
            value=value,
            threshold=threshold,
            mode=mode,
            key="increasing" if increasing else "not-decreasing",
            extra={"compared_with_step": compared[worst], "num_steps": num_steps},
        )


def _mean_and_error(
    count: np.ndarray, total: np.ndarray, squares: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Means and their standard errors ``std / sqrt(n)`` (0 below two records), from sums."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        variance = np.maximum(squares - count * mean**2, 0.0) / np.maximum(count - 1, 1)
        error = np.where(count > 1, np.sqrt(variance / count), 0.0)
    return mean, error


@dataclass(frozen=True)
class _Evaluations:
    """Per evaluation: its step, its mean eval loss, and the sums over its train window."""

    steps: np.ndarray
    val: np.ndarray
    train_records: np.ndarray
    train_sum: np.ndarray
    train_squares: np.ndarray

    def train(self, windows: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Mean train loss over each evaluation's last ``windows`` train windows, and its error."""
        return _mean_and_error(
            _trailing_sum(self.train_records, windows),
            _trailing_sum(self.train_sum, windows),
            _trailing_sum(self.train_squares, windows),
        )

    def train_between(self, evaluations: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean train loss, and its error, over the train windows between the first and the
        last of each evaluation's last ``evaluations`` evaluations: the model's states that
        those evaluations bracket. The first evaluation brackets none and keeps its own
        window; past it, the first window is left out, since it starts from the untrained
        model, which no evaluation saw."""
        windows = max(evaluations - 1, 1)
        sums = []
        for per_window in (self.train_records, self.train_sum, self.train_squares):
            later = per_window.copy()
            later[1:] = _trailing_sum(np.r_[0.0, per_window[1:]], windows)[1:]
            sums.append(later)
        return _mean_and_error(*sums)


def _evaluations(train: Series, evals: Series) -> _Evaluations:
    """Pair every evaluation with the training records since the previous one.

    An evaluation is a maximal group of finite eval records with no finite train record
    between them (usually the one record at the evaluation's step); its step is its first
    record's. Its train window is the finite train records at steps in ``(previous
    evaluation's step, this step]`` (from the start for the first evaluation). Evaluations
    with an empty train window are dropped.
    """
    train_steps, train_values = _finite(train)
    eval_steps, eval_values = _finite(evals)
    train_seen = np.searchsorted(train_steps, eval_steps, side="right")
    groups, first = np.unique(train_seen, return_index=True)
    ends = np.append(first[1:], len(eval_steps))[: len(first)].astype(np.int64)
    eval_sums = _window_sums(eval_values)
    val = (eval_sums[ends] - eval_sums[first]) / np.maximum(ends - first, 1)
    window_begin = np.concatenate(([0], groups[:-1]))[: len(groups)].astype(np.int64)
    sums, squares = _window_sums(train_values), _window_sums(train_values**2)
    keep = groups > window_begin
    groups, window_begin = groups[keep], window_begin[keep]
    return _Evaluations(
        steps=eval_steps[first][keep],
        val=val[keep],
        train_records=(groups - window_begin).astype(np.float64),
        train_sum=sums[groups] - sums[window_begin],
        train_squares=squares[groups] - squares[window_begin],
    )


@rule(
    "DBG302",
    "overfit",
    severity="warning",
    category="loss",
    requires=(TRAIN_LOSS, EVAL_LOSS),
    label={
        "closed": "held-out loss above the train loss for a while",
        "from-start": "held-out loss apart from the start",
        "*": "overfitting",
    },
    # Overfitting and overtraining are one problem seen from two sides (the gap, and the
    # validation loss stalling while the training loss falls): whichever shows first names it.
    # A gap the run closed again is no overfitting, and explains nothing.
    explains={"closed": (), "*": ("DBG304",)},
)
def overfit(
    ctx: RuleContext,
    *,
    start_step: int = 0,
    patience: int = 2,
    ratio_threshold: float = 0.1,
    min_gap_fraction: float = 0.5,
    z: float = 1.0,
) -> Iterator[Finding]:
    """The validation loss sits well above the training loss: the model fits the training data only.

    At every evaluation (SageMaker Debugger's Overfit, with the averaging windows it leaves
    open made explicit):

    * ``mean_val``: the mean of the evaluation's eval loss records (usually one);
    * ``mean_train``: the mean of the train loss records since the previous evaluation, at
      steps ``(previous evaluation, this evaluation]``, i.e. the training loss over the same
      stretch of training (from the start for the first evaluation);
    * with ``gap = mean_val - mean_train - z * se`` (``se`` the standard error of
      ``mean_train``, its records' standard deviation over the square root of their number),
      the evaluation violates if ``gap / |mean_train| > ratio_threshold`` **and**
      ``gap > min_gap_fraction * |L0|``, with ``L0`` the first finite train loss (the
      untrained model's loss sets the scale of the problem).

    Two additions to SageMaker Debugger. The absolute floor, half the initial loss: as a healthy
    model converges its training loss approaches 0, and the relative gap of two tiny losses
    (0.007 against 0.003 on the healthy sample trace, a 130 % "gap") says nothing about
    generalisation; gradient-boosted trees drive the training loss far below the validation loss
    while the validation loss still improves (0.16 against 0.36 after 60 rounds of a healthy
    XGBoost run on noisy labels, a gap of a third of its initial 0.65). The gap is a problem
    when it eats a large part of what the model can gain at all: with ``L0`` about the loss of
    an untrained model, a gap of more than half of it means the held-out performance is nowhere
    near the training performance (the overfitting runs of the calibration corpus reach gaps of
    1.2 to 1.5 times ``L0``). A run that starts trained (resumed from a checkpoint: run
    metadata ``resumed_from_step``, no loss recorded before it; or one whose first training
    predictions beat chance, a fine-tune of a trained classifier) has ``L0 = ln C``, an
    untrained classifier's loss, when the number of classes ``C`` is known from the
    metadata, predictions or labels; without it a resumed run is skipped. The standard error: the
    mean of 25 minibatch losses wanders by several percent, so a healthy run with a true 5 % gap
    and small batches crosses 10 % now and then (a simulated run of the tests with batches of 8
    does with ``z = 0``).

    Records with a non-finite loss are left out (DBG306); evaluations at steps below
    ``start_step``, and any at or before the first training record (the untrained model), are
    not judged; nor, under early stopping on a loss whose optimum is known (run metadata
    ``early_stopping`` with ``best_step``, see DBG304; without it, when its ``monitor`` names
    a loss, the step of that loss's least value), any after that step: the gap that
    opens while early stopping waits out its patience is what it is there to cut off, and
    the optimum's model is the one to keep (restored from its checkpoint). A finding needs
    ``patience`` consecutive violating evaluations (SageMaker Debugger's default is 1; 2
    keeps a single evaluation right after a loss spike, or right after a diverging first
    update, from passing for overfitting). One finding per run of violating evaluations; the
    value is the largest relative gap as observed (without the ``z`` allowance).

    A gap the run closed is a note (key ``closed``, severity info): when the last judged
    evaluation comes after the violating ones, is within the bounds, and its eval loss is
    below that of every violating evaluation. Overfitting grows with training, and does not
    undo itself while training goes on; an eval loss that jumps far above a smooth training
    loss and comes back is the model computing differently in eval mode (batch norm's
    running statistics, which eval mode uses, lagging behind weights that change fast under
    a high learning rate or momentum) or an evaluation too small to be steady. A train loss
    that rose (a warm restart) does not close a gap: the eval loss must come down.

    A gap there from the start is reported under key ``from-start``: when an evaluation
    (from ``start_step`` on, the untrained model's included) violates while the mean train
    loss beside it is still at least 80 % of ``L0`` (DBG303's bar for a loss that has not
    fallen), in a run whose mean train loss between evaluations never rose above ``L0 / 0.8``
    (one that did is going wrong: a learning rate that diverges or makes the loss swing,
    gradients that pile up). A model that has not fit its training data fits it no better
    than held-out data, so such a gap is no overfitting: the losses are on different scales (a loss
    summed over the batch, with held-out batches of another size; a penalty added to one of
    them) or the held-out data are drawn differently from the training data.

    Why it matters: a model that overfits memorises its training set; its validation (and
    production) error stops improving and then gets worse while the training loss still falls.

    Typical causes: a model too large for the data, too little data or augmentation, too
    little regularisation (weight decay, dropout), training too long, or a validation set
    drawn from another distribution (or leaking the other way).

    Fix: more data or augmentation, weight decay or dropout, a smaller model, early stopping
    on the validation loss; check that training and validation data are split the same way,
    and, for a gap there from the start, that both losses are averaged alike (a mean over
    samples, not a sum over batches of different sizes).

    Args:
        start_step: Evaluations at earlier steps are not judged.
        patience: Consecutive violating evaluations needed for a finding.
        ratio_threshold: Relative excess of the validation over the training loss that violates.
        min_gap_fraction: The absolute excess must also exceed this fraction of the initial
            training loss.
        z: Standard errors of the train mean allowed in the run's favour (0: compare as is).
    """
    _positive("DBG302", patience=patience)
    train, evals = ctx.loss("train"), ctx.loss("eval")
    initial = initial_loss(ctx)
    if train is None or evals is None:
        return
    if initial is None:
        resumed = resumed_without_start(ctx)
        if resumed is not None:
            raise RuleSkipped(
                f"the run resumed at step {resumed}, so its first loss is a trained model's, "
                "and the number of classes that would give an untrained one's (ln C) is not "
                "in the metadata, predictions or labels"
            )
        return
    evaluation = _evaluations(train, evals)
    mean_train, error = evaluation.train()
    gap = evaluation.val - mean_train
    sure_gap = gap - z * error
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = gap / np.abs(mean_train)
        sure_ratio = sure_gap / np.abs(mean_train)
    min_gap = min_gap_fraction * abs(initial.value)
    # An evaluation before any training step says nothing about generalisation.
    trained = evaluation.steps > _finite(train)[0][0]
    best = _early_stopping_best(ctx)
    judged = (
        trained
        & (evaluation.steps >= start_step)
        & (evaluation.steps <= (np.inf if best is None else best))
    )
    apart = judged & (sure_ratio > ratio_threshold) & (sure_gap > min_gap)
    violating = sustained(apart & np.isfinite(sure_ratio), patience)
    # A model that has not yet fit its training data fits it no better than held-out data;
    # in a run whose train loss rose above its start the model is going wrong instead.
    sane = len(mean_train) > 0 and np.nanmax(mean_train) <= abs(initial.value) / LEARNED
    unfitted = (
        (evaluation.steps >= start_step) & (mean_train >= LEARNED * abs(initial.value)) & sane
    )
    from_start = np.flatnonzero(
        unfitted & (sure_ratio > ratio_threshold) & (sure_gap > min_gap) & np.isfinite(sure_ratio)
    )

    def message(first: int, last: int) -> str:
        worst = first + int(np.nanargmax(ratio[first : last + 1]))
        # A train loss near zero makes any gap thousands of percent: say "times" instead.
        above = f"{ratio[worst]:.0%} above" if ratio[worst] < 10 else f"{ratio[worst] + 1:.3g}x"
        return (
            f"eval loss {evaluation.val[worst]:.4g} is {above} the train loss "
            f"{mean_train[worst]:.4g} ± {z * error[worst]:.2g}: a gap of {gap[worst]:.3g} "
            f"(> {min_gap:.3g}, {min_gap_fraction:g} of {initial.name}, and > "
            f"{ratio_threshold:.0%})"
        )

    for finding in episode_findings(
        tensor=(ctx.loss_tag("eval") or "loss"),
        steps=evaluation.steps,
        values=ratio,
        violating=violating,
        threshold=ratio_threshold,
        key="gap",
        message=lambda e, v: message(e.first, e.last),
    ):
        hits, last = np.flatnonzero(violating), np.flatnonzero(judged)[-1]
        if (
            last > hits[-1]
            and not apart[last]
            and evaluation.val[last] < evaluation.val[hits].min()
        ):
            finding = replace(
                finding,
                severity=Severity.info,
                key="closed",
                message=(
                    f"{finding.message}; a gap the run closed: by step {evaluation.steps[last]} "
                    f"the eval loss was down to {evaluation.val[last]:.4g}, against the train "
                    f"loss {mean_train[last]:.4g}"
                ),
            )
        elif len(from_start):
            early = from_start[0]
            finding = replace(
                finding,
                key="from-start",
                message=(
                    f"{finding.message}; the gap was there at step {evaluation.steps[early]} "
                    f"(eval {evaluation.val[early]:.4g}, train {mean_train[early]:.4g}), while "
                    f"the train loss was still {mean_train[early] / abs(initial.value):.0%} of "
                    f"{initial.name}: no model overfits data it has not yet fit, so the two "
                    "losses are not on one scale (one summed over batches of another size, a "
                    "term in one only) or the held-out data are not drawn like the training "
                    "data"
                ),
            )
        yield finding


def _floor_value(ctx: RuleContext) -> float:
    """The training loss's floor (:func:`loss_floor`), 0 without one."""
    floor = loss_floor(ctx)
    return floor.value if floor is not None else 0.0


def _unknown_floor(ctx: RuleContext) -> str | None:
    """Why the training loss has a floor above zero that the trace does not give, or None.

    XGBoost's ``cox-nloglik``, the negative log partial likelihood of a proportional-hazards
    model (Cox 1972), compares each event's risk with the risks of those still at risk: it
    starts at the loss of equal risks, the mean log size of the risk sets, and reaches 0 only
    for a ranking by infinite margins; between the two, the noise of the survival times
    decides how far even the true risk function gets (4 % below equal risks in simulated
    data where a boosted model reaches a C-index of 0.72), which no record gives.

    Or the loss is one of XGBoost's likelihood metrics that keep terms of the labels alone,
    and the recorded training labels do not give the loss of predicting them exactly."""
    partial = loss_metric(ctx, ("cox-nloglik",))
    if partial is not None:
        return (
            f"the training loss is {partial}, a partial likelihood that falls from the loss "
            "of equal risks as far as the noise of the survival times lets a ranking go, a "
            "floor no record gives"
        )
    metric = loss_metric(ctx)
    if metric is None or loss_floor(ctx) is not None:
        return None
    return (
        f"the training loss is {metric}, whose floor (the loss of predicting every label "
        "exactly) depends on the training labels, which are not recorded in full: record them "
        "(the XGBoost callback's data=dtrain)"
    )


def _high_floor(
    steps: np.ndarray,
    smoothed: np.ndarray,
    floor: LossFloor,
    initial: float,
    reference: str,
    tag: str,
) -> Finding:
    """The note that the loss's floor sits close to its start: the loss cannot fall far,
    whatever the model learns."""
    return Finding(
        message=(
            f"the training loss cannot fall far: its floor is {floor.reason}, "
            f"{floor.value / initial:.0%} of {reference}; the mean of the last records is "
            f"{smoothed[-1]:.4g}"
        ),
        tensor=tag,
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
        value=floor.value / initial,
        key="high-floor",
        severity=Severity.info,
    )


@rule(
    "DBG303",
    "underfit",
    severity="warning",
    category="loss",
    requires=TRAIN_LOSS,
    # The labels' class frequencies set the loss of a model that learned nothing.
    plan=plan_class_ids,
    label={
        "high-floor": "loss floor close to its start",
        "held-out-at-chance": "nothing learned that generalises",
        "*": "underfitting",
    },
    # A model that has not learned confuses the classes it predicts.
    explains={
        "high-floor": (),
        # What the model fits of its training data is memorised: the gap is no overfitting
        # to cure with regularisation.
        "held-out-at-chance": (
            "DBG301:not-decreasing",
            "DBG302",
            "DBG304",
            "DBG604",
            "DBG601:mispredicted",
        ),
        "*": ("DBG301:not-decreasing", "DBG604", "DBG601:mispredicted"),
    },
    # What makes a model fail to fit its training data does not make it fit them and fail on
    # held-out data: rules name this key to explain it.
    named_only=("held-out-at-chance",),
)
def underfit(
    ctx: RuleContext,
    *,
    max_loss_fraction: float = 0.8,
    chance_fraction: float = 0.9,
    chance_margin: float = 0.05,
    min_steps: int = 100,
    window: int = 50,
    min_accuracy: float | None = None,
) -> Iterator[Finding]:
    """The training loss stays high (or the accuracy at chance) until the end of the run.

    SageMaker Debugger lists underfitting as a problem class but has no rule for it; these are
    the criteria chosen here, judged on the finite records of the training series, each
    smoothed by the trailing mean of its last ``window`` records:

    * **loss against its start** (key ``loss-high``): the mean stays above
      ``max_loss_fraction`` times the initial loss ``L0`` (the first finite train loss, a
      positive number) through the end of the run: the loss has not even fallen by 20 %. For
      a run that starts trained (resumed from a checkpoint: run metadata
      ``resumed_from_step``, no loss recorded before it; or one whose first training
      predictions beat chance) ``L0`` is ``ln C`` when the number of classes is known from
      the metadata, predictions or labels; without it a resumed run is not checked. When the
      recorded data give the loss a floor above zero (:func:`loss_floor`: soft targets'
      entropy, or the smoothed targets' of a label-smoothed cross-entropy, read from the
      loss and the logits; for XGBoost's ``poisson-nloglik``, which keeps ``ln y!``, and its
      ``gamma-nloglik`` and ``tweedie-nloglik``, the loss of predicting every label exactly,
      about 0.8 for counts of mean 1), the fall is measured on the way from ``L0`` down to
      that floor (a run whose loss is one of those XGBoost metrics, with no training labels
      in full to give it, is skipped, as is one whose loss is ``cox-nloglik``: a partial
      likelihood falls from the loss of equal risks only as far as the noise of the
      survival times lets a ranking go, a few percent for the true risk function);
      a floor itself above ``max_loss_fraction`` of ``L0`` (label smoothing 0.9: the loss
      cannot fall 3 %) is a note (key ``high-floor``), and leaves the loss against chance
      unjudged when it sits within ``chance_fraction`` of ``ln C``. So is a loss that stays
      high while the model fits its training data beyond what generalises: DBG304 finds it
      overtraining to the last evaluation (its own test and defaults). A model that overfits
      has the capacity to fit its data; on data of little signal (clicks, churn, returns, 60 %
      of labels random) even the true function scores 90 % of the constant guess's loss, and
      what holds the loss up is the data's noise, which a larger model or a learning-rate
      range test does not cure.
    * **loss against chance** (key ``at-chance``): when the number of classes ``C`` is known and
      the loss is on the scale of a cross-entropy (``L0 >= ln C / 2``), the mean stays within a
      factor ``chance_fraction`` of ``ln C`` either way (from 0.9 to 1.11 times it) through the
      end: ``ln C`` is the cross-entropy of a model that predicts every class with probability
      ``1/C``, so ending there means the model learned nothing, however unlucky its start was (a
      start at 0.94 that ends at ln 2 = 0.69 has fallen 26 % and is still at chance). With at
      least 500 training labels in full tensors, chance starts at the entropy ``H = -sum(p ln
      p)`` of their class frequencies ``p`` (``ln C`` when balanced): a model that learns only
      how often each class occurs, as one whose labels were shuffled apart from their inputs
      does, ends there (0.50 for 20 % positives, 72 % of ln 2); the band then runs from
      ``chance_fraction × H`` to ``ln C / chance_fraction``, from predicting the frequencies to
      guessing uniformly. Not when the run weighs its classes (metadata ``class_weighting``),
      whose loss that learned nothing sits elsewhere. A loss that ends above the band is worse
      than guessing when it started within a factor 2 of ``ln C``, a mean cross-entropy's
      scale (large first logits start it above ``ln C``: a run at a rate far too low that ends
      on its way down, still above ``ln C``, learned nothing usable), and counts as at chance,
      unless it was below the band before (it learned, then diverged: DBG301 and DBG503
      report that); one that started far above is not a softmax over ``C`` classes (a VAE's
      summed reconstruction loss, a contrastive loss over a batch, whose width the last
      weight matrix does not give), which the loss-high check judges.
    * **accuracy against chance** (key ``at-chance``): with ``C`` known and an accuracy series
      (training, else validation), the mean stays at or below ``1/C + chance_margin`` through
      the end.
    * **held-out accuracy against chance** (key ``held-out-at-chance``): with ``C`` known and
      both accuracy series, the validation accuracy's mean stays at or below ``1/C +
      chance_margin`` through the end while the training accuracy's does not: the model
      learned nothing that carries to data it has not seen, and what it fits of its training
      data it memorised, as a large model fits labels shuffled apart from their inputs
      (Zhang et al. 2017). The gap between the two losses then is no overfitting that
      regularisation would cure; the labels, or the pairing of inputs and labels, are. The
      finding starts where the training accuracy's mean over a whole trailing window rose
      above that level. Without a training accuracy, a training loss that ends below the
      chance band (under ``chance_fraction`` of the labels' entropy) shows the fit, from
      where it fell below for good.
    * **held-out loss against chance** (key ``held-out-at-chance``, with ``C`` known and no
      validation accuracy): the training loss ends below the chance band as above, while the
      validation loss never beat chance at any evaluation: its lowest value stays at or above
      the held-out chance less the margin the accuracy checks allow. The held-out chance is
      the lowest held-out loss of a model that learned nothing from its inputs
      (:func:`dbgcli.rules.data.held_out_chance`): ``ln C``, or the cross-entropy of the
      training labels' class frequencies against the validation labels' where both are
      recorded (500 of each in full tensors) and that is lower; not the validation labels'
      own entropy, which such a model never saw. A run that weighs its classes is judged
      against ``ln C``, and not at all beside XGBoost's ``scale_pos_weight``, which no
      evaluation metric weighs. The margin is the cross-entropy of
      calibrated predictions right ``1/C + chance_margin`` of the time, the rest spread
      evenly, over ``ln C`` (99.5 % for five classes, 99.3 % for two). The validation loss
      must have been measured at least twice up to the step where the training loss fell
      below the band (at the start and on the way down), and once more since, so that it was
      watched while the model learned (a model that generalises beats chance on the way
      down, before an overconfident one rises above it); its first value must lie within a
      factor 2 of ``ln C``, on a mean cross-entropy's scale (a summed validation loss is
      not); and where validation labels and predictions are kept in full at a step with a
      validation loss, the loss must be their cross-entropy at one such step at least (a
      multi-task sum, a classification loss plus a regression's, is not). The finding dates
      from the first evaluation after the first training step: from there on, nothing the
      model learned carried to the held-out data.
    * **held-out AUC against chance** (key ``held-out-at-chance``, without a validation
      accuracy): a series named as a ROC AUC (XGBoost's ``auc``, ``eval_roc_auc``; not the
      precision-recall curve's ``aucpr`` or ``pr_auc``, whose chance level is the positives'
      share) whose validation records' mean stays at or below ``0.5 + chance_margin`` (far
      below 0.5 it ranks inverted, labels coded the other way round) through the end,
      from where the model fits its training data: its training loss fell below the chance
      band as above, or its training AUC's mean rose above that level. An AUC of 0.5 ranks
      at random whatever the classes' shares and however every score is shifted (XGBoost's
      ``scale_pos_weight`` shifts them, and leaves the held-out loss unjudged as above).
    * **accuracy not improving** (key ``accuracy-flat``): with ``C`` unknown and a training
      accuracy series, the mean stays less than ``chance_margin`` above its first value and
      at or below 0.6 (AutoTrainer's not-converged gate Θ = 0.6; its slow-convergence test
      asks for more than 0.01 per epoch).
    * **accuracy below a floor** (key ``accuracy-low``, only with ``min_accuracy`` set): the
      mean stays below ``min_accuracy`` through the end.

    ``C`` comes from the run metadata (``num_classes``, ``num_labels`` or ``n_classes``, at
    the top level or among the hyperparameters), else from the recorded predictions (the
    width of their class axis) or labels (the largest class id plus one), else from the
    model's output layer: the last weight matrix recorded, read as ``(outputs, inputs)`` as
    PyTorch stores it (the hooks record parameters in model order). The chance checks on the
    loss also need the loss on a cross-entropy scale (``L0 >= ln C / 2``), which keeps a
    regression head or another layout from passing for a classifier.

    The trailing window is cut to a quarter of the records when the series holds fewer than
    ``4 * window``. A run is judged only when its records span at least ``min_steps`` steps,
    the first and the last included (a run needs time to learn; 100 boosting rounds, steps 0
    to 99, are 100); one finding per key, for the stretch of bad
    records that lasts until the last record, starting where the curve was last on the good
    side (from the first record if it never was). The value is the final mean divided by
    ``L0`` (``loss-high``), by ``H`` or ``ln C`` (``at-chance`` on the loss), or the final
    mean accuracy; for the held-out loss, its lowest value divided by the held-out chance.

    Known false positive: fine-tuning from a well-trained checkpoint starts with a low loss
    that legitimately falls little; raise ``max_loss_fraction`` or ignore the rule there
    (resuming the same training from a checkpoint is told apart by ``resumed_from_step``).

    Why it matters: a model that cannot fit even its training data is learning nothing useful;
    more steps rarely help.

    Typical causes: a learning rate far too small (or so large the loss bounces at its starting
    level), dead ReLUs or saturated units, a model too small or too constrained (too much
    regularisation), features that do not carry the signal, labels shuffled apart from their
    inputs.

    Fix: run a learning-rate range test; check the activation and gradient rules; overfit one
    small batch first; enlarge the model or reduce regularisation; check the data pipeline,
    and that each label stays paired with its input.

    Fix (key ``held-out-at-chance``): check that each label stays paired with its input (a
    shuffle, sort or filter applied to the inputs and not to the labels), and that the
    held-out data are labelled and prepared like the training data (the same label coding,
    normalisation and tokenizer); labels that carry nothing of the inputs are memorised, not
    learned, however the model is regularised.

    Fix (key ``high-floor``): nothing in the model: judge the run by how far the loss came
    towards its floor, or lower the label smoothing or soften the targets less.

    Args:
        max_loss_fraction: The smoothed train loss must fall below this fraction of its initial
            value.
        chance_fraction: The smoothed train loss must fall below this fraction of ln C (or
            stay above ln C divided by it).
        chance_margin: The smoothed accuracy must rise more than this above chance (1/C), or
            above its first value when C is unknown.
        min_steps: Steps the records must span, first and last included, before the run is
            judged.
        window: Records in the trailing mean.
        min_accuracy: The smoothed train accuracy must reach this level; none disables the
            check.
    """
    _positive("DBG303", window=window)
    train = ctx.loss("train")
    if train is None:
        return
    unknown = _unknown_floor(ctx)
    if unknown is not None:
        raise RuleSkipped(unknown)
    tag = ctx.loss_tag("train") or "loss"
    classes = class_count(ctx)
    steps, values = _finite(train)
    initial = initial_loss(ctx)
    # Where the training loss fell below chance for good: the model fits its training labels.
    fitted_from: int | None = None
    held_out_accuracy = ctx.accuracy("eval") is not None
    if len(values) and values[0] > 0 and steps[-1] - steps[0] + 1 >= min_steps:
        span = _records_for(window, len(values))
        smoothed = _trailing_mean(values, span)
        floor = loss_floor(ctx)
        if initial is not None and initial.value > 0:
            reference = initial.name
            # The way down is from the start to the floor: smoothed or soft targets' entropy,
            # which no cross-entropy against them goes below.
            base = floor.value if floor is not None and floor.value < initial.value else 0.0
            way = (smoothed - base) / (initial.value - base)
            towards = f" to its floor {base:.4g}" if base else ""
            beyond = _overtrained_to_the_end(ctx)
            for finding in _stuck_until_end(
                steps,
                way,
                way > max_loss_fraction,
                tensor=tag,
                threshold=max_loss_fraction,
                key="loss-high",
                message=lambda v: (
                    f"mean train loss of the {_last_records(span)} is still {v:.0%} of the "
                    f"way down from {reference}{towards} (must fall below "
                    f"{max_loss_fraction:.0%})"
                    if base
                    else f"mean train loss of the {_last_records(span)} is still {v:.0%} of "
                    f"{reference} (must fall below {max_loss_fraction:.0%})"
                ),
            ):
                # A model that fits its training data beyond what generalises has the
                # capacity to fit them: the data's noise holds its loss up.
                yield (
                    finding
                    if beyond is None
                    else replace(
                        finding,
                        message=f"{finding.message}; but {beyond}: the noise of the data, "
                        "not the model, holds the loss up",
                        key="high-floor",
                        severity=Severity.info,
                    )
                )
            if floor is not None and floor.value > max_loss_fraction * initial.value:
                yield _high_floor(steps, smoothed, floor, initial.value, reference, tag)
        chance = chance_loss(ctx, classes)
        # The first record says whether the loss is on a cross-entropy's scale; a floor at
        # chance's level leaves the loss nothing to tell chance by.
        if (
            chance is not None
            and values[0] >= chance.high / 2
            and (floor is None or floor.value < chance_fraction * chance.low)
        ):
            below = smoothed < chance_fraction * chance.low
            if below[-1]:
                fitted_from = int(steps[np.flatnonzero(~below)[-1] + 1 if (~below).any() else 0])
            # Above the band is worse than guessing, for a mean cross-entropy: one that
            # started within a factor 2 of guessing's (a summed loss starts far above it)
            # and never fell below the band (one that did learned, and then diverged).
            worse = values[0] <= 2 * chance.high and not below.any()
            yield from _stuck_until_end(
                steps,
                smoothed / chance.low,
                chance.not_below(smoothed, chance_fraction)
                if worse
                else chance.holds(smoothed, chance_fraction),
                tensor=tag,
                threshold=chance_fraction,
                key="at-chance",
                message=lambda v: (
                    f"mean train loss of the {_last_records(span)} is {v * chance.low:.3g}, "
                    + ("at" if v * chance.low <= chance.high / chance_fraction else "worse than")
                    + f" chance: {chance.text} (must fall below "
                    f"{chance_fraction * chance.low:.3g}, {chance_fraction:.0%} of "
                    f"{chance.low:.3g})"
                ),
            )
            if fitted_from is not None and classes and classes > 1 and not held_out_accuracy:
                yield from _held_out_loss_at_chance(
                    ctx,
                    classes,
                    # Chance less the accuracy margin's worth of cross-entropy.
                    _margin_fraction(classes, chance_margin),
                    int(steps[0]),
                    (fitted_from, chance_fraction * chance.low),
                    float(smoothed[-1]),
                )
    if not held_out_accuracy:
        yield from _held_out_auc_at_chance(ctx, window, chance_margin, min_steps, fitted_from)
    accuracy = ctx.accuracy("train")
    acc_mode: Mode = "train"
    if accuracy is None:
        accuracy, acc_mode = ctx.accuracy("eval"), "eval"
    if accuracy is None:
        return
    steps, values = _finite(accuracy)
    if not len(values) or steps[-1] - steps[0] + 1 < min_steps:
        return
    span = _records_for(window, len(values))
    smoothed = _trailing_mean(values, span)
    acc_tag = ctx.accuracy_tag(acc_mode) or "accuracy"
    if classes and acc_mode == "eval" and fitted_from is not None:
        level = 1.0 / classes + chance_margin
        fitted = "the training loss fell below chance"
        yield from _held_out_at_chance(
            accuracy,
            ctx.accuracy_tag("eval") or "accuracy",
            "accuracy",
            level,
            window,
            fitted_from,
            fitted,
            lambda v: f"at chance for {classes} classes",
        )
    elif classes:
        level = 1.0 / classes + chance_margin
        at_chance = list(
            _stuck_until_end(
                steps,
                smoothed,
                smoothed <= level,
                tensor=acc_tag,
                threshold=level,
                key="at-chance",
                mode=acc_mode,
                message=lambda v: (
                    f"mean {acc_mode} accuracy of the {_last_records(span)} is {v:.3g}, at "
                    f"chance for {classes} classes (must rise above {level:.3g})"
                ),
            )
        )
        yield from at_chance
        held_out = ctx.accuracy("eval") if acc_mode == "train" else None
        if held_out is not None and not at_chance:
            # Memorising shows from where the training accuracy left chance, its mean taken
            # over a whole window.
            whole = np.arange(len(smoothed)) >= span - 1
            rose = int(steps[np.argmax(whole & (smoothed > level))])
            fitted = "the training accuracy is above it"
            yield from _held_out_at_chance(
                held_out,
                ctx.accuracy_tag("eval") or "accuracy",
                "accuracy",
                level,
                window,
                rose,
                fitted,
                lambda v: f"at chance for {classes} classes",
            )
    else:
        start = float(smoothed[min(len(smoothed), span) - 1])
        flat = (smoothed - start < chance_margin) & (smoothed <= _NOT_CONVERGED_ACCURACY)
        yield from _stuck_until_end(
            steps,
            smoothed,
            flat,
            tensor=acc_tag,
            threshold=start + chance_margin,
            key="accuracy-flat",
            mode=acc_mode,
            message=lambda v: (
                f"mean {acc_mode} accuracy of the {_last_records(span)} is {v:.3g}, less than "
                f"{chance_margin:g} above where it started ({start:.3g})"
            ),
        )
    if min_accuracy is not None:
        yield from _stuck_until_end(
            steps,
            smoothed,
            smoothed < min_accuracy,
            tensor=acc_tag,
            threshold=min_accuracy,
            key="accuracy-low",
            mode=acc_mode,
            message=lambda v: (
                f"mean {acc_mode} accuracy of the {_last_records(span)} is {v:.3g} "
                f"(must reach {min_accuracy:g})"
            ),
        )


def _held_out_at_chance(
    held_out: Series,
    tag: str,
    name: str,
    level: float,
    window: int,
    rose: int,
    fitted: str,
    judged: Callable[[float], str],
) -> Iterator[Finding]:
    """DBG303's held-out metric (an accuracy, an AUC) at chance, at or below ``level``, while
    the model fits its training data (as ``fitted`` says), from the step ``rose`` where it
    showed so; ``judged`` says how the final mean stands against chance."""
    steps, values = _finite(held_out)
    if not len(values):
        return
    span = _records_for(window, len(values))
    smoothed = _trailing_mean(values, span)
    yield from _stuck_until_end(
        steps,
        smoothed,
        (smoothed <= level) & (steps >= rose),
        tensor=tag,
        threshold=level,
        key="held-out-at-chance",
        mode="eval",
        message=lambda v: (
            f"mean validation {name} of the {_last_records(span)} is {v:.3g}, {judged(v)} "
            f"(must rise above {level:.3g}), while {fitted}: what the model fits of its "
            "training data does not carry to data it has not seen"
        ),
    )


def _held_out_auc_at_chance(
    ctx: RuleContext, window: int, margin: float, min_steps: int, fitted_from: int | None
) -> Iterator[Finding]:
    """DBG303's held-out ROC AUC at chance: a series named ``auc`` (XGBoost's, or a metric
    such as ``eval_roc_auc``) whose validation records' mean stays at or below ``0.5 +
    margin`` through the end, while the model fits its training data: its training loss
    fell below chance (from ``fitted_from``) or its training AUC's mean rose above that
    level. An AUC of 0.5 ranks at random whatever the classes' shares and however the scores
    are shifted (XGBoost's ``scale_pos_weight``), which the losses are not."""
    level = 0.5 + margin
    found = next(
        (
            (info.tag, series)
            for info in ctx.trace.tags(scalar=True)
            if _roc_auc(info.tag) and (series := ctx.scalar(info.tag, "eval")) is not None
        ),
        None,
    )
    if found is None:
        return
    tag, held_out = found
    steps, values = _finite(held_out)
    if not len(values) or steps[-1] - steps[0] + 1 < min_steps:
        return
    rose, fitted = fitted_from, "the training loss fell below chance"
    trained = ctx.scalar(tag, "train")
    if rose is None and trained is not None:
        train_steps, train_values = _finite(trained)
        smoothed = _trailing_mean(train_values, _records_for(window, len(train_values)))
        above = smoothed > level
        if len(above) and above[-1]:
            rose = int(train_steps[np.flatnonzero(~above)[-1] + 1 if (~above).any() else 0])
            fitted = "the training AUC is above it"
    if rose is None:
        return
    yield from _held_out_at_chance(
        held_out,
        tag,
        "AUC",
        level,
        window,
        rose,
        fitted,
        lambda v: (
            ("at chance" if v >= 0.5 - margin else "below chance, a ranking inverted")
            + ": 0.5 ranks at random"
        ),
    )


def _roc_auc(tag: str) -> bool:
    """Whether a series is a ROC AUC by its name (``auc``, ``valid-auc``, ``eval_roc_auc``,
    ``auroc``): not the area under the precision-recall curve (``aucpr``, ``pr_auc``), whose
    chance level is the positives' share, not 0.5."""
    words = roles.name_words(tag)
    return words[-1:] in (["auc"], ["auroc"]) and not {"pr", "precision"} & set(words)


# Evaluations DBG303 asks for up to where the training loss fell below chance (at the start and
# on the way down) before it reads a held-out loss that never beat chance as nothing learned
# that generalises.
_EVALUATIONS_WHILE_LEARNING = 2


def _held_out_cross_entropy(ctx: RuleContext, losses: dict[int, float]) -> bool:
    """Whether the held-out ``losses`` can be read as a cross-entropy: where validation labels
    and predictions are kept in full at a step with a held-out loss, it must be their
    cross-entropy at one of them at least (a multi-task sum is not); without any, it is taken
    to be one."""
    compared = 0
    for labels, predictions in scored_labels(ctx):
        for step, mode in _steps_in_full(ctx, (labels.tag, predictions.tag), 20):
            if mode != "eval" or step not in losses:
                continue
            read = step_cross_entropy(ctx, labels.tag, predictions.tag, step, False, "eval")
            if read is None:
                continue
            compared += 1
            if abs(losses[step] - read.labelled) <= _SAME_LOSS * abs(read.labelled):
                return True
    return not compared


def _margin_fraction(classes: int, margin: float) -> float:
    """The cross-entropy of calibrated predictions right ``1 / classes + margin`` of the time
    (the rest spread evenly over the other classes), as a fraction of ``ln classes``: 99.5 %
    for five classes and a margin of 0.05."""
    right = min(1.0 / classes + margin, 1.0 - 1e-12)
    wrong = (1.0 - right) / (classes - 1)
    return float(-(right * np.log(right) + (1.0 - right) * np.log(wrong)) / np.log(classes))


def _held_out_loss_at_chance(
    ctx: RuleContext,
    classes: int,
    margin: float,
    start: int,
    fitted: tuple[int, float],
    train_mean: float,
) -> Iterator[Finding]:
    """DBG303's held-out loss that never went below ``margin`` times its chance while the
    training loss, first recorded at step ``start``, fell below the chance band (``fitted``:
    from which step, below what) to ``train_mean`` at the end, smoothed."""
    fitted_from, band = fitted
    held_out = ctx.loss("eval")
    if held_out is None:
        return
    steps, values = _finite(held_out)
    if not _held_out_cross_entropy(ctx, dict(zip(steps.tolist(), values.tolist()))):
        return
    uniform = float(np.log(classes))
    known = held_out_chance(ctx, classes)
    if known is None:
        return
    chance, what = known
    while_learning = int(np.count_nonzero(steps <= fitted_from))
    if (
        while_learning < _EVALUATIONS_WHILE_LEARNING
        or steps[-1] <= fitted_from
        # A held-out loss summed, or of another kind, is not on a cross-entropy's scale.
        or not uniform / 2 <= values[0] <= 2 * uniform
        or values.min() < margin * chance
    ):
        return
    best = float(values.min())
    yield Finding(
        message=(
            f"the validation loss never beat chance, {chance:.4g} (best {best:.4g} in "
            f"{len(values)} evaluations, {while_learning} of them while the training loss "
            f"came down; must go below {margin * chance:.4g}), while the training loss fell "
            f"below {band:.3g} from step {fitted_from} (to {train_mean:.3g}): what the model "
            f"fits of its training data does not carry to data it has not seen ({what})"
        ),
        tensor=ctx.loss_tag("eval") or "loss",
        # Nothing carried from the first evaluation of a trained model on (one before the
        # first update says nothing).
        first_step=int(steps[steps > start][0]),
        last_step=int(steps[-1]),
        steps=len(values),
        value=best / chance,
        threshold=margin,
        mode="eval",
        key="held-out-at-chance",
    )


# AutoTrainer reports a run as not converged while its best accuracy is at most 0.6.
_NOT_CONVERGED_ACCURACY = 0.6


def _last_records(count: int) -> str:
    return "last record" if count == 1 else f"last {count} records"


def _records_for(window: int, records: int) -> int:
    """The trailing window, cut to a quarter of a sparsely recorded series."""
    return max(1, min(window, records // 4))


def _overtrained_to_the_end(ctx: RuleContext) -> str | None:
    """DBG304's overtraining, in words, when it lasts to the last evaluation: the held-out
    loss stalled at its optimum while the training loss went on improving. Such a model fits
    its training data beyond what generalises: it has the capacity to fit them, and what
    holds its loss up is the data's noise. None otherwise (also where DBG304 does not judge
    the run). Computed once per analysis."""

    def judged() -> str | None:
        whole = ctx.unfocused()
        held_out = whole.loss("eval")
        try:
            found = list(overtraining(whole))
        except RuleSkipped:
            return None
        last = None if held_out is None or not len(held_out) else int(held_out.steps.max())
        for finding in found:
            if finding.last_step == last:
                return (
                    f"the held-out loss has not improved for {finding.value:.0f} evaluations "
                    "while the training loss fell on (DBG304)"
                )
        return None

    return ctx.shared("overtrained-to-the-end", judged)


def _stuck_until_end(
    steps: np.ndarray,
    values: np.ndarray,
    bad: np.ndarray,
    *,
    tensor: str,
    threshold: float,
    key: str,
    message: Callable[[float], str],
    mode: Mode = "train",
) -> Iterator[Finding]:
    """One finding for the run of ``bad`` records that reaches the last record."""
    if not len(steps) or not bad[-1]:
        return
    flags = bad
    good = np.flatnonzero(~flags)
    first = int(good[-1]) + 1 if len(good) else 0
    yield Finding(
        message=message(float(values[-1])),
        tensor=tensor,
        first_step=int(steps[first]),
        last_step=int(steps[-1]),
        steps=len(steps) - first,
        value=float(values[-1]),
        threshold=threshold,
        mode=mode,
        key=key,
    )


def _early_stopping_on_loss(ctx: RuleContext) -> Mapping[str, Any] | None:
    """The run metadata's ``early_stopping`` when it watches a loss (or an unknown metric)."""
    stopping = ctx.trace.metadata.get("early_stopping")
    if not isinstance(stopping, Mapping):
        return None
    monitor = stopping.get("monitor")
    if monitor is None or (
        isinstance(monitor, str) and roles.scalar_meaning(monitor).quantity == "loss"
    ):
        return stopping
    return None


def _early_stopping_best(ctx: RuleContext) -> int | None:
    """The step of the optimum early stopping on a loss found: the metadata's ``best_step``,
    else, when ``monitor`` names a loss (Lightning's ``EarlyStopping`` keeps no step), the
    first step of that loss's least value: the eval loss's, or the train loss's for a
    monitor named so. None without early stopping on a loss, or with an unnamed monitor and
    no ``best_step``. Computed once per analysis."""
    return ctx.shared("early-stopping-best", lambda: _stopping_optimum(ctx))


def _learned_optimum(ctx: RuleContext) -> int | None:
    """The optimum of early stopping on a loss (:func:`_early_stopping_best`) when the run had
    learned by then: the mean of the last 10 finite training losses up to it below 80 % of
    the first (DBG303's bar); None otherwise. Read from the whole run, whatever steps or mode
    the analysis looks at."""
    best = _early_stopping_best(ctx)
    series = _whole_run_loss(ctx, "train")
    if best is None or series is None:
        return None
    steps, values = _finite(series)
    before = values[steps <= best][-10:]
    if not len(before) or not before.mean() <= LEARNED * abs(values[0]):
        return None
    return best


def _stopping_optimum(ctx: RuleContext) -> int | None:
    stopping = _early_stopping_on_loss(ctx)
    if stopping is None:
        return None
    best = stopping.get("best_step")
    if type(best) is int:
        return best
    monitor = stopping.get("monitor")
    if not isinstance(monitor, str):
        return None
    on_train = roles.scalar_meaning(monitor).mode == "train"
    series = _whole_run_loss(ctx, "train" if on_train else "eval")
    if series is None:
        return None
    steps, values = _finite(series)
    return int(steps[np.argmin(values)]) if len(values) else None


def _whole_run_loss(ctx: RuleContext, mode: Mode) -> Series | None:
    """The ``mode`` loss of the whole run, whatever steps or mode the analysis looks at (an
    early-stopping optimum is the run's)."""
    whole = ctx.shared("whole-run", lambda: RuleContext(ctx.trace, loss=ctx.designated_loss))
    return whole.loss(mode)


def _since_best(values: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """For each entry: entries since the best so far, and the best's index.

    A value is a new best only if it improves on the best so far by at least ``delta`` times
    the best's magnitude.
    """
    since = np.zeros(len(values), dtype=np.int64)
    best_at = np.zeros(len(values), dtype=np.int64)
    best = 0
    for index, value in enumerate(values):
        if index and value < values[best] and values[best] - value >= delta * abs(values[best]):
            best = index
        since[index] = index - best
        best_at[index] = best
    return since, best_at


@rule(
    "DBG304",
    "overtraining",
    severity="warning",
    category="loss",
    requires=(TRAIN_LOSS, EVAL_LOSS),
    label="overtraining",
    explains=("DBG302",),
)
def overtraining(
    ctx: RuleContext,
    *,
    patience_train: int = 5,
    patience_validation: int = 10,
    delta: float = 0.0,
    min_train_lead: float = 0.05,
    z: float = 1.0,
    floor: float = 0.1,
) -> Iterator[Finding]:
    """Training goes on improving the training loss after the validation loss stopped improving.

    Evaluations and their train windows are those of DBG302: the mean eval loss of each
    evaluation, and the mean train loss since the previous evaluation (non-finite records left
    out). Early-stopping logic on both curves (SageMaker Debugger's Overtraining, whose
    boolean combination is not documented):

    * a value is a **new optimum** of its curve if it is below the best so far by more than
      ``delta`` times the best's magnitude. By default any improvement counts, as in the
      early stopping of Keras (``min_delta=0``) and XGBoost: a validation loss that still
      sets new minima, however small, is not stalled (a healthy boosted ensemble gains a
      fraction of a percent per round near its end). SageMaker Debugger's absolute 0.01
      depends on the loss scale and would call every run whose loss is below about 1 stalled;
      ``delta`` is relative;
    * **validation stalled** at an evaluation: the last new optimum of the eval loss is
      ``patience_validation`` or more evaluations back;
    * **training still improving**: the train-window mean set a new optimum (an improvement,
      not its first value) within the last ``patience_train`` evaluations, this one included,
      **and** it pulls away from the validation loss: with ``V`` the mean eval loss of the
      last ``patience_train`` evaluations and ``T`` the mean train loss between the first
      and the last of them (record weighted; the train records before the first evaluation,
      which start from the untrained model no evaluation saw, count only at the first
      evaluation, so that a validation optimum early in the run is not measured against the
      loss of initialisation), ``b`` the validation optimum and ``k`` this evaluation, the
      train loss's relative fall ``(T(b) - T(k)) / |T(b)|`` exceeds the validation loss's
      ``(V(b) - V(k)) / |V(b)|`` by at least ``min_train_lead`` (5 %) plus ``z`` standard
      errors of the train part (from the standard errors of ``T(b)`` and ``T(k)``, their
      records' standard deviation over the square root of their number);
    * an evaluation violates when both hold. When both curves have stalled, the run has
      converged (or is stuck): that is DBG301's business, not overtraining;
    * a run of violating evaluations counts only if no later evaluation sets a new optimum:
      the rule sees the whole run, and a validation loss that beat that best later had
      reached a plateau, not its optimum (early stopping with this patience would have
      stopped there and missed the better model).

    The ``min_train_lead`` condition is not in SageMaker Debugger: in a slowly improving
    healthy run both curves gain a fraction of a percent per evaluation, the noisy validation
    loss can go ten evaluations without beating its (luckily low) best by 1 %, and a lucky
    train window then sets a new optimum (the simulated 5000-step runs of the tests are
    reported with ``min_train_lead = 0``). Overtraining proper means the training loss pulls
    away from a stalled validation loss, so that is what is measured, on means over several
    evaluations because one evaluation is itself noisy. Both falls are relative to their level
    at the validation optimum, but to no less than ``floor`` (a tenth) of the initial loss,
    as DBG305 and DBG301 measure swings and rises: a boosted model that fits a leaked column
    takes both losses to 0.001 from 0.6, where the train loss's last 11 % and the eval loss's
    1.6 % rise are 0.0001 and 0.00001, noise of a model that has converged.

    An evaluation at which the recorded learning rate is at least twice the lowest it was
    since the validation optimum is not judged: a schedule raised the rate since (a warm
    restart, a cyclic schedule), and a higher rate raises the eval loss by design; the
    evaluations once it is back down are.

    One finding per run of violating evaluations; the value is the largest number of
    evaluations since the validation optimum, whose step is in ``extra["best_step"]``.

    A run under early stopping on its loss is not judged: when the run metadata holds
    ``early_stopping`` (a JSON object; the XGBoost, Hugging Face and Lightning integrations
    record it when early stopping is in effect, with what they know of ``monitor``,
    ``patience`` and ``best_step``) whose ``monitor`` is a loss or unknown, the evaluations
    after the optimum are the patience the user chose (``early_stopping_rounds=30`` is 30 of
    them, beyond ``patience_validation``) and the optimum is known, which is this rule's fix;
    the rule is reported as skipped with that reason. Early stopping on another metric
    (accuracy) does not stop a loss that climbs, and the rule judges the run.

    Why it matters: every step after the validation optimum costs compute and moves the model
    towards memorising its training set; the checkpoint to keep is the one at the optimum.

    Typical causes: no early stopping, a fixed epoch budget set too high, a learning-rate
    schedule that keeps the training loss falling long after generalisation peaked.

    Fix: early stopping on the validation loss (keep the best checkpoint), fewer epochs, more
    regularisation or data.

    Args:
        patience_train: Evaluations within which the training loss must have set a new optimum
            to count as still improving.
        patience_validation: Evaluations without a new validation optimum that count as stalled.
        delta: Relative improvement on the best value that counts as a new optimum.
        min_train_lead: How much further (relative) the train loss must have fallen than the
            validation loss since the validation optimum.
        z: Standard errors of the train loss's fall allowed in the run's favour.
        floor: The falls are relative to the level at the validation optimum, but no less than
            this fraction of the initial loss.
    """
    _positive("DBG304", patience_train=patience_train, patience_validation=patience_validation)
    stopping = _early_stopping_on_loss(ctx)
    if stopping is not None:
        best = stopping.get("best_step")
        raise RuleSkipped(
            "early stopping watched the run (metadata early_stopping"
            f"{f', best at step {best}' if type(best) is int else ''}): the evaluations "
            "after the optimum were its patience"
        )
    train, evals = ctx.loss("train"), ctx.loss("eval")
    if train is None or evals is None:
        return
    evaluation = _evaluations(train, evals)
    if not len(evaluation.steps):
        return
    val_since, val_best = _since_best(evaluation.val, delta)
    train_since, train_best = _since_best(evaluation.train()[0], delta)
    recent_train, recent_error = evaluation.train_between(patience_train)
    recent_val = _trailing_mean(evaluation.val, patience_train)
    # Near 0 a loss halves by noise: falls count against a tenth of the initial loss at least
    # (DBG305's floor, DBG301's for rises).
    initial = initial_loss(ctx)
    least = 0.0 if initial is None else floor * abs(initial.value)
    reference = np.fmax(np.abs(recent_train[val_best]), least)
    with np.errstate(invalid="ignore", divide="ignore"):
        train_drop = (recent_train[val_best] - recent_train) / reference
        val_drop = (recent_val[val_best] - recent_val) / np.fmax(
            np.abs(recent_val[val_best]), least
        )
        doubt = z * np.hypot(recent_error, recent_error[val_best]) / reference
    lead = train_drop - val_drop
    improving = (train_best > 0) & (train_since < patience_train) & (lead - doubt >= min_train_lead)
    violating = (val_since >= patience_validation) & improving
    # A schedule that raised the learning rate since the best evaluation (a warm restart)
    # raises the eval loss by design: judged where the rate is back down.
    best_steps = evaluation.steps[val_best]
    violating &= ~lr_raised(ctx, best_steps - 1, evaluation.steps, evaluation.steps)

    for episode in episodes(violating):
        worst = episode.first + int(np.argmax(val_since[episode.first : episode.last + 1]))
        best = int(val_best[worst])
        if val_best[-1] != best:
            continue  # a later evaluation beat that best: the stall was a plateau
        yield Finding(
            message=(
                f"eval loss has not improved{f' by {delta:.0%}' if delta else ''} on its best "
                f"{evaluation.val[best]:.4g} for {val_since[worst]} evaluations "
                f"(>= {patience_validation}) while the mean train loss fell "
                f"{train_drop[worst]:.1%} since and the mean eval loss "
                f"{'fell' if val_drop[worst] > 0 else 'rose'} {abs(val_drop[worst]):.1%}: the "
                f"train loss gained {lead[worst] * 100:.1f} points more (>= "
                f"{min_train_lead * 100:g})"
            ),
            tensor=(ctx.loss_tag("eval") or "loss"),
            first_step=int(evaluation.steps[episode.first]),
            last_step=int(evaluation.steps[episode.last]),
            steps=episode.count,
            value=float(val_since[worst]),
            threshold=float(patience_validation),
            mode="eval",
            key="validation-stalled",
            extra={"best_step": int(evaluation.steps[best])},
        )


def _mean_ranks(rows: np.ndarray) -> np.ndarray:
    """The ranks of each row's values, from 0; values that tie share their mean rank."""
    count = rows.shape[1]
    order = np.argsort(rows, axis=1, kind="stable")
    ordered = np.take_along_axis(rows, order, axis=1)
    position = np.arange(count)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(ordered.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, count - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (first + last) / 2, axis=1)
    return ranks


def _rank_autocorrelation(rows: np.ndarray) -> np.ndarray:
    """The lag-1 autocorrelation of the ranks of each row's ``n`` values: about 0, within
    ``1 / sqrt(n)``, for values drawn independently, whatever their distribution; towards 1
    where each value is close to the one before it, towards -1 where values alternate. 0 for
    a constant row."""
    ranks = _mean_ranks(rows)
    before = ranks[:, :-1] - ranks[:, :-1].mean(axis=1, keepdims=True)
    after = ranks[:, 1:] - ranks[:, 1:].mean(axis=1, keepdims=True)
    spread = np.sqrt((before * before).sum(axis=1) * (after * after).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(spread > 0, (before * after).sum(axis=1) / spread, 0.0)


def _two_sided_bar(independence: float, tests: int, records: int) -> float:
    """The lag-1 autocorrelation of ``records`` independent values' ranks exceeds, either way,
    with probability ``P(Z > independence)`` shared out among ``tests`` tests (Bonferroni;
    Bartlett's standard error ``1 / sqrt(records)``)."""
    chance = NormalDist().cdf(-independence) / 2 / max(tests, 1)
    return -NormalDist().inv_cdf(max(chance, 1e-300)) / float(np.sqrt(records))


def _large_turns(values: np.ndarray, min_swing: np.ndarray) -> np.ndarray:
    """Flags of the records where the curve turns after a move of at least ``min_swing``
    (one bound per record, applied at the turn).

    Runs of equal values count as one record (their first). A record is a turn when the
    direction of the curve changes there; its swing is its distance to the previous turn (or
    to the first record).
    """
    flags = np.zeros(len(values), dtype=bool)
    distinct = np.concatenate(([0], np.flatnonzero(np.diff(values) != 0) + 1))
    if len(distinct) < 3:
        return flags
    direction = np.sign(np.diff(values[distinct]))
    turns = distinct[1:-1][direction[1:] != direction[:-1]]
    if not len(turns):
        return flags
    anchors = np.concatenate(([0], turns[:-1]))
    flags[turns[np.abs(values[turns] - values[anchors]) >= min_swing[turns]]] = True
    return flags


@rule(
    "DBG305",
    "oscillating-loss",
    severity="warning",
    category="loss",
    requires=Need.loss_of("mode"),
    label="oscillating loss",
    # Batches that pull the model in turns (one class at a time) also leave it fitted to the
    # latest batches only, far from the held-out data; and each turn lifts the loss by orders
    # of magnitude in one step, which between gradient records reads as a blow-up.
    explains=("DBG302", "DBG304", "DBG303:held-out-at-chance", "DBG102:loss-jump"),
)
def oscillating_loss(
    ctx: RuleContext,
    *,
    mode: Mode = "train",
    block: int = 5,
    swing: float = 1.0,
    floor: float = 0.1,
    ratio: float = 0.2,
    window: int = 10,
    noise: float = 3.0,
    independence: float = 3.0,
) -> Iterator[Finding]:
    """The loss swings up and down by large amounts instead of converging.

    AutoTrainer's Oscillating Loss test (pairs of local maxima and minima that differ by at
    least ζ, counted against η times the length of the curve), moved from epoch accuracy to the
    recorded loss:

    * the finite records of the loss, in step order (non-finite ones are DBG306's), averaged
      in consecutive **blocks** of ``block`` records. AutoTrainer reads one accuracy per
      epoch, already an average over many batches; single minibatch losses are noise of the
      order of their own level (a ReLU network near convergence puts almost no loss on most
      samples and a lot on a few, so one batch reads 0.06, the next 0.36), which a block mean
      shrinks while a real swing of the model, lasting more than a few steps, stays;
    * a **turn** is a block where the block means change direction (a local maximum or
      minimum; runs of equal values count once); its **swing** is its distance to the
      previous turn;
    * a turn is **large** if its swing is at least ``swing`` times the loss level: the median
      of the block means of the window, but no less than ``floor`` times ``|L0|``, the
      untrained model's loss (the first finite loss; ``ln C`` for a run that starts from a
      trained classifier, see DBG303). With ``swing = 1`` the smoothed loss doubles or halves
      from one turn to the next. Measured against the level, not against ``L0``, so that a
      run that oscillates once it has learned (between 0.1 and 0.4 after starting at 2.3) is
      found; the floor keeps a converged run, whose level is near 0, from turning its noise
      into swings. A loss that goes negative (a Poisson or Gaussian negative log-likelihood
      without its constant terms) has no known bottom: its level and ``L0`` are measured
      from the lowest block mean of the run instead of from 0. A swing must also exceed
      ``noise`` standard errors of the difference of two block means (from the median
      standard deviation of the records within a block over the window): a loss whose single
      batches scatter widely (counts, heavy-tailed targets) moves its block means that much
      by chance alone;
    * a window of ``window`` consecutive blocks **oscillates** if it holds at least
      ``ratio × window`` pairs of large turns (a maximum and the minimum after it:
      AutoTrainer's η = 0.2 counts such pairs against the length of the curve), so at least
      ``2 × ratio`` of its blocks are large turns: with the defaults, two full swings by the
      loss's own level within 50 records, for instance batches that each hold one class (the
      loss collapses within a class and jumps at the next). One bump of a falling curve is
      two turns, one pair: not an oscillation;
    * the swings must **last**: windows that turn and overlap form an episode, and an
      episode oscillates only if the lag-1 autocorrelation of the ranks of its windows'
      ``n = window × block`` records, in its median window, is beyond what independent
      records reach with probability ``P(Z > independence)`` (0.13 % at 3): ``z / sqrt(n)``
      either way (Bartlett's standard error), ``z`` the normal quantile of that chance
      shared out among the run's episodes (Bonferroni; 0.45 for one, 0.52 for five, 0.62
      for a hundred), so that a run of many short episodes of chance is no likelier to pass
      than one, a long oscillation is one test, as a short one is, and one that starts
      after episodes of chance is judged on its own windows (one too noisy for most of its
      windows to turn breaks into as many episodes as it has stretches that do, and is held
      to their count). Independent records turn the block means about as often as a
      swinging model (among independent values, two in three are a local maximum or
      minimum), and a model fitted at a small batch,
      whose rare hard batches each lift a block mean by the loss's level, turns them by
      enough; but each such record is forgotten by the next, where a model pulled one class
      at a time, or overshooting for several steps, stays near where the swing took it
      (positive), and a loss that alternates from one record to the next swings back
      (negative). Ranks make the test indifferent to how heavy the records' tails are, and
      a window is short enough that a falling level hardly counts. Blocks so short that the
      shortest swing they resolve (a block up and a block down, ``1 - 2 / block``) is within
      3 standard errors of chance in one window (4 records or fewer with ``window`` 10)
      cannot tell a swing from a spike this way, and leave the turns to decide alone.

    A swing from one record to the next (a rate that overshoots on every step) averages out
    in a block; ``learning-rate`` (DBG503) finds that through the size of the updates.

    One finding per run of overlapping oscillating windows, from its first large turn to its
    last; the value is the largest share of large turns in a window.

    Why it matters: an oscillating loss means the optimiser overshoots or the batches pull
    the model in turns; training makes little net progress and often ends in divergence.

    Typical causes: a learning rate too high for the curvature (often after warmup ends or
    with a large batch-size change), too little momentum damping, unshuffled batches (sorted by
    class or by source), a loss with a noisy or unstable term.

    Fix: shuffle the data, lower the learning rate or decay it, add warmup, clip gradients,
    increase the batch size.

    Args:
        mode: Which loss to check: the training (``train``) or validation (``eval``) loss.
        block: Records averaged into one point of the curve.
        swing: Smallest move between two turns that counts, as a multiple of the loss level.
        floor: Smallest loss level, as a fraction of the initial loss.
        ratio: Pairs of large turns a window must hold, per block.
        window: Blocks per window.
        noise: Smallest move between two turns that counts, in standard errors of the
            difference of two block means.
        independence: How unlikely for independent records an episode's serial dependence
            must be, as a normal tail in standard deviations (3: 0.13 %), shared out among
            the run's episodes (0: no such test).
    """
    _positive("DBG305", block=block, swing=swing, ratio=ratio, window=window)
    if not independence >= 0 or not np.isfinite(independence):
        raise RuleConfigError(f"DBG305 independence must be a number >= 0, got {independence:g}")
    series = ctx.loss(mode)
    if series is None:
        return
    steps, values = _finite(series)
    blocks = len(values) // block
    if blocks < max(window, 3) or values[0] == 0:
        return
    blocked = values[: blocks * block].reshape(blocks, block)
    means = blocked.mean(axis=1)
    starts = steps[: blocks * block : block]
    windows = np.lib.stride_tricks.sliding_window_view(means, window)
    initial = initial_loss(ctx, mode)
    start = float(values[0]) if initial is None else initial.value
    # A loss that goes negative (a Poisson or Gaussian NLL without its constant terms) has no
    # zero to measure its level from: the lowest the run reached stands in for it.
    bottom = min(float(means.min()), 0.0)
    level = np.fmax(np.median(windows, axis=1) - bottom, floor * (start - bottom))
    # The standard error of the difference of two block means, from the window's typical
    # scatter of the records within a block.
    scatter = np.median(
        np.lib.stride_tricks.sliding_window_view(
            blocked.std(axis=1, ddof=1) if block > 1 else np.zeros(blocks), window
        ),
        axis=1,
    )
    bar = np.fmax(swing * level, noise * scatter * np.sqrt(2 / block))
    # The bar of each block: that of the last window holding it.
    per_block = np.concatenate((np.full(window - 1, bar[0]), bar))
    large = _large_turns(means, per_block)
    counts = np.convolve(large.astype(np.int64), np.ones(window, dtype=np.int64), mode="valid")
    # AutoTrainer counts pairs (a maximum and the minimum after it): two turns each.
    turning = np.flatnonzero(counts >= 2 * ratio * window)
    if not len(turning):
        return
    # A swing of the model lasts several records (or alternates); a hard batch among easy
    # ones is a spike that the next record forgets, and independent records turn as often.
    records = window * block
    # Every episode is a test of its own: merged ones would judge a late oscillation together
    # with the chance episodes before it.
    candidates = episodes(covered(turning, turning + window - 1, blocks), max_episodes=len(turning))
    follows = np.zeros(blocks)
    # Blocks so short that the shortest swing they resolve (a block up, a block down: lag-1
    # autocorrelation 1 - 2/block) is within 3 standard errors of chance in one window cannot
    # tell a swing from a spike this way: the turns decide alone. (Not the chosen
    # independence: a stricter test must not turn itself off.)
    tested = independence > 0 and 1 - 2 / block > _two_sided_bar(3.0, 1, records)
    dependent = _two_sided_bar(independence, len(candidates), records) if tested else 0.0
    oscillating = turning
    if tested:
        # Each episode of overlapping turning windows is judged on its typical window, the
        # median: a long oscillation is one test, as a short one is.
        of_episode = np.searchsorted([c.first for c in candidates], turning, side="right") - 1
        serial = np.concatenate(
            [
                _rank_autocorrelation(
                    np.lib.stride_tricks.sliding_window_view(values, records)[chunk * block]
                )
                for chunk in np.array_split(turning, -(-len(turning) // 4096))
            ]
        )
        per_episode = np.split(serial, np.flatnonzero(np.diff(of_episode)) + 1)
        typical = np.array([np.median(rs) for rs in per_episode])
        kept = np.abs(typical[of_episode]) >= dependent
        oscillating, follows_window = turning[kept], typical[of_episode][kept]
        if not len(oscillating):
            return
        follows[oscillating + window - 1] = follows_window
    oscillating_end = oscillating + window - 1
    in_window = covered(oscillating, oscillating_end, blocks)
    share = np.zeros(blocks)
    share[oscillating_end] = counts[oscillating] / window
    for episode in episodes(in_window):
        turns = episode.first + np.flatnonzero(large[episode.first : episode.last + 1])
        worst_end = episode.first + int(np.argmax(share[episode.first : episode.last + 1]))
        worst = float(share[worst_end])
        serial_text = (
            f", in swings that {'last' if follows[worst_end] > 0 else 'alternate'}: lag-1 rank "
            f"autocorrelation {follows[worst_end]:.2f} (median window; beyond ±{dependent:.2f}, "
            "about 0 for independent batches)"
            if tested
            else ""
        )
        yield Finding(
            message=(
                f"{mode} loss (means of {block} records) reverses by at least "
                f"{float(np.median(per_block[turns])):.3g} ({swing:g}x its level, and "
                f"{noise:g} standard errors of chance) at {worst:.0%} of the blocks of a "
                f"{records}-record window (>= {2 * ratio:.0%}){serial_text}"
            ),
            tensor=(ctx.loss_tag(mode) or "loss"),
            first_step=int(starts[turns[0]]),
            last_step=int(steps[min(turns[-1] * block + block - 1, len(steps) - 1)]),
            steps=len(turns),
            value=worst,
            threshold=ratio,
            mode=mode,
            extra=(
                {"rank_autocorrelation": float(follows[worst_end]), "bar": dependent}
                if tested
                else {}
            ),
            key="oscillating",
        )


@rule(
    "DBG306",
    "non-finite-loss",
    severity="error",
    category="loss",
    requires=LOSS_SCALARS,
    label="non-finite loss",
    explains=("DBG102:nonfinite", "DBG404", "DBG301", "DBG303", "DBG305"),
)
def non_finite_loss(ctx: RuleContext) -> Iterator[Finding]:
    """The loss is NaN or infinite.

    Every scalar series that is a loss by its name (dbgcli.trace.roles.scalar_meaning: the
    word ``loss`` in any case, ``val_loss``, ``CrossEntropyLoss_output_0``, ``loss/aux``, or
    an XGBoost metric such as ``validation_0-logloss``) is checked record by record,
    separately for each mode; a record violates
    when its value is NaN, +inf or -inf. One finding per series, mode and run of consecutive
    non-finite records; its first step is the first non-finite step and its value the first
    non-finite value; ``extra`` counts the NaN and infinite records. When the last finite
    record before it is more than 10 times the median of the 10 before that (all positive),
    the message says the loss diverged first (a learning rate far too high, not a bad value
    in one batch).

    Why it matters: once the loss is NaN every gradient is NaN, the weights become NaN at the
    next update and the run is lost; nothing after this step is meaningful.

    Typical causes: a learning rate far too high (the loss explodes first), log or division
    of zero in a hand-written loss, softmax without the max subtraction, fp16 overflow without
    loss scaling, NaN or inf in the inputs or labels.

    Fix: lower the learning rate, clip gradients, use the framework's fused, numerically
    stable losses (log-softmax, BCE-with-logits), use a gradient scaler with mixed precision,
    check the data for NaN (DBG4xx on the inputs).
    """
    for info in ctx.trace.tags(scalar=True):
        if not _is_loss_tag(info.tag):
            continue
        series = ctx.scalar(info.tag)
        if series is None:
            continue
        for code in np.unique(series.modes):
            mine = series.modes == code
            steps, values = series.steps[mine], series.values[mine]
            mode = schema.MODES[int(code)]
            for episode in episodes(~np.isfinite(values)):
                span = values[episode.first : episode.last + 1]
                nan, inf = int(np.isnan(span).sum()), int(np.isinf(span).sum())
                before = _diverged_before(values[: episode.first])
                yield Finding(
                    message=(
                        f"{info.tag} ({mode}) is not finite: {nan} NaN, {inf} infinite "
                        f"values{before}"
                    ),
                    tensor=info.tag,
                    first_step=int(steps[episode.first]),
                    last_step=int(steps[episode.last]),
                    steps=episode.count,
                    value=float(span[0]),
                    threshold=None,
                    mode=mode,
                    key="nonfinite",
                    extra={"nan": nan, "inf": inf},
                )


# -- DBG307 softmax-twice -------------------------------------------------------------------------

# Relative difference within which the recorded loss is the cross-entropy computed here: the
# mean over a batch in float32 differs from float64 by about 1e-7.
_SAME_LOSS = 1e-3
# Relative difference from which two cross-entropies tell the probabilities apart from logits.
_TOLD_APART = 0.05


@rule(
    "DBG307",
    "softmax-twice",
    severity="error",
    category="loss",
    requires=(TRAIN_LOSS, LABELS, PREDICTIONS),
    label={"sigmoid": "sigmoid applied twice", "*": "softmax applied twice"},
    # The loss cannot fall below its floor and its gradients are squeezed by the second
    # softmax: the loss stalls, high, and the gradients shrink.
    explains=(
        "DBG101",
        "DBG301:not-decreasing",
        "DBG303",
        "DBG305",
        "DBG601:mispredicted",
        "DBG604",
    ),
)
def softmax_twice(ctx: RuleContext, *, records: int = 20) -> Iterator[Finding]:
    """The loss takes the model's probabilities for logits: softmax (or sigmoid) is applied twice.

    A model that ends in ``nn.Softmax`` (or returns ``softmax(logits)``) fed to
    ``nn.CrossEntropyLoss`` / ``F.cross_entropy``, which apply ``log_softmax`` themselves, is
    trained on ``-log softmax(p)[y]`` with ``p`` already probabilities: the loss cannot fall
    below ``ln(1 + (C - 1) / e)`` (0.74 for four classes, 1.46 for ten), and the gradient
    passes through two softmax Jacobians. A binary model that ends in ``nn.Sigmoid`` fed to
    ``nn.BCEWithLogitsLoss`` is the same mistake (key ``sigmoid``): its loss cannot fall below
    ``ln(1 + e^-1) = 0.31`` for a positive sample, and its probabilities are squeezed into
    ``[0.5, 0.73]``.

    Checked on up to ``records`` training steps, spread over the run, that hold a training
    loss and full tensors of labels ``(N,)`` and predictions ``(N, C)`` whose every row is a
    probability vector (values in ``[0, 1]`` summing to 1 within 1e-3), or, for the binary
    case, labels of 0s and 1s and predictions ``(N,)`` or ``(N, 1)`` in ``[0, 1]``, or
    multi-label indicators ``(N, K)`` of 0s and 1s with predictions of the same shape in
    ``[0, 1]``, compared element by element as ``BCEWithLogitsLoss`` averages them. At each,
    the mean cross-entropy of the predictions read as logits, ``logsumexp(p) - p[y]``
    (binary: ``log(1 + e^p) - y p``), and read as probabilities, ``-log p[y]`` (binary:
    ``-y log p - (1 - y) log(1 - p)``), are computed (negative labels, ignore markers, left out);
    a step counts where the two differ by more than 5 % (an untrained model's nearly uniform
    probabilities give both alike) and the recorded loss is the first within 0.1 % and not the
    second. At least three such steps, and at least half of those where the two differ, make
    the finding, dated from the first training loss (the loss is the code's). Recording the
    probabilities while the loss takes the logits gives the second, and no finding; so do
    losses with other terms or label smoothing, which match neither.

    Why it matters: the loss and its gradients are not those of the classifier meant; it
    learns slowly, stalls at a loss floor far above zero, and looks like an optimisation
    problem.

    Typical causes: ``nn.Softmax`` as the model's last layer (copied from an inference
    model) with ``nn.CrossEntropyLoss``; ``softmax`` in ``forward`` for the predictions.

    Fix: give ``CrossEntropyLoss`` (``BCEWithLogitsLoss``) the logits: drop the final softmax
    (sigmoid) and apply it only for predictions; or take ``nn.NLLLoss`` of ``log_softmax``
    outputs (``nn.BCELoss`` of probabilities).

    Args:
        records: Most steps read and compared.
    """
    if records < 1:
        raise RuleConfigError(f"DBG307 records must be at least 1, got {records}")
    losses = _train_losses(ctx)
    if not losses:
        return
    for labels, predictions in scored_labels(ctx):
        shape = predictions.info.shape
        if shape is None or len(shape) not in (1, 2):
            continue
        # Multi-label indicators of the predictions' own shape: a binary loss per element.
        binary = len(shape) == 1 or shape[1] == 1 or labels.info.shape == shape
        steps = _loss_steps_in_full(ctx, labels.tag, predictions.tag, losses, records)
        told, hits = 0, []
        measure = _binary_cross_entropies if binary else _cross_entropies
        for step in steps:
            pair = measure(ctx, labels.tag, predictions.tag, step)
            if pair is None:
                break  # not probabilities (or not a class batch): logits, as they should be
            as_logits, as_probabilities = pair
            if abs(as_logits - as_probabilities) <= _TOLD_APART * as_logits:
                continue
            told += 1
            loss = losses[step]
            if abs(loss - as_logits) <= _SAME_LOSS * abs(loss) and (
                abs(loss - as_probabilities) > _TOLD_APART * abs(loss)
            ):
                hits.append((step, loss, as_probabilities))
        if not _shown(len(hits), told):
            continue
        step, loss, own = hits[-1]
        twice = (
            "sigmoid applied twice: a model ending in Sigmoid fed to BCEWithLogitsLoss?"
            if binary
            else "softmax applied twice: a model ending in Softmax fed to CrossEntropyLoss?"
        )
        yield _in_the_code(
            f"the training loss is the cross-entropy of the predictions read as logits, but "
            f"they are probabilities ({twice}): at step {step} the loss is {loss:.4g}, the "
            f"probabilities' own cross-entropy {own:.4g}; {len(hits)} of {told} steps compared",
            (labels.tag, predictions.tag),
            min(losses),
            [step for step, _, _ in hits],
            told,
            "sigmoid" if binary else "twice",
        )


# Steps of recorded predictions a mistake in the loss's code must show at, at least.
_SHOWN_STEPS = 3


def _in_the_code(
    message: str,
    tags: tuple[str, str],
    first_loss: int,
    shown: list[int],
    read: int,
    key: str = "",
) -> Finding:
    """The finding of a mistake in the loss's code, ``shown`` at those steps of the ``read``
    steps of recorded ``(labels, predictions)``: dated from the first training loss, since
    the code was wrong from the first step whatever steps show it."""
    labels, predictions = tags
    return Finding(
        message=message,
        tensor=predictions,
        first_step=first_loss,
        last_step=shown[-1],
        steps=len(shown),
        value=float(len(shown)),
        threshold=float(_SHOWN_STEPS),
        mode="train",
        key=key,
        extra={"labels": labels, "steps_compared": read},
    )


def _shown(hits: int, read: int) -> bool:
    """Whether a mistake seen at ``hits`` of the ``read`` steps of recorded predictions is
    shown: at least three of them, and at least half."""
    return hits >= _SHOWN_STEPS and 2 * hits >= read


def _read_steps(
    ctx: RuleContext,
    labels: str,
    predictions: str,
    losses: dict[int, float],
    records: int,
    read: Callable[[RuleContext, str, str, int], T | None],
) -> list[tuple[int, T]]:
    """What ``read`` finds at the training steps with a recorded loss whose labels and
    predictions are both kept in full (at most ``records`` of them, evenly spread), where it
    finds anything."""
    found = []
    for step in _loss_steps_in_full(ctx, labels, predictions, losses, records):
        reading = read(ctx, labels, predictions, step)
        if reading is not None:
            found.append((step, reading))
    return found


def _spread(items: list[T], most: int) -> list[T]:
    """At most ``most`` of ``items``, evenly spread from the first to the last."""
    if len(items) <= most:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, most).round().astype(int)]


def _binary_cross_entropies(
    ctx: RuleContext, labels: str, predictions: str, step: int
) -> tuple[float, float] | None:
    """Mean binary cross-entropy of one training step's predictions read as logits and read
    as probabilities; None unless they are one probability per sample and the labels 0s and
    1s of the same samples."""
    pair = _binary_pair(ctx, labels, predictions, step)
    if pair is None or not pair[1].size:
        return None
    y, p = pair
    if not ((p >= 0).all() and (p <= 1).all()):
        return None

    def mean(terms: tuple[np.ndarray, np.ndarray]) -> float:
        return float(np.mean(y * terms[0] + (1 - y) * terms[1]))

    return mean(_binary_terms(p, probabilities=False)), mean(_binary_terms(p, probabilities=True))


def _binary_pair(
    ctx: RuleContext, labels: str, predictions: str, step: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """One training step's labels and scores, flattened (float64): None unless they pair
    element by element, the scores all finite and the labels all 0 or 1."""
    scores = ctx.trace.raw(predictions, step, "train")
    truth = ctx.trace.raw(labels, step, "train")
    if scores is None or truth is None or scores.size != truth.size:
        return None
    p = scores.reshape(-1).astype(np.float64)
    y = truth.reshape(-1).astype(np.float64)
    if not (np.isfinite(p).all() and ((y == 0) | (y == 1)).all()):
        return None
    return y, p


def _binary_terms(p: np.ndarray, *, probabilities: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per element, the cross-entropy a label of 1 and a label of 0 cost: ``-log q`` and
    ``-log(1 - q)``, ``q`` the score read as a probability, or as a logit's sigmoid."""
    if probabilities:
        clipped = np.clip(p, 1e-300, 1 - 1e-16)
        return -np.log(clipped), -np.log1p(-clipped)
    return np.logaddexp(0.0, -p), np.logaddexp(0.0, p)


def _steps_in_full(ctx: RuleContext, tags: Sequence[str], most: int) -> list[tuple[int, str]]:
    """Steps and modes at which every one of ``tags`` is kept in full, at most ``most`` of
    them, evenly spread."""
    steps = []
    for mode, code in schema.MODE_CODES.items():
        kept = kept_steps(ctx, tags[0], code)
        for tag in tags[1:]:
            kept = np.intersect1d(kept, kept_steps(ctx, tag, code))
        steps += [(int(step), mode) for step in kept]
    return _spread(sorted(steps), most)


def _train_losses(ctx: RuleContext) -> dict[int, float]:
    """The finite training loss of each step that has one (empty without a training loss)."""
    series = ctx.loss("train")
    if series is None:
        return {}
    steps, values = _finite(series)
    return dict(zip(steps.tolist(), values.tolist()))


def _loss_steps_in_full(
    ctx: RuleContext, labels: str, predictions: str, losses: dict[int, float], most: int
) -> list[int]:
    """Training steps with a recorded loss whose labels and predictions are both kept in full,
    at most ``most`` of them, evenly spread."""
    train = schema.MODE_CODES["train"]
    both = np.intersect1d(kept_steps(ctx, labels, train), kept_steps(ctx, predictions, train))
    return _spread([int(step) for step in both if int(step) in losses], most)


def _cross_entropies(
    ctx: RuleContext, labels: str, predictions: str, step: int
) -> tuple[float, float] | None:
    """Mean cross-entropy of one training step's predictions read as logits and read as
    probabilities, over its labelled samples; None unless every row is a probability vector
    and the labels are one class id per row."""
    scores = ctx.trace.raw(predictions, step, "train")
    truth = ctx.trace.raw(labels, step, "train")
    if scores is None or truth is None or truth.ndim != 1 or scores.shape[0] != truth.shape[0]:
        return None
    p = scores.astype(np.float64)
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        return None
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        return None
    found, width = class_ids(truth[None])
    if width is not None:
        return None  # scores or quantities, not one class id per sample
    ids = found[0]
    keep = (ids >= 0) & (ids < p.shape[1])
    if not keep.any():
        return None
    p, ids = p[keep], ids[keep]
    chosen = p[np.arange(len(ids)), ids]
    top = p.max(axis=1)
    as_logits = float(np.mean(top + np.log(np.exp(p - top[:, None]).sum(axis=1)) - chosen))
    as_probabilities = float(np.mean(-np.log(np.maximum(chosen, 1e-300))))
    return as_logits, as_probabilities


# -- DBG309 softmax-over-batch -------------------------------------------------------------------

# Within this, a (log-)softmax's outputs sum to 1 along the axis it normalised.
_NORMALISED = 1e-3


@rule(
    "DBG309",
    "softmax-over-batch",
    severity="error",
    category="loss",
    requires=(LABELS, PREDICTIONS),
    label="softmax over the batch",
    # Each sample's score depends on the others in its batch: the loss changes with the batch
    # size and composition, so the held-out loss (another batch size) sits apart from the
    # training loss, and the predictions are no class probabilities.
    explains=(
        "DBG301:not-decreasing",
        "DBG302",
        "DBG303",
        "DBG303:held-out-at-chance",
        "DBG304",
        "DBG601:mispredicted",
        "DBG604",
    ),
)
def softmax_over_batch(ctx: RuleContext, *, records: int = 20) -> Iterator[Finding]:
    """The model's outputs are normalised over the batch, not over the classes.

    A softmax (or log-softmax) over the batch axis of a ``(batch, ..., classes)`` output makes
    every class's probabilities sum to 1 over the samples of a batch, not every sample's over
    the classes. The rule reads the recorded predictions and labels kept in full (at most
    ``records`` steps, evenly spread) where the labels say which axis is which: their first
    axis is the predictions' first (one label per sample) and their class ids fit the last.
    A step counts when:

    * the predictions are probabilities (in [0, 1]) or log-probabilities (at most 0) that
      sum to 1 (``logsumexp`` to 0) along the batch axis within 1e-3, and not along the
      class axis; or
    * they are logits and the recorded training loss of the step is, within 0.1 %, the mean
      negative log-likelihood of the labels under ``log_softmax`` over the batch axis, and
      more than 5 % off the one over the class axis: a ``log_softmax(dim=0)`` inside the
      loss.

    At least 2 steps, and at least half of those read, must count. A batch of one sample is
    not read, nor is an output whose first axis is not the labels' (a sequence-first model's
    ``(time, batch, ...)``, whose softmax over time can be its design).

    Why it matters: each sample's score depends on the other samples in its batch; the loss
    depends on the batch size (an NLL over log-probabilities normalised over ``B`` samples
    cannot fall below about ``ln(B / C)``), so the evaluation, at another batch size, reads as
    overfitting or its opposite, and the outputs are no class probabilities: calibration,
    thresholds and any mixing with other models are wrong, although the argmax over the
    classes can still be right.

    Typical causes: ``nn.LogSoftmax(dim=0)`` or ``nn.Softmax(dim=0)`` for ``dim=1`` (or
    ``-1``); ``F.softmax(x)`` without ``dim`` on a 3-D input, whose implicit dimension is 0;
    ``F.log_softmax(logits, dim=0)`` in a hand-written loss.

    Fix: normalise over the class axis (``dim=-1``); better, return logits and let
    ``nn.CrossEntropyLoss`` apply ``log_softmax`` itself.

    Args:
        records: Most steps read per predictions tensor.
    """
    if records < 1:
        raise RuleConfigError(f"DBG309 records must be at least 1, got {records}")
    losses = _train_losses(ctx)
    for labels, predictions in scored_labels(ctx):
        shape = predictions.info.shape
        if shape is None or len(shape) < 2 or shape[-1] < 2:
            continue
        compared, hits = 0, []
        for step, mode in _steps_in_full(ctx, (labels.tag, predictions.tag), records):
            found = _batch_normalised(
                ctx, labels.tag, predictions.tag, step, mode, losses.get(step)
            )
            if found is None:
                continue
            compared += 1
            if found is not False:
                hits.append((step, mode, found))
        if len(hits) < 2 or 2 * len(hits) < compared:
            continue
        last_step, last_mode, (samples, losses_read) = hits[-1]
        if losses_read is None:
            how = (
                f"each class's probabilities sum to 1 over the {samples} samples of a batch "
                f"({last_mode}, step {last_step}), and no sample's over its {shape[-1]} classes"
            )
        else:
            loss, over_batch, over_classes = losses_read
            how = (
                f"the training loss is the log-likelihood of the logits normalised over the "
                f"{samples} samples of a batch (log_softmax(dim=0) in the loss?): at step "
                f"{last_step} it is {loss:.4g}, {over_batch:.4g} over the batch, "
                f"{over_classes:.4g} over the {shape[-1]} classes"
            )
        yield Finding(
            message=(
                f"the predictions are normalised over the batch, not over the classes "
                f"(softmax(dim=0)?): {how}; {len(hits)} of {compared} steps read"
            ),
            tensor=predictions.tag,
            first_step=hits[0][0],
            last_step=last_step,
            steps=len(hits),
            value=float(len(hits)),
            threshold=2.0,
            mode=last_mode,
            key="batch-axis",
            extra={"labels": labels.tag},
        )


def _batch_normalised(
    ctx: RuleContext, labels: str, predictions: str, step: int, mode: str, loss: float | None
) -> tuple[int, tuple[float, float, float] | None] | Literal[False] | None:
    """Whether one step's predictions are normalised over the batch axis: if so the batch's
    size and, for logits, the recorded loss and the two log-likelihoods; False when they are
    read and are not; None when the step cannot be read (no labels along the first axis,
    class ids that do not fit the last)."""
    scores = ctx.trace.raw(predictions, step, mode)
    truth = ctx.trace.raw(labels, step, mode)
    if scores is None or truth is None or scores.ndim < 2 or truth.ndim < 1:
        return None
    samples = scores.shape[0]
    if samples < 2 or truth.shape[0] != samples or scores.dtype.kind != "f":
        return None
    found, width = class_ids(truth[None])
    ids = found[0]
    if width is not None or not (ids >= 0).any() or ids.max() >= scores.shape[-1]:
        return None
    z = scores.astype(np.float64)
    if not np.isfinite(z).all():
        return None
    if (z >= 0).all() and (z <= 1).all():
        over_batch, over_classes = z.sum(axis=0), z.sum(axis=-1)
    elif (z <= _NORMALISED).all():
        over_batch, over_classes = np.exp(z).sum(axis=0), np.exp(z).sum(axis=-1)
    else:
        # One class id per sample (multi-hot rows read as ids are not).
        if mode != "train" or loss is None or z.ndim != 2 or ids.shape != (samples,):
            return None
        keep = ids >= 0
        rows = np.arange(samples)[keep]
        batch_nll = float(-_log_softmax(z, 0)[rows, ids[keep]].mean())
        class_nll = float(-_log_softmax(z, 1)[rows, ids[keep]].mean())
        if abs(loss - batch_nll) <= _SAME_LOSS * abs(loss) and abs(loss - class_nll) > (
            _TOLD_APART * abs(loss)
        ):
            return samples, (loss, batch_nll, class_nll)
        return False
    batch_normalised = np.allclose(over_batch, 1.0, atol=_NORMALISED)
    if batch_normalised and not np.allclose(over_classes, 1.0, atol=_NORMALISED):
        return samples, None
    return False


def _log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    shifted = z - z.max(axis=axis, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return result


class LossFloor(NamedTuple):
    """The least value a training loss can reach, and what sets it."""

    value: float
    reason: str


# Inferred label smoothing: the steps' estimates must agree within this (absolute), and there
# must be this many of them.
_SMOOTHING_AGREEMENT = 0.02
_SMOOTHING_STEPS = 3
# |U - CE| below which a step's estimate is mostly the loss's rounding.
_SMOOTHING_SEPARATION = 1e-3


def loss_floor(ctx: RuleContext) -> LossFloor | None:
    """The training loss's floor above zero, when the recorded data say there is one: the mean
    entropy of soft targets (:func:`dbgcli.rules.data.soft_target_entropy`), or of the
    targets a label-smoothed cross-entropy builds from hard labels (:func:`label_smoothing`;
    without recorded logits, the hyperparameter ``label_smoothing_factor`` or
    ``label_smoothing`` with the number of classes); for XGBoost's Poisson, gamma and Tweedie
    log-likelihoods, the saturated model's (:func:`dbgcli.rules.data.saturated_loss`).
    No cross-entropy against targets falls below their entropy (Gibbs' inequality). None for
    a plain cross-entropy of hard labels, whose floor is 0. Computed once per analysis."""
    return ctx.shared("loss-floor", lambda: _loss_floor(ctx.unfocused()))


def _loss_floor(ctx: RuleContext) -> LossFloor | None:
    metric = loss_metric(ctx)
    saturated = None if metric is None else saturated_loss(ctx, metric)
    if saturated is not None:
        return LossFloor(
            saturated,
            f"{metric}'s {saturated:.4g}, the loss of predicting every label exactly",
        )
    soft = soft_target_entropy(ctx)
    if soft is not None:
        return LossFloor(soft, f"the soft targets' mean entropy {soft:.4g}")
    smoothing = label_smoothing(ctx) or _noted_smoothing(ctx)
    if smoothing is None:
        return None
    epsilon, classes = smoothing
    true_class = 1 - epsilon + epsilon / classes
    other = epsilon / classes
    entropy = -true_class * np.log(true_class) - (classes - 1) * other * np.log(other)
    return LossFloor(
        float(entropy),
        f"label smoothing {epsilon:.2f} over {classes} classes (the true class's target "
        f"{true_class:.2g}), whose targets' entropy is {entropy:.4g}",
    )


def _noted_smoothing(ctx: RuleContext) -> tuple[float, int] | None:
    """The label smoothing among the run's hyperparameters (the Hugging Face Trainer's
    ``label_smoothing_factor``, or ``label_smoothing``) and the number of classes the
    metadata, predictions or labels give, for a run whose logits are not recorded."""
    hyperparameters = ctx.trace.metadata.get("hyperparameters")
    if not isinstance(hyperparameters, Mapping):
        return None
    for key in ("label_smoothing_factor", "label_smoothing"):
        value = hyperparameters.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1:
            classes = class_count(ctx, from_weights=False)
            return (float(value), classes) if classes else None
    return None


def inferred_pos_weight(ctx: RuleContext, *, records: int = 20) -> float | None:
    """The weight a binary loss gives its positive samples (``BCEWithLogitsLoss(pos_weight=w)``,
    how an imbalance is usually compensated), read off the training loss when it is not 1:
    from full tensors of 0/1 labels and one score per sample (logits; probabilities when all
    lie in ``[0, 1]``) at training steps with a recorded loss ``L``, with ``A`` the mean of
    ``-y log q`` and ``B`` that of ``-(1 - y) log(1 - q)`` over the batch, the loss is
    ``w A + B``, so ``w = (L - B) / A``. At least three steps whose ``w`` agree within 1 %,
    more than 5 % away from 1; else None (an unweighted loss, another loss, or predictions
    from another forward pass than the loss's). Computed once per analysis."""
    return ctx.shared("pos-weight", lambda: _inferred_pos_weight(ctx.unfocused(), records))


def _inferred_pos_weight(ctx: RuleContext, records: int) -> float | None:
    losses = _train_losses(ctx)
    if not losses:
        return None
    for labels, predictions in scored_labels(ctx):
        shape = predictions.info.shape
        if shape is None or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            continue
        weights = []
        for step in _loss_steps_in_full(ctx, labels.tag, predictions.tag, losses, records):
            pair = _binary_pair(ctx, labels.tag, predictions.tag, step)
            if pair is None:
                break
            y, p = pair
            probabilities = bool(((p >= 0) & (p <= 1)).all())
            positive, negative = _binary_terms(p, probabilities=probabilities)
            a, b = float(np.mean(y * positive)), float(np.mean((1 - y) * negative))
            if a > 0:
                weights.append((losses[step] - b) / a)
        if len(weights) < 3:
            continue
        middle = float(np.median(weights))
        if middle > 0 and abs(middle - 1) > 0.05 and np.allclose(weights, middle, rtol=0.01):
            return middle
    return None


# Steps a class-weight reading needs beyond one per class: the equations then outnumber the
# weights, so that weights that fit them all say something.
_WEIGHT_SPARE_STEPS = 2
# Steps with full tensors a class-weight reading reads at most.
_MOST_WEIGHT_STEPS = 128


def inferred_class_weights(ctx: RuleContext, *, records: int = 20) -> np.ndarray | None:
    """The weight a cross-entropy gives each class (``CrossEntropyLoss(weight=w)``, how an
    imbalance of several classes is usually compensated), read off the training loss when the
    weights are not all equal; indexed by class id, NaN for a class the steps read never hold.

    PyTorch's weighted cross-entropy is the weighted mean ``L = Σ w[y_i] l_i / Σ w[y_i]``, with
    ``l_i = -log softmax(z_i)[y_i]``. From the full tensors of one class id per sample and
    their logits at a training step with a recorded loss ``L``, that is one linear equation
    ``Σ_c w_c a_c = 0`` with ``a_c = Σ_{i: y_i = c} (l_i - L)``. Read from the training steps
    kept in full (``records`` of them, evenly spread, or two more than the logits' classes if
    that is more) when they number at least two more than the classes seen: the weights are the
    direction that solves the equations best (the last right singular vector), scaled so
    that the smallest is 1, and taken only when all are positive, two of them differ by more
    than 5 %, they give every step's loss within 1 %, and equal weights miss it by ten times
    as much (logits near uniform give every sample about ``ln C``, which any weights fit).
    Else None: an unweighted loss, a loss with other terms (label smoothing, a penalty),
    predictions from another forward pass than the loss's (gradient accumulation records
    one micro-batch's logits beside the loss of all of them), or a head of more than
    ``126`` classes, whose weights would take too many steps to read. Computed once per
    analysis."""
    return ctx.shared("class-weights", lambda: _inferred_class_weights(ctx.unfocused(), records))


def _inferred_class_weights(ctx: RuleContext, records: int) -> np.ndarray | None:
    losses = _train_losses(ctx)
    if not losses:
        return None
    for labels, predictions, width in _scored_logits(ctx):
        if width + _WEIGHT_SPARE_STEPS > _MOST_WEIGHT_STEPS:
            continue
        steps = _loss_steps_in_full(
            ctx, labels.tag, predictions.tag, losses, max(records, width + _WEIGHT_SPARE_STEPS)
        )
        sums, counts, recorded = [], [], []
        for step in steps:
            pair = _logits_and_ids(ctx, labels.tag, predictions.tag, step)
            if pair is None:
                break
            z, ids = pair
            loss = -_log_softmax(z, 1)[np.arange(len(ids)), ids]
            sums.append(np.bincount(ids, weights=loss, minlength=width))
            counts.append(np.bincount(ids, minlength=width).astype(np.float64))
            recorded.append(losses[step])
        else:
            weights = _solved_class_weights(np.array(sums), np.array(counts), np.array(recorded))
            if weights is not None:
                return weights
    return None


def _scored_logits(ctx: RuleContext) -> Iterator[tuple[TensorView, TensorView, int]]:
    """Every labels tag whose predictions hold at least two class scores per sample (a row
    per sample, or per position of a sequence or an image: ``(N, L, C)`` beside labels
    ``(N, L)``, ``(N, C, H, W)`` beside ``(N, H, W)``), with them and the number of classes."""
    for labels, predictions in scored_labels(ctx):
        shape, truth = predictions.info.shape, labels.info.shape
        if shape is None or truth is None or len(shape) != len(truth) + 1 or len(shape) < 2:
            continue
        width = shape[class_axis(predictions.info, labels.info)]
        if width >= 2:
            yield labels, predictions, int(width)


def _solved_class_weights(
    sums: np.ndarray, counts: np.ndarray, recorded: np.ndarray
) -> np.ndarray | None:
    """The class weights of a weighted-mean cross-entropy from each step's per-class sums and
    counts of the samples' cross-entropies and its recorded loss (see
    :func:`inferred_class_weights`), or None."""
    seen = counts.sum(axis=0) > 0
    if seen.sum() < 2 or len(recorded) < seen.sum() + _WEIGHT_SPARE_STEPS:
        return None
    equations = sums[:, seen] - recorded[:, None] * counts[:, seen]
    direction = np.linalg.svd(equations)[2][-1]
    direction = direction * np.sign(direction.sum())
    if not (direction > 0).all():
        return None
    solved = direction / direction.min()

    def misfit(weights: np.ndarray) -> float:
        fitted = (sums[:, seen] @ weights) / (counts[:, seen] @ weights)
        return float(np.max(np.abs(fitted - recorded) / np.abs(recorded)))

    # Near-uniform logits give every sample about ln C, which any weights fit: weights count
    # only where they fit the losses and equal weights do not, by far.
    weighted, plain = misfit(solved), misfit(np.ones(int(seen.sum())))
    if solved.max() <= 1.05 or weighted > _WEIGHT_FIT or plain <= _WEIGHT_EDGE * weighted:
        return None
    weights = np.full(len(seen), np.nan)
    weights[seen] = solved
    return weights


# The largest relative misfit of any step's loss that class weights may leave, and how many
# times that of equal weights must exceed it for the weights to say something.
_WEIGHT_FIT = 0.01
_WEIGHT_EDGE = 10.0


def label_smoothing(ctx: RuleContext, *, records: int = 20) -> tuple[float, int] | None:
    """The label smoothing ``epsilon`` of the training loss, and the number of classes, told
    from the recorded logits and hard labels of training steps with a recorded loss.

    PyTorch's ``CrossEntropyLoss(label_smoothing=e)`` (as Keras's and the Hugging Face
    Trainer's label smoothing) is ``(1 - e) · CE + e · U``, where ``CE`` is the cross-entropy
    of the true classes and ``U`` the mean over all ``C`` classes of ``-log p``: a
    cross-entropy against targets ``1 - e + e/C`` for the true class and ``e/C`` for each
    other. Each step then gives ``e = (L - CE) / (U - CE)`` from its loss ``L`` and its
    logits. Read only when at least 3 steps give one, all in (0, 1] and within 0.02 of their
    median: a loss with other terms (a penalty, an auxiliary head) or predictions from
    another forward pass gives estimates that wander, and is not read as smoothing. None for
    probabilities (DBG307's business), binary outputs, or a plain cross-entropy (``e``
    below 0.01)."""
    losses = _train_losses(ctx)
    if not losses:
        return None
    for labels, predictions, width in _scored_logits(ctx):
        steps = _loss_steps_in_full(ctx, labels.tag, predictions.tag, losses, records)
        estimates = []
        for step in steps:
            parts = _smoothing_parts(ctx, labels.tag, predictions.tag, step)
            if parts is None:
                break
            true_ce, uniform = parts
            # L = (1 - e) · CE + e · U holds whichever of CE and U is larger (an untrained
            # model's true class can score below its mean); they must differ by more than
            # the loss's rounding.
            if abs(uniform - true_ce) > _SMOOTHING_SEPARATION:
                estimates.append((losses[step] - true_ce) / (uniform - true_ce))
        if len(estimates) < _SMOOTHING_STEPS:
            continue
        found = np.array(estimates)
        median = float(np.median(found))
        if (
            median >= 0.01
            and (found > 0).all()
            and (found <= 1 + _SMOOTHING_AGREEMENT).all()
            and np.abs(found - median).max() <= _SMOOTHING_AGREEMENT
        ):
            return min(median, 1.0), width
    return None


def _smoothing_parts(
    ctx: RuleContext, labels: str, predictions: str, step: int
) -> tuple[float, float] | None:
    """Mean cross-entropy of the true classes, and mean over classes of ``-log p``, of one
    training step's logits; None unless they are logits (see :func:`_logits_and_ids`)."""
    pair = _logits_and_ids(ctx, labels, predictions, step)
    if pair is None:
        return None
    log_p = _log_softmax(pair[0], 1)
    return float(-log_p[np.arange(len(pair[1])), pair[1]].mean()), float(-log_p.mean())


def _logits_and_ids(
    ctx: RuleContext, labels: str, predictions: str, step: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """One training step's logits (float64, a row per sample or per position) and class
    ids, of the samples whose id fits the logits; None unless they are finite logits (not
    probability rows) with one class id per row."""
    scores = ctx.trace.raw(predictions, step, "train")
    truth = ctx.trace.raw(labels, step, "train")
    if scores is None or truth is None or scores.ndim != truth.ndim + 1:
        return None
    axis = class_axis(ctx.trace.tag(predictions), ctx.trace.tag(labels))
    scores = np.moveaxis(scores, axis, -1)
    if scores.shape[:-1] != truth.shape:
        return None
    scores, truth = scores.reshape(-1, scores.shape[-1]), truth.reshape(-1)
    z = scores.astype(np.float64)
    if not np.isfinite(z).all():
        return None
    if (z >= 0).all() and (z <= 1).all() and np.allclose(z.sum(axis=1), 1.0, atol=1e-3):
        return None
    found, width = class_ids(truth[None])
    if width is not None:
        return None
    ids = found[0]
    keep = (ids >= 0) & (ids < z.shape[1])
    if not keep.any():
        return None
    return z[keep], ids[keep]


# -- DBG308 clamped-logits ------------------------------------------------------------------------

# Share of a step's class scores exactly zero, none negative, from which the scores are
# clamped: a linear layer's output is exactly zero with probability zero, so any sizeable share
# is a clamp's; an untrained ReLU output layer already holds about half.
_CLAMPED_SHARE = 0.1


@rule(
    "DBG308",
    "clamped-logits",
    severity="error",
    category="loss",
    requires=(LABELS, PREDICTIONS),
    label={
        "clamped-outputs": "outputs clamped at zero",
        "squashed-outputs": "outputs squashed by the last activation",
        "unreached-targets": "targets beyond the outputs' reach",
        "*": "logits clamped at zero",
    },
    # A class whose logit sits at the clamp gets no gradient: it can be neither raised for its
    # own samples nor lowered for others', so classes go unpredicted, the output units look
    # dead and the loss stalls. Targets far beyond the outputs drive every layer before them
    # to its extreme: saturated units, huge gradients and updates.
    explains={
        "unreached-targets": (
            "DBG101",
            "DBG102",
            "DBG201",
            "DBG202",
            "DBG203",
            "DBG301:not-decreasing",
            "DBG303",
            "DBG502",
            *LEARNING_RATE_BY_UPDATES,
        ),
        "*": ("DBG201", "DBG301:not-decreasing", "DBG303", "DBG601:mispredicted", "DBG604"),
    },
)
def clamped_logits(ctx: RuleContext, *, records: int = 20) -> Iterator[Finding]:
    """Outputs held where the targets cannot be reached: a ReLU, sigmoid or tanh last.

    Checked on up to ``records`` recorded steps, spread over the run and its modes, that hold
    full tensors of class labels (one class id per sample, or one-hot rows) and of predictions
    with a class axis of at least two scores; labels that are no classes (a regression's
    targets, a language model's tokens; see DBG601) are not judged. A step counts where
    every score is finite and none is negative, at least a tenth of them are exactly zero,
    and the rows are not
    probability vectors (sparsemax and other sparse probabilities hold exact zeros by design;
    DBG307 judges softmax outputs) nor hard 0/1 decisions. A linear layer's output is exactly
    zero with probability zero, so such a share is a clamp's; an untrained ReLU output layer
    gives about half. At least three such steps, and at least half of those compared, make
    the finding.

    A regression's outputs (key ``clamped-outputs``): with labels that are quantities (see
    :func:`dbgcli.rules.data.regression_targets`), or any numbers where the run metadata's
    ``task`` is ``regression``, and predictions of as many values, a step
    is compared where at least a tenth of the targets are negative, and counts where every
    output is finite, none is negative and at least a tenth are exactly zero: a ReLU after
    the last layer, which cannot reach the negative targets (half of any standardised
    target) and passes no gradient to move there. Targets that are never negative (prices,
    counts) are not compared: a ReLU there keeps the outputs in range by design. The same
    three steps and half of those compared make the finding.

    A regression's outputs squashed (key ``squashed-outputs``): where the run metadata names
    the model's output layer (``model_outputs``, the PyTorch hook's note) and it is a sigmoid
    or a tanh, whose outputs cannot leave ``(0, 1)`` or ``(-1, 1)``, a step counts where every
    output is finite and inside it (the predictions recorded are that layer's): at least three
    such steps, half of those read. Their targets, pooled, must lie outside the range for at
    least a tenth, and far enough that the range alone keeps a mean squared error above a
    tenth of their variance (the mean squared distance from the targets to the range is
    that floor): a sigmoid on measured fractions that spill a little past 1 costs nothing.
    A training loss recorded at one of those steps below its batch's floor and below the
    batch's mean distance (an absolute error's floor) is not the loss of these targets (they
    are scaled inside the loss, say), and gives no finding.

    A regression's targets beyond the outputs' reach (key ``unreached-targets``): a step
    counts where the targets' mean lies more than their standard deviation beyond the
    largest output in size, ``|mean(y)| - max|p| > std(y)``, which puts the mean squared
    error above the targets' variance: a constant at their mean would do better. At least
    three such steps, half of those read, the last included (the model as training leaves
    it). Targets in raw units (prices, counts in the thousands) do that: a network's outputs
    start near 0, Adam moves a weight by about its learning rate a step, so the output layer
    cannot grow by thousands in a run, and the loss drives every layer before it to its
    extreme instead (a tiny BERT's regression on targets of 2e4 +- 1.4e4: outputs up to 12,
    its pooler's tanh saturated, the loss flat at 6e8). A training loss below the floors of
    the recorded pairs, as for squashed outputs, takes other targets (standardised inside
    the loss, the raw ones recorded) and gives no finding.

    Why it matters: cross-entropy wants the logits of the wrong classes far below the right
    one's; clamped at zero, they cannot go below it, and a logit at the clamp passes no
    gradient, so a class whose logit sits there for its own samples is never learnt. A
    regression's outputs clamped or squashed cannot reach the targets beyond them: the loss
    has a floor the model cannot train through.

    Typical causes: ``nn.Sequential`` built with a ReLU after every ``Linear``, the last
    included; ``F.relu`` applied to the output in ``forward``; ``clamp(min=0)`` on the logits
    or outputs.

    Fix: return the last linear layer's output as it is; apply softmax or sigmoid only to
    read predictions; a regression whose targets cannot be negative can use softplus, one
    whose targets lie in a range can scale them into the last activation's (min-max to
    ``[0, 1]`` for a sigmoid).

    Fix (key ``unreached-targets``): standardise the targets (subtract their mean, divide by
    their standard deviation, and undo it on the predictions), or start the output layer's
    bias at their mean.

    Args:
        records: Most steps read.
    """
    if records < 1:
        raise RuleConfigError(f"DBG308 records must be at least 1, got {records}")
    # Whole-number targets (ratings, counts) are a regression's where the metadata says so.
    if regression_targets(ctx) or ctx.trace.metadata.get("task") == "regression":
        yield from _clamped_outputs(ctx, records)
        yield from _squashed_outputs(ctx, records)
        yield from _unreached_targets(ctx, records)
        return
    refuse_unclassed(ctx)
    for labels, predictions in scored_labels(ctx):
        shape = predictions.info.shape
        if shape is None or len(shape) < 2 or shape[-1] < 2:
            continue
        compared, hits = 0, []
        for step, mode in _steps_in_full(ctx, (labels.tag, predictions.tag), records):
            share = _clamped_share(ctx, labels.tag, predictions.tag, step, mode)
            if share is None:
                continue
            compared += 1
            if share >= _CLAMPED_SHARE:
                hits.append((step, mode, share))
        yield from _clamped(labels.tag, predictions.tag, hits, compared, "clamped", "class scores")


def _clamped_outputs(ctx: RuleContext, records: int) -> Iterator[Finding]:
    """DBG308 on a regression: outputs clamped at zero beside targets that are negative."""
    for labels, predictions in scored_labels(ctx):
        compared, hits, last_negative = 0, [], 0.0
        for step, mode in _steps_in_full(ctx, (labels.tag, predictions.tag), records):
            outputs = ctx.trace.raw(predictions.tag, step, mode)
            truth = ctx.trace.raw(labels.tag, step, mode)
            if outputs is None or truth is None or outputs.size != truth.size or not truth.size:
                continue
            negative = float(np.mean(truth < 0))
            if outputs.dtype.kind != "f" or negative < _CLAMPED_SHARE:
                continue
            if not np.isfinite(outputs).all():
                continue
            compared += 1
            if (outputs >= 0).all() and np.mean(outputs == 0) >= _CLAMPED_SHARE:
                hits.append((step, mode, float(np.mean(outputs == 0))))
                last_negative = negative
        yield from _clamped(
            labels.tag,
            predictions.tag,
            hits,
            compared,
            "clamped-outputs",
            "outputs",
            f", where {last_negative:.0%} of the targets are negative",
        )


# The ranges of the output activations that squash: a regression head ending in one cannot
# leave them.
_SQUASHING = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


def _squashed_outputs(ctx: RuleContext, records: int) -> Iterator[Finding]:
    """DBG308 on a regression whose output layer is a sigmoid or a tanh, beside targets
    outside its range."""
    outputs = model_output_tags(ctx)
    kinds = {
        view.info.kind
        for view in ctx.tensors(collection="activations")
        if view.tag in outputs and view.info.kind in _SQUASHING
    }
    if len(kinds) != 1:
        return
    (kind,) = kinds
    low, high = _SQUASHING[kind]
    losses = _train_losses(ctx)
    for labels, predictions in scored_labels(ctx):
        read, inside = 0, []
        for step, mode in _steps_in_full(ctx, (labels.tag, predictions.tag), records):
            scores = ctx.trace.raw(predictions.tag, step, mode)
            truth = ctx.trace.raw(labels.tag, step, mode)
            if scores is None or truth is None or scores.size != truth.size or not truth.size:
                continue
            if scores.dtype.kind != "f" or not np.isfinite(scores).all():
                continue
            read += 1
            if ((scores >= low) & (scores <= high)).all():
                y = truth.reshape(-1).astype(np.float64)
                y = y[np.isfinite(y)]
                inside.append((step, mode, y, np.maximum(low - y, 0) + np.maximum(y - high, 0)))
        if not _shown(len(inside), read):
            continue
        if any(_other_targets(losses, step, mode, g) for step, mode, _, g in inside if g.size):
            continue
        targets = np.concatenate([y for _, _, y, _ in inside])
        gaps = np.concatenate([g for _, _, _, g in inside])
        if not targets.size:
            continue
        outside, floor = float(np.mean(gaps > 0)), float(np.mean(gaps**2))
        variance = float(np.var(targets))
        # Out of reach, and dearly: the range alone keeps the fit from a tenth of the
        # targets' variance.
        if outside < _CLAMPED_SHARE or floor < _CLAMPED_SHARE * variance:
            continue
        last_step, last_mode, _, _ = inside[-1]
        costs = f", {floor / variance:.0%} of their variance" if variance else ""
        yield Finding(
            message=(
                f"the outputs never leave [{low:g}, {high:g}], the range of the model's last "
                f"activation, a {kind}, while {outside:.0%} of the targets lie outside it: a "
                f"mean squared error cannot fall below {floor:.4g}, their mean squared "
                f"distance to it{costs}; {len(inside)} of {read} steps read"
            ),
            tensor=predictions.tag,
            first_step=inside[0][0],
            last_step=last_step,
            steps=len(inside),
            value=outside,
            threshold=_CLAMPED_SHARE,
            mode=last_mode,
            key="squashed-outputs",
            extra={"labels": labels.tag, "steps_compared": read, "activation": kind},
        )


def _other_targets(losses: Mapping[int, float], step: int, mode: str, gaps: np.ndarray) -> bool:
    """Whether the training loss recorded at ``step`` is below both floors a squared and an
    absolute error have, given how far each recorded target lies from where the outputs can
    be (``gaps``): such a loss is neither, and takes other targets (scaled inside it)."""
    floor = min(float(np.mean(gaps**2)), float(np.mean(gaps)))
    return mode == "train" and losses.get(step, np.inf) < (1 - _SAME_LOSS) * floor


def _unreached_targets(ctx: RuleContext, records: int) -> Iterator[Finding]:
    """DBG308 on a regression whose targets lie beyond every output, to the end."""
    losses = _train_losses(ctx)
    for labels, predictions in scored_labels(ctx):
        read, hits, last, elsewhere = 0, [], (-1, ""), False
        for step, mode in _steps_in_full(ctx, (labels.tag, predictions.tag), records):
            outputs = ctx.trace.raw(predictions.tag, step, mode)
            truth = ctx.trace.raw(labels.tag, step, mode)
            if outputs is None or truth is None or outputs.size != truth.size or truth.size < 2:
                continue
            y = truth.reshape(-1).astype(np.float64)
            p = outputs.reshape(-1).astype(np.float64)
            if outputs.dtype.kind != "f" or not (np.isfinite(p).all() and np.isfinite(y).all()):
                continue
            read, last = read + 1, (step, mode)
            centre, spread, reach = float(np.mean(y)), float(np.std(y)), float(np.abs(p).max())
            if abs(centre) - reach > spread:
                hits.append((step, mode, centre, spread, reach))
                elsewhere |= _other_targets(losses, step, mode, np.abs(p - y))
        if elsewhere or not _shown(len(hits), read) or hits[-1][:2] != last:
            continue
        last_step, last_mode, centre, spread, reach = hits[-1]
        yield Finding(
            message=(
                f"the targets (mean {centre:.4g}, standard deviation {spread:.4g} at step "
                f"{last_step}) lie beyond every output (at most {reach:.3g} in size): a "
                f"constant at their mean would fit better; {len(hits)} of {read} steps read, "
                "the last included (targets in raw units?)"
            ),
            tensor=predictions.tag,
            first_step=hits[0][0],
            last_step=last_step,
            steps=len(hits),
            value=(abs(centre) - reach) / spread if spread else float("inf"),
            threshold=1.0,
            mode=last_mode,
            key="unreached-targets",
            extra={"labels": labels.tag, "steps_compared": read},
        )


def _clamped(
    labels: str,
    predictions: str,
    hits: Sequence[tuple[int, str, float]],
    compared: int,
    key: str,
    what: str,
    where: str = "",
) -> Iterator[Finding]:
    """DBG308's finding from the steps that showed a clamp, ``(step, mode, share at 0)``,
    when they are at least three and half of those compared."""
    if not _shown(len(hits), compared):
        return
    last_step, last_mode, share = hits[-1]
    yield Finding(
        message=(
            f"the {what} are clamped at zero (a ReLU after the last layer?): none is negative "
            f"and {share:.0%} are exactly 0 at step {last_step} ({last_mode}){where}; "
            f"{len(hits)} of {compared} steps compared"
        ),
        tensor=predictions,
        first_step=hits[0][0],
        last_step=last_step,
        steps=len(hits),
        value=share,
        threshold=_CLAMPED_SHARE,
        mode=last_mode,
        key=key,
        extra={"labels": labels, "steps_compared": compared},
    )


def _clamped_share(
    ctx: RuleContext, labels: str, predictions: str, step: int, mode: str
) -> float | None:
    """Share of one step's class scores exactly zero if none is negative, 0.0 if some are;
    None where the step holds no class labels and scores to judge: labels that are not one
    class per sample, predictions that are not float scores along a last class axis, scores
    that are not finite, probability rows or hard 0/1 decisions."""
    scores = ctx.trace.raw(predictions, step, mode)
    truth = ctx.trace.raw(labels, step, mode)
    if scores is None or truth is None or scores.dtype.kind != "f" or scores.size == 0:
        return None
    classes = scores.shape[-1]
    if truth.shape == scores.shape:
        rows = truth.reshape(-1, classes)
        if not (((rows == 0) | (rows == 1)).all() and (rows.sum(axis=1) == 1).all()):
            return None  # not one-hot: several targets per sample (a regression's, say)
    elif truth.shape != scores.shape[:-1]:
        return None  # no class axis: class ids, or scores of another layout
    found, width = class_ids(truth[None])
    if width not in (None, classes) or not (found >= 0).any() or found.max() >= classes:
        return None
    p = scores.reshape(-1, classes).astype(np.float64)
    if not np.isfinite(p).all():
        return None
    if (p < 0).any():
        return 0.0
    if np.allclose(p.sum(axis=1), 1.0, atol=1e-3) or ((p == 0) | (p == 1)).all():
        return None
    return float(np.mean(p == 0))


# -- DBG310 inflated-initial-loss -----------------------------------------------------------------


@rule(
    "DBG310",
    "inflated-initial-loss",
    severity="warning",
    category="loss",
    requires=(LABELS, PREDICTIONS),
    label={"start": "loss inflated at the start", "*": "outputs confidently wrong throughout"},
    # Outputs that stay confidently wrong keep the loss high.
    explains={"start": (), "*": ("DBG301:not-decreasing", "DBG303")},
)
def inflated_initial_loss(ctx: RuleContext, *, ratio: float = 2.0) -> Iterator[Finding]:
    """The untrained model's loss is far above a uniform guess's: it starts confidently wrong.

    An untrained classifier should spread its probability over the ``C`` classes: its
    cross-entropy is then about ``ln C`` (``ln 2`` per output of a binary or multi-label
    head), and "verify the loss at initialisation" is the first check of Karpathy's recipe
    (2019) and of TheDeepChecker's pre-training checks. Logits of standard deviation ``s``
    add about ``s² / 2`` to it; far above it, the model starts out sure of wrong answers, and
    the first part of training only shrinks its outputs (the "hockey stick" loss curve).

    Read from the full tensors of predictions and labels at the run's first training step
    (the first step of its training loss or labels; a run resumed from a checkpoint, metadata
    ``resumed_from_step``, has no untrained model to judge): the mean cross-entropy
    ``logsumexp(z) - z[y]`` of class scores ``(N, ..., C)`` against class ids ``(N, ...)``
    (negative ids, ignore markers, left out; labels that repeat the input ids are shifted by
    one, as a causal language model's), ``-log p[y]`` where the rows are probabilities, or
    the binary cross-entropy ``log(1 + e^z) - y z`` of one logit per sample (or per label of
    a multi-label head) against 0/1 targets. Computed from the outputs, not from the recorded
    loss, so class weights, label smoothing or a summed loss do not change it. Fires when it
    is at least ``ratio`` times the uniform guess's (TheDeepChecker's default tolerance is
    the same, a relative deviation of 1): at ``C = 10``, logits with a standard deviation of
    about 2; the untrained healthy runs of the calibration corpus start at 1.5 times it at
    most. A single batch can be dominated by one class (unshuffled data) and score far from
    a guess by the bias of one logit alone, so the cross-entropy against targets spread
    evenly over the classes, ``logsumexp(z) - mean(z)``, must reach ``ratio`` times it as
    well.

    Judged by what followed, as DBG501 judges a scale: key ``inflated``, a warning and a
    cause of the loss rules' findings, when the outputs never came down: the cross-entropy
    is still ``ratio`` times the uniform guess's at each of up to 8 later training steps
    kept in full (spread over the run), and the recorded training loss, where it is the same
    cross-entropy (within 10 % at the start), never fell below that either. Else key
    ``start``, severity info (the cost was the first steps; a run that shrank its outputs
    and failed later, say by diverging, fails for its own reason).

    Not judged: the targets of a regression or ranking and in-batch indices (metadata
    ``task``, or labels that read so), and scores that are hard decisions.

    Why it matters: the gradient first goes into shrinking the outputs, not into learning
    features; large logits saturate the softmax, and a badly scaled output layer can keep the
    loss high for the whole run.

    Typical causes: an output layer initialised from ``torch.randn`` without a scale; an
    embedding tied to the output layer with N(0, 1) entries (transformers use std 0.02);
    inputs far from unit scale (DBG602); a temperature divided the wrong way; a last bias
    set to large values.

    Fix: initialise the output layer small (``std`` 0.01-0.02, or zero weights), set its
    bias to the log of the class frequencies, standardise the inputs.

    Args:
        ratio: Multiple of the uniform guess's cross-entropy at or above which the initial
            loss is inflated (above 1).
    """
    if ratio <= 1:
        raise RuleConfigError(f"DBG310 ratio must be above 1, got {ratio}")
    whole = ctx.unfocused()
    resumed = resumed_without_start(whole, "train")
    if resumed is not None:
        raise RuleSkipped(f"the run resumed at step {resumed}: the trace holds no untrained model")
    if not language_tokens(whole):
        refuse_unclassed(whole)
    shift = labels_are_the_inputs(whole)
    series = whole.loss("train")
    judged = False
    train = schema.MODE_CODES["train"]
    for labels, predictions in scored_labels(whole):
        kept = np.intersect1d(
            kept_steps(whole, labels.tag, train), kept_steps(whole, predictions.tag, train)
        )
        steps, modes = whole.trace.index(labels.tag)
        starts = [int(steps[modes == train].min())] if (modes == train).any() else []
        if series is not None and len(series.steps):
            starts.append(int(series.steps.min()))
        if not len(kept) or int(kept[0]) > min(starts):
            continue
        first = step_cross_entropy(whole, labels.tag, predictions.tag, int(kept[0]), shift)
        if first is None:
            continue
        judged = True
        # Wrong on the batch's labels, and confident whatever the labels: one batch of a
        # single class (unshuffled data) can score below a guess by chance of the bias alone.
        inflation = min(first.labelled, first.even) / first.uniform
        if inflation < ratio:
            continue
        # The outputs stayed inflated if no later read came down from there (a few, spread
        # over the run: a language model's logits are large), nor the recorded loss where it
        # is the same cross-entropy: a run that shrank them and then diverged fails for its
        # own reason.
        bar = ratio * first.uniform
        later = []
        for step in _spread([int(step) for step in kept[1:]], _LATER_READS):
            read = step_cross_entropy(whole, labels.tag, predictions.tag, step, shift)
            if read is not None:
                later.append((step, read))
        came_down = any(read.labelled < bar for _, read in later)
        losses = _train_losses(whole)
        at_start = losses.get(int(kept[0]))
        if at_start is not None and abs(at_start - first.labelled) <= 0.1 * first.labelled:
            came_down = came_down or min(losses.values()) < bar
        last = later[-1] if later else None
        stayed = last is not None and not came_down
        after = (
            f"; {'still' if stayed else 'down to'} {last[1].labelled:.4g} at step {last[0]}"
            if last is not None
            else ""
        )
        yield Finding(
            message=(
                f"the untrained model's {first.what} is {first.labelled:.4g} at step "
                f"{int(kept[0])} ({first.even:.4g} against targets spread evenly over the "
                f"classes), {inflation:.3g} times a uniform guess's {first.uniform:.4g} (>= "
                f"{ratio:g}): its outputs start confidently wrong (an output layer or tied "
                f"embedding initialised too large?){after}"
            ),
            tensor=predictions.tag,
            first_step=int(kept[0]),
            last_step=int(kept[0]),
            steps=1,
            value=inflation,
            threshold=ratio,
            mode="train",
            key="inflated" if stayed else "start",
            severity=None if stayed else Severity.info,
            extra={"labels": labels.tag, "cross_entropy": first.labelled, "uniform": first.uniform},
        )
    if not judged:
        raise RuleSkipped(
            "no class scores with their labels kept in full at the run's first training step"
        )


# Later reads of the predictions that tell whether an inflated start came down.
_LATER_READS = 8


class Confidence(NamedTuple):
    """One step's mean cross-entropy against its labels (``labelled``) and against targets
    spread evenly over the classes (``even``, which the batch's class mix does not sway), the
    uniform guess's (``uniform``), and what the first is in words."""

    labelled: float
    even: float
    uniform: float
    what: str


def step_cross_entropy(
    ctx: RuleContext, labels: str, predictions: str, step: int, shift: bool, mode: str = "train"
) -> Confidence | None:
    """How confident one step's predictions are, right or wrong; None where the step holds
    no class scores and targets to compare (see :func:`inflated_initial_loss`)."""
    scores = ctx.trace.raw(predictions, step, mode)
    truth = ctx.trace.raw(labels, step, mode)
    if scores is None or truth is None or scores.dtype.kind != "f" or not scores.size:
        return None
    z = scores.astype(np.float64)
    if not np.isfinite(z).all():
        return None
    targets = truth.astype(np.float64)
    indicators = bool(((targets == 0) | (targets == 1)).all())
    single = z.ndim == 1 or z.shape[-1] == 1
    one_hot = (
        indicators
        and not single
        and truth.shape == z.shape
        and bool((targets.sum(axis=-1) == 1).all())
    )
    if indicators and not one_hot and (truth.shape == z.shape or (single and truth.size == z.size)):
        # One logit per sample, or per label of a multi-label head, against 0/1 targets.
        if ((z >= 0) & (z <= 1)).all():
            return None  # probabilities of a sigmoid: DBG307's to judge
        y = targets.reshape(z.shape)
        if_one, if_zero = _binary_terms(z, probabilities=False)
        labelled = float(np.mean(np.where(y == 1, if_one, if_zero)))
        even = float(np.mean((if_one + if_zero) / 2))
        return Confidence(labelled, even, float(np.log(2.0)), "binary cross-entropy")
    if shift and z.ndim == 3 and truth.shape == z.shape[:2]:
        z, truth = z[:, :-1], truth[:, 1:]
    classes = z.shape[-1]
    if single or (truth.shape == z.shape and not one_hot):
        return None  # soft targets (label smoothing, mixup): no class per sample
    if truth.shape not in (z.shape, z.shape[:-1], (*z.shape[:-1], 1)):
        return None
    found, width = class_ids(truth.reshape(z.shape if one_hot else z.shape[:-1])[None])
    if width not in (None, classes):
        return None
    ids = found[0]
    keep = (ids >= 0) & (ids < classes)
    if not keep.any():
        return None
    rows, ids = z.reshape(-1, classes)[keep], ids[keep]
    if (rows >= 0).all() and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        rows = np.log(np.maximum(rows, np.finfo(np.float64).tiny))
    log_p = _log_softmax(rows, 1)
    labelled = float(np.mean(-log_p[np.arange(len(ids)), ids]))
    return Confidence(labelled, float(np.mean(-log_p)), float(np.log(classes)), "cross-entropy")


# -- DBG311 broadcast-loss ----------------------------------------------------------------------

# Within this, the recorded loss is a loss computed here from the recorded tensors: a float32
# mean over a batch, even of N x N pairs, is within about 1e-6 of float64's.
_SAME_COMPUTED = 1e-4
# Beyond this, two losses computed here tell a broadcast from an elementwise pairing.
_TOLD_PAIRING = 1e-3
# Beyond this many samples a step's pairwise smooth L1 is not computed (N x N values).
_PAIRWISE_SAMPLES = 1024


@rule(
    "DBG311",
    "broadcast-loss",
    severity="warning",
    category="loss",
    requires=(TRAIN_LOSS, LABELS, PREDICTIONS),
    label="loss broadcast over the batch",
    # Every prediction is pulled to the batch's mean target: the loss stays at the targets'
    # variance, and nothing the inputs say is learned.
    explains=("DBG301:not-decreasing", "DBG303", "DBG402"),
)
def broadcast_loss(ctx: RuleContext, *, records: int = 20) -> Iterator[Finding]:
    """A regression's loss compares each prediction with every target: shapes broadcast to N x N.

    ``nn.MSELoss`` (``F.mse_loss``, ``l1_loss``, ``smooth_l1_loss``, ``huber_loss``) given a
    model's ``(N, 1)`` output and a ``(N,)`` target broadcasts them to ``(N, N)`` and averages
    ``(p_i - y_j)^2`` over every pair; PyTorch only warns ("Using a target size ... that is
    different to the input size"). The gradient of that mean pulls each prediction to the
    batch's mean target, whatever its input: the model learns to predict the mean, and the
    loss stays at the targets' variance.

    Checked on up to ``records`` training steps, spread over the run, that hold a training
    loss and full tensors of numeric targets and of predictions with as many values, in
    shapes that broadcast to more (one ``(N, 1)``, the other ``(N,)``; the losses computed
    are those of every pair, so a dense output broadcast along one axis, ``(B, 1, H, W)``
    against ``(B, H, W)``, is not recognised). At each, the mean
    squared error, the mean absolute error and the smooth L1 (Huber, δ = 1) are computed
    both ways, over every pair (the squared error as ``var(p) + var(y) + (mean p - mean
    y)^2``, the absolute error from the sorted targets' running sums, the smooth L1 for at
    most 1,024 samples) and element by element. The two
    pairings differ by twice the covariance of predictions and targets (for the squared
    error): a step tells them apart where they differ by more than 0.1 %, and shows the
    broadcast where the recorded loss is within 0.01 % of a pairwise loss and more than
    0.1 % from the same loss element by element (a float32 mean is within about 1e-6 of
    float64's). At least three such steps, and at least half of those that tell the pairings
    apart, make the finding, dated from the first training loss (the loss is the code's).

    A correct loss given ``output.squeeze(-1)``, whose ``(N, 1)`` output was recorded as it
    came, matches the elementwise loss and gives no finding; nor does a model whose
    predictions do not covary with the targets (one that learned nothing, however it pairs
    them): its two pairings are the same loss. A loss with other terms matches neither.

    Why it matters: the model cannot learn anything about its inputs; the loss looks like a
    hard problem's plateau, and the run like underfitting.

    Typical causes: ``criterion(model(x), y)`` with a ``Linear(..., 1)`` head and a 1-D
    target; targets loaded as ``(N, 1)`` against a ``squeeze()``d output.

    Fix: give the loss equal shapes: ``criterion(output.squeeze(-1), y)`` or
    ``criterion(output, y.unsqueeze(-1))``; make PyTorch's broadcast warning an error in tests
    (``warnings.filterwarnings("error", message="Using a target size")``).

    Args:
        records: Most steps read and compared.
    """
    if records < 1:
        raise RuleConfigError(f"DBG311 records must be at least 1, got {records}")
    losses = _train_losses(ctx)
    if not losses:
        return
    for labels, predictions in scored_labels(ctx):
        read = _read_steps(ctx, labels.tag, predictions.tag, losses, records, _pairings)
        told = [(step, pairings) for step, pairings in read if pairings.told_apart]
        hits = [(step, p, kind) for step, p in told if (kind := p.broadcast(losses[step]))]
        if not _shown(len(hits), len(told)):
            continue
        step, last, kind = hits[-1]
        _, elementwise = last.losses[kind]
        yield _in_the_code(
            f"predictions {last.shapes[0]} against targets {last.shapes[1]}: the training "
            f"loss is the {kind} of every prediction against every target, broadcast to "
            f"{last.pairs} (at step {step} {losses[step]:.6g}, element by element "
            f"{elementwise:.6g}); the predictions spread {last.spread:.3g} against the "
            f"targets' {last.target_spread:.3g}; {len(hits)} of {len(told)} steps that tell "
            "the pairings apart",
            (labels.tag, predictions.tag),
            min(losses),
            [step for step, _, _ in hits],
            len(told),
        )


class _Pairings(NamedTuple):
    """One step's losses as DBG311 computes them, by kind: ``(over every pair, element by
    element)``; the spreads (standard deviations) of predictions and targets; their shapes
    and their broadcast's."""

    losses: dict[str, tuple[float, float]]
    spread: float
    target_spread: float
    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    pairs: str

    @property
    def told_apart(self) -> bool:
        return any(abs(pair - own) > _TOLD_PAIRING * abs(own) for pair, own in self.losses.values())

    def broadcast(self, loss: float) -> str:
        """The kind of loss whose pairwise value ``loss`` is, and not its elementwise one;
        empty for none."""
        for kind, (pair, own) in self.losses.items():
            if abs(loss - pair) <= _SAME_COMPUTED * abs(pair) and (
                abs(loss - own) > _TOLD_PAIRING * abs(own)
            ):
                return kind
        return ""


def _pairings(ctx: RuleContext, labels: str, predictions: str, step: int) -> _Pairings | None:
    """DBG311's reading of one training step; None unless its predictions and targets are
    finite numbers, as many of each, in shapes that broadcast to more."""
    scores = ctx.trace.raw(predictions, step, "train")
    truth = ctx.trace.raw(labels, step, "train")
    if scores is None or truth is None or scores.dtype.kind != "f" or scores.size < 2:
        return None
    if truth.dtype.kind not in "fiub" or truth.size != scores.size or truth.shape == scores.shape:
        return None
    try:
        paired = np.broadcast_shapes(scores.shape, truth.shape)
    except ValueError:
        return None
    if int(np.prod(paired)) <= scores.size:
        return None
    p = scores.reshape(-1).astype(np.float64)
    y = truth.reshape(-1).astype(np.float64)
    if not (np.isfinite(p).all() and np.isfinite(y).all()):
        return None
    squared = float(np.var(p) + np.var(y) + (p.mean() - y.mean()) ** 2)
    own = np.abs(p - y)
    found = {
        "mean squared error": (squared, float(np.mean(own**2))),
        "mean absolute error": (_pairwise_absolute(p, y), float(own.mean())),
    }
    if p.size <= _PAIRWISE_SAMPLES:
        gaps = np.abs(p[:, None] - y[None, :])
        found["smooth L1 loss"] = (float(_smooth_l1(gaps).mean()), float(_smooth_l1(own).mean()))
    return _Pairings(
        found,
        float(p.std()),
        float(y.std()),
        (scores.shape, truth.shape),
        " x ".join(str(n) for n in paired),
    )


def _pairwise_absolute(p: np.ndarray, y: np.ndarray) -> float:
    """The mean of ``|p_i - y_j|`` over every pair, from the sorted targets' running sums:
    each prediction is above the targets before it and below the others."""
    ordered = np.sort(y)
    sums = np.concatenate(([0.0], np.cumsum(ordered)))
    below = np.searchsorted(ordered, p, side="right")
    over = below * p - sums[below]
    under = (sums[-1] - sums[below]) - (len(ordered) - below) * p
    return float((over + under).sum() / (len(p) * len(ordered)))


def _smooth_l1(gaps: np.ndarray) -> np.ndarray:
    """Smooth L1 (Huber with δ = 1) of absolute errors, as PyTorch's default computes it."""
    return np.where(gaps < 1.0, 0.5 * gaps**2, gaps - 0.5)


# -- DBG312 targets-outside-the-loss ------------------------------------------------------------

# Beyond this from 1, the sum of a row of targets is no class distribution's.
_NOT_A_DISTRIBUTION = 0.05


@rule(
    "DBG312",
    "targets-outside-the-loss",
    severity="error",
    category="loss",
    requires=(TRAIN_LOSS, LABELS, PREDICTIONS),
    label={
        "binary-range": "binary targets outside [0, 1]",
        "not-distributions": "targets that are no class distribution",
    },
    # A loss without a minimum drives the scores off to infinity (weights and gradients grow
    # with them, and the loss may turn negative or non-finite); one with its minimum in the
    # wrong place trains the classifier to another task: it stalls and mispredicts.
    explains=(
        "DBG102",
        "DBG301",
        "DBG303",
        "DBG305",
        "DBG306",
        "DBG404",
        "DBG502",
        *LEARNING_RATE_BY_UPDATES,
        "DBG601:mispredicted",
        "DBG604",
    ),
)
def targets_outside_the_loss(ctx: RuleContext, *, records: int = 20) -> Iterator[Finding]:
    """The loss is given targets it is not defined for: class ids, or several labels per sample.

    * **binary targets outside [0, 1]** (key ``binary-range``): ``BCEWithLogitsLoss`` takes
      any target without complaint, and with a target ``y > 1`` its terms ``log(1 + e^z) -
      y z`` fall without bound as the score ``z`` grows: the loss has no minimum, turns
      negative and runs off (class ids 0-4 given as float targets to a one-output model).
      Steps are compared whose labels have any value outside ``[0, 1]`` and whose
      predictions hold one score per label; a step counts where the recorded loss is the
      binary cross-entropy of the scores against those labels, read as logits or as
      probabilities.
    * **targets that are no class distribution** (key ``not-distributions``): the
      cross-entropy of a softmax with probability targets, ``-sum_k t_k log softmax(z)_k``
      (``F.cross_entropy`` given float targets of the predictions' shape), is minimised at
      ``softmax(z) = t / sum(t)``: with multi-label indicators (several 1s in a row) it
      spreads each sample's probability over its ``k`` labels, so no label can be scored above
      ``1/k`` and the loss cannot fall below ``k ln k`` for such a row, and a row with no
      label gives no gradient at all. Steps are compared whose labels have the predictions' shape
      (``(N, K)``, or a sequence's or an image's, the classes on the last axis or on the
      second as ``F.cross_entropy`` takes them: each reading is computed), ``K >= 2``, values
      of at least 0, and some row that is not all zeros (a
      masked sample, which adds nothing) summing to more than 1.05 or less than 0.95 (a
      distribution's sum rounded in bfloat16, as mixup's weights are, is off by thousandths);
      a step counts where the recorded loss is that cross-entropy.

    A recorded loss within 0.1 % of the value computed from the recorded tensors is the
    computation's (a mean over a batch in float32 is within about 1e-6 of float64's); at least
    three such steps, and at least half of those compared, make the finding, dated from the
    first training loss (the loss is the code's). A loss with other terms matches neither and
    gives no finding.

    Why it matters: the loss trains for something other than the task: scores that grow
    without bound, or probabilities spread over several classes, and a run that looks like
    an optimisation problem.

    Typical causes: class ids fed to ``BCEWithLogitsLoss`` (a multi-class task given a
    binary loss); labels read as floats from a file where 1 and 2 code the classes;
    multi-hot labels fed to ``nn.CrossEntropyLoss``, which expects one class per sample.

    Fix: match the loss to the labels: ``nn.CrossEntropyLoss`` with integer class ids for one
    class per sample, ``BCEWithLogitsLoss`` with 0/1 indicators (one output per label) for
    several labels per sample; map binary labels coded 1/2 or -1/1 to 0/1.

    Args:
        records: Most steps read and compared.
    """
    if records < 1:
        raise RuleConfigError(f"DBG312 records must be at least 1, got {records}")
    losses = _train_losses(ctx)
    if not losses:
        return
    for labels, predictions in scored_labels(ctx):
        compared = _read_steps(ctx, labels.tag, predictions.tag, losses, records, _outside_the_loss)
        hits = [
            (step, matched[0])
            for step, candidates in compared
            if (matched := [c for c in candidates if c.computed(losses[step])])
        ]
        if not _shown(len(hits), len(compared)):
            continue
        step, last = hits[-1]
        yield _in_the_code(
            f"the training loss is the {last.loss} of the predictions against targets it is "
            f"not defined for ({last.targets}): at step {step} the loss is "
            f"{losses[step]:.4g}; {len(hits)} of {len(compared)} steps compared",
            (labels.tag, predictions.tag),
            min(losses),
            [step for step, _ in hits],
            len(compared),
            last.key,
        )


class _OutsideTheLoss(NamedTuple):
    """One step's targets outside a loss's domain: which case (``key``), the loss in words,
    the targets in words, and the values that loss takes on the recorded tensors."""

    key: str
    loss: str
    targets: str
    losses: tuple[float, ...]

    def computed(self, loss: float) -> bool:
        """Whether the recorded ``loss`` is one of the values computed here."""
        return any(abs(loss - value) <= _SAME_LOSS * abs(value) for value in self.losses)


def _outside_the_loss(
    ctx: RuleContext, labels: str, predictions: str, step: int
) -> list[_OutsideTheLoss] | None:
    """DBG312's readings of one training step: the softmax cross-entropy of ``(N, K)``
    targets whose rows are no distribution beside as many scores, and the binary
    cross-entropy of labels outside ``[0, 1]`` beside one score per label; None for
    neither."""
    scores = ctx.trace.raw(predictions, step, "train")
    truth = ctx.trace.raw(labels, step, "train")
    if scores is None or truth is None or scores.dtype.kind != "f" or not scores.size:
        return None
    z = scores.astype(np.float64)
    t = truth.astype(np.float64)
    if not (np.isfinite(z).all() and np.isfinite(t).all()):
        return None
    found = []
    # Classes on the last axis, or on the second as PyTorch's cross_entropy takes a sequence's
    # or an image's scores (N, K, ...); the recorded loss tells which.
    axes = sorted({z.ndim - 1, 1}) if truth.shape == scores.shape and z.ndim >= 2 else []
    for axis in axes if (t >= 0).all() else []:
        if z.shape[axis] < 2:
            continue
        rows_z = np.moveaxis(z, axis, -1).reshape(-1, z.shape[axis])
        rows_t = np.moveaxis(t, axis, -1).reshape(-1, z.shape[axis])
        sums = rows_t.sum(axis=1)
        # Rows of zeros (masked samples) add nothing to the loss; rounding (mixup's weights
        # in bfloat16) moves a distribution's sum by thousandths, not by a twentieth.
        labelled = sums[sums != 0]
        off = np.abs(labelled - 1.0) > _NOT_A_DISTRIBUTION
        if off.any():
            soft = float(np.mean(-(rows_t * _log_softmax(rows_z, 1)).sum(axis=1)))
            targets = (
                f"{np.count_nonzero(off)} of {len(sums)} rows sum to other than 1, from "
                f"{labelled.min():.3g} to {labelled.max():.3g}"
            )
            found.append(
                _OutsideTheLoss("not-distributions", "softmax cross-entropy", targets, (soft,))
            )
    outside = (t < 0) | (t > 1)
    if truth.size == scores.size and outside.any():
        y, p = t.reshape(-1), z.reshape(-1)

        def binary(probabilities: bool) -> float:
            if_one, if_zero = _binary_terms(p, probabilities=probabilities)
            return float(np.mean(y * if_one + (1 - y) * if_zero))

        values = [binary(False)]
        if ((p >= 0) & (p <= 1)).all():
            values.append(binary(True))
        targets = (
            f"{np.count_nonzero(outside)} of {y.size} outside [0, 1], from {y.min():.3g} to "
            f"{y.max():.3g}"
        )
        found.append(
            _OutsideTheLoss("binary-range", "binary cross-entropy", targets, tuple(values))
        )
    return found or None
