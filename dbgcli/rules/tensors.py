"""DBG4xx: any tensor: all zero, variance too small, values not changing, non-finite values."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

import numpy as np

from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import (
    Episode,
    RuleContext,
    TensorView,
    covered,
    episode_findings,
    mode_codes,
    records_spanning,
)
from dbgcli.rules._known import (
    LEARNED,
    STARVED_LR,
    class_count,
    first_update_step,
    invariant_biases,
    lr_below,
    weight_gradient_flows,
    zero_gradient_by_construction,
)
from dbgcli.rules._registry import Need, rule
from dbgcli.rules.data import chance_loss
from dbgcli.trace import schema
from dbgcli.trace.derive import Accumulator, Derivation
from dbgcli.trace.reader import RawChunk, TagInfo, Trace
from dbgcli.trace.stats import COL

# Model parameters: their first record is the initialisation, and 1-D ones (biases,
# normalisation scales) are initialised to a constant by design.
PARAMETER_ROLES = frozenset({"weights", "biases"})

# Roles that are exactly zero at the first step of a run that zero-initialises a layer on
# purpose (zero biases; zero-initialised heads and residual branches as in DiT's adaLN-Zero,
# ControlNet or JAX ViT): the parameters themselves, the outputs they produce, and the
# gradients of every layer below them.
ZERO_INIT_ROLES = frozenset({*PARAMETER_ROLES, "gradients", "predictions", "outputs"})


def _selected(ctx: RuleContext, collections: tuple[str, ...]) -> list[TensorView]:
    """Tensor views of the roles ``collections`` names (every tensor when empty)."""
    return ctx.tensors(collection=list(collections) if collections else None)


def _valued(ctx: RuleContext, collections: tuple[str, ...]) -> list[TensorView]:
    """Tensors whose values are quantities, not categories: class ids (labels, and
    predictions or inputs that hold whole numbers) and token ids mean nothing as numbers,
    so "all zero" or "constant" says nothing about them (a batch of class 0 is all zero)."""
    return [view for view in _selected(ctx, collections) if not ctx.categorical(view)]


def _per_mode(
    view: TensorView,
    values: np.ndarray,
    violating: np.ndarray,
    *,
    threshold: float | None,
    key: str,
    worst: Literal["max", "min"],
    message: Callable[[Episode, float], str],
    extra: dict[str, Any] | None = None,
) -> Iterator[Finding]:
    """``episode_findings`` run separately on each mode's records, so an episode never
    spans modes (an eval record between two training records is not a break in training)."""
    for code in view.mode_codes:
        positions = view.positions(code)
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps[positions],
            values=values[positions],
            violating=violating[positions],
            threshold=threshold,
            key=key,
            message=message,
            worst=worst,
            modes=view.modes[positions],
            extra=extra,
        )


# -- DBG401 all-zero ------------------------------------------------------------------------------

ALL_ZERO_COLLECTIONS = (
    "weights",
    "biases",
    "gradients",
    "activations",
    "preactivations",
    "inputs",
    "predictions",
    "outputs",
)


@rule(
    "DBG401",
    "all-zero",
    severity="warning",
    category="tensors",
    requires=Need.tensors_in("collections"),
    per_tensor=True,
    label={"invariant": "a bias the loss ignores", "*": "all-zero tensor"},
    explains=(
        "DBG101",
        "DBG401",
        "DBG402",
        "DBG403",
        "DBG301:not-decreasing",
        "DBG303",
        "DBG502:too-small",
    ),
)
def all_zero(
    ctx: RuleContext,
    *,
    threshold: float = 100.0,
    collections: tuple[str, ...] = ALL_ZERO_COLLECTIONS,
    skip_initial: bool = True,
) -> Iterator[Finding]:
    """A tensor is entirely (or mostly) exact zeros.

    SageMaker Debugger's AllZero. Per recorded step and tensor, the share of elements that are
    exactly zero (statistic ``zero_frac``, counted over all ``n`` elements, so a NaN is not a
    zero) is compared with the threshold: the record violates when
    ``zero_frac >= threshold / 100``. With the default 100 % this means every element is
    ``0``: the statistic is an exact count, so no rounding can make a tensor with a single
    non-zero element pass for all-zero (equivalently ``min == max == 0`` with no NaN).
    Records with no elements are not judged. One finding per tensor and mode, its episodes
    merged, with the largest share.

    Severity: error when the tensor is zero *throughout*: every judged record from its first
    violation to its last record, at least two of them (a layer that is dead or disconnected
    for good); warning when it recovers (zero batches now and then, a layer zero for a
    while). With the default threshold a record whose minimum, maximum or L2 norm is not 0
    is judged not zero even where ``zero_frac`` was left uncomputed (the PyTorch hook counts
    zeros only where the minimum and maximum decide them), so that the zero records alone
    cannot pass for "throughout". Gradients recorded at a step whose training loss is
    exactly 0 are not judged: a hinge or margin loss that every sample of the batch
    satisfies gives no gradient by construction.

    Which tensors: by default weights, biases, gradients, activations, pre-activations,
    inputs, predictions and outputs, by role (dbgcli.trace.roles). Tensors holding ids are
    left out whatever their role: labels, predictions that are class ids and token-id inputs
    (an all-zero batch of class ids is a batch of class 0). Gradients of parameters that are
    zero by construction (attention key biases: softmax ignores a shift shared by every key)
    are left out too. The gradient of a bias that is exactly zero wherever its layer's weight
    gradient is not is a note (key ``invariant``, severity info; see
    :func:`dbgcli.rules._known.invariant_biases`): the loss does not depend on that bias (a
    pairwise or ranking loss sees only differences of scores, so the output bias cancels), a
    property of the model, not a fault. Elsewhere, a bias's gradient that is all zero is not
    judged at a step where its layer's weight gradient is not zero: the loss's gradient
    reached the layer and flows on below it, and the bias's alone summed to zero over the
    batch (a margin loss's contributions of ``±1/N``, one sample's pushing a class's score up
    and another's pushing it down, cancel exactly now and then). A ReLU layer legitimately
    has about half its values at zero, which the default 100 % threshold leaves alone; lower
    it only for tensors that are not sparse by nature.

    The records of a parameter, gradient, prediction or output tensor up to its first update
    are skipped (``skip_initial``): its first record, and every record up to the first step
    whose recorded learning rate is above 0 (a warmup that starts at 0 leaves the first steps
    as initialised). Zero initialisation is a deliberate choice for biases and for some
    layers (zero-initialised heads and residual branches in DiT, ControlNet or JAX ViT), which
    makes those parameters, the outputs they produce and the gradients of every layer below
    them exactly zero until the first update. Whether an initialisation is sound is
    ``poor-weight-initialization`` (DBG501)'s question; here a tensor that is still all zero
    one step later is reported.

    Why it matters: an all-zero weight matrix makes its layer output a constant and its units
    symmetric; an all-zero activation means a dead layer that passes no gradient back; an
    all-zero gradient means nothing upstream learns; an all-zero input batch means the model
    is trained on nothing.

    Typical causes: dying ReLUs (large negative biases, a learning rate too high), weights
    zeroed by a bad checkpoint load or masking, a detached graph or a frozen branch (zero
    gradients), a data pipeline that yields blank or padding-only batches, a ReLU on the
    output layer that died.

    Fix: check the data pipeline and checkpoint loading; make sure the loss depends on the
    parameters (no detach, requires_grad set); use He initialisation, small positive or zero
    biases, a lower learning rate, or LeakyReLU/GELU.

    Args:
        threshold: Percentage of exactly-zero elements at or above which a record violates.
        collections: Collections to check (comma-separated; empty: every tensor).
        skip_initial: Ignore the first recorded step of parameters, gradients, predictions and
            outputs (deliberate zero initialisation).
    """
    updated_from = first_update_step(ctx)
    invariant = invariant_biases(ctx)
    for view in _valued(ctx, collections):
        if view.info.role == "gradients" and zero_gradient_by_construction(view.tag):
            continue
        share = view.stat("zero_frac")
        judged = np.isfinite(share)
        if threshold >= 100.0:
            judged |= _holds_a_non_zero(view)
        if view.info.role == "gradients":
            judged &= ~_at_zero_loss(ctx, view.steps)
            if view.tag not in invariant:
                with np.errstate(invalid="ignore"):
                    whole = share >= 1.0
                judged &= ~(weight_gradient_flows(ctx, view) & whole)
        if skip_initial and view.info.role in ZERO_INIT_ROLES:
            first_step = ctx.trace.index(view.tag)[0][0]
            judged &= view.steps > max(first_step, updated_from if updated_from is not None else -1)
        violating = judged & (share >= threshold / 100.0)
        for finding in _per_mode(
            view,
            share * 100.0,
            violating,
            threshold=threshold,
            key="all-zero",
            worst="max",
            extra={"elements": int(np.nanmax(view.stat("count")))},
            message=lambda e, v: (
                "every element is exactly zero"
                if v >= 100.0
                else f"{v:.4g}% of the elements are exactly zero (>= {threshold:g}%)"
            ),
        ):
            if view.tag in invariant:
                yield replace(
                    finding,
                    severity=Severity.info,
                    key="invariant",
                    message=f"{finding.message}{_INVARIANT}",
                )
                continue
            mine = view.modes == schema.MODE_CODES.get(finding.mode or "", -1)
            yield (
                replace(finding, severity=Severity.error)
                if _throughout(violating[mine], judged[mine])
                else finding
            )


# What DBG401 and DBG403 say of a bias whose gradient is zero while its weight's is not.
_INVARIANT = (
    ", while its layer's weight gradient is not: the loss does not depend on this bias (a "
    "pairwise or ranking loss, a softmax or normalisation after the layer)"
)


def _holds_a_non_zero(view: TensorView) -> np.ndarray:
    """Per record, whether the statistics show a non-zero element (a non-zero minimum,
    maximum or L2 norm): decidedly not all zero, where ``zero_frac`` may be left uncomputed
    (the PyTorch hook counts zeros only where the minimum and maximum decide them)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(
            (np.abs(view.stat("min")) > 0) | (np.abs(view.stat("max")) > 0) | (view.stat("l2") > 0)
        )


def _at_zero_loss(ctx: RuleContext, steps: np.ndarray) -> np.ndarray:
    """Per step, whether the training loss recorded at it is exactly 0: a hinge or margin
    loss every sample of the batch satisfies has nothing to learn from it, and its gradients
    are zero by construction."""
    series = ctx.loss("train")
    if series is None:
        return np.zeros(len(steps), dtype=bool)
    return np.isin(steps, series.steps[series.values == 0])


def _throughout(violating: np.ndarray, judged: np.ndarray) -> bool:
    """Every judged record from the first violating one to the last judged one violates, and
    there are at least two of them."""
    flags = violating[judged]
    hits = np.flatnonzero(flags)
    return len(hits) >= 2 and bool(flags[hits[0] :].all())


# -- DBG402 tensor-variance -----------------------------------------------------------------------

TENSOR_VARIANCE_COLLECTIONS = ("weights", "gradients", "activations", "preactivations")


@rule(
    "DBG402",
    "tensor-variance",
    severity="warning",
    category="tensors",
    requires=Need.tensors_in("collections"),
    per_tensor=True,
    label="near-constant tensor",
    explains=("DBG101", "DBG301:not-decreasing", "DBG303", "DBG402"),
)
def tensor_variance(
    ctx: RuleContext,
    *,
    min_relative: float = 1e-6,
    min_threshold: float | None = None,
    max_threshold: float | None = None,
    collections: tuple[str, ...] = TENSOR_VARIANCE_COLLECTIONS,
) -> Iterator[Finding]:
    """A tensor's values are (nearly) all the same: its variance is too small.

    SageMaker Debugger's TensorVariance with a default that works on any scale. Per recorded
    step and tensor, over its finite elements, with ``var = std²`` and ``mean`` the
    statistics of the record:

    * **near-constant** (default): the *relative variance* ``var / (mean² + var)``, i.e.
      ``var / mean(x²)``, the share of the tensor's mean square that comes from spread rather
      than from a common offset, is below ``min_relative``. It is 1 for zero-mean data, 0 for a
      constant tensor, and does not depend on units or on how far training has gone: the
      gradients of a healthy run shrink by orders of magnitude as the loss falls, so any
      absolute bound on their variance either misses a collapse or fires on convergence. The
      default ``1e-6`` means a standard deviation below 0.1 % of the root mean square: a
      constant-initialised or collapsed layer (every unit computing the same value), not a
      healthy one. An all-zero tensor has no relative variance and is left to ``all-zero``
      (DBG401); tensors with fewer than 2 elements are not judged.
    * **too-small** / **too-large**: ``var < min_threshold`` / ``var > max_threshold`` in
      absolute terms, SageMaker Debugger's two bounds; unset by default as there (no absolute
      bound suits every tensor; DeepDiagnosis uses ``1e-5`` and ``10`` for weights).

    Which tensors: by default weights, gradients, activations and pre-activations. The
    near-constant check skips 1-D parameters: biases and normalisation scales start constant
    by design (zero, or one). Labels are left out because a batch of one class is ordinary;
    predictions because a zero-initialised head makes them uniform at the start of a healthy
    run; inputs because masks and ids recorded as inputs can be constant. Findings are one per
    tensor, mode, key and episode of consecutive violating records, with the worst value.

    Why it matters: units that all compute the same value are redundant, receive the same
    gradient and stay identical; the layer behaves like a single unit. A collapsed activation
    (every sample mapped to the same output) carries no information about the input.

    Typical causes: constant weight initialisation, saturated sigmoid/tanh layers, very large
    negative or positive biases, representation collapse, a learning rate so high that the
    weights were driven to a degenerate point.

    Fix: random (He/Glorot) initialisation, lower learning rate, normalisation layers, check
    for saturation (DBG2xx) and for data that does not vary.

    Args:
        min_relative: Relative variance var / (mean² + var) below which a record counts
            as near-constant (0 disables the check).
        min_threshold: Absolute variance below which a record violates (unset: no check).
        max_threshold: Absolute variance above which a record violates (unset: no check).
        collections: Collections to check (comma-separated; empty: every tensor).
    """
    below = f"(< {min_threshold:g})" if min_threshold is not None else ""
    above = f"(> {max_threshold:g})" if max_threshold is not None else ""
    for view in _valued(ctx, collections):
        var = view.stat("var")
        mean = view.stat("mean")
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = var / (mean * mean + var)
        shape = view.info.shape
        constant_by_design = view.info.role in PARAMETER_ROLES and (shape is None or len(shape) < 2)
        judged = (view.stat("count") >= 2) & (not constant_by_design)
        yield from _per_mode(
            view,
            relative,
            judged & (relative < min_relative),
            threshold=min_relative,
            key="near-constant",
            worst="min",
            message=lambda e, v: (
                f"values nearly all equal: relative variance {v:.3g} (< {min_relative:g})"
                if v > 0
                else "every element has the same value (variance 0)"
            ),
        )
        if min_threshold is not None:
            yield from _per_mode(
                view,
                var,
                var < min_threshold,
                threshold=min_threshold,
                key="too-small",
                worst="min",
                message=lambda e, v: f"variance {v:.3g} {below}",
            )
        if max_threshold is not None:
            yield from _per_mode(
                view,
                var,
                var > max_threshold,
                threshold=max_threshold,
                key="too-large",
                worst="max",
                message=lambda e, v: f"variance {v:.3g} {above}",
            )


# -- DBG403 unchanged-tensor ----------------------------------------------------------------------

# Verdict of a record against the previous record of its tag and mode.
NO_PREVIOUS = -1
CHANGED = 0
SAME_FULL = 1  # full tensors all-close
SAME_STATS = 2  # no full tensors for both records; every statistic identical

# Statistics that must be identical for the fallback comparison to call two records unchanged.
_IDENTITY_STATS = ("count", "nan_count", "inf_count", "min", "max", "mean", "std", "l1", "l2")

# Elements per float64 comparison block: bounds the temporary memory of comparing big tensors.
_COMPARE_BLOCK = 1 << 20


class UnchangedRuns(NamedTuple):
    """Per record of a tag (unfiltered): its verdict against the previous record of its mode,
    and the number of consecutive unchanged records ending with it (1 after a change)."""

    verdict: np.ndarray
    run: np.ndarray


@dataclass(frozen=True)
class ConsecutiveAllClose(Derivation):
    """Whether each record equals the previous record of its mode, as ``np.allclose``.

    Only *candidate* records are read: those whose exact statistics allow all-closeness. If
    ``allclose(a, b)`` holds elementwise (``|a - b| <= atol + rtol·|b|``), every element of
    ``a`` is within ``T = atol + rtol·max|b|`` of the matching element of ``b``, so the
    maxima differ by at most ``T`` and so do the minima; both records also have the same
    element count and the same number of NaN and infinite elements (none at all with
    ``equal_nan`` false). Minimum and maximum are stored exactly, so a record failing this
    test certainly changed and its bytes are never read. Where the writer recorded the
    update norm ``update_l2 = ||a - b||₂`` (weights and biases), the triangle inequality adds
    ``||a - b||₂ <= atol·sqrt(n) + rtol·||b||₂``, which rules out almost every record of a
    training layer (the extremes of a big tensor rarely move).
    """

    rtol: float
    atol: float
    equal_nan: bool

    def wanted(self, info: TagInfo, trace: Trace) -> np.ndarray:
        previous, candidate = _candidates(info, trace, self)
        mask = candidate.copy()
        mask[previous[candidate]] = True
        return mask

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _AllCloseAccumulator(info, trace, self)


def _previous_records(modes: np.ndarray) -> np.ndarray:
    """Index of the previous record of the same mode (-1 for the first of each mode)."""
    previous = np.full(len(modes), -1, dtype=np.int64)
    codes = mode_codes(modes)
    if len(codes) == 1:
        previous[1:] = np.arange(len(modes) - 1)
        return previous
    for code in codes:
        records = np.flatnonzero(modes == code)
        previous[records[1:]] = records[:-1]
    return previous


def _candidates(
    info: TagInfo, trace: Trace, spec: ConsecutiveAllClose
) -> tuple[np.ndarray, np.ndarray]:
    """``(previous record, candidate mask)``: records whose statistics allow all-closeness.

    Both ``wanted`` and the accumulator need it, one right after the other: the last result
    is kept for the second call.
    """
    last = _LAST_CANDIDATES.get("last")
    if last is not None and last[0] is trace and last[1] == (info.tag, spec):
        return last[2]
    result = _compute_candidates(info, trace, spec)
    _LAST_CANDIDATES["last"] = (trace, (info.tag, spec), result)
    return result


# The most recent _candidates result: (trace, (tag, spec), (previous, candidate)).
_LAST_CANDIDATES: dict[
    str, tuple[Trace, tuple[str, ConsecutiveAllClose], tuple[np.ndarray, np.ndarray]]
] = {}


def _compute_candidates(
    info: TagInfo, trace: Trace, spec: ConsecutiveAllClose
) -> tuple[np.ndarray, np.ndarray]:
    _, modes = trace.index(info.tag)
    previous = _previous_records(modes)
    table = trace.stats(info.tag)
    # Each test narrows the rows still in question, the most selective first: a training
    # layer fails the update-norm test almost everywhere, so later tests see few rows.
    rows = np.flatnonzero(previous >= 0)

    def now(name: str) -> np.ndarray:
        column: np.ndarray = table[rows, COL[name]]
        return column

    def before(name: str) -> np.ndarray:
        column: np.ndarray = table[previous[rows], COL[name]]
        return column

    def keep(passed: np.ndarray) -> None:
        nonlocal rows
        rows = rows[passed]

    with np.errstate(invalid="ignore"):
        # update_l2 is measured against the record just before in the tag, whatever its mode;
        # the L2 statistic is summed in float32, so a generous slack keeps the test sound.
        update = np.where(previous[rows] == rows - 1, now("update_l2"), np.nan)
        norm_bound = (spec.atol * np.sqrt(now("count")) + spec.rtol * before("l2")) * (1 + 1e-3)
        keep(~(np.isfinite(update) & np.isfinite(norm_bound)) | (update <= norm_bound))
        keep(
            (now("count") == before("count"))
            & (now("inf_count") == before("inf_count"))
            & (now("nan_count") == before("nan_count"))
        )
        if not spec.equal_nan:
            keep(now("nan_count") == 0)
        reference = np.maximum(np.abs(before("min")), np.abs(before("max")))
        # A hair of slack for the float64 rounding of the elementwise test.
        tolerance = (spec.atol + spec.rtol * reference) * (1 + 1e-9)
        extremes_close = (np.abs(now("max") - before("max")) <= tolerance) & (
            np.abs(now("min") - before("min")) <= tolerance
        )
        # Without finite elements there are no extremes; the counts already had to match.
        no_finite = np.isnan(now("min")) & np.isnan(before("min"))
        keep(extremes_close | no_finite)
    candidate = np.zeros(len(previous), dtype=bool)
    candidate[rows] = True
    return previous, candidate


def _all_close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float, equal_nan: bool) -> bool:
    """``np.allclose(a, b)`` on float64 values, block by block; a new shape or dtype is a change."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    for start in range(0, flat_a.size, _COMPARE_BLOCK):
        block = slice(start, start + _COMPARE_BLOCK)
        if not np.allclose(
            flat_a[block].astype(np.float64),
            flat_b[block].astype(np.float64),
            rtol=rtol,
            atol=atol,
            equal_nan=equal_nan,
        ):
            return False
    return True


class _AllCloseAccumulator(Accumulator):
    def __init__(self, info: TagInfo, trace: Trace, spec: ConsecutiveAllClose) -> None:
        self.spec = spec
        self.table = trace.stats(info.tag)
        self.modes = trace.index(info.tag)[1]
        self.previous, self.candidate = _candidates(info, trace, spec)
        self.is_predecessor = np.zeros(info.records, dtype=bool)
        self.is_predecessor[self.previous[self.candidate]] = True
        # 1 all-close, 0 not, -1 not compared (a full tensor missing for one of the two).
        self.compared = np.full(info.records, -1, dtype=np.int8)
        # Per mode, the last full tensor seen, if a candidate after it needs it. Records of a
        # raw segment arrive in order, so one held tensor per mode is enough.
        self.held: dict[int, tuple[int, np.ndarray]] = {}

    def feed(self, chunk: RawChunk) -> None:
        for record, values in zip(chunk.records.tolist(), chunk.values, strict=True):
            mode = int(self.modes[record])
            held = self.held.pop(mode, None)
            if self.candidate[record] and held is not None and held[0] == self.previous[record]:
                spec = self.spec
                close = _all_close(values, held[1], spec.rtol, spec.atol, spec.equal_nan)
                self.compared[record] = 1 if close else 0
            if self.is_predecessor[record]:
                self.held[mode] = (record, np.array(values))

    def finish(self) -> UnchangedRuns:
        records = len(self.previous)
        verdict = np.full(records, NO_PREVIOUS, dtype=np.int8)
        verdict[self.previous >= 0] = CHANGED
        verdict[self.candidate & (self.compared == 1)] = SAME_FULL
        # Only candidates without a full-tensor comparison are judged on statistics.
        judged = np.flatnonzero(self.candidate & (self.compared == -1))
        before = self.previous[judged]
        with np.errstate(invalid="ignore"):
            identical = np.ones(len(judged), dtype=bool)
            for name in _IDENTITY_STATS:
                # A statistic a writer did not compute (NaN in both records) does not count
                # against identity; one computed in only one of them does.
                column = self.table[:, COL[name]]
                now, then = column[judged], column[before]
                identical &= (now == then) | (np.isnan(now) & np.isnan(then))
            # The update norm, where recorded, is exact: zero proves the record equals the one
            # before it, anything else proves a change that statistics computed in float32
            # may not resolve (a tensor of norm 100 moving by 1e-4).
            update = self.table[judged, COL["update_l2"]]
            measured = np.isfinite(update) & (before == judged - 1)
            identical = np.where(measured, update == 0, identical)
        verdict[judged[identical]] = SAME_STATS
        run = np.ones(records, dtype=np.int64)
        for code in mode_codes(self.modes):
            positions = np.flatnonzero(self.modes == code)
            same = verdict[positions] >= SAME_FULL
            index = np.arange(len(positions))
            last_change = np.maximum.accumulate(np.where(same, 0, index))
            run[positions] = index - last_change + 1
        return UnchangedRuns(verdict, run)


def _unchanged_derivation(rtol: float, atol: float, equal_nan: bool) -> ConsecutiveAllClose:
    return ConsecutiveAllClose(float(rtol), float(atol), bool(equal_nan))


def _unchanged_plan(ctx: RuleContext, params: dict[str, Any]) -> Iterator[tuple[str, Derivation]]:
    derivation = _unchanged_derivation(params["rtol"], params["atol"], params["equal_nan"])
    for view in _selected(ctx, params["collections"]):
        yield view.tag, derivation


@rule(
    "DBG403",
    "unchanged-tensor",
    severity="warning",
    category="tensors",
    requires=Need.tensors_in("collections"),
    plan=_unchanged_plan,
    per_tensor=True,
    label={
        "frozen": "parameters frozen on purpose",
        "unused": "parameters the loss does not use",
        "too-small": "updates too small to show",
        "invariant": "a bias the loss ignores",
        "*": "parameters not updated",
    },
    # A parameter never updated keeps its initial values: a zero-initialised bias stays zero.
    explains={"unchanged": ("DBG301:not-decreasing", "DBG303", "DBG402", "DBG401")},
)
def unchanged_tensor(
    ctx: RuleContext,
    *,
    num_steps: int = 3,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    equal_nan: bool = False,
    collections: tuple[str, ...] = ("weights", "biases"),
) -> Iterator[Finding]:
    """A tensor does not change across consecutive recorded steps: the layer is frozen.

    SageMaker Debugger's UnchangedTensor. Each record of a tensor is compared with the
    previous record of the same tensor and mode:

    * when both records keep their full tensor, they are unchanged if
      ``np.allclose(current, previous, rtol, atol, equal_nan)`` holds (computed on float64
      values; a change of shape or dtype is a change);
    * otherwise (full tensors are kept only every ``raw_every`` steps) the fallback is the
      statistics: where the update norm ``update_l2`` is recorded (weights and biases), it
      decides, unchanged if exactly 0; otherwise unchanged if every one of count, NaN and inf
      counts, min, max, mean, std, L1 and L2 is identical (a statistic the writer left
      uncomputed in both records is skipped). This is stricter than all-close (a change
      within the tolerance still counts) but blind to a permutation of the same values, and
      the finding says when it was used.

    A run of consecutive records that are pairwise unchanged and cover ``num_steps`` steps
    violates, and every record of it belongs to the finding, from the record the run started
    at. Recorded at every step that is ``num_steps`` records (``num_steps - 1`` unchanged
    comparisons in a row): with the defaults three recordings of a frozen tensor at steps 0,
    1, 2 fire (at step 2 in SageMaker Debugger's 2019 test cases, which judge each step as it
    arrives; the finding here starts at step 0, when the tensor stopped changing). Recorded
    every 10th step (``stats_every``), each record stands for 10 steps and two records, one
    unchanged comparison across 10 steps, are enough (see ``dbgcli.rules.persistent``). A
    tensor with fewer records never fires. The
    comparison is pairwise between consecutive records, not against the first record of the
    window (SageMaker Debugger leaves this open, and all-close is not transitive): it asks
    "did the tensor change from one saved step to the next", so a tensor creeping by less
    than the tolerance at every step counts as unchanged even if it drifts over a long
    window. As in SageMaker Debugger, records before ``--start`` count as history. One
    finding per tensor and mode; the value is the longest run of unchanged records.

    Cost: minimum and maximum are exact statistics, so the rule reads full tensors only for
    records whose extremes, element counts and (for weights and biases) update norm allow
    all-closeness (see ``ConsecutiveAllClose``); a tensor that visibly changes costs no raw
    reads at all.

    **On purpose or not.** A parameter that does not change is frozen on purpose when the
    recorder says so (the PyTorch hook lists parameters with ``requires_grad=False`` in the
    metadata key ``frozen_parameters``, kept up to date at each recorded step) or, in a
    trace that does not say, when gradients are recorded for other parameters but none for
    it (no gradient flows to it), or when the learning rate of its parameter group is 0 at
    every record (the PyTorch hook notes which group holds each parameter, metadata
    ``parameter_groups``, when there are several): key ``frozen``, severity info
    (fine-tuning with a frozen backbone, or one run under ``no_grad`` and left out of the
    optimizer). A parameter the
    recorder does not list, that no optimizer leaves out (metadata
    ``parameters_not_in_optimizer``, when the recorder wrote it), and whose gradient is not
    recorded at those steps while others' are, requires a gradient that never comes
    (PyTorch leaves ``.grad`` None where no backward pass reaches): the loss does not use
    it, as a module defined but never called, an output detached before the loss, or an
    expert of a mixture that the router stopped sending samples to: key ``unused``,
    severity info, the same for a parameter used early on and not since. Gradients that the
    recorder's include/exclude left out (metadata ``gradients_not_recorded``) say nothing
    either way. Unless the freeze leaves the model too little to learn with: at least half
    of the layers' weights (elements of weights of two or more dimensions) are frozen, or
    get no gradient, and the model has not learned: the mean of the last 50 training losses
    (at most a quarter of them) is above 80 % of the mean of as many first ones (DBG303's
    bar and window: a frozen network's minibatch losses scatter, and ten a side let a frozen
    MLP of the calibration corpus seem to learn), or a classifier's ends at chance (DBG303's
    band: from 90 % of the loss of predicting its class frequencies, ``ln C`` without labels,
    to the loss of guessing over 90 %; tuning the last bias alone undoes a bad start and no
    more); then it is the cause of the run's failure to learn, key ``unchanged``.
    (A frozen backbone, or tuning the biases alone, is on purpose as long as the loss does
    come down.) Otherwise (key ``unchanged``, warning) it is
    the classic bug, and the message says whether its gradient is recorded non-zero (it has a
    gradient but no update: not in the optimizer) or zero (no gradient reaches it: a detach or a
    dead layer); when the recorder lists it among the parameters that no optimizer's groups
    hold (metadata ``parameters_not_in_optimizer``, which the PyTorch hook writes at each
    optimizer's first update), the message says so as a fact. Records at which the recorded
    learning rate is 0 or below 1e-4 of its peak (a warmup's first steps, a decay's last)
    are not judged: no update is asked for.

    **Too small to show.** A parameter that the optimizer holds, with a gradient that is not
    zero, can still stand still: an update below the spacing of floating-point numbers
    around a value leaves it where it is (``w + d == w`` once ``|d|`` is below about
    ``2**-24 * |w|`` in float32), and one below the tolerance above counts as none. A
    vanishing gradient, a parameter the loss barely depends on (a bias right before a
    BatchNorm, whose gradient is zero but for rounding) or a learning rate at the end of its
    decay do that. When the recorder says which parameters the optimizer holds (the PyTorch
    hook's ``parameters_not_in_optimizer``), such a parameter gets key ``too-small``,
    severity info; whether the model learns is the loss, gradient and learning-rate rules'
    question. Without that note, a parameter with a gradient and no update is a warning
    that asks both questions. A bias whose gradient is exactly zero wherever its layer's
    weight gradient is not stays where it is because the loss does not depend on it (a
    pairwise loss, a normalisation after the layer; see DBG401): key ``invariant``, severity
    info.

    Which tensors: weights and biases by default, where a frozen layer is the classic bug.
    Gradients are left out: a gradient practically never repeats while its weights change,
    so a repeated gradient is either all zero (reported by ``all-zero``, DBG401) or comes
    with unchanged weights (reported here); add ``gradients`` (or ``inputs``, to catch
    a data loader that yields the same batch) with ``collections``. A layer frozen on purpose
    (fine-tuning with a frozen backbone) is reported too; deselect its collection or ignore
    the finding.

    Why it matters: a parameter that never changes is not being trained: the optimizer does
    not see it, its gradient is zero, or its updates are lost to rounding.

    Typical causes: parameters not passed to the optimizer, ``requires_grad`` false or
    ``detach()`` in the forward pass, a dead layer upstream (zero gradients), a learning rate
    of zero (schedule bug) or so small that float32 rounds the update away, the optimizer
    step skipped (e.g. by a gradient scaler that keeps seeing inf).

    Fix: check the optimizer's parameter groups and ``requires_grad``, look for detach and
    no_grad in the forward pass, check the learning-rate schedule, check the gradients of
    the layer (DBG1xx, DBG401).

    Args:
        num_steps: Steps that consecutive pairwise-unchanged records must cover to make a
            violation (at least 2, and at least two records).
        rtol: Relative tolerance of np.allclose.
        atol: Absolute tolerance of np.allclose.
        equal_nan: Treat NaN as equal to NaN (otherwise a record with NaN always changed).
        collections: Collections to check (comma-separated; empty: every tensor).
    """
    if num_steps < 2:
        raise ValueError(
            f"num_steps must be at least 2 (a record always equals itself), got {num_steps}"
        )
    derivation = _unchanged_derivation(rtol, atol, equal_nan)
    gradients = {_core(v.tag): v for v in ctx.unfocused().tensors(collection="gradients")}
    declared = ctx.trace.metadata.get("frozen_parameters")
    frozen = set(declared) if isinstance(declared, list) else set()
    # The PyTorch hook lists the parameters that require no gradient (any other it records
    # requires one), and those whose gradients its include/exclude leaves out.
    requires_known = isinstance(declared, list)
    unselected = ctx.trace.metadata.get(schema.META_GRADIENTS_NOT_RECORDED)
    unrecorded = set(unselected) if isinstance(unselected, list) else set()
    left_out = ctx.trace.metadata.get(schema.META_NOT_IN_OPTIMIZER)
    not_in_optimizer = set(left_out) if isinstance(left_out, list) else None
    # A group whose learning rate is 0 throughout freezes its parameters as surely.
    still = ctx.shared("zero-rate-parameters", lambda: _zero_rate_parameters(ctx))
    # The same for every tensor of the trace: judged once.
    pointless = ctx.shared(
        "pointless-freeze", lambda: _pointless_freeze(ctx, gradients, frozen | still)
    )
    invariant = invariant_biases(ctx)
    for view in _selected(ctx, collections):
        result: UnchangedRuns = view.derive(derivation)
        run = result.run[view.records].astype(np.float64)
        # A warmup's first steps and a decay's last ask for no update (whether a schedule
        # that stays there is wrong is ``learning-rate``'s question).
        run[lr_below(ctx, view.steps, STARVED_LR)] = 0
        verdict = result.verdict[view.records]
        for code in view.mode_codes:
            positions = view.positions(code)
            steps = view.steps[positions]
            needed = records_spanning(steps, num_steps, least=2)
            streak = _streaks(run[positions], needed)
            if not streak.any():
                continue
            flowing = _gradient_flow(
                view, gradients, _gradient_steps(ctx, gradients), steps[streak]
            )
            if view.tag in unrecorded:
                flowing = "unknown"
            # Requiring a gradient, yet without one: unused. Out of every optimizer too, it
            # is frozen another way (a forward under no_grad).
            left_out = not_in_optimizer is not None and view.tag in not_in_optimizer
            if flowing == "none" and requires_known and not left_out and view.tag not in frozen:
                flowing = "unused" if not_in_optimizer is None else "unused-held"
            gradient = _gradient_of(view, gradients)
            if flowing == "zero" and gradient is not None and gradient.tag in invariant:
                flowing = "invariant"
            if not_in_optimizer is not None and flowing not in ("none", "stale", "unused-held"):
                if view.tag in not_in_optimizer:
                    flowing = "left-out"
                elif flowing == "moving":
                    flowing = "held"
            if view.tag in still and view.tag not in frozen:
                flowing = "zero-rate"
            unused = flowing in ("unused", "unused-held")
            on_purpose = view.tag in frozen or flowing in ("none", "stale", "zero-rate") or unused
            why = _WHY["declared"] if view.tag in frozen else _WHY[flowing]
            if on_purpose and pointless is not None and unused:
                on_purpose = False
                why = (
                    f": no gradient reaches it, nor {pointless.share:.0%} of the layers' "
                    f"weights, though they require one, while {pointless.why}: the model has "
                    "too little left to learn with (an output detached before the loss?)"
                )
            elif on_purpose and pointless is not None:
                on_purpose = False
                why = (
                    f": frozen, and no layer's weights train while {pointless.why}: the freeze "
                    "leaves the model nothing to learn with (requires_grad switched off "
                    "everywhere?)"
                    if pointless.share == 1
                    else f": frozen, with {pointless.share:.0%} of the layers' weights, while "
                    f"{pointless.why}: the freeze leaves the model too little to learn with (a "
                    "backbone frozen by mistake?)"
                )
            key = (
                ("unused" if unused else "frozen")
                if on_purpose
                else {"invariant": "invariant", "held": "too-small"}.get(flowing, "unchanged")
            )

            def message(
                e: Episode,
                v: float,
                verdicts: np.ndarray = verdict[positions],
                why: str = why,
                needed: int = needed,
            ) -> str:
                evidence = _evidence(verdicts[e.first : e.last + 1])
                return f"unchanged over {v:.0f} consecutive records (>= {needed}){why}; {evidence}"

            for finding in episode_findings(
                tensor=view.tag,
                steps=steps,
                values=run[positions],
                violating=streak,
                threshold=float(needed),
                key=key,
                message=message,
                worst="max",
                modes=view.modes[positions],
                extra={"rtol": rtol, "atol": atol},
            ):
                yield finding if key == "unchanged" else replace(finding, severity=Severity.info)


def _streaks(run: np.ndarray, needed: int) -> np.ndarray:
    """Every record of a run of ``needed`` or more pairwise-unchanged records, from the
    record the run started at (``run`` counts the records of the run ending at each one)."""
    ends = np.flatnonzero(run >= needed)
    starts = ends - run[ends].astype(np.int64) + 1
    return covered(np.maximum(starts, 0), ends, len(run))


_UNUSED = (
    " (a module the forward pass does not call, an output detached before the loss, or a "
    "branch no sample takes, such as an expert the router sends nothing)"
)

# What the gradient recorded for a parameter says about why it did not change.
_WHY = {
    "declared": ": frozen on purpose (the recorder says requires_grad is False)",
    "none": ": frozen on purpose (no gradient flows to it)",
    "unused": (
        ": no gradient reaches it, though it requires one (the recorder checked): the loss "
        "does not depend on it" + _UNUSED
    ),
    "unused-held": (
        ": no gradient reaches it, though it requires one and an optimizer holds it (the "
        "recorder checked): the loss does not depend on it" + _UNUSED
    ),
    "stale": ": frozen on purpose (its recorded gradient never changes: no backward reaches it)",
    "zero": ": its gradient is zero (no gradient reaches it: a detach, a dead layer?)",
    "invariant": ": its gradient is zero" + _INVARIANT,
    "moving": (
        ": it has a non-zero gradient but is never updated (not in the optimizer, or updates "
        "too small to show?)"
    ),
    "left-out": (
        ": it is in none of the optimizer's parameter groups (the recorder checked at the "
        "first update: an optimizer built for another model's parameters, or a layer left out)"
    ),
    "held": (
        ": it is in the optimizer (the recorder checked) and has a non-zero gradient, so its "
        "updates are too small to show (a vanishing gradient, a parameter the loss hardly "
        "depends on such as a bias right before a normalisation, or a learning rate at the "
        "end of its decay)"
    ),
    "zero-rate": (
        ": the learning rate of its parameter group is 0 at every record (the recorder says "
        "which group holds it): frozen on purpose"
    ),
    "unknown": "",
}


def _zero_rate_parameters(ctx: RuleContext) -> set[str]:
    """The parameters whose group's recorded learning rate is 0 at every record (run
    metadata ``parameter_groups``, the PyTorch hook's note of each parameter's group)."""
    groups = ctx.trace.metadata.get(schema.META_PARAMETER_GROUPS)
    if not isinstance(groups, Mapping):
        return set()
    zero = set()
    for tag in set(groups.values()):
        series = ctx.scalar(tag, "train") if isinstance(tag, str) else None
        if series is not None and len(series) and bool((series.values == 0).all()):
            zero.add(tag)
    return {name for name, tag in groups.items() if tag in zero}


# Whether a frozen model learned is LEARNED (DBG303's bar) read between the means of DBG303's
# window at each end: _LOSS_WINDOW records, at most a quarter of the run's. A frozen network's
# minibatch losses scatter widely; ten records a side let one run in nine of the calibration
# corpus's frozen MLPs "learn" 23 %.
_LOSS_WINDOW = 50
_MIN_LOSS_RECORDS = 20
# A freeze that holds at least this share of the layers' weights still decides what the
# model can learn.
_MOSTLY_FROZEN = 0.5


class _PointlessFreeze(NamedTuple):
    """A freeze that holds still ``share`` of the layers' weights of a model that has not
    learned, and how the loss shows that (``why``, in words)."""

    share: float
    why: str


def _pointless_freeze(
    ctx: RuleContext, gradients: dict[tuple[str, ...], TensorView], frozen: set[str]
) -> _PointlessFreeze | None:
    """A freeze (parameters declared frozen, or without a gradient while others have one)
    that holds at least half of the layers' weights (elements of weight matrices and kernels)
    of a model that has not learned: the mean of the last 50 training losses (at most a
    quarter of them) still above 80 % of the mean of as many first ones (DBG303's bar), or,
    for a classifier, at chance (from 90 % of the loss of predicting the class frequencies to
    the loss of guessing over 90 %, DBG303's chance band: tuning the last bias alone brings a
    badly started loss down to that and no further). Else None. A frozen backbone under a
    head that trains, or tuning the biases alone, are fine-tunes while the loss does come
    down; a model that cannot learn because most of it is frozen is a mistake."""
    layers = [
        view
        for view in ctx.unfocused().tensors(collection="weights")
        if view.info.shape is not None and len(view.info.shape) >= 2
    ]
    if not layers or not gradients:
        return None
    sizes = np.array([math.prod(v.info.shape or ()) for v in layers], dtype=np.float64)
    held = np.array(
        [v.tag in frozen or _gradient_of(v, gradients) is None for v in layers], dtype=bool
    )
    share = float(sizes[held].sum() / sizes.sum())
    if share < _MOSTLY_FROZEN:
        return None
    series = ctx.loss("train")
    if series is None:
        return None
    order = np.argsort(series.steps, kind="stable")
    values = series.values[order][np.isfinite(series.values[order])]
    if len(values) < _MIN_LOSS_RECORDS:
        return None
    span = min(_LOSS_WINDOW, len(values) // 4)
    start, end = values[:span].mean(), values[-span:].mean()
    if start > 0 and end > LEARNED * start:
        return _PointlessFreeze(share, f"the loss stays above {LEARNED:.0%} of its start")
    whole = ctx.unfocused()
    chance = chance_loss(whole, class_count(whole))
    if chance is not None and chance.holds(end):
        return _PointlessFreeze(share, f"the loss ends at chance, {end:.3g} ({chance.text})")
    return None


def _gradient_steps(
    ctx: RuleContext, gradients: Mapping[tuple[str, ...], TensorView]
) -> np.ndarray:
    """The steps at which any gradient is recorded, once per analysis: DBG403 runs per
    tensor, and a trace of 100,000 steps holds millions of gradient records (sorted, not
    ``np.unique``, whose hashing takes a third of a second per call on them)."""

    def steps() -> np.ndarray:
        every = np.sort(np.concatenate([v.steps for v in gradients.values()] or [[]]))
        return every[np.r_[True, every[1:] != every[:-1]]] if len(every) else every

    return ctx.shared("gradient-steps", steps)


def _gradient_flow(
    view: TensorView,
    gradients: dict[tuple[str, ...], TensorView],
    gradient_steps: np.ndarray,
    steps: np.ndarray,
) -> str:
    """What the gradient of parameter ``view`` did over ``steps``: ``none`` recorded while
    other parameters have one (``gradient_steps``: the steps any gradient is recorded at;
    PyTorch leaves ``.grad`` None where no backward pass reaches), ``stale`` (the same
    non-zero values throughout: a leftover ``.grad`` that no backward pass refreshes),
    ``zero``, ``moving``, or ``unknown`` (no gradients recorded at all, or none at these
    steps)."""
    if not gradients:
        return "unknown"
    gradient = _gradient_of(view, gradients)
    if gradient is None:
        return "none"
    recorded = np.isin(gradient.steps, steps)
    if not recorded.any():
        return "none" if np.isin(steps, gradient_steps).any() else "unknown"
    norms = gradient.stat("l2")[recorded]
    norms = norms[np.isfinite(norms)]
    if not len(norms):
        return "unknown"
    if norms.max() == 0:
        return "zero"
    return "stale" if len(norms) > 1 and norms.max() == norms.min() else "moving"


_NOT_NAME_WORDS = frozenset(
    {"grad", "grads", "gradient", "gradients", "weights", "params", "param", "parameters"}
)
_LAYER_MATRIX_WORDS = frozenset({"weight", "kernel", "w"})


def _core(tag: str) -> tuple[str, ...]:
    """A parameter's name as its words in order, without those that say weight-or-gradient
    and TensorFlow's output index: ``grad/fc1.weight``, ``gradients/fc1/kernel:0`` ->
    (fc1, weight), (fc1, kernel). The order stays: ``experts.2.0.weight`` is not
    ``experts.0.2.weight``."""
    name = re.sub(r":\d+", "", tag.lower())
    return tuple(w for w in re.split(r"[^a-z0-9]+", name) if w and w not in _NOT_NAME_WORDS)


def _gradient_of(
    view: TensorView, gradients: dict[tuple[str, ...], TensorView]
) -> TensorView | None:
    """The gradient tensor recorded for a parameter, matched by name (``fc1/grad`` is the
    gradient of ``fc1/weight`` in conventions that name weight gradients by their layer)."""
    core = _core(view.tag)
    return gradients.get(core) or gradients.get(
        tuple(w for w in core if w not in _LAYER_MATRIX_WORDS)
    )


def _evidence(verdicts: np.ndarray) -> str:
    full = bool((verdicts == SAME_FULL).any())
    stats = bool((verdicts == SAME_STATS).any())
    if full and stats:
        return "full tensors all-close where stored, statistics identical elsewhere"
    if stats:
        return "statistics identical (full tensors not kept for these records)"
    return "full tensors all-close"


# -- DBG404 non-finite-tensor ---------------------------------------------------------------------


@rule(
    "DBG404",
    "non-finite-tensor",
    severity="error",
    category="tensors",
    requires=Need.tensors_in("collections"),
    per_tensor=True,
    label={
        "nan": "NaN values",
        "inf": "infinite values",
        "after-loss": "non-finite values after the loss",
    },
    explains={
        # Spread from the loss (its backward pass, then the update): not its cause.
        "after-loss": ("DBG404", "DBG301", "DBG303", "DBG305", "DBG403", "DBG401"),
        "*": (
            "DBG102:nonfinite",
            "DBG306",
            "DBG404",
            "DBG301",
            "DBG303",
            "DBG305",
            "DBG403",
            "DBG401",
        ),
    },
)
def non_finite_tensor(
    ctx: RuleContext, *, only_nan: bool = False, collections: tuple[str, ...] = ()
) -> Iterator[Finding]:
    """A tensor holds NaN or infinite values.

    SageMaker Debugger's ExplodingTensor, applied to every tensor. Per recorded step and
    tensor: the record violates when it holds any NaN (statistic ``nan_count > 0``) or,
    unless ``only_nan``, any ±inf (``inf_count > 0``). NaN and infinities are reported
    separately (keys ``nan`` and ``inf``), one finding per tensor, mode and episode of
    consecutive violating records, with the largest count of bad elements in one record. A
    tensor that recovers and breaks again gives two episodes.

    A weight, bias, activation or prediction first found non-finite in training after a
    step at which the training loss went non-finite (recorded finite before) gets key
    ``after-loss``: a non-finite value in the forward pass makes that step's loss
    non-finite, so while the loss was finite so were they, and the loss went first. Its
    backward pass and the update carried it into the model, which the tensors' records,
    N steps apart, show up to N steps late; DBG306 is the cause to look at.

    Why it matters: one non-finite value spreads through every later computation; once a
    weight is NaN the model is lost, and a NaN in inputs or labels poisons the loss.

    Typical causes: a learning rate too high (overflow, then inf - inf = NaN), division by
    zero or log of zero in the loss or a normalisation, fp16 overflow without loss scaling,
    NaN or inf in the data.

    Fix: lower the learning rate, clip gradients, add epsilons to divisions, logs and square
    roots, use a gradient scaler with mixed precision, check the data for NaN/inf; find the
    first tensor and step that went non-finite.

    Args:
        only_nan: Report NaN only, not ±inf.
        collections: Collections to check (comma-separated; empty: every tensor).
    """
    loss_broke = ctx.shared("loss-non-finite", lambda: _first_non_finite_loss(ctx.unfocused()))
    kinds = (("nan", "NaN"),) if only_nan else (("nan", "NaN"), ("inf", "infinite"))
    for view in _selected(ctx, collections):
        found: list[Finding] = []
        for key, word in kinds:
            bad = view.stat(f"{key}_count")
            found += _per_mode(
                view,
                bad,
                bad > 0,
                threshold=0.0,
                key=key,
                worst="max",
                message=_count_message(word),
            )
        for finding in found:
            if (
                loss_broke is not None
                and view.info.role in _FORWARD_ROLES
                and finding.mode == "train"
                and finding.first_step is not None
                and finding.first_step > loss_broke
            ):
                finding = replace(
                    finding,
                    key="after-loss",
                    message=f"{finding.message}; the train loss went non-finite first, at step "
                    f"{loss_broke}",
                )
            yield finding


def _count_message(word: str) -> Callable[[Episode, float], str]:
    """DBG404's message: the worst count of ``word`` (NaN, infinite) elements."""
    return lambda e, v: f"{_up_to(e)}{v:.0f} {word} element{'' if v == 1 else 's'}"


# Tensors a training step's loss is computed from (or that its forward pass computes): while
# the loss is finite, so are they.
_FORWARD_ROLES = frozenset({"weights", "biases", "activations", "preactivations", "predictions"})


def _first_non_finite_loss(ctx: RuleContext) -> int | None:
    """The first training step whose loss is non-finite, None if it never is."""
    series = ctx.loss("train")
    if series is None:
        return None
    train = schema.MODE_CODES["train"]
    broken = np.flatnonzero(~np.isfinite(series.values) & (series.modes == train))
    return int(series.steps[broken].min()) if len(broken) else None


def _up_to(episode: Episode) -> str:
    """``"up to "`` when the value is the worst of several records."""
    return "up to " if episode.count > 1 else ""
