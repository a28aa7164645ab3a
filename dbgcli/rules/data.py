"""DBG6xx: the data: class imbalance, inputs not normalised, token ratios, classifier confusion,
unshuffled batches.

These rules read full tensors: labels (collection ``labels``), predictions (``predictions``)
and model inputs (``inputs``); a tensor without a collection that is called exactly
``labels``, ``predictions`` or ``inputs`` counts as one (SageMaker Debugger's default names).
Only records whose full tensor was kept can be analysed; the findings say how many were seen.

Every full tensor is read once for all five rules: the rules declare the derivations below in
their plans (``ClassIds`` for labels and predictions, shared by DBG601, DBG604 and DBG605;
``ChannelMoments`` for float inputs; ``TokenShares`` for integer inputs).

Labels and predictions become class ids sample by sample (:func:`class_ids`): integer
tensors are class ids (a one-hot last axis is reduced with argmax); float tensors whose last
axis has more than one entry are scores, one-hot vectors or probabilities (argmax, and the
width of that axis is the number of classes; for predictions whose shape is the labels' with
another axis added, that axis, as a segmentation's ``(N, C, H, W)`` logits against
``(N, H, W)`` labels); other float tensors hold class ids when every
value is a whole number, else one binary score per sample (probabilities cut at 0.5 when all
values lie in [0, 1], logits cut at 0). Negative ids (ignore markers such as PyTorch's -100)
and non-finite scores give no class. A labels record is paired with the predictions record
of the same step and mode (the n-th with the n-th when a step holds several); a labels tag
``x/labels`` pairs with ``x/predictions``, else with the only predictions tag there is.
Labels whose last axis holds 0s and 1s with a row that is not one-hot are multi-label
indicators (several classes per sample, for a sigmoid per class): no class id describes them,
and the class rules (DBG601, DBG604, DBG605) skip them.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from dbgcli.errors import RuleConfigError, RuleSkipped
from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import Episode, RuleContext, TensorView, episode_findings
from dbgcli.rules._known import (
    LEARNING_RATE_BY_UPDATES,
    is_embedding,
    kept_steps,
    loss_metric,
    token_labels,
    tokens_ahead,
    unclassed_labels,
    xgboost_objective,
)
from dbgcli.rules._registry import Need, rule
from dbgcli.trace import schema
from dbgcli.trace.derive import Accumulator, Derivation

if TYPE_CHECKING:
    from dbgcli.trace.reader import RawChunk, TagInfo, Trace

# The mode whose records judge a classifier when several are recorded: held-out data first.
_MODE_PREFERENCE = ("eval", "train", "predict")
# Classes, class pairs or channels named in one message; the rest are counted.
_LISTED = 5


# -- which tensors ------------------------------------------------------------------------------


def _tagged(ctx: RuleContext, role: str) -> list[TensorView]:
    """Tensors of ``role`` (``inputs``, ``labels``, ``predictions``; see dbgcli.trace.roles)."""
    return ctx.tensors(collection=role)


def _with_full_tensors(views: Iterable[TensorView]) -> list[TensorView]:
    return [view for view in views if view.info.raw_records]


def _float_inputs(ctx: RuleContext) -> list[TensorView]:
    """Inputs that are quantities (not ids: integer images count too), with full tensors, or
    images, whose statistics alone can show them off (see DBG602)."""
    return [
        v
        for v in _tagged(ctx, "inputs")
        if (v.info.raw_records or _image(v)) and not ctx.categorical(v)
    ]


def _image(view: TensorView) -> bool:
    """A tensor with channels on axis 1 and two or more axes after them (``(N, C, H, W)``)."""
    return view.info.shape is not None and len(view.info.shape) >= 4


def _integer_inputs(ctx: RuleContext) -> list[TensorView]:
    """Inputs that are token ids (integers, or whole-number floats named as ids)."""
    return [v for v in _tagged(ctx, "inputs") if ctx.categorical(v)]


def _partner(labels: str, predictions: Sequence[TensorView]) -> TensorView | None:
    """The predictions tag of a labels tag: its name with "label" -> "prediction", or the only."""
    by_tag = {view.tag: view for view in predictions}
    renamed = labels.replace("labels", "predictions").replace("label", "prediction")
    if renamed in by_tag:
        return by_tag[renamed]
    return predictions[0] if len(predictions) == 1 else None


def refuse_unclassed(ctx: RuleContext) -> None:
    """Skip a class rule on labels that are no classes: the next (or masked) tokens of a text
    follow the text's word frequencies, and even a perfect model cannot predict them all;
    regression targets are quantities. Class balance and per-class precision say nothing
    about either."""
    labels = unclassed_labels(ctx)
    if labels is not None:
        raise RuleSkipped(f"the labels are {labels}, not classes")


def _single_labelled(ctx: RuleContext) -> list[tuple[TensorView, TensorView | None]]:
    """:func:`_labelled`, without labels tags of several classes per sample (multi-hot) and
    without labels that are no classes of their predictions (see :func:`_beyond_predictions`);
    the rule is skipped, saying why, when those are all there are."""
    pairs = _labelled(ctx)
    why = None
    single = []
    for labels, predictions in pairs:
        if labels.derive(ClassIds()).multi_hot:
            why = "the labels are multi-label indicators (several classes per sample), not classes"
        elif (beyond := _beyond_predictions(labels, predictions)) is not None:
            why = beyond
        else:
            single.append((labels, predictions))
    if pairs and not single and why is not None:
        raise RuleSkipped(why)
    return single


def _beyond_predictions(labels: TensorView, predictions: TensorView | None) -> str | None:
    """Why ``labels`` are no classes of ``predictions``, or None: two or more distinct ids at
    or above the number of classes the predictions score (one score per sample scores two
    classes; a score axis of ``C``, ``C``). A classifier's loss takes no such label but its
    one ignore index (255 for a segmentation's void pixels), so whole-number targets above
    it are quantities: counts or ratings that a regression predicts with one output."""
    if predictions is None:
        return None
    width = predictions.derive(_prediction_ids(predictions, labels)).width
    if width is None:
        return None
    beyond = np.unique(
        np.concatenate(
            [ids[ids >= width] for ids in labels.derive(ClassIds()).ids.values()] or [np.empty(0)]
        )
    )
    # One value beyond is an ignore marker (255 for a segmentation's void pixels), which
    # cross-entropy takes; two or more are values of a quantity.
    if beyond.size < 2:
        return None
    highest = int(beyond[-1])
    return (
        f"the labels are quantities, not classes: they reach {highest} while the predictions "
        f"score {width} classes (a regression's targets; metadata task 'regression' says so)"
    )


def scored_labels(ctx: RuleContext) -> list[tuple[TensorView, TensorView]]:
    """Every labels tag with full tensors that has a predictions tag, with it."""
    return [(labels, p) for labels, p in _labelled(ctx) if p is not None]


def _labelled(ctx: RuleContext) -> list[tuple[TensorView, TensorView | None]]:
    """Every labels tag with full tensors, with its predictions tag (or None)."""
    predictions = _with_full_tensors(_tagged(ctx, "predictions"))
    return [
        (labels, _partner(labels.tag, predictions))
        for labels in _with_full_tensors(_tagged(ctx, "labels"))
    ]


LABELS = Need(
    "full tensors of labels (role 'labels': labels, targets, y...)",
    lambda ctx: bool(_with_full_tensors(_tagged(ctx, "labels"))),
    looks_at="tensors",
)
PREDICTIONS = Need(
    "full tensors of predictions (role 'predictions': predictions, preds, logits...)",
    lambda ctx: bool(_with_full_tensors(_tagged(ctx, "predictions"))),
    looks_at="tensors",
)
FLOAT_INPUTS = Need(
    "full tensors (or, for images, statistics) of model inputs that are quantities, not ids "
    "(role 'inputs')",
    lambda ctx: bool(_float_inputs(ctx)),
    looks_at="tensors",
)
INTEGER_INPUTS = Need(
    "token-id inputs (role 'inputs': integers, or whole numbers named like input_ids)",
    lambda ctx: bool(_integer_inputs(ctx)),
    looks_at="tensors",
)


# -- derivations --------------------------------------------------------------------------------


def class_ids(values: np.ndarray, class_axis: int = -1) -> tuple[np.ndarray, int | None]:
    """Class id of every sample of a chunk of records ``(records, *shape)``.

    Returns ``(ids, width)``: ``ids`` is ``(records, samples)`` int64 with -1 where a sample has
    no class (negative label, non-finite score); ``width`` is the number of classes the tensor
    implies (length of a score or one-hot axis, 2 for binary scores), or None for plain ids.
    ``class_axis`` is the axis of a record that holds scores or one-hot vectors (see
    :func:`class_axis`); the samples are the positions along the others, in order.
    See the module docstring for the conventions.
    """
    if class_axis not in (-1, values.ndim - 2):
        values = np.moveaxis(values, class_axis + 1, -1)
    count = values.shape[0]
    shape = values.shape[1:]
    if values.dtype.kind == "b":
        values = values.astype(np.int8)
    if len(shape) >= 2 and shape[-1] > 1:
        scores = values.reshape(count, -1, shape[-1])
        if values.dtype.kind == "f":
            ids = scores.argmax(axis=2)
            ids[~np.isfinite(scores).all(axis=2)] = -1
            return ids, shape[-1]
        if ((scores == 0) | (scores == 1)).all() and (scores.sum(axis=2) == 1).all():
            return scores.argmax(axis=2), shape[-1]
    flat = values.reshape(count, -1)
    if values.dtype.kind != "f":
        return np.where(flat >= 0, flat, -1).astype(np.int64), None
    finite = np.isfinite(flat)
    whole = np.where(finite, flat == np.round(flat), True).all(axis=1, keepdims=True)
    unit = np.where(finite, (flat >= 0) & (flat <= 1), True).all(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        ids = np.where(whole, flat, flat > np.where(unit, 0.5, 0.0))
        usable = finite & (ids >= 0) & (ids < np.iinfo(np.int64).max)
    return np.where(usable, ids, -1).astype(np.int64), None if whole.all() else 2


@dataclass(frozen=True)
class ClassIdRecords:
    """Class ids of the records of one tag whose full tensor is stored.

    Attributes:
        ids: Record index -> class id of each sample (-1: no class).
        width: Number of classes implied by the tensor's shape (see :func:`class_ids`), or None.
        multi_hot: Some record's last axis holds 0s and 1s with a row that is not one-hot:
            several classes per sample (multi-label targets), which no class id describes.
    """

    ids: dict[int, np.ndarray]
    width: int | None
    multi_hot: bool = False


@dataclass(frozen=True)
class ClassIds(Derivation):
    """Class id of every sample of every labels or predictions record with a full tensor,
    with the scores along ``class_axis`` of a record."""

    class_axis: int = -1

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _ClassIdsAccumulator(self.class_axis)


def class_axis(predictions: TagInfo, labels: TagInfo) -> int:
    """The axis of a predictions record that holds the class scores: the last, unless the
    labels' shape is the predictions' without another axis (a segmentation's logits
    ``(N, C, H, W)`` against its labels ``(N, H, W)``: axis 1). The batch axis is left out
    of the comparison, since the last batch of an epoch may be smaller."""
    scores, truth = predictions.shape, labels.shape
    if scores is None or truth is None or len(scores) != len(truth) + 1 or len(scores) < 3:
        return -1
    if scores[1:-1] == truth[1:]:
        return -1
    for axis in range(1, len(scores) - 1):
        if scores[1:axis] + scores[axis + 1 :] == truth[1:]:
            return axis
    return -1


def _prediction_ids(predictions: TensorView, labels: TensorView) -> ClassIds:
    """The derivation of the class ids of ``predictions``, read along their class axis."""
    return ClassIds(class_axis(predictions.info, labels.info))


class _ClassIdsAccumulator(Accumulator):
    def __init__(self, class_axis: int) -> None:
        self.class_axis = class_axis
        self.ids: dict[int, np.ndarray] = {}
        self.width: int | None = None
        self.multi_hot = False

    def feed(self, chunk: RawChunk) -> None:
        self.multi_hot = self.multi_hot or _multi_hot(chunk.values)
        ids, width = class_ids(chunk.values, self.class_axis)
        if width is not None:
            self.width = max(width, self.width or 0)
        # Class ids are kept for every record (labels pair with predictions sample by
        # sample); int32 halves what they hold whenever the ids fit.
        compact = (
            np.int32 if ids.size == 0 or int(ids.max()) <= np.iinfo(np.int32).max else np.int64
        )
        for record, row in zip(chunk.records, ids, strict=True):
            self.ids[int(record)] = row.astype(compact)

    def finish(self) -> ClassIdRecords:
        return ClassIdRecords(self.ids, self.width, self.multi_hot)


def _multi_hot(values: np.ndarray) -> bool:
    """Whether records ``(records, ..., C)`` hold 0s and 1s on their last axis with some row
    that is not one-hot: multi-label indicators."""
    if values.ndim < 3 or values.shape[-1] < 2 or values.dtype.kind not in "biuf":
        return False
    # Scores and logits fail on their first record: no pass over the rest.
    for part in (values[:1], values):
        if not ((part == 0) | (part == 1)).all():
            return False
    return bool((values.sum(axis=-1) != 1).any())


@dataclass(frozen=True)
class Moments:
    """Per-channel count of finite values, mean and sum of squared deviations from the mean,
    and whether every value is 0 or 1 (an indicator); once every record is in, the standard
    errors of the mean and of the variance from how much the records' own moments spread
    (NaN with fewer than two records)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    indicator: np.ndarray
    # Every value a whole number, the smallest and the largest: codes a lookup table takes.
    whole: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mean_se: np.ndarray | None = None
    var_se: np.ndarray | None = None

    def merge(self, other: Moments) -> Moments:
        """Moments of both sets of values (Chan et al.'s pairwise update, exact and stable)."""
        count = self.count + other.count
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = np.where(count > 0, other.count / count, 0.0)
        delta = other.mean - self.mean
        return Moments(
            count,
            self.mean + delta * weight,
            self.m2 + other.m2 + delta * delta * self.count * weight,
            self.indicator & other.indicator,
            self.whole & other.whole,
            np.fmin(self.low, other.low),
            np.fmax(self.high, other.high),
        )

    def codes(self, rows: int) -> np.ndarray:
        """Channels whose every value is a whole number in ``[0, rows)``: ids a lookup table
        of ``rows`` rows can take."""
        codes: np.ndarray = self.whole & (self.low >= 0) & (self.high < rows)
        return codes

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel (NaN for channels without values)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            std: np.ndarray = np.sqrt(np.maximum(self.m2, 0.0) / self.count)
        return std


@dataclass(frozen=True)
class ChannelMomentTable:
    """Per-channel moments of a float tensor's full tensors, one set per mode.

    Attributes:
        samples: Samples (length of the first axis) of each record read; 0 for the others.
        moments: Mode code -> moments over every record of that mode that was read.
        unit: What a channel is called in messages: "channel" (axis 1 of 4-D and larger
            records) or "feature" (last axis of 2-D and 3-D records; the one value of 1-D ones).
        unit_rows: Every row of every 2-D record read has an L2 or L1 norm of 1 (or 0):
            rows normalised to unit length (``Normalizer``, tf-idf's default).
    """

    samples: np.ndarray
    moments: dict[int, Moments]
    unit: str
    unit_rows: bool = False


@dataclass(frozen=True)
class ChannelMoments(Derivation):
    """Per-channel mean and variance of the records inside a step range and mode.

    The range and mode are the analysis filters (``--start``, ``--stop``, ``--mode``): the
    moments are merged over records as they are read, so they must cover exactly the records
    the rule sees.
    """

    first_step: int | None = None
    last_step: int | None = None
    mode: str | None = None
    outlier_ratio: float = 9.0

    def wanted(self, info: TagInfo, trace: Trace) -> np.ndarray | None:
        steps, modes = trace.index(info.tag)
        mask = np.ones(len(steps), dtype=bool)
        if self.first_step is not None:
            mask &= steps >= self.first_step
        if self.last_step is not None:
            mask &= steps <= self.last_step
        if self.mode is not None:
            mask &= modes == schema.MODE_CODES[self.mode]
        unlike = _outlying_records(trace.stat(info.tag, "std").values, modes, self.outlier_ratio)
        kept: np.ndarray = mask & ~unlike
        return kept

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _MomentsAccumulator(info)


def _outlying_records(stds: np.ndarray, modes: np.ndarray, ratio: float) -> np.ndarray:
    """Records whose standard deviation (over all their values) is more than ``ratio`` times
    above or below the median record's of their mode: batches unlike the data set (corrupted,
    scaled by mistake), which would dominate moments pooled over every record."""
    outlying = np.zeros(len(stds), dtype=bool)
    for code in np.unique(modes):
        mine = (modes == code) & np.isfinite(stds) & (stds > 0)
        if mine.sum() < 3:
            continue
        typical = float(np.median(stds[mine]))
        outlying[mine] = (stds[mine] > ratio * typical) | (stds[mine] < typical / ratio)
    return outlying


class _MomentsAccumulator(Accumulator):
    def __init__(self, info: TagInfo) -> None:
        shape = info.segments[0].shape if info.segments else ()
        self.ndim = len(shape)
        self.axis = schema.default_unit_axis(self.ndim)
        self.channels = shape[self.axis] if self.axis is not None else 1
        self.samples = np.zeros(info.records, dtype=np.int64)
        self.moments: dict[int, Moments] = {}
        # Each record's per-channel mean and second moment, for the standard errors.
        self.record_means: dict[int, list[np.ndarray]] = {}
        self.record_squares: dict[int, list[np.ndarray]] = {}
        self.unit_rows = self.ndim == 2
        # Deviations are computed in one buffer reused from chunk to chunk: allocating a
        # chunk-sized array each time costs more than the arithmetic.
        self.scratch = np.empty(0, dtype=np.float32)

    def feed(self, chunk: RawChunk) -> None:
        shape = chunk.values.shape[1:]
        # Records whose layout differs from the first one's cannot be merged channel by channel.
        if len(shape) != self.ndim or (self.axis is not None and shape[self.axis] != self.channels):
            return
        axis = self.axis if self.axis is not None else self.ndim
        before = int(np.prod(shape[:axis], dtype=np.int64))
        after = int(np.prod(shape[axis + 1 :], dtype=np.int64))
        values = chunk.values.reshape(len(chunk.records), before, self.channels, after)
        for code in np.unique(chunk.modes):
            rows = values if (chunk.modes == code).all() else values[chunk.modes == code]
            found = self._moments(rows, int(code))
            known = self.moments.get(int(code))
            self.moments[int(code)] = found if known is None else known.merge(found)
        self.samples[chunk.records] = shape[0] if shape else 1

    def _moments(self, values: np.ndarray, code: int) -> Moments:
        """Moments over axes 0, 1, 3 of ``(records, before, channels, after)`` (finite values),
        from each record's over axes 1 and 3, which are kept."""
        axes = (1, 3)
        total = values.sum(axis=axes, dtype=np.float64)
        # A finite sum means every value is finite (NaN and inf propagate), which spares a
        # pass over the chunk; only float64 values near overflow take the masked path needlessly.
        finite = None if np.isfinite(total).all() else np.isfinite(values)
        if finite is None:
            count = np.full(total.shape, values.size // total.size, dtype=np.float64)
        else:
            count = finite.sum(axis=axes).astype(np.float64)
            values = np.where(finite, values, 0)
            total = values.sum(axis=axes, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(count > 0, total / count, 0.0)
        work = np.float64 if values.dtype == np.float64 else np.float32
        if self.scratch.dtype != work or self.scratch.size < values.size:
            self.scratch = np.empty(values.size, dtype=work)
        deviation = self.scratch[: values.size].reshape(values.shape)
        np.subtract(values, means.astype(work)[:, None, :, None], out=deviation, casting="unsafe")
        if finite is not None:
            deviation[~finite] = 0
        squares = np.square(deviation, out=deviation).sum(axis=axes, dtype=np.float64)
        if self.unit_rows:
            self.unit_rows = _unit_rows(values)
        # Over the finite values, as the moments (the others were zeroed above).
        np.floor(values, out=deviation, casting="unsafe")
        whole = (deviation == values).all(axis=(0, 1, 3))
        np.multiply(values, values, out=deviation, casting="unsafe")
        indicator = (deviation == values).all(axis=(0, 1, 3))  # x * x == x: x is 0 or 1
        with np.errstate(invalid="ignore", divide="ignore"):
            self.record_means.setdefault(code, []).append(np.where(count > 0, means, np.nan))
            self.record_squares.setdefault(code, []).append(
                np.where(count > 0, squares / count, np.nan)
            )
        pooled = count.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(pooled > 0, total.sum(axis=0) / pooled, 0.0)
        m2 = squares.sum(axis=0) + (count * (means - mean) ** 2).sum(axis=0)
        low, high = values.min(axis=(0, 1, 3)), values.max(axis=(0, 1, 3))
        return Moments(pooled, mean, m2, indicator, whole, low, high)

    def finish(self) -> ChannelMomentTable:
        return ChannelMomentTable(
            self.samples,
            {code: self._with_errors(code, found) for code, found in self.moments.items()},
            "channel" if self.ndim >= 4 else "feature",
            self.unit_rows,
        )

    def _with_errors(self, code: int, found: Moments) -> Moments:
        """``found`` with the standard errors of its mean and variance: the spread of the
        records' means, and of their second moments about the pooled mean, over the square
        root of the number of records (the batch-means estimate, which needs no assumption
        on how the values are distributed: a feature that is one value but in a few samples
        pools to a std that rests on those few)."""
        means = np.concatenate(self.record_means[code])
        variances = np.concatenate(self.record_squares[code])
        squares = variances + (means - found.mean) ** 2
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # channels with under two records
            records = np.sqrt(np.isfinite(means).sum(axis=0))
            mean_se = np.nanstd(means, axis=0, ddof=1) / records
            var_se = np.nanstd(squares, axis=0, ddof=1) / records
        return replace(found, mean_se=mean_se, var_se=var_se)


def _unit_rows(values: np.ndarray) -> bool:
    """Whether every row (sample) of 2-D records ``(records, rows, features, 1)`` has an L2 or,
    non-negative, an L1 norm of 1, or is all zero (an empty document)."""
    flat = values.reshape(values.shape[0] * values.shape[1], -1).astype(np.float64)
    l2 = np.sqrt((flat * flat).sum(axis=1))
    l1 = np.abs(flat).sum(axis=1)
    empty = l1 == 0
    return bool(
        (empty | (np.abs(l2 - 1) < 1e-3)).all()
        or ((flat >= 0).all() and (empty | (np.abs(l1 - 1) < 1e-3)).all())
    )


@dataclass(frozen=True)
class TokenShares(Derivation):
    """Percentage of each record's elements equal to each of ``values`` (NaN: no full tensor)."""

    values: tuple[int, ...]

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _TokenAccumulator(info.records, self.values)


class _TokenAccumulator(Accumulator):
    def __init__(self, records: int, values: tuple[int, ...]) -> None:
        self.values = values
        self.table = np.full((records, len(values)), np.nan)

    def feed(self, chunk: RawChunk) -> None:
        flat = chunk.values.reshape(len(chunk.records), -1)
        if flat.shape[1] == 0:
            return
        for column, value in enumerate(self.values):
            self.table[chunk.records, column] = (flat == value).sum(axis=1) * 100.0 / flat.shape[1]

    def finish(self) -> np.ndarray:
        return self.table


@dataclass(frozen=True)
class TokenPositions(Derivation):
    """Where each record holds ``value``: packed bits of its elements in order, and its shape."""

    value: int

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _PositionsAccumulator(self.value)


class _PositionsAccumulator(Accumulator):
    def __init__(self, value: int) -> None:
        self.value = value
        self.positions: dict[int, tuple[np.ndarray, tuple[int, ...]]] = {}

    def feed(self, chunk: RawChunk) -> None:
        for record, held in zip(chunk.records, chunk.values == self.value, strict=True):
            self.positions[int(record)] = (np.packbits(held), held.shape)

    def finish(self) -> dict[int, tuple[np.ndarray, tuple[int, ...]]]:
        return self.positions


def _positions_of(packed: np.ndarray, shape: tuple[int, ...], size: int) -> np.ndarray | None:
    """The positions of a :class:`TokenPositions` record that ``size`` labels take, flat:
    one label per token, or per token but the last of each sequence (next-token labels, as
    the transformers callback records a language model's); None for labels of no such shape."""
    held = np.unpackbits(packed, count=math.prod(shape)).astype(bool).reshape(shape)
    if held.size == size:
        return held.ravel()
    if len(shape) == 2 and size == shape[0] * (shape[1] - 1):
        return held[:, :-1].ravel()
    return None


# -- labels and predictions, record by record ---------------------------------------------------


@dataclass(frozen=True)
class _LabelRecord:
    """One labels record with a full tensor, and what its predictions say.

    Attributes:
        step: The record's step.
        labels: Class ids of the samples that have a label.
        truth: Labels of the samples that also have a predicted class (None: no predictions
            record of the same shape).
        predicted: Their predicted classes.
        unscored: Labelled samples whose prediction gives no class (non-finite scores).
    """

    step: int
    labels: np.ndarray
    truth: np.ndarray | None
    predicted: np.ndarray | None
    unscored: int


@dataclass(frozen=True)
class _Stream:
    """The records of one labels tag in one mode, in record order."""

    labels: str
    predictions: str | None
    mode: str
    records: tuple[_LabelRecord, ...]
    width: int | None  # number of classes implied by the labels' or predictions' shape
    per_position: bool  # class ids at each position of a sequence, not one per sample

    @property
    def paired(self) -> list[_LabelRecord]:
        """Records with a predictions record of the same shape (its scores may be non-finite)."""
        return [r for r in self.records if r.truth is not None]


def _streams(labels: TensorView, predictions: TensorView | None) -> list[_Stream]:
    label_ids: ClassIdRecords = labels.derive(ClassIds())
    predicted_ids: ClassIdRecords | None = (
        predictions.derive(_prediction_ids(predictions, labels))
        if predictions is not None
        else None
    )
    widths = [w for w in (label_ids.width, predicted_ids.width if predicted_ids else None) if w]
    width = max(widths) if widths else None
    # Class ids, not one-hot rows, at more than one position per sample.
    shape = labels.info.shape or ()
    one_hot = width is not None and label_ids.width == width
    per_position = not one_hot and len(shape) >= 2 and int(np.prod(shape[1:])) > 1
    streams = []
    for code in np.unique(labels.modes):
        records = []
        for step, record, partner in _by_step(labels, predictions, int(code)):
            ids = label_ids.ids.get(record)
            if ids is None:
                continue
            predicted = (
                predicted_ids.ids.get(partner)
                if predicted_ids is not None and partner is not None
                else None
            )
            records.append(_pair(step, ids, predicted))
        if records:
            streams.append(
                _Stream(
                    labels.tag,
                    predictions.tag if predictions else None,
                    schema.MODES[int(code)],
                    tuple(records),
                    width,
                    per_position,
                )
            )
    return streams


def _by_step(
    view: TensorView, other: TensorView | None, code: int
) -> Iterator[tuple[int, int, int | None]]:
    """``(step, record, partner)`` for each record of ``view`` in mode ``code``, with the
    record of ``other`` it pairs with: the records of one step and mode pair in record order
    (None: no such record left)."""
    partners: dict[int, list[int]] = {}
    if other is not None:
        for record, step, mode in zip(other.records, other.steps, other.modes, strict=True):
            if mode == code:
                partners.setdefault(int(step), []).append(int(record))
    for record, step, mode in zip(view.records, view.steps, view.modes, strict=True):
        if mode == code:
            queue = partners.get(int(step))
            yield int(step), int(record), queue.pop(0) if queue else None


def _pair(step: int, ids: np.ndarray, predicted: np.ndarray | None) -> _LabelRecord:
    labelled = ids >= 0
    if predicted is None or predicted.shape != ids.shape:
        return _LabelRecord(step, ids[labelled], None, None, 0)
    scored = labelled & (predicted >= 0)
    return _LabelRecord(
        step, ids[labelled], ids[scored], predicted[scored], int((labelled & ~scored).sum())
    )


def _plan_label_ids(ctx: RuleContext, params: dict[str, Any]) -> Iterator[tuple[str, Derivation]]:
    """The class ids of the labels (DBG605's plan); none for labels that are no classes."""
    if unclassed_labels(ctx) is None:
        for labels, _ in _labelled(ctx):
            yield labels.tag, ClassIds()


def plan_class_ids(ctx: RuleContext, params: dict[str, Any]) -> Iterator[tuple[str, Derivation]]:
    """The class ids of the labels and of their predictions (DBG601's and DBG604's plan)."""
    yield from _plan_label_ids(ctx, params)
    if unclassed_labels(ctx) is None:
        for labels, predictions in _labelled(ctx):
            if predictions is not None:
                yield predictions.tag, _prediction_ids(predictions, labels)


class StartingAccuracy(NamedTuple):
    """How the model's first training predictions fared: ``right`` of ``samples``, against
    ``constant``, the share of the record's most frequent label (the best a model that
    ignores its inputs can expect)."""

    step: int
    right: int
    samples: int
    constant: float
    labels: str
    predictions: str


# One-sided 99.9 % normal quantile: calling a run's model trained before its trace began
# changes the scale the loss rules judge it by, so chance must be all but ruled out.
_Z_TRAINED = 3.09


def trained_at_start(ctx: RuleContext) -> StartingAccuracy | None:
    """The first training predictions, when they show a model trained before the trace began.

    At the step of the first finite training loss, the labels and predictions recorded there
    (full tensors, train mode) are paired sample by sample. A model whose predictions do not
    depend on its inputs is right at most as often as the most frequent label's share; the
    first predictions beat that at the lower end of a 99.9 % Wilson interval when the model
    already learned the task (a fine-tune of a trained classifier, a hook attached after
    some training), but also, now and then, when a random model's outputs happen to follow
    inputs that tell the classes apart: :func:`dbgcli.rules._known.initial_loss` asks for a
    low first loss as well. None otherwise, also without such records, for multi-label
    targets and for labels that are no classes, and for a boosted ensemble (tensors of role
    ``trees``), whose first record is taken after its first tree."""
    loss = ctx.loss("train")
    if loss is None or unclassed_labels(ctx) is not None or ctx.tensors(collection="trees"):
        return None
    finite = loss.steps[np.isfinite(loss.values)]
    if not finite.size:
        return None
    step = int(finite.min())
    for labels, predictions in scored_labels(ctx):
        # The class rules derive these ids too: the trace computes them once for all.
        label_ids = labels.derive(ClassIds())
        if label_ids.multi_hot:
            continue
        predicted_ids = predictions.derive(_prediction_ids(predictions, labels))
        truth = _train_record_ids(ctx, labels.tag, label_ids, step)
        predicted = _train_record_ids(ctx, predictions.tag, predicted_ids, step)
        if truth is None or predicted is None or truth.shape != predicted.shape:
            continue
        paired = (truth >= 0) & (predicted >= 0)
        if not paired.any():
            continue
        truth_ids = truth[paired]
        right = int((predicted[paired] == truth_ids).sum())
        samples = int(truth_ids.size)
        constant = float(np.unique(truth_ids, return_counts=True)[1].max()) / samples
        lower = _wilson(np.array([right]), np.array([samples]), _Z_TRAINED)[0][0]
        if lower > constant:
            return StartingAccuracy(step, right, samples, constant, labels.tag, predictions.tag)
    return None


def _train_record_ids(
    ctx: RuleContext, tag: str, found: ClassIdRecords, step: int
) -> np.ndarray | None:
    """The class ids of ``tag``'s first training record at ``step`` (None if its full tensor
    was not kept)."""
    steps, modes = ctx.trace.index(tag)
    at = np.flatnonzero((steps == step) & (modes == schema.MODE_CODES["train"]))
    return found.ids.get(int(at[0])) if at.size else None


#: Labels needed before their class frequencies are trusted (the data rules' ``samples``).
PRIOR_SAMPLES = 500


def _quantities(found: ClassIdRecords, shape: tuple[int, ...] | None) -> bool:
    """Whether labels are quantities that :func:`class_ids` cut at a threshold (floats that
    are not whole numbers: regression targets), not class ids or two-class scores."""
    return found.width == 2 and not (shape is not None and len(shape) >= 2 and shape[-1] == 2)


# More distinct values than a binary classifier's soft targets take (one per class when the
# labels are smoothed): a quantity's, which takes about as many as there are samples.
_SOFT_TARGET_VALUES = 10


def regression_targets(ctx: RuleContext) -> bool:
    """Whether every labels tensor with full tensors holds quantities: floats that are not
    whole numbers (which :func:`class_ids` would cut into two "classes"), either some below 0
    or above 1, or more than 10 distinct values in a record. Those are a regression's targets
    (prices, physical units, a share), not class ids, one-hot rows or the soft targets of a
    binary classifier (label smoothing gives two values)."""
    views = _with_full_tensors(_tagged(ctx.unfocused(), "labels"))
    if not views:
        return False
    for view in views:
        found: ClassIdRecords = view.derive(ClassIds())
        if not _quantities(found, view.info.shape):
            return False
        with np.errstate(invalid="ignore"):
            inside = np.nanmin(view.stat("min")) >= 0 and np.nanmax(view.stat("max")) <= 1
        if inside and not _many_values(ctx, view.tag):
            return False
    return True


def batch_indices(ctx: RuleContext, *, records: int = 20) -> bool:
    """Whether every labels tensor with full tensors holds, in each of its first ``records``
    full records (at least two), the ids ``0 .. B-1`` once each, ``B`` the record's size:
    the index of each sample's match within its own batch, as a contrastive loss (InfoNCE,
    CLIP's) takes its targets (``arange(B)``), not classes. Their "classes" change with the
    batch size (64 in training, 256 in a larger evaluation batch), which the class rules
    would read as classes never trained on."""
    views = _with_full_tensors(_tagged(ctx.unfocused(), "labels"))
    if not views:
        return False
    for view in views:
        full = (values for chunk in ctx.trace.iter_raw(view.tag) for values in chunk.values)
        first = [np.asarray(values).reshape(-1) for values in itertools.islice(full, records)]
        if len(first) < 2 or not all(
            ids.size > 1 and np.array_equal(np.sort(ids), np.arange(ids.size)) for ids in first
        ):
            return False
    return True


def _many_values(ctx: RuleContext, tag: str) -> bool:
    """Whether the first full tensor of ``tag`` holds more than a binary classifier's soft
    targets' few distinct values."""
    for chunk in ctx.trace.iter_raw(tag):
        values = np.asarray(chunk.values[0])
        return bool(np.unique(values[np.isfinite(values)]).size > _SOFT_TARGET_VALUES)
    return False


def soft_target_entropy(ctx: RuleContext) -> float | None:
    """The mean entropy, in nats, of the recorded training labels when they are soft targets:
    probabilities that are not all 0 or 1, one per sample (a binary classifier's, smoothed:
    0.1 and 0.9, or a teacher's probabilities under XGBoost's logistic objective) or rows
    summing to 1 (smoothed or mixed one-hot rows). A cross-entropy
    against such targets cannot fall below their entropy (Gibbs' inequality): it is the
    loss's floor. None for hard labels, quantities, or without labels in full tensors.
    Computed once per analysis."""
    return ctx.shared("soft-target-entropy", lambda: _soft_target_entropy(ctx.unfocused()))


def _soft_target_entropy(ctx: RuleContext) -> float | None:
    # A regression's targets in [0, 1] are no probabilities; a logistic objective's are, for
    # its log loss (not for reg:logistic's default RMSE).
    logistic = xgboost_objective(ctx) in ("binary:logistic", "reg:logistic") and bool(
        loss_metric(ctx, ("logloss",))
    )
    if unclassed_labels(ctx) is not None and not logistic:
        return None
    total, count = 0.0, 0
    for view in _with_full_tensors(_tagged(ctx, "labels")):
        shape = view.info.shape
        if shape is None or view.info.dtype is None or np.dtype(view.info.dtype).kind != "f":
            return None
        for q in _train_records(ctx, view.tag):
            if not (np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all()):
                return None
            if len(shape) >= 2 and shape[-1] > 1:
                rows = q.reshape(-1, shape[-1])
                if not np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
                    return None
                entropy = -np.sum(rows * np.log(np.where(rows > 0, rows, 1.0)), axis=1)
            else:
                p = q.reshape(-1)
                inside = np.clip(p, 1e-300, 1.0)
                outside = np.clip(1 - p, 1e-300, 1.0)
                entropy = -(p * np.log(inside) + (1 - p) * np.log(outside))
            total += float(entropy.sum())
            count += entropy.size
    if not count or total == 0.0:
        return None  # hard labels (or none): the floor is 0
    return total / count


def saturated_loss(ctx: RuleContext, metric: str) -> float | None:
    """The mean of XGBoost's likelihood ``metric`` over the recorded training labels for a
    model that predicts every label exactly, ``μ = y``: the saturated model, at which the
    deviance is zero (McCullagh and Nelder 1989). These metrics keep terms of the labels
    alone, and for each sample the metric is least at ``μ = y``, so no model's loss on these
    labels falls below it. Per sample:

    * ``poisson-nloglik`` (``μ - y ln μ + ln y!``): ``y - y ln y + ln y!`` (``0 ln 0 = 0``);
      counts drawn with mean about 1 leave about 0.8 however good the model;
    * ``gamma-nloglik`` (``y / μ + ln μ``): ``1 + ln y``, for ``y > 0``;
    * ``tweedie-nloglik@ρ`` (``μ^(2-ρ) / (2-ρ) - y μ^(1-ρ) / (1-ρ)``, ``1 < ρ < 2``):
      ``y^(2-ρ) / ((ρ-1)(2-ρ))``, for ``y >= 0``.

    None for another metric, without labels in full tensors, or for labels outside the
    family's support. Computed once per analysis."""
    return ctx.shared(("saturated", metric), lambda: _saturated_loss(ctx.unfocused(), metric))


def _saturated_loss(ctx: RuleContext, metric: str) -> float | None:
    per_sample = _saturated_per_sample(metric)
    if per_sample is None:
        return None
    total, count = 0.0, 0
    for view in _with_full_tensors(_tagged(ctx, "labels")):
        for values in _train_records(ctx, view.tag):
            y = values.reshape(-1)
            losses = per_sample(y) if np.isfinite(y).all() else None
            if losses is None:
                return None
            total += float(losses.sum())
            count += y.size
    return total / count if count else None


def _saturated_per_sample(metric: str) -> Callable[[np.ndarray], np.ndarray | None] | None:
    """Each label's loss under the saturated model for ``metric`` (see :func:`saturated_loss`),
    None for labels outside the family's support; None for a metric that is none of them."""
    family, _, parameter = metric.partition("@")
    if family == "poisson-nloglik":
        log_factorial = np.vectorize(math.lgamma, otypes=[np.float64])

        def poisson(y: np.ndarray) -> np.ndarray | None:
            if not (y >= 0).all():
                return None
            losses: np.ndarray = y - y * np.log(np.where(y > 0, y, 1.0)) + log_factorial(y + 1.0)
            return losses

        return poisson
    if family == "gamma-nloglik":
        return lambda y: 1.0 + np.log(y) if (y > 0).all() else None
    if family == "tweedie-nloglik":
        try:
            rho = float(parameter or 1.5)  # XGBoost's default tweedie_variance_power
        except ValueError:
            return None
        if not 1 < rho < 2:
            return None
        return lambda y: y ** (2 - rho) / ((rho - 1) * (2 - rho)) if (y >= 0).all() else None
    return None


def _train_records(ctx: RuleContext, tag: str) -> Iterator[np.ndarray]:
    """The full tensors of ``tag``'s training records, as float64."""
    train = schema.MODE_CODES["train"]
    for chunk in ctx.trace.iter_raw(tag):
        for values, mode in zip(chunk.values, chunk.modes, strict=True):
            if mode == train:
                yield np.asarray(values, dtype=np.float64)


def label_entropy(ctx: RuleContext) -> float | None:
    """Entropy, in nats, of the class frequencies ``p`` of the recorded training labels:
    ``-sum(p ln p)``, the cross-entropy of a model that predicts those frequencies for every
    sample, the best a model can do without looking at its inputs (``ln C`` for balanced
    classes). None where :func:`class_shares` has none."""
    shares = class_shares(ctx, "train")
    if shares is None:
        return None
    p = np.array(list(shares.values()))
    return float(-(p * np.log(p)).sum())


def class_shares(ctx: RuleContext, mode: str) -> dict[int, float] | None:
    """The share of each class among the recorded ``mode`` labels. None with fewer than
    :data:`PRIOR_SAMPLES` labels in full tensors (outside training, in the largest evaluation:
    an evaluation loop goes over one held-out set again and again), or when the run metadata
    says the labels are no classes; labels that are quantities (floats that are not whole
    numbers, which the class rules cut at a threshold) do not count."""
    if unclassed_labels(ctx) is not None:
        return None
    counts: dict[int, int] = {}
    per_step: dict[int, int] = {}
    for labels, _ in _labelled(ctx):
        found: ClassIdRecords = labels.derive(ClassIds())
        if _quantities(found, labels.info.shape) or found.multi_hot:
            continue
        for record, step, code in zip(labels.records, labels.steps, labels.modes, strict=True):
            ids = found.ids.get(int(record))
            if ids is None or schema.MODES[int(code)] != mode:
                continue
            classes, seen = np.unique(ids[ids >= 0], return_counts=True)
            for label, number in zip(classes.tolist(), seen.tolist()):
                counts[label] = counts.get(label, 0) + number
            per_step[int(step)] = per_step.get(int(step), 0) + int(seen.sum())
    total = sum(counts.values())
    samples = total if mode == "train" else max(per_step.values(), default=0)
    if samples < PRIOR_SAMPLES:
        return None
    return {label: number / total for label, number in counts.items()}


class ChanceLoss(NamedTuple):
    """The losses of a classifier that learned nothing from its inputs: ``low``, predicting
    the recorded labels' class frequencies (their entropy; ``ln C`` without labels),
    ``high``, guessing uniformly among ``C`` classes (``ln C``; ``low`` when ``C`` is
    unknown), and what they are, in words."""

    low: float
    high: float
    text: str

    def holds(self, loss: Any, fraction: float = 0.9) -> Any:
        """Whether ``loss`` (a float or an array) is at chance: from ``fraction`` of ``low``
        to ``high`` over ``fraction`` (DBG303's band)."""
        return self.not_below(loss, fraction) & (loss <= self.high / fraction)

    def not_below(self, loss: Any, fraction: float = 0.9) -> Any:
        """Whether ``loss`` is at chance or above it (worse than guessing): the classifier
        learned nothing from its inputs."""
        return loss >= fraction * self.low


def chance_loss(ctx: RuleContext, classes: int | None) -> ChanceLoss | None:
    """The chance levels of the loss (see :class:`ChanceLoss`), None when neither is known. The
    labels' entropy is left out when the run weighs its classes (metadata ``class_weighting``,
    or a ``pos_weight`` or class weights read off the loss): a weighted loss that learned
    nothing sits elsewhere."""
    prior = None if _class_weighting(ctx) is not None else label_entropy(ctx)
    uniform = float(np.log(classes)) if classes else None

    def guessing() -> str:
        return f"guessing among {classes} classes scores ln {classes} = {uniform:.3g}"

    if prior is None or not prior > 0:
        return None if uniform is None else ChanceLoss(uniform, uniform, guessing())
    text = (
        f"predicting the labels' class frequencies alone, ignoring the inputs, scores their "
        f"entropy {prior:.3g}"
    )
    if uniform is None:
        return ChanceLoss(prior, prior, text)
    return ChanceLoss(prior, max(prior, uniform), f"{text}; {guessing()}")


def held_out_chance(ctx: RuleContext, classes: int) -> tuple[float, str] | None:
    """The lowest held-out loss of a classifier that learned nothing from its inputs, and
    what it is in words: ``ln C`` for a uniform guess, or, with the training and the
    validation labels' class frequencies (:func:`class_shares`) recorded and the run not
    weighing its classes, the cross-entropy of the training frequencies against the
    validation ones, ``-sum q ln p``, where that is lower. A model that learned nothing can
    have learned the training frequencies, not the validation ones: a balanced validation
    set after a long-tailed training set has its chance at ``ln C``, a validation set at the
    natural rate after a balanced training set at ``ln 2`` for two classes.

    A run that weighs its classes in its loss and validates with the same loss (PyTorch's
    ``CrossEntropyLoss(weight=...)`` for both) has its chance at ``ln C``. None for
    XGBoost's ``scale_pos_weight``, which weighs the objective's gradients and none of the
    evaluation metrics: its predictions lean towards the positives by design, and a model
    that ranks the validation rows well scores a ``logloss`` above ``ln 2`` at a weight of
    50 on balanced labels."""
    weighting = _class_weighting(ctx)
    if weighting is not None and "scale_pos_weight" in weighting.text:
        return None
    uniform = float(np.log(classes))
    guessing = f"guessing among {classes} classes scores ln {classes} = {uniform:.3g}"
    if weighting is not None:
        return uniform, guessing
    trained, held_out = class_shares(ctx, "train"), class_shares(ctx, "eval")
    if trained is None or held_out is None or not set(held_out) <= set(trained):
        return uniform, guessing
    frequencies = -sum(q * np.log(trained[label]) for label, q in held_out.items())
    if frequencies >= uniform:
        return uniform, guessing
    return float(frequencies), (
        f"predicting the training labels' class frequencies scores {frequencies:.3g} on the "
        "validation labels"
    )


# -- shared wording -----------------------------------------------------------------------------


def _percent(share: float) -> str:
    return f"{100 * share:.3g}%"


def _listed(items: Sequence[str]) -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def _class_ids(ids: np.ndarray) -> str:
    """The first ``_LISTED`` class ids, and ``...`` when there are more."""
    return ", ".join(str(c) for c in ids[:_LISTED]) + (" ..." if ids.size > _LISTED else "")


def _records(count: int) -> str:
    return f"{count} record{'s' if count != 1 else ''}"


def _judged_or_skipped(streams: list[list[Finding]]) -> Iterator[Finding]:
    """The findings of every stream, unless no stream could be judged (each holds the info
    finding that says why: too few samples, none recorded late enough): then the rule is
    skipped with those reasons instead."""
    if streams and all(any(f.key in _NOT_JUDGED for f in found) for found in streams):
        raise RuleSkipped(
            "; ".join(f"{f.tensor} ({f.mode}): {f.message}" for found in streams for f in found)
        )
    for found in streams:
        yield from found


# Keys of the info findings that say why a stream was not judged.
_NOT_JUDGED = frozenset({"too-few-samples", "too-early", "one-class"})


def _too_few(
    tag: str, mode: str, steps: Sequence[int], seen: int, samples: int, what: str, judged: str
) -> Finding:
    return Finding(
        message=(
            f"only {seen} {what} in {_records(len(steps))} with full tensors "
            f"(< samples {samples}): "
            f"{judged} not judged; record the data at more steps (hook.record(..., raw=True), "
            "raw_every, or the Hugging Face callback's stats_every) or lower samples"
        ),
        tensor=tag,
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
        steps=len(steps),
        value=float(seen),
        threshold=float(samples),
        mode=mode,
        key="too-few-samples",
        severity=Severity.info,
    )


def _too_early(stream: _Stream, paired: Sequence[_LabelRecord], middle: float) -> Finding:
    last = paired[-1].step
    return Finding(
        message=(
            f"the latest labelled predictions are from step {last}, in the first half of the "
            f"run (before step {middle:g}): the model training ends with was not recorded; "
            "keep full tensors of predictions later in the run (raw_every)"
        ),
        tensor=stream.predictions or stream.labels,
        first_step=paired[0].step,
        last_step=last,
        steps=len(paired),
        value=float(last),
        threshold=middle,
        mode=stream.mode,
        key="too-early",
        severity=Severity.info,
    )


# -- DBG601 -------------------------------------------------------------------------------------


@rule(
    "DBG601",
    "class-imbalance",
    severity="warning",
    category="data",
    requires=LABELS,
    plan=plan_class_ids,
    label={
        "imbalance": "class imbalance",
        "mispredicted": "classes mostly mispredicted",
        "compensated": "class imbalance, compensated",
        "unlabelled-outputs": "classes no label holds",
        "too-few-samples": "too few labels to judge class balance",
    },
    # Skewed labels make a model favour the frequent classes, and mispredict the rare ones.
    # Classes mispredicted alone are a symptom: of classes the model cannot tell apart
    # (DBG604's), or of a model that learned nothing (DBG303's).
    explains={"imbalance": ("DBG604", "DBG303", "DBG601:mispredicted")},
)
def class_imbalance(
    ctx: RuleContext,
    *,
    threshold_imbalance: float = 10.0,
    threshold_misprediction: float = 0.7,
    samples: int = 500,
) -> Iterator[Finding]:
    """Some classes are far rarer than others, or are mostly mispredicted.

    SageMaker Debugger's ClassImbalance, on the class ids of every labels record with a full
    tensor. Each labels tag is judged per mode (train and eval labels are different data
    sets).

    Class ids: integer tensors are class ids (a one-hot last axis is reduced with argmax);
    float tensors whose last axis is longer than 1 are scores, one-hot vectors or
    probabilities (argmax; the axis length is the number of classes); other float tensors
    are class ids when every value is whole, else one binary score per sample (cut at 0.5
    when all values lie in [0, 1], at 0 otherwise), so SageMaker's ``argmax`` parameter is
    not needed. Negative ids (ignore markers such as -100) and non-finite scores give no
    class. A labels record pairs with the predictions record of the same step and mode; tag
    ``x/labels`` pairs with ``x/predictions``, else with the only predictions tag.

    * **imbalance** (key ``imbalance``): over all the labels of the tag and mode,
      ``count(largest class) / count(smallest class) > threshold_imbalance``. The classes are
      those seen, unless the number of classes ``C`` is known from the width of a one-hot or
      probability axis of the labels or of the paired predictions: then a class of
      ``0..C-1`` that never appears is infinitely rare (ratio ``inf``). Except for class ids
      at each position of a sequence (labels ``(batch, length)``), whose classes only the
      predictions' width counts, a vocabulary: a class that no labels record of any mode
      holds is then an output no position is labelled with, such as a padding or
      start-of-sequence token, or a class a label mapping or filter drops, which the trace
      cannot tell apart; it is a note (key ``unlabelled-outputs``, once per labels tag), not
      an imbalance of the data's classes. One label per sample keeps the imbalance: every
      output of a classifier is a class of its task. With plain integer labels and
      predictions a class that never appears cannot be told from an unused id and is not
      counted. The judgement needs at least
      ``samples`` labels (SageMaker's rule waits for them); it uses every label of the
      trace, and the finding spans every record: the
      labels were skewed from the first one, whenever enough of them made that certain
      (SageMaker could fire only once ``samples`` labels had been seen). A label stream
      with fewer labels gets an info finding (key ``too-few-samples``); when no stream has
      enough, the rule is reported as skipped with that reason instead of a silent pass. When
      the run compensates its imbalance (run metadata ``class_weighting``: the XGBoost callback
      notes ``scale_pos_weight``; note a weighted loss or a balancing sampler yourself; a binary
      loss's ``pos_weight`` and a cross-entropy's class ``weight`` are read off the recorded
      loss, labels and scores where they are kept in full), the imbalance is an info finding
      of key ``compensated`` that explains no other: the fix is in place, and whether it
      works is the misprediction check's question. Unless
      the metadata (or the loss) gives a weight per class id (a list of numbers, or
      ``scale_pos_weight`` for class 1 of two) and the classes' counts times their weights are
      no more even than the counts: weights that rise with a class's count (its frequency
      written where its inverse was meant) are no compensation, and the imbalance stays a
      warning that says so. Such weights also make an imbalance of labels under the bar: the
      counts times the weights more than ``threshold_imbalance`` apart are the warning then
      (weights 9.2:1 on the larger class of 9.7:1 make 90:1, and cut the smaller class's
      recall from 0.98 to 0.86 on a real run). Both judge the training labels only, whose
      loss the weights weigh: a held-out set is scored unweighted, and a balanced one beside
      weights that even out a skewed training set is no imbalance they make.
    * **misprediction** (key ``mispredicted``, needs predictions): for some class, the share
      of its labelled samples whose predicted class differs ``> threshold_misprediction``.
      One mode's predictions judge the model, as in DBG604: the held-out (eval) ones when the
      run's second half holds ``samples`` of them, since training predictions are made with
      dropout on and on augmented inputs; else the training ones.
      SageMaker accumulates from the first step, which makes every run fire while the model
      is still untrained (a random 4-class model mispredicts 75 % of every class); here the
      shares are taken over the **latest** records that together hold at least ``samples``
      labelled predictions, i.e. the model as training leaves it. Samples whose prediction
      is non-finite are left out; they still count towards the window, so that a model whose
      outputs turned to NaN is not judged on its first steps instead. Fewer than ``samples``
      labelled predictions in the whole trace, or latest ones from the first half of the run
      only (an untrained model's, as DBG604 says): not judged. A class is reported when even
      the lower end of its share's 95 % Wilson interval is above the threshold, so that "4 of
      5 mispredicted" is no finding while "89 of 100" is; repeated evaluations of one
      held-out set count as many samples as the largest of them holds (see DBG604).
      Mispredicted classes are a symptom:
      of classes the model cannot tell apart (DBG604), of an imbalance, or of a model that
      learned nothing (DBG303).

    Skipped for a language model's token labels and a regression's targets (run metadata
    ``task``, see DBG604).

    Why it matters: a model trained on imbalanced classes learns to favour the frequent ones;
    accuracy looks fine while the rare classes (often the ones that matter) are missed.

    Typical causes: skewed data collection, a filtering or sampling bug, labels read from the
    wrong column, a shuffle missing so that each batch holds one class.

    Fix: resample (oversample rare classes, undersample frequent ones), weight the loss by
    inverse class frequency, use focal loss, collect more data for the rare classes, and judge
    the model with per-class metrics (recall, F1) rather than accuracy.

    Args:
        threshold_imbalance: Largest-to-smallest class count ratio above which the labels count
            as imbalanced.
        threshold_misprediction: Share of a class's samples mispredicted above which the class
            counts as mispredicted.
        samples: Labels needed before judging, and the size of the latest window of labelled
            predictions the misprediction check uses.
    """
    refuse_unclassed(ctx)
    weighting = _class_weighting(ctx)
    middle = _run_middle(ctx)
    judged: list[list[Finding]] = []
    for labels, predictions in _single_labelled(ctx):
        streams = _streams(labels, predictions)
        if not streams:
            continue
        model = _model_stream(streams, middle, samples)
        held = np.unique(np.concatenate([r.labels for s in streams for r in s.records]))
        first = len(judged)
        for stream in streams:
            found = list(_imbalance(stream, threshold_imbalance, samples, weighting, held))
            if stream is model:
                found += _misprediction(stream, threshold_misprediction, samples, middle)
            judged.append(found)
        # Once per labels tag, beside its first stream's findings.
        judged[first] += _unlabelled_outputs(streams, held)
    yield from _judged_or_skipped(judged)


def _unlabelled_outputs(streams: Sequence[_Stream], held: np.ndarray) -> Iterator[Finding]:
    """The note on classes the predictions score at each position of a sequence and no
    labels record of any mode holds, when only the predictions' width says there are that
    many classes."""
    first = streams[0]
    if not first.width or not first.per_position:
        return
    never = np.setdiff1d(np.arange(first.width), held)
    if not never.size:
        return
    steps = [r.step for s in streams for r in s.records]
    yield Finding(
        message=(
            f"{never.size} of the {first.width} classes the model scores never appear in any "
            f"labels ({_class_ids(never)}): outputs no sample is labelled with, such as padding or "
            "start-of-sequence tokens, or classes a label mapping or filter drops"
        ),
        severity=Severity.info,
        key="unlabelled-outputs",
        tensor=first.labels,
        first_step=min(steps),
        last_step=max(steps),
        steps=len(set(steps)),
        value=float(never.size),
        extra={"unlabelled_classes": [int(c) for c in never[:100]]},
    )


def _model_stream(streams: Sequence[_Stream], middle: float, samples: int) -> _Stream | None:
    """The stream whose predictions judge the model: held-out (eval) records first, then
    train, then predict, among those with paired predictions; first among them, those whose
    records of the run's second half hold ``samples`` labels, then those with any record
    there (all of a mode's records in the first half are an evaluation before training).
    Training-mode predictions are made with dropout on and on augmented inputs; held-out ones
    show the model itself."""
    paired = {s.mode: s for s in streams if s.paired}
    preferred = [paired[m] for m in _MODE_PREFERENCE if m in paired]
    late = [s for s in preferred if s.paired[-1].step >= middle]
    enough = [
        s for s in late if sum(r.labels.size for r in s.paired if r.step >= middle) >= samples
    ]
    candidates = enough or late or preferred
    return candidates[0] if candidates else None


class _Weighting(NamedTuple):
    """How the run compensates its class imbalance: in words, and the weight of each class id
    where the metadata gives them (a list of numbers, or XGBoost's ``scale_pos_weight``)."""

    text: str
    per_class: np.ndarray | None


def _class_weighting(ctx: RuleContext) -> _Weighting | None:
    """The run metadata's ``class_weighting`` (the XGBoost callback notes
    ``scale_pos_weight``; set it yourself for a weighted loss or a resampling sampler), else a
    binary loss's positive weight or a cross-entropy's class weights read off the loss (see
    :func:`dbgcli.rules.loss.inferred_pos_weight` and
    :func:`dbgcli.rules.loss.inferred_class_weights`); None without any."""
    weighting = ctx.trace.metadata.get(schema.META_CLASS_WEIGHTING)
    if not weighting:
        # Imported here: the loss rules build on this module.
        from dbgcli.rules.loss import inferred_class_weights, inferred_pos_weight

        positive = inferred_pos_weight(ctx)
        if positive is not None:
            return _Weighting(
                f"a binary loss weighting its positives {positive:.3g}x (read off the loss)",
                np.array([1.0, positive]),
            )
        per_class = inferred_class_weights(ctx)
        if per_class is None:
            return None
        shown = [f"{c}: {w:.3g}" for c, w in enumerate(per_class.tolist()) if np.isfinite(w)]
        return _Weighting(
            f"a cross-entropy weighting its classes {_listed(shown)} (read off the loss)",
            per_class,
        )
    if not isinstance(weighting, Mapping):
        return _Weighting(str(weighting), None)
    per_class = None
    for key, value in weighting.items():
        if isinstance(value, (int, float)) and "scale_pos_weight" in str(key):
            per_class = np.array([1.0, float(value)])
        elif isinstance(value, (list, tuple)) and value:
            if all(isinstance(w, (int, float)) for w in value):
                per_class = np.array(value, dtype=np.float64)
    text = ", ".join(f"{key} {value}" for key, value in weighting.items())
    return _Weighting(text, per_class)


def _weighted_ratio(
    weighting: _Weighting | None, classes: np.ndarray, counts: np.ndarray
) -> float | None:
    """Largest-to-smallest ratio of the classes' counts times their weights, or None without
    a positive finite weight for every class seen."""
    if (
        weighting is None
        or weighting.per_class is None
        or classes.max() >= len(weighting.per_class)
    ):
        return None
    weights = weighting.per_class[classes]
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        return None
    mass = counts * weights
    return float(mass.max() / mass.min())


def _imbalance(
    stream: _Stream,
    threshold: float,
    samples: int,
    weighting: _Weighting | None = None,
    held: np.ndarray | None = None,
) -> Iterator[Finding]:
    steps = [r.step for r in stream.records]
    sizes = np.array([r.labels.size for r in stream.records], dtype=np.int64)
    seen = int(sizes.sum())
    if seen < samples:
        yield _too_few(stream.labels, stream.mode, steps, seen, samples, "labels", "class balance")
        return
    if not seen:
        return
    classes, counts = np.unique(
        np.concatenate([r.labels for r in stream.records]), return_counts=True
    )
    missing = (
        np.setdiff1d(np.arange(stream.width), classes)
        if stream.width
        else np.empty(0, dtype=np.int64)
    )
    if stream.per_position and held is not None:
        # A vocabulary scored at every position: a token no labels record of any mode holds
        # is an output no position is labelled with (see _unlabelled_outputs).
        missing = np.intersect1d(missing, held)
    largest = int(np.argmax(counts))
    biggest = f"largest class {classes[largest]}: {counts[largest]} labels"
    if missing.size:
        ratio = float("inf")
        smallest = (
            f"{missing.size} of {stream.width} classes never appear ({_class_ids(missing)}; "
            "classes the model scores but never sees: check the label mapping and any "
            "filtering)"
        )
    else:
        least = int(np.argmin(counts))
        ratio = float(counts[largest] / counts[least])
        smallest = f"smallest class {classes[least]}: {counts[least]}"
    # Class weights weigh the training loss: the counts they multiply are the training
    # labels' (a balanced held-out set is no imbalance they make).
    weighted = (
        None
        if missing.size or stream.mode != "train"
        else _weighted_ratio(weighting, classes, counts)
    )
    if ratio > threshold:
        # Weights that rise with the class's count (frequencies written for their inverses)
        # make the imbalance worse, whatever the metadata calls them.
        compensates = weighting is not None and (weighted is None or weighted < ratio)
        value, judged = ratio, f"ratio {ratio:.3g} (> {threshold:g})"
        if weighting is None:
            weights = ""
        elif compensates:
            weights = f"; the run compensates it ({weighting.text})"
        else:
            weights = (
                f"; the run's class weights ({weighting.text}) do not compensate it: "
                f"counts times weights have a ratio of {weighted:.3g}"
            )
    elif weighting is not None and weighted is not None and weighted > threshold:
        # Weights that make an imbalance the labels do not have.
        compensates, value, weights = False, weighted, ""
        judged = (
            f"ratio {ratio:.3g}, but the run's class weights ({weighting.text}) weigh them "
            f"unevenly: counts times weights have a ratio of {weighted:.3g} (> {threshold:g})"
        )
    else:
        return
    yield Finding(
        message=(
            f"{biggest}, {smallest}: {judged}; "
            f"{seen} labels in {_records(len(steps))} with full tensors{weights}"
        ),
        severity=Severity.info if compensates else None,
        key="compensated" if compensates else "imbalance",
        # The labels were imbalanced from the first record, whenever enough samples made
        # that certain.
        tensor=stream.labels,
        first_step=steps[0],
        last_step=steps[-1],
        steps=len(steps),
        value=value,
        threshold=threshold,
        mode=stream.mode,
        extra={
            "labels_seen": seen,
            "records": len(steps),
            "classes": {int(c): int(n) for c, n in zip(classes[:100], counts[:100], strict=True)},
            "missing_classes": [int(c) for c in missing[:100]],
        },
    )


def _latest(records: Sequence[_LabelRecord], samples: int) -> list[_LabelRecord] | None:
    """The latest records that together hold at least ``samples`` labels (None: all of them
    hold fewer). Labels count whatever their predictions' scores, so that a model whose
    predictions turned non-finite is not judged on its untrained beginnings instead."""
    held = 0
    for start in range(len(records) - 1, -1, -1):
        held += records[start].labels.size
        if held >= samples:
            return list(records[start:])
    return None


def _distinct_share(window: Sequence[_LabelRecord], mode: str) -> float:
    """The share of ``window``'s labelled samples that are distinct samples, for confidence
    intervals: 1 for training records (each step a new batch); for other modes, the samples
    of the largest evaluation (the records of one step) over those of all of them. An
    evaluation loop goes over one held-out set again and again, and a model that moved
    little since judges the same samples again: counting every pass would narrow the
    intervals as if each held new samples (an evaluation of changing subsets is credited
    less than it holds, which only widens them)."""
    if mode == "train":
        return 1.0
    per_step: dict[int, int] = {}
    for record in window:
        per_step[record.step] = per_step.get(record.step, 0) + int(record.labels.size)
    total = sum(per_step.values())
    return max(per_step.values()) / total if total else 1.0


def _misprediction(
    stream: _Stream, threshold: float, samples: int, middle: float
) -> Iterator[Finding]:
    window = _latest(stream.paired, samples)
    if window is None or window[-1].step < middle:
        return  # too few, or only an untrained model's predictions (see DBG604's too-early)
    truth = np.concatenate([r.truth for r in window if r.truth is not None])
    predicted = np.concatenate([r.predicted for r in window if r.predicted is not None])
    if not truth.size:
        return
    classes, inverse = np.unique(truth, return_inverse=True)
    labelled = np.bincount(inverse)
    wrong = np.bincount(inverse, weights=(predicted != truth))
    share = wrong / labelled
    distinct = _distinct_share(window, stream.mode)
    bad = np.flatnonzero(_wilson(wrong * distinct, labelled * distinct)[0] > threshold)
    if not bad.size:
        return
    order = bad[np.argsort(-share[bad], kind="stable")]
    listed = _listed([f"class {classes[i]} {_percent(share[i])} of {labelled[i]}" for i in order])
    yield Finding(
        message=(
            f"classes mostly mispredicted (surely > {_percent(threshold)} of their samples): "
            f"{listed}; latest {truth.size} labelled predictions in {_records(len(window))}"
        ),
        # A finding about the predictions, as DBG604's: what the model computed, not the data.
        tensor=stream.predictions,
        first_step=window[0].step,
        last_step=window[-1].step,
        steps=len(window),
        value=float(share[order[0]]),
        threshold=threshold,
        mode=stream.mode,
        key="mispredicted",
        extra={
            "labels": stream.labels,
            "samples": int(truth.size),
            "unscored": sum(r.unscored for r in window),
            "shares": {int(classes[i]): float(share[i]) for i in order[:100]},
        },
    )


# -- DBG602 -------------------------------------------------------------------------------------


def _plan_moments(ctx: RuleContext, params: dict[str, Any]) -> Iterator[tuple[str, Derivation]]:
    for view in _float_inputs(ctx):
        yield view.tag, _moments_of(ctx, params["max_std_ratio"])


def _moments_of(ctx: RuleContext, max_std_ratio: float) -> ChannelMoments:
    """DBG602's moments: of the analysed records, without those whose scale is off the
    others' by more than the rule's bar squared (a batch that is badly scaled even against
    data at the edge of the bar)."""
    return ChannelMoments(ctx.start, ctx.stop, ctx.mode, outlier_ratio=max_std_ratio**2)


# What badly scaled inputs do downstream.
_SCALING_EFFECTS = (
    "DBG101",
    "DBG102",
    "DBG201",
    "DBG202",
    "DBG203",
    "DBG301",
    "DBG303",
    "DBG305",
    "DBG306",
    "DBG310",
    "DBG402",
    "DBG404",
    "DBG502",
    *LEARNING_RATE_BY_UPDATES,
)


@rule(
    "DBG602",
    "input-not-normalized",
    severity="warning",
    category="data",
    requires=FLOAT_INPUTS,
    plan=_plan_moments,
    label="inputs not normalised",
    # Not judged is no cause of anything.
    explains={
        "too-few-samples": (),
        "*": _SCALING_EFFECTS,
    },
)
def input_not_normalized(
    ctx: RuleContext,
    *,
    threshold_mean: float = 0.2,
    max_std_ratio: float = 3.0,
    samples: int = 500,
    z: float = 1.0,
) -> Iterator[Finding]:
    """Model inputs are not standardised: a feature or channel is off-centre or badly scaled.

    SageMaker Debugger's CheckInputImages generalised to every float input. Per channel
    (axis 1 of 4-D and larger inputs, ``(batch, channels, H, W)``) or feature (the last axis of
    2-D and 3-D inputs, ``(batch, features)`` and ``(batch, time, features)``), the mean and the
    population standard deviation of every finite value of every input record with a full
    tensor, per mode (merged exactly with Chan's pairwise update), but for records whose
    standard deviation is more than ``max_std_ratio`` squared times above or below the
    median record's: batches unlike the data set (corrupted, scaled by mistake), three of
    which, scaled by 300, once made sixty standardised batches read as a std of 70. The
    message counts them; what they did to the model is the gradient rules' to say.

    * **mean** (key ``mean``): ``|mean| > threshold_mean`` (SageMaker's 0.2), times the std
      where it is above 1: standardising divides by the std, so a channel of std 1000
      around -2.4 is badly scaled (below) but centred;
    * **std** (key ``std``): ``std`` outside ``[1/max_std_ratio, max_std_ratio]``, i.e. more
      than ``max_std_ratio`` times away from 1 on a log scale (the value reported is
      ``max(std, 1/std)``). 3 leaves unit-variance inputs a generous margin and flags what
      standardisation exists to fix: pixels left in [0, 1] (std about 0.3) or [0, 255], raw
      physical units, features scaled by 100 (AutoTrainer's abnormal-data benchmark).

    An image input (``(batch, channels, H, W)``) whose full tensors hold fewer than
    ``samples`` samples (``hook.record(inputs=x)`` keeps them every ``raw_every`` steps only)
    is judged as a whole from the statistics of every record, which are always stored: its
    channels are the same size, so the pooled mean is the mean of the channel means and the
    pooled variance lies between the mean of the channel variances and that plus the largest
    squared channel mean. A pooled ``|mean| > threshold_mean``, a pooled std below
    ``1/max_std_ratio`` or above ``sqrt(max_std_ratio² + threshold_mean²)`` therefore shows
    some channel outside the bars (``extra["whole"]``; pixels in [0, 255] are the usual
    case), or a constant channel, which the channel-by-channel look ignores (an alpha channel
    of ones beside standardised colours pools off-centre); what only that look could show
    needs full tensors. Binarised images (every value 0 or 1, which the records' min, max,
    mean and share of positive values reveal) are not judged as a whole, nor are tabular and
    sequence inputs: one-hot and bag-of-words features, left alone below, would pool to a
    small std.

    A channel is judged on what its records show beyond doubt: its mean and variance, less
    ``z`` standard errors estimated from how the records' own means and second moments
    spread (batch means, which assume nothing about the values' distribution), must cross
    the bars. A standardised feature that is one value but in three of 1,400 digits (a corner
    pixel) pools to a std of 0.2-0.3 or 0.9 depending on whether a batch holding one of those
    three was recorded, and its records' spread says so; a channel off in every batch has
    records that agree.

    Outside training, the samples counted are distinct ones, those of the largest evaluation
    (the records of one step; as DBG604 counts them): an evaluation loop goes over one
    held-out set again and again, and twelve passes over 397 images are 397 samples, not
    4,764. Rows scaled to unit length (every row's L2 norm, or for non-negative values its
    L1 norm, is 1: ``Normalizer``, tf-idf's default ``norm="l2"``) are not judged: their
    scale is set per row, their features are sparse and small by construction, and
    standardising the columns would undo it.

    Channels whose values never vary (std 0: padding, constant features) are ignored: there is
    nothing to standardise. So are channels of codes an embedding table looks up, in a model
    that records one (weights of kind ``embedding``): every value a whole number from 0 to
    fewer than the largest table's rows. Categorical columns kept as floats beside numeric
    ones and cast to ids in ``forward`` are indices, and standardising them would break the
    lookup. So are indicators, channels whose every value is 0 or 1 (one-hot
    encoded categories, binary flags, binarised images): their scale is bounded by
    construction, a flag's mean is its frequency and its std ``sqrt(p (1 - p))`` at most 0.5,
    and they are conventionally left as they are (scikit-learn's ``OneHotEncoder`` output
    beside ``StandardScaler`` columns). Integer inputs (token ids) are not checked (see DBG603). The
    judgement needs at least ``samples`` samples (the first axis of a record: images, rows,
    sequences) and uses all of them; the finding spans every record (the data were off from
    the first batch on, whenever enough of them made that certain) and names the worst
    channels. An input with fewer samples
    gets an info finding (key ``too-few-samples``); when no input has enough, the rule is
    reported as skipped with that reason.

    Why it matters: off-centre or badly scaled inputs make the loss surface ill-conditioned;
    first-layer activations saturate or die, gradients of some weights dwarf others, and
    training needs a much smaller learning rate to converge, or does not converge.

    Typical causes: the normalisation transform missing or applied twice, statistics computed
    on another data set, images left in [0, 255] or [0, 1], tabular features in raw units.

    Fix: standardise each channel or feature with the training set's mean and std
    (``transforms.Normalize``, ``StandardScaler``), or add a normalisation layer at the input.

    Args:
        threshold_mean: Largest acceptable absolute mean of a channel (times its std where
            that is above 1); a finding's threshold is the bar its worst channel was held to.
        max_std_ratio: Largest acceptable factor between a channel's std and 1 (either way).
        samples: Samples needed before judging (distinct ones: the largest evaluation outside
            training).
        z: Standard errors of a channel's mean and variance (from the spread of the
            records' own) allowed in the inputs' favour.
    """
    if max_std_ratio < 1:
        raise RuleConfigError(f"DBG602 max_std_ratio must be >= 1, got {max_std_ratio:g}")
    derivation = _moments_of(ctx, max_std_ratio)
    lookup_rows = max(
        (
            view.info.shape[0]
            for view in ctx.tensors(collection="weights")
            if view.info.shape and is_embedding(view.tag, view.info.kind)
        ),
        default=0,
    )

    def judge(view: TensorView, table: ChannelMomentTable, code: int) -> Iterator[Finding]:
        mine = view.modes == code
        counts = table.samples[view.records[mine]]
        read = counts > 0
        mode = schema.MODES[int(code)]
        seen = int(counts[read].sum())
        steps = [int(s) for s in view.steps[mine][read]]
        distinct, kind = seen, "samples"
        if mode != "train" and read.any():
            # An evaluation loop goes over one held-out set again and again: its passes hold
            # the same samples (as for DBG604's intervals), so the largest counts.
            per_step: dict[int, int] = {}
            for step, count in zip(steps, counts[read].tolist()):
                per_step[step] = per_step.get(step, 0) + int(count)
            distinct, kind = max(per_step.values()), "distinct samples (the largest evaluation)"
        if distinct < samples:
            pooled = _pooled(view, mine) if _image(view) else None
            if pooled is not None and pooled.samples >= samples:
                yield from _whole_normalisation(
                    pooled, view, mode, threshold_mean, max_std_ratio, seen
                )
            elif pooled is not None:
                yield _too_few(
                    view.tag,
                    mode,
                    pooled.steps,
                    pooled.samples,
                    samples,
                    "samples (in statistics; fewer with full tensors)",
                    "input normalisation",
                )
            elif read.any():
                yield _too_few(
                    view.tag, mode, steps, distinct, samples, kind, "input normalisation"
                )
            return
        if table.unit_rows:
            return  # scaled row by row, as tf-idf is: standardising columns would undo it
        # The inputs were so from their first record, whenever enough samples made that
        # certain.
        where: dict[str, Any] = {
            "tensor": view.tag,
            "first_step": steps[0],
            "last_step": steps[-1],
            "steps": len(steps),
            "mode": mode,
        }
        seen_text = f"{seen} samples in {_records(len(steps))} with full tensors"
        unlike = int(_outlying_records(view.stat("std"), view.modes, max_std_ratio**2)[mine].sum())
        if unlike:
            seen_text += (
                f" ({_records(unlike)} left out, whose scale is over {max_std_ratio**2:g}x off "
                "the median record's: batches unlike the rest)"
            )
        yield from _normalisation(
            table.moments[int(code)],
            table.unit,
            threshold_mean,
            max_std_ratio,
            z,
            seen_text,
            where,
            lookup_rows,
        )

    yield from _judged_or_skipped(
        [
            list(judge(view, view.derive(derivation), code))
            for view in _float_inputs(ctx)
            for code in view.mode_codes
        ]
    )


@dataclass(frozen=True)
class _Pooled:
    """Mean and population std of every finite value of an input's records of one mode,
    pooled from their statistics rows, and the samples and steps they hold."""

    mean: float
    std: float
    samples: int
    steps: list[int]


def _pooled(view: TensorView, mine: np.ndarray) -> _Pooled | None:
    """None when nothing is finite, or when the records show an indicator (every value 0 or
    1: between 0 and 1, and the share of positive values is the mean), which the
    channel-by-channel judgement leaves alone."""
    finite, mean, std, low, high, positive = (
        view.stat(name)[mine] for name in ("finite_count", "mean", "std", "min", "max", "pos_frac")
    )
    use = (finite > 0) & np.isfinite(mean) & np.isfinite(std)
    total = float(finite[use].sum())
    if not total:
        return None
    if (
        (low[use] >= 0).all()
        and (high[use] <= 1).all()
        and np.allclose(mean[use], positive[use] * view.stat("count")[mine][use] / finite[use])
    ):
        return None
    centre = float((finite[use] * mean[use]).sum() / total)
    spread = finite[use] * (std[use] ** 2 + (mean[use] - centre) ** 2)
    shape = view.info.shape or ()
    per_sample = int(np.prod(shape[1:], dtype=np.int64)) or 1
    return _Pooled(
        centre,
        float(np.sqrt(spread.sum() / total)),
        int(view.stat("count")[mine][use].sum()) // per_sample,
        [int(s) for s in view.steps[mine][use]],
    )


def _whole_normalisation(
    pooled: _Pooled,
    view: TensorView,
    mode: str,
    threshold_mean: float,
    max_std_ratio: float,
    full: int,
) -> Iterator[Finding]:
    """Judge an image input as a whole. Channels of equal size pool to the mean of their means
    and a variance of at least the mean of their variances, at most that plus the largest
    squared channel mean: a whole off-centre by more than ``threshold_mean``, a std below
    ``1 / max_std_ratio``, or one above ``sqrt(max_std_ratio² + threshold_mean²)`` each prove
    a channel outside the bars."""
    if pooled.std == 0:
        return  # every value the same: nothing to standardise
    where: dict[str, Any] = {
        "tensor": view.tag,
        "first_step": pooled.steps[0],
        "last_step": pooled.steps[-1],
        "steps": len(pooled.steps),
        "mode": mode,
    }
    seen = (
        f"{pooled.samples} samples in {_records(len(pooled.steps))}, from their statistics "
        f"(full tensors of {full} samples are too few to judge each channel: "
        "record inputs with raw=True)"
    )
    if abs(pooled.mean) > threshold_mean:
        yield Finding(
            message=(
                f"inputs off-centre as a whole, so at least one channel is: mean {pooled.mean:.3g} "
                f"over every channel (|mean| > {threshold_mean:g}); {seen}"
            ),
            value=abs(pooled.mean),
            threshold=threshold_mean,
            key="mean",
            extra={"whole": True},
            **where,
        )
    widest = float(np.hypot(max_std_ratio, threshold_mean))
    if pooled.std < 1 / max_std_ratio or pooled.std > widest:
        bar = f"< {1 / max_std_ratio:.3g}" if pooled.std < 1 else f"> {widest:.3g}"
        yield Finding(
            message=(
                f"inputs badly scaled as a whole, so at least one channel is: std "
                f"{pooled.std:.3g} over every channel ({bar}); {seen}"
            ),
            value=max(pooled.std, 1 / pooled.std),
            threshold=max_std_ratio if pooled.std < 1 else widest,
            key="std",
            extra={"whole": True},
            **where,
        )


def _normalisation(
    moments: Moments,
    unit: str,
    threshold_mean: float,
    max_std_ratio: float,
    z: float,
    seen: str,
    where: dict[str, Any],
    lookup_rows: int,
) -> Iterator[Finding]:
    std = moments.std
    varying = (moments.count > 0) & (std > 0) & ~moments.indicator
    if lookup_rows:
        varying &= ~moments.codes(lookup_rows)
    judged = int(varying.sum())
    # What the records' spread leaves in doubt is given in the inputs' favour.
    mean_se, var_se = (
        np.nan_to_num(z * e) if e is not None else 0.0 for e in (moments.mean_se, moments.var_se)
    )
    variance = std**2
    with np.errstate(invalid="ignore"):
        low, high = np.sqrt(np.maximum(variance - var_se, 0.0)), np.sqrt(variance + var_se)
    # A channel scaled far beyond 1 is the std check's; its mean is off-centre only if it
    # stays so once scaled (an std of 1000 around -2.4 is centred).
    bar = threshold_mean * np.maximum(std, 1.0)
    off_centre = np.flatnonzero(varying & (np.abs(moments.mean) - mean_se > bar))
    if off_centre.size:
        order = off_centre[np.argsort(-np.abs(moments.mean[off_centre]), kind="stable")]
        listed = _listed([f"{unit} {i} mean {moments.mean[i]:.3g}" for i in order])
        scaled = " x its std where above 1" if (std[order] > 1).any() else ""
        yield Finding(
            message=(
                f"{order.size} of {judged} {unit}s off-centre (|mean| > {threshold_mean:g}"
                f"{scaled}): {listed}; {seen}"
            ),
            value=float(abs(moments.mean[order[0]])),
            threshold=float(bar[order[0]]),
            key="mean",
            extra={"means": {int(i): float(moments.mean[i]) for i in order[:100]}},
            **where,
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(varying, np.maximum(std, 1 / std), np.nan)
    badly_scaled = np.flatnonzero(varying & ((low > max_std_ratio) | (high < 1 / max_std_ratio)))
    if badly_scaled.size:
        order = badly_scaled[np.argsort(-factor[badly_scaled], kind="stable")]
        listed = _listed([f"{unit} {i} std {std[i]:.3g}" for i in order])
        yield Finding(
            message=(
                f"{order.size} of {judged} {unit}s badly scaled (std outside "
                f"[{1 / max_std_ratio:.3g}, {max_std_ratio:g}]): {listed}; {seen}"
            ),
            value=float(factor[order[0]]),
            threshold=max_std_ratio,
            key="std",
            extra={"stds": {int(i): float(std[i]) for i in order[:100]}},
            **where,
        )


# -- DBG603 -------------------------------------------------------------------------------------


def _token_thresholds(values: tuple[int, ...], thresholds: tuple[float, ...]) -> tuple[float, ...]:
    if not values:
        raise RuleConfigError("DBG603 token_values must name at least one token value")
    if len(thresholds) == 1:
        return thresholds * len(values)
    if len(thresholds) != len(values):
        raise RuleConfigError(
            f"DBG603 needs one threshold per token value (or one for all): "
            f"{len(values)} token_values, {len(thresholds)} token_thresholds_percent"
        )
    return thresholds


def _plan_tokens(ctx: RuleContext, params: dict[str, Any]) -> Iterator[tuple[str, Derivation]]:
    others = tuple(v for v in params["token_values"] if v != 0)
    if others:
        for view in _with_full_tensors(_integer_inputs(ctx)):
            yield view.tag, TokenShares(others)


@rule(
    "DBG603",
    "token-ratio",
    severity="warning",
    category="data",
    requires=INTEGER_INPUTS,
    plan=_plan_tokens,
    label={
        "*": "sequences mostly one token",
        "labelled-padding": "padding labelled as a class",
        "masked-padding": "padding the loss skips",
    },
    # A recurrent model that reads the padding (unpacked) carries its state through hundreds
    # of pad steps, where the gradient to the real tokens vanishes; any model given mostly
    # padding has little to learn from. Padding labelled as a class fills that class.
    explains={
        "*": ("DBG101", "DBG301:not-decreasing", "DBG303"),
        "labelled-padding": ("DBG101", "DBG301:not-decreasing", "DBG303", "DBG601:imbalance"),
        "masked-padding": (),
    },
)
def token_ratio(
    ctx: RuleContext,
    *,
    token_values: tuple[int, ...] = (0,),
    token_thresholds_percent: tuple[float, ...] = (50.0,),
) -> Iterator[Finding]:
    """One token value (padding, unknown, end of sequence) fills too much of the input sequences.

    SageMaker Debugger's NLPSequenceRatio on every integer tensor of role ``inputs``
    (token ids ``(batch, seq_len)``): per record, ``100 * count(x == token) / size(x)`` for
    each token of ``token_values``, compared with the threshold at the same position of
    ``token_thresholds_percent`` (one threshold applies to every token); a share above it is a
    violating record. Evaluated record by record as SageMaker does, one finding per tensor,
    token and episode of consecutive violating records of one mode, with the largest share;
    but only when the token's share over all the mode's analysed records (by element) is
    above the threshold too. Batches padded to their own longest sequence scatter around the
    run's share (43 % in one exploration run, its batches up to 52 %), and a few of them above
    the bar are no run of sequences that are mostly padding.

    The share of token 0 is the ``zero_frac`` statistic, which the writer stores for every
    record, so token 0 (the usual padding id) is checked on every record; other tokens are
    counted in the records whose full tensor was kept.

    **Padding labelled as a class** (key ``labelled-padding``): when a training finding's
    records sit beside labels of the inputs' shape (one label per token, kept in full at
    the same step), and one class labels at least 99 % of the token's positions there, the
    loss counts the padding as that class: a token classifier learns to predict "O" on
    padding, a language model to predict padding after padding. Loss and accuracy are then
    mostly the padding's (a real token classifier, its padding labelled 0: accuracy 0.97,
    0.87 on the real tokens), and the class looks far more frequent than it is (DBG601's
    imbalance). Padding holds nothing that could tell its labels apart, so labelled padding
    holds one label throughout; a label shifted against the inputs (a language model's next
    token) leaves a few others at its edges. Padding the loss skips (no label, ``-100``, at
    99 % of its positions or more) teaches nothing and costs compute: the finding is then a
    note (key ``masked-padding``) that explains nothing (a GPT-2 padded to 64 so, its
    attention masked too, was as good as its twin padded to each batch).

    Why it matters: sequences that are mostly padding waste compute and, with a wrong attention
    mask or loss mask, teach the model to predict padding; a recurrent model fed the padding
    after the tokens (no ``pack_padded_sequence``) carries its state through it, and the
    gradient that reaches the real tokens vanishes on the way (a real LSTM run, 93 % padding:
    3e-40 on the input weights, the loss at chance, which packing the same batches cured);
    many unknown tokens mean the tokenizer does not fit the text. In evaluation batches only
    the compute is at stake (and they are seldom bucketed by length: the ``Trainer``'s
    ``group_by_length`` sorts only the training sampler), so findings on records of mode
    ``eval`` are notes (severity info).

    Typical causes: padding every batch to a fixed maximum length, a few very long sequences
    in a batch of short ones, a tokenizer or vocabulary that does not match the data.

    Fix: pad dynamically to the longest sequence of the batch, bucket sequences by length,
    truncate outliers, use the tokenizer the model was trained with.

    Fix (key ``labelled-padding``): label the padding with the loss's ignore index (-100 for
    PyTorch's cross-entropy and transformers' models, whose ``DataCollatorForTokenClassification``
    and ``DataCollatorForLanguageModeling`` do so), or mask it out of the loss with the
    attention mask; then pad dynamically to the longest sequence of the batch.

    Args:
        token_values: Token ids to watch (comma-separated on the command line).
        token_thresholds_percent: Largest acceptable share of each token, in percent; one per
            token value, or a single one for all.
    """
    thresholds = _token_thresholds(token_values, token_thresholds_percent)
    others = tuple(v for v in token_values if v != 0)
    for view in _integer_inputs(ctx):
        counted = (
            view.derive(TokenShares(others))[view.records]
            if others and view.info.raw_records
            else None
        )
        for value, threshold in zip(token_values, thresholds, strict=True):
            if value == 0:
                shares = view.stat("zero_frac") * 100.0
            elif counted is not None:
                shares = counted[:, others.index(value)]
            else:
                continue
            for code in view.mode_codes:
                mine = (view.modes == code) & np.isfinite(shares)
                if not mine.any():
                    continue
                analysed = int(mine.sum())
                # Dynamically padded batches scatter around the run's share: a few above the
                # bar are that scatter, not a run whose sequences are mostly one token.
                counts = view.stat("count")[mine]
                if not np.sum(shares[mine] * counts) / np.sum(counts) > threshold:
                    continue
                found = episode_findings(
                    tensor=view.tag,
                    steps=view.steps[mine],
                    values=shares[mine],
                    violating=shares[mine] > threshold,
                    threshold=threshold,
                    key=f"token-{value}",
                    modes=view.modes[mine],
                    extra={"token": value, "records_analysed": analysed},
                    message=_token_message(value, threshold, analysed),
                )
                if code != schema.MODE_CODES["eval"]:
                    labelled = _labelled_token(ctx, view, value, code)
                    for finding in found:
                        yield finding if labelled is None else labelled.mark(finding)
                    continue
                # Evaluation batches are rarely bucketed by length (the Trainer's
                # group_by_length sorts only the training sampler): their padding costs
                # evaluation time, and teaches the model nothing.
                for finding in found:
                    yield replace(
                        finding,
                        severity=Severity.info,
                        message=f"{finding.message}; evaluation batches, which cost time only",
                    )


class _LabelledToken(NamedTuple):
    """The labels at a token's positions, in the records of one mode that hold both: one
    class at nearly all of them (``label``), or none (None: the loss skips them)."""

    labels: str
    positions: int
    label: int | None
    labelled: int
    all_labels: int

    def mark(self, finding: Finding) -> Finding:
        """The token's finding, as padding labelled as a class, or as padding the loss skips,
        which costs compute only (a note)."""
        if self.label is None:
            skipped = 1 - self.labelled / self.positions
            return replace(
                finding,
                key="masked-padding",
                severity=Severity.info,
                message=(
                    f"{finding.message}; the loss skips its positions (no label at "
                    f"{_percent(skipped)} of them, in {self.labels}): the padding costs "
                    "compute only"
                ),
            )
        return replace(
            finding,
            key="labelled-padding",
            message=(
                f"{finding.message}; its positions are labelled class {self.label} "
                f"({_percent(self.labelled / self.positions)}, in {self.labels}), so the loss "
                f"counts them: {_percent(self.labelled / self.all_labels)} of the labels"
            ),
            extra={
                **finding.extra,
                "labels": self.labels,
                "label": self.label,
                "labelled_share": self.labelled / self.positions,
                "share_of_labels": self.labelled / self.all_labels,
            },
        )


#: Share of a token's positions that one class must label for the token to be labelled as a
#: class: padding carries nothing that could tell its labels apart, so labelled padding holds
#: one label throughout; a shift of the labels against the inputs leaves a few at its edges.
_LABELLED_TOKEN_SHARE = 0.99


def _labelled_token(
    ctx: RuleContext, inputs: TensorView, value: int, code: int
) -> _LabelledToken | None:
    """How labels of the inputs' shape treat the positions of ``value`` in the inputs'
    records of mode ``code``, when one class labels nearly all of them (see
    ``_LABELLED_TOKEN_SHARE``) or nearly none does; None otherwise, or without labels kept
    in full beside them.
    Labels and inputs pair by step and mode, in record order, as labels and predictions do."""
    if not inputs.info.raw_records:
        return None
    where = inputs.derive(TokenPositions(value))
    found: list[_LabelledToken] = []
    for labels in _with_full_tensors(_tagged(ctx, "labels")):
        ids = labels.derive(ClassIds()).ids
        at_token: list[np.ndarray] = []
        all_labels = 0
        for _, record, partner in _by_step(labels, inputs, code):
            row = ids.get(record)
            if row is None or partner not in where:
                continue
            packed, shape = where[partner]
            held = _positions_of(packed, shape, row.size)
            if held is None:
                continue
            at_token.append(row[held])
            all_labels += int((row >= 0).sum())
        token_labels = np.concatenate(at_token) if at_token else np.empty(0, np.int64)
        labelled = token_labels[token_labels >= 0]
        if not token_labels.size:
            continue
        if labelled.size <= (1 - _LABELLED_TOKEN_SHARE) * token_labels.size:
            found.append(
                _LabelledToken(labels.tag, token_labels.size, None, labelled.size, all_labels)
            )
            continue
        classes, counts = np.unique(labelled, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] >= _LABELLED_TOKEN_SHARE * token_labels.size:
            found.append(
                _LabelledToken(
                    labels.tag, token_labels.size, int(classes[top]), int(counts[top]), all_labels
                )
            )
    return max(found, key=lambda f: f.positions, default=None)


def _token_message(value: int, threshold: float, analysed: int) -> Callable[[Episode, float], str]:
    def message(episode: Episode, share: float) -> str:
        return (
            f"token {value} is up to {share:.3g}% of the tokens (> {threshold:g}%) "
            f"in {episode.count} of {analysed} records analysed"
        )

    return message


# -- DBG604 -------------------------------------------------------------------------------------


@rule(
    "DBG604",
    "classifier-confusion",
    severity="warning",
    category="data",
    requires=(LABELS, PREDICTIONS),
    plan=plan_class_ids,
    label={
        "indistinct": "classes the model cannot tell apart",
        "shifted": "labels shifted against the predictions",
        "diagonal": "predicted classes often wrong",
        "off-diagonal": "classes confused with each other",
        "too-early": "predictions recorded too early to judge",
        "too-few-samples": "too few predictions to judge confusion",
    },
    # Evaluation labels coded differently from training's: the model predicts the training
    # coding, so the held-out loss rises as it learns and every class looks mispredicted.
    explains={
        "shifted": ("DBG302", "DBG304", "DBG303", "DBG303:held-out-at-chance", "DBG601"),
        "indistinct": ("DBG601:mispredicted",),
    },
)
def classifier_confusion(
    ctx: RuleContext,
    *,
    category_no: int | None = None,
    min_evidence: float = 3.0,
    min_share: float = 0.1,
    min_diag: float = 0.9,
    max_off_diag: float = 0.1,
    tail_fraction: float = 0.2,
    samples: int = 500,
) -> Iterator[Finding]:
    """The classifier confuses classes: it cannot tell some classes apart.

    SageMaker Debugger's Confusion. Labels and predictions become class ids as in DBG601
    (argmax of score or one-hot axes, whole numbers as ids, binary scores cut at 0.5 or 0),
    are paired sample by sample (same step and mode; ``x/labels`` with ``x/predictions``, else
    the only predictions tag) and counted in a confusion matrix ``C[label][predicted]``.

    **Classes the model cannot tell apart** (key ``indistinct``, a warning). A prediction of
    class ``i`` is evidence that a sample is of class ``i`` rather than of class ``j`` by the
    likelihood ratio ``(C[i][i] / n_i) / (C[j][i] / n_j)``: how much more often the model
    predicts ``i`` for a sample of ``i`` than for one of ``j`` (``n_k``, the samples of class
    ``k``; the ratio does not depend on how frequent the classes are). When it is below
    ``min_evidence`` (3: Jeffreys' and Kass and Raftery's (1995) bound below which a Bayes
    factor is "not worth more than a bare mention"), predicting ``i`` hardly tells ``i`` from
    ``j``: two classes whose inputs look alike (1:1 when the model guesses between them), a
    model collapsed onto few classes (its favourite predicted for everything), or a rare class
    swallowed by a frequent one. Only pairs where at least ``min_share`` (10 %) of ``j``'s
    samples are predicted as ``i`` are judged: a class that the model rarely predicts for
    either is no confusion between the two (SageMaker's ``max_off_diag`` bounds the same
    share of a column). A ratio below 1, class ``i`` predicted for ``j``'s samples more often
    than for its own, is what labels shifted or coded differently between two data sets give;
    when such reversed pairs take most samples of at least half the classes (a permutation),
    the finding's key is ``shifted`` and its message asks whether they are; it is dated from
    the first record that shows the pattern (in point estimates), since the labels' coding is
    the data's, and it explains the held-out loss's gap and rise (DBG302, DBG304) and the
    classes mispredicted (DBG601) that it causes; an ``indistinct`` pair explains the classes
    mispredicted too. The ratio is judged with its uncertainty: a pair is reported only when
    even the upper end of the ratio's interval is below ``min_evidence`` (the upper Wilson
    bound of ``C[i][i] / n_i`` over the lower one of ``C[j][i] / n_j``, 95 % each), so a pair
    of rare classes is not reported on a few samples. Records of several passes over one
    evaluation set hold its samples again: the intervals count as many samples as the
    largest evaluation holds (the rates are those of all the counted records). A predicted
    class that no label holds has no rate of its own and is left to the bars below.

    **SageMaker Debugger's bars** (keys ``diagonal`` and ``off-diagonal``, info findings).
    SageMaker reports every predicted class right less than ``min_diag`` (90 %) of the time;
    on real runs that is many healthy classifiers of ten or more classes at 90-97 % accuracy,
    whose errors are spread over many classes (the corpus's ``torch-mlp/healthy-many-classes``:
    20 classes, 2 and 5 of them under the bar at 95 % and 90 % accuracy): a quality level, not
    a fault of the training. Here those bars give info findings, which say how the model
    stands against them without calling the run unhealthy.
    The documented formulas are contradictory: the diagonal one,
    ``C[i][i] / sum_j C[j][j] >= min_diag``, divides by the trace of the matrix and can never
    hold for every class when there are two or more, while the off-diagonal one,
    ``C[j][i] / sum_j C[j][i] <= max_off_diag``, normalises by **column** (all samples predicted
    as class ``i``). Both are taken column-normalised here, consistent with the off-diagonal
    formula: for every predicted class ``i``,

    * **diagonal** (key ``diagonal``): ``C[i][i] / sum_j C[j][i] < min_diag``, the class's
      predictions are right less often than ``min_diag`` (its precision);
    * **off-diagonal** (key ``off-diagonal``): ``C[j][i] / sum_j C[j][i] > max_off_diag`` for
      some ``j != i``, class ``j`` takes more than ``max_off_diag`` of the predictions of ``i``.

    A class that is never predicted has an empty column and is not judged itself; its samples
    appear as off-diagonal mass in the columns they were predicted as, and DBG601's
    misprediction check looks at rows (recall). ``category_no`` is the matrix size: by default
    the largest class id seen in labels or predictions plus one, or the width of a one-hot or
    probability axis if larger; it must be at least 2 (fewer classes are not judged), and
    pairs with an id at or above an explicit ``category_no`` are left out.

    Which records: SageMaker accumulates over the whole run, so min_diag 0.9 fires on every
    healthy run while the model is still untrained. Here a classifier is judged as training
    leaves it: on the eval-mode records when any are recorded (held-out data), else the train
    records (else predict), and only on the records in the last ``tail_fraction`` of that mode's
    step range (``step >= last - tail_fraction * (last - first)``, always including the last
    record); ``tail_fraction=1`` gives SageMaker's accumulation over everything. A mode whose
    latest record lies in the first half of the run (the trace's timeline after the filters,
    else the steps of all its series) holds no model that training ends with: an evaluation
    before training, or a short run whose only full tensors are step 0's, kept every
    ``raw_every`` steps. The next mode in that order is judged instead, and when every mode is
    so early the stream gets an info finding (key ``too-early``): judging an untrained model
    would report every run. A mode whose second-half records hold fewer than ``samples``
    labels gives way to the next that holds them. The counted records must hold at least
    ``samples`` labelled predictions (DBG601's default, SageMaker Debugger's ClassImbalance
    wait): when the tail
    holds fewer, it is widened to the latest records of the run's second half that do, and with
    fewer in all of them the stream gets an info finding (key ``too-few-samples``; SageMaker's
    Confusion has no such floor, and reported a class predicted twice, once wrongly, as 50 %
    precise). When no stream can be judged, the rule is reported as skipped with the reason.
    Samples whose prediction is non-finite are left out (a window where every prediction is
    non-finite is not judged: that is a job for the non-finite rules).

    Language models and regressions are not judged: when the run metadata's ``task`` is
    ``causal-lm``, ``masked-lm`` or ``seq2seq-lm`` (the Hugging Face callback sets it from
    the model class), the labels are the tokens of a text, whose frequencies are the text's
    and which even a perfect model cannot all predict; when it is ``regression`` or
    ``ranking`` (the XGBoost callback sets it from the objective), they are quantities,
    whole numbers or not. So are labels that reach beyond the classes their predictions
    score (a count of 7 against one output per sample, which scores two classes): no
    classifier's loss takes them. The rule is then skipped, as are DBG601 and DBG605.

    Severity is warning: classes the model cannot tell apart are a problem of its data or its
    training, not necessarily a broken run.

    Why it matters: classes that the model keeps confusing point at labelling errors, classes
    that cannot be told apart from the inputs, or a model that has collapsed onto a few
    classes.

    Typical causes: overlapping or inconsistent class definitions, label noise, class
    imbalance, too little capacity or training, a preprocessing bug that erases the features
    separating two classes, labels shifted against their inputs.

    Fix: inspect the confused pairs (merge or relabel them), clean the labels, check that
    training and evaluation code the labels alike, rebalance or weight the classes, train
    longer or with more capacity.

    Args:
        category_no: Number of classes (None: from the labels, predictions and their shapes).
        min_evidence: Smallest likelihood ratio at which a prediction tells its class from
            another.
        min_share: Smallest share of a class's samples predicted as another class for the
            pair to be judged.
        min_diag: Smallest acceptable share of a predicted class's samples that truly belong to it.
        max_off_diag: Largest acceptable share of a predicted class's samples from one other class.
        tail_fraction: Last fraction of the judged mode's step range whose records are counted.
        samples: Labelled predictions the counted records must hold at least.
    """
    if category_no is not None and category_no < 2:
        raise RuleConfigError(f"DBG604 category_no must be at least 2, got {category_no}")
    if not min_evidence > 0:
        raise RuleConfigError(f"DBG604 min_evidence must be positive, got {min_evidence:g}")
    if not 0 < min_share <= 1:
        raise RuleConfigError(f"DBG604 min_share must be in (0, 1], got {min_share:g}")
    if not 0 < tail_fraction <= 1:
        raise RuleConfigError(f"DBG604 tail_fraction must be in (0, 1], got {tail_fraction:g}")
    refuse_unclassed(ctx)
    middle = _run_middle(ctx)
    judged: list[list[Finding]] = []
    for labels, predictions in _single_labelled(ctx):
        if predictions is None:
            continue
        stream = _model_stream(_streams(labels, predictions), middle, samples)
        if stream is not None:
            judged.append(
                list(
                    _confusion(
                        stream,
                        category_no,
                        _Bars(min_evidence, min_share, min_diag, max_off_diag),
                        tail_fraction,
                        samples,
                        middle,
                    )
                )
            )
    yield from _judged_or_skipped(judged)


class _Bars(NamedTuple):
    min_evidence: float
    min_share: float
    min_diag: float
    max_off_diag: float


def _run_middle(ctx: RuleContext) -> float:
    """The midpoint of the run's steps, after the filters: of its timeline, else of the steps
    of every series (a trace written by hand may have no timeline)."""
    timeline = ctx.trace.timeline()
    steps = timeline.steps[ctx.keep(timeline.steps, timeline.modes)]
    if not steps.size:
        ranges = []
        for info in ctx.trace.tags():
            indexed, modes = ctx.trace.index(info.tag)
            kept = indexed[ctx.keep(indexed, modes)]
            if kept.size:
                ranges += [int(kept.min()), int(kept.max())]
        steps = np.asarray(ranges)
    return (float(steps.min()) + float(steps.max())) / 2 if steps.size else -np.inf


def _confusion(
    stream: _Stream,
    category_no: int | None,
    bars: _Bars,
    tail_fraction: float,
    samples: int,
    middle: float,
) -> Iterator[Finding]:
    paired = stream.paired
    if paired[-1].step < middle:
        yield _too_early(stream, paired, middle)
        return
    cutoff = paired[-1].step - tail_fraction * (paired[-1].step - paired[0].step)
    window = [r for r in paired if r.step >= cutoff]
    if sum(r.labels.size for r in window) < samples:
        late = [r for r in paired if r.step >= middle]
        latest = _latest(late, samples)
        if latest is None:
            yield _too_few(
                stream.predictions or stream.labels,
                stream.mode,
                [r.step for r in late],
                sum(r.labels.size for r in late),
                samples,
                "labelled predictions from the run's second half",
                "confusion",
            )
            return
        window = latest
    truth = np.concatenate([r.truth for r in window if r.truth is not None]).astype(np.int64)
    predicted = np.concatenate([r.predicted for r in window if r.predicted is not None]).astype(
        np.int64
    )
    outside = 0
    if category_no is not None:
        inside = (truth < category_no) & (predicted < category_no)
        outside = int((~inside).sum())
        truth, predicted = truth[inside], predicted[inside]
        classes = category_no
    elif truth.size:
        classes = max(stream.width or 0, int(max(truth.max(), predicted.max())) + 1)
    else:
        classes = 0
    if classes < 2 or not truth.size:
        return
    counts = _ConfusionCounts.of(truth, predicted, classes)
    where: dict[str, Any] = {
        "tensor": stream.predictions,
        "first_step": window[0].step,
        "last_step": window[-1].step,
        "steps": len(window),
        "mode": stream.mode,
    }
    extra = {
        "labels": stream.labels,
        "samples": int(truth.size),
        "records": len(window),
        "classes": classes,
        "outside_category_no": outside,
        "unscored": sum(r.unscored for r in window),
    }
    seen = (
        f"{truth.size} samples in {_records(len(window))} "
        f"({stream.mode}, steps from {window[0].step})"
    )
    for finding in (
        _indistinct(
            counts, _distinct_share(window, stream.mode), bars.min_evidence, bars.min_share, seen
        ),
        _below_diagonal_bar(counts, bars.min_diag, seen),
        _above_off_diagonal_bar(counts, bars.max_off_diag, seen),
    ):
        if finding is None:
            continue
        since = where
        if finding.key == "shifted":
            # The labels' coding is the data's: dated from the first record that shows it.
            onset = next((r.step for r in paired if _looks_shifted(r)), window[0].step)
            since = {
                **where,
                "first_step": onset,
                "steps": sum(1 for r in paired if r.step >= onset),
            }
        yield replace(finding, extra={**extra, **finding.extra}, **since)


def _looks_shifted(record: _LabelRecord) -> bool:
    """Whether most classes of one record's samples go mostly (> 50 %) to one other class,
    which the record predicts for them more often than for its own samples: the pattern of
    shifted labels, in point estimates (a record is too small for intervals)."""
    if record.truth is None or record.predicted is None or not record.truth.size:
        return False
    classes = int(max(record.truth.max(), record.predicted.max())) + 1
    counts = _ConfusionCounts.of(record.truth, record.predicted, classes)
    pairs = counts.confusions()
    share = pairs.other_rate
    moved = np.unique(pairs.label[(share > 0.5) & (pairs.own_rate < share)])
    return 2 * moved.size >= counts.rows.size


# Normal quantile of the two-sided 95 % Wilson intervals of the two rates whose ratio DBG604
# bounds: one end of each is used, so both hold together with at least 95 % probability.
_Z = 1.96


def _wilson(
    successes: np.ndarray, trials: np.ndarray, z: float = _Z
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper Wilson score bounds of binomial rates (Wilson 1927), which stay inside
    [0, 1] and are honest at rates of 0 and 1 and at small counts; ``z``, the normal quantile
    of each bound."""
    n = trials.astype(np.float64)
    rate = successes / n
    z2 = z * z
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    return centre - half, centre + half


@dataclass(frozen=True)
class _ConfusionCounts:
    """The non-zero cells of a confusion matrix ``C[label][predicted]``, sparse so that a large
    class count costs nothing, with the column totals (samples predicted as each class), the
    samples predicted rightly per column, and the row totals (samples of each class)."""

    cell_truth: np.ndarray
    cell_predicted: np.ndarray
    cell_counts: np.ndarray
    cell_column: np.ndarray
    on_diagonal: np.ndarray
    columns: np.ndarray
    column_totals: np.ndarray
    right: np.ndarray
    rows: np.ndarray
    row_totals: np.ndarray

    @classmethod
    def of(cls, truth: np.ndarray, predicted: np.ndarray, classes: int) -> _ConfusionCounts:
        cells, cell_counts = np.unique(truth * classes + predicted, return_counts=True)
        cell_truth, cell_predicted = cells // classes, cells % classes
        columns, column_totals = np.unique(predicted, return_counts=True)
        cell_column = np.searchsorted(columns, cell_predicted)
        on_diagonal = np.asarray(cell_truth == cell_predicted)
        right = np.zeros(len(columns), dtype=np.int64)
        right[cell_column[on_diagonal]] = cell_counts[on_diagonal]
        rows, row_totals = np.unique(truth, return_counts=True)
        return cls(
            cell_truth,
            cell_predicted,
            cell_counts,
            cell_column,
            on_diagonal,
            columns,
            column_totals,
            right,
            rows,
            row_totals,
        )

    def row_total(self, classes: np.ndarray) -> np.ndarray:
        """Samples of each of ``classes`` (0 for a class no label holds)."""
        at = np.minimum(np.searchsorted(self.rows, classes), len(self.rows) - 1)
        return np.asarray(np.where(self.rows[at] == classes, self.row_totals[at], 0))

    def confusions(self) -> _Confusions:
        """The off-diagonal cells, with the counts of both rates their pair compares."""
        off = ~self.on_diagonal
        label, predicted = self.cell_truth[off], self.cell_predicted[off]
        return _Confusions(
            label,
            predicted,
            self.cell_counts[off],
            self.row_total(label),
            self.right[self.cell_column[off]],
            self.row_total(predicted),
        )


class _Confusions(NamedTuple):
    """Pairs (true ``label``, ``predicted``): ``other`` of the label's ``other_total`` samples
    are predicted as ``predicted``, and ``own`` of the predicted class's ``own_total``."""

    label: np.ndarray
    predicted: np.ndarray
    other: np.ndarray
    other_total: np.ndarray
    own: np.ndarray
    own_total: np.ndarray

    @property
    def other_rate(self) -> np.ndarray:
        return np.asarray(self.other / self.other_total)

    @property
    def own_rate(self) -> np.ndarray:
        """0 for a predicted class that no label holds."""
        rate = np.zeros(len(self.own))
        np.divide(self.own, self.own_total, out=rate, where=self.own_total > 0)
        return rate

    def having(self, keep: np.ndarray) -> _Confusions:
        return _Confusions(*(column[keep] for column in self))


def _indistinct(
    counts: _ConfusionCounts, distinct: float, min_evidence: float, min_share: float, seen: str
) -> Finding | None:
    """The pairs of classes the model cannot tell apart; ``distinct``: the share of the
    counted samples that are distinct (see ``_distinct_share``)."""
    pairs = counts.confusions()
    pairs = pairs.having(pairs.own_total > 0)  # a class no label holds has no rate of its own
    label, predicted = pairs.label, pairs.predicted
    own_rate, other_rate = pairs.own_rate, pairs.other_rate
    own_upper = _wilson(pairs.own * distinct, pairs.own_total * distinct)[1]
    other_lower = _wilson(pairs.other * distinct, pairs.other_total * distinct)[0]
    flagged = np.flatnonzero((own_upper < min_evidence * other_lower) & (other_rate >= min_share))
    if not flagged.size:
        return None
    ratio = own_rate / other_rate
    order = flagged[np.lexsort((-other_rate[flagged], ratio[flagged]))]
    reversed_ = own_upper[order] < other_lower[order]
    listed = _listed(
        [
            f"class {predicted[k]} for {_percent(other_rate[k])} of class {label[k]}'s samples "
            f"and {_percent(own_rate[k])} of class {predicted[k]}'s "
            f"(ratio {ratio[k]:.2g}{', reversed' if is_reversed else ''})"
            for k, is_reversed in zip(order, reversed_, strict=True)
        ]
    )
    # Shifted labels send most samples of most classes to one other class, a permutation.
    moved = np.unique(label[order[reversed_ & (other_rate[order] > 0.5)]])
    shifted = 2 * moved.size >= counts.rows.size
    counted = f"{order.size} pair{'s' if order.size != 1 else ''}"
    lead = (
        "most classes' samples are predicted mostly as one other class, more often than that "
        "class's own: are the labels shifted or coded differently between training and "
        f"evaluation? {counted} of classes reversed or alike, predicting"
        if shifted
        else f"the model cannot tell {counted} of classes apart, predicting"
    )
    return Finding(
        message=f"{lead} {listed}; {seen}",
        value=float(ratio[order[0]]),
        threshold=min_evidence,
        key="shifted" if shifted else "indistinct",
        extra={
            "pairs": [
                {
                    "label": int(label[k]),
                    "predicted": int(predicted[k]),
                    "label_rate": float(other_rate[k]),
                    "own_rate": float(own_rate[k]),
                    "ratio": float(ratio[k]),
                }
                for k in order[:100]
            ]
        },
    )


def _below_diagonal_bar(counts: _ConfusionCounts, min_diag: float, seen: str) -> Finding | None:
    right, columns, totals = counts.right, counts.columns, counts.column_totals
    precision = right / totals
    weak = np.flatnonzero(precision < min_diag)
    if not weak.size:
        return None
    order = weak[np.argsort(precision[weak], kind="stable")]
    listed = _listed(
        [f"class {columns[i]} {_percent(precision[i])} ({right[i]} of {totals[i]})" for i in order]
    )
    return Finding(
        message=(
            f"predictions right less than {_percent(min_diag)} of the time for {order.size} of "
            f"{len(columns)} predicted classes: {listed}; {seen}"
        ),
        value=float(precision[order[0]]),
        threshold=min_diag,
        key="diagonal",
        severity=Severity.info,
        extra={"precision": {int(columns[i]): float(precision[i]) for i in order[:100]}},
    )


def _above_off_diagonal_bar(
    counts: _ConfusionCounts, max_off_diag: float, seen: str
) -> Finding | None:
    column_total = counts.column_totals[counts.cell_column]
    share = counts.cell_counts / column_total
    confused = np.flatnonzero(~counts.on_diagonal & (share > max_off_diag))
    if not confused.size:
        return None
    order = confused[np.argsort(-share[confused], kind="stable")]
    truth, predicted, cells = counts.cell_truth, counts.cell_predicted, counts.cell_counts
    listed = _listed(
        [
            f"class {truth[i]} as {predicted[i]} {_percent(share[i])} "
            f"({cells[i]} of {column_total[i]})"
            for i in order
        ]
    )
    return Finding(
        message=(
            f"{order.size} confused pairs take more than {_percent(max_off_diag)} "
            f"of a predicted class: {listed}; {seen}"
        ),
        value=float(share[order[0]]),
        threshold=max_off_diag,
        key="off-diagonal",
        severity=Severity.info,
        extra={"pairs": [[int(truth[i]), int(predicted[i]), float(share[i])] for i in order[:100]]},
    )


# -- DBG605 -------------------------------------------------------------------------------------


@rule(
    "DBG605",
    "unshuffled-batches",
    severity="warning",
    category="data",
    requires=LABELS,
    plan=_plan_label_ids,
    label={
        "unshuffled": "training batches not shuffled",
        "too-few-samples": "too few labelled batches to judge shuffling",
        "one-class": "one class in the recorded batches",
    },
    # Batches of one class make the model chase the class of the moment: the loss and the
    # gradients jump at every change of class, it never settles, and its predictions follow
    # the latest batches.
    explains={
        "too-few-samples": (),
        "*": (
            "DBG102",
            "DBG301",
            "DBG303",
            "DBG303:held-out-at-chance",
            "DBG305",
            "DBG601:mispredicted",
            "DBG604",
        ),
    },
)
def unshuffled_batches(
    ctx: RuleContext, *, max_correlation: float = 0.5, samples: int = PRIOR_SAMPLES
) -> Iterator[Finding]:
    """The training batches are not shuffled: the labels within a batch are alike.

    Stochastic gradient descent assumes that each batch is a random sample of the training
    set. A data set stored sorted by class and read without shuffling (a ``DataLoader``
    without ``shuffle=True``, a shuffle buffer shorter than a class's run of samples) gives
    batches of one class or a few: the model chases the class of the moment, its loss jumps at
    every change of class, and it ends up predicting the classes it saw last.

    The labels of the training batches recorded with full tensors (mode ``train``; one label
    per sample: a tag of shape ``(N,)``, ``(N, 1)`` or one-hot ``(N, C)``, since the tokens of
    a sequence or the pixels of a mask are alike by nature; not quantities, floats that are not
    whole numbers; records of the run's batch size, within half to twice the median record,
    since a pass over the whole set recorded in train mode is no batch) are counted per record
    in a table ``c[r][k]`` (over the cells that occur), and tested for homogeneity:
    Pearson's ``X² = sum (c[r][k] - n_r p_k)² / (n_r p_k)``, with ``n_r`` the record's labels
    and ``p_k`` the share of class ``k`` over all records, has about ``(R - 1)(K - 1)``
    degrees of freedom when batches are random samples. Its ratio to them is the design
    effect of cluster sampling, ``1 + (m - 1) rho`` (Kish 1965), for batches of ``m`` labels
    (their mean) whose labels have the intra-batch correlation ``rho``: 0 for shuffled
    batches (below 0 for class-balanced ones), 1 when every batch holds one class. A finding
    (key ``unshuffled``) needs ``rho > max_correlation`` (0.5, Cohen's (1988) large
    correlation: more than half of the labels' variance lies between batches) and ``X²``
    above its 99.9 % quantile (Wilson and Hilferty's approximation), so that a few records
    cannot decide it. Fewer than ``samples`` labels, fewer than two records or batches of one
    label: not judged (an info finding, key ``too-few-samples``, or the rule is skipped with
    the reason); every recorded label of one class: not judged either (key ``one-class``).

    Evaluation records are not judged (their order does not train anything), nor labels of a
    language model or a regression (run metadata ``task``, see DBG604). A curriculum that
    orders the classes on purpose is reported too: disable the rule for such runs.

    Why it matters: SGD on ordered batches forgets what earlier batches taught and follows the
    latest class; the loss oscillates, and accuracy stays near chance or favours the classes
    of the last batches.

    Typical causes: ``DataLoader(dataset)`` without ``shuffle=True`` over a data set stored
    by class (image folders, concatenated per-class files), a sampler or an
    ``IterableDataset`` that reads files in order, a shuffle buffer shorter than one class's
    run of samples.

    Fix: shuffle the training set every epoch (``DataLoader(..., shuffle=True)``, a
    ``RandomSampler``, ``Dataset.shuffle`` with a buffer larger than a class's run of
    samples), or interleave the per-class sources.

    Args:
        max_correlation: Largest intra-batch correlation of the labels (0: shuffled, 1: one
            class per batch) accepted.
        samples: Labels needed before judging.
    """
    if not 0 <= max_correlation < 1:
        raise RuleConfigError(f"DBG605 max_correlation must be in [0, 1), got {max_correlation:g}")
    refuse_unclassed(ctx)
    judged: list[list[Finding]] = []
    for labels, _ in _single_labelled(ctx):
        ids: ClassIdRecords = labels.derive(ClassIds())
        shape = labels.info.shape
        if not _one_label_per_sample(shape, ids.width) or _quantities(ids, shape):
            continue
        for stream in _streams(labels, None):
            if stream.mode == "train":
                judged.append(list(_batch_mixing(stream, max_correlation, samples)))
    if not judged:
        raise RuleSkipped(
            "no training labels of one class per sample ((N,), (N, 1) or one-hot (N, C); not "
            "quantities)"
        )
    yield from _judged_or_skipped(judged)


def _one_label_per_sample(shape: tuple[int, ...] | None, width: int | None) -> bool:
    """Whether a labels record of ``shape`` holds one class per sample: ``(N,)``, ``(N, 1)``,
    or ``(N, C)`` one-hot or scores (``width``)."""
    if shape is None:
        return False
    return len(shape) == 1 or (len(shape) == 2 and (shape[1] == 1 or width is not None))


# The upper normal quantile of the homogeneity test's 99.9 % level.
_Z_999 = 3.090


def _chi_square_quantile(df: float) -> float:
    """The 99.9 % quantile of chi-square with ``df`` degrees of freedom (Wilson and Hilferty
    1931: within 1 % from a few degrees of freedom on)."""
    spread = 2 / (9 * df)
    return df * (1 - spread + _Z_999 * math.sqrt(spread)) ** 3


def _batch_mixing(stream: _Stream, max_correlation: float, samples: int) -> Iterator[Finding]:
    # The optimizer's batches: records of the typical size (a pass over the whole training
    # set recorded in train mode is no batch, and would dilute the batches' correlation).
    sizes = np.array([r.labels.size for r in stream.records])
    typical = float(np.median(sizes)) if sizes.size else 0.0
    records = [
        r
        for r in stream.records
        if r.labels.size >= 2 and typical / 2 <= r.labels.size <= 2 * typical
    ]
    seen = sum(r.labels.size for r in records)
    steps = [r.step for r in records] or [r.step for r in stream.records]
    if seen < samples:
        what = "labels in training batches of two or more"
        yield _too_few(stream.labels, stream.mode, steps, seen, samples, what, "shuffling")
        return
    if len(records) < 2:
        yield Finding(
            message=(
                f"one training batch with full tensors of labels (step {steps[0]}): shuffling "
                "not judged; keep full tensors of the labels at several steps (raw_every)"
            ),
            tensor=stream.labels,
            first_step=steps[0],
            last_step=steps[0],
            steps=1,
            mode=stream.mode,
            key="too-few-samples",
            severity=Severity.info,
        )
        return
    classes, codes = np.unique(np.concatenate([r.labels for r in records]), return_inverse=True)
    if classes.size < 2:
        yield Finding(
            message=(
                f"every recorded training label is class {classes[0]} ({seen} in "
                f"{_records(len(records))}): shuffling not judged; if the data set holds "
                "other classes, the batches recorded came from one class's run"
            ),
            tensor=stream.labels,
            first_step=steps[0],
            last_step=steps[-1],
            steps=len(records),
            mode=stream.mode,
            key="one-class",
            severity=Severity.info,
        )
        return
    # Pearson's X² over the cells that occur: sum c² / E - N, with E = n_r p_k.
    batch_sizes = np.array([r.labels.size for r in records])
    rows = np.repeat(np.arange(len(records)), batch_sizes)
    cells, counts = np.unique(rows * classes.size + codes, return_counts=True)
    cell_rows, cell_classes = cells // classes.size, cells % classes.size
    shares = np.bincount(codes, minlength=classes.size) / seen
    expected = batch_sizes[cell_rows] * shares[cell_classes]
    chi_square = float((counts**2 / expected).sum() - seen)
    df = (len(records) - 1) * (classes.size - 1)
    mean_size = seen / len(records)
    correlation = (chi_square / df - 1) / (mean_size - 1)
    if not (correlation > max_correlation and chi_square > _chi_square_quantile(df)):
        return
    single = int((np.bincount(cell_rows, minlength=len(records)) == 1).sum())
    yield Finding(
        message=(
            f"training batches look unshuffled: their labels are alike (intra-batch "
            f"correlation {min(correlation, 1.0):.2f} > {max_correlation:g}; 0 when shuffled); "
            f"{single} of {len(records)} batches hold a single class of {classes.size}; "
            f"{seen} labels in {_records(len(records))} (train, batches of {mean_size:.3g} "
            "on average)"
        ),
        tensor=stream.labels,
        first_step=records[0].step,
        last_step=records[-1].step,
        steps=len(records),
        value=min(correlation, 1.0),
        threshold=max_correlation,
        mode=stream.mode,
        key="unshuffled",
        extra={
            "chi_square": chi_square,
            "degrees_of_freedom": df,
            "single_class_batches": single,
            "classes": int(classes.size),
            "labels": seen,
        },
    )


# -- DBG606 -------------------------------------------------------------------------------------

# Summed in another order (the recorder's kernels split the work by size), the same float32
# values give statistics a few units in the last place apart: alike within 1e-5 of their RMS.
_BATCH_IDENTITY = ("min", "max", "mean", "std", "l1", "l2")
_ALIKE = 1e-5


@rule(
    "DBG606",
    "repeated-batch",
    severity="warning",
    category="data",
    requires=Need.tensors(collection="inputs"),
    label={"one-batch": "one batch at every step", "*": "the same batch at every step"},
    # One batch memorised: the training loss falls to nothing while the held-out loss stays.
    explains={"one-batch": (), "*": ("DBG302", "DBG304", "DBG303:held-out-at-chance")},
)
def repeated_batch(ctx: RuleContext, *, records: int = 5) -> Iterator[Finding]:
    """The model trains on the same batch at every step: the data loader is not advanced.

    ``x, y = next(iter(loader))`` inside the training loop creates a new iterator at every
    step and takes its first batch: without ``shuffle=True`` that is the same batch each
    time. The model memorises it; its training loss falls smoothly to near zero (there is no
    other batch to disagree) and it never sees the rest of the data.

    Read from the training records of each inputs tensor: at least ``records`` of them, two
    of them at consecutive steps (records an epoch apart find an unshuffled loader back at
    its first batch, as they should), all of one size, whose minimum, maximum, mean, standard
    deviation and L1 and L2 norms per value agree within ``1e-5`` of the values' root mean
    square (the same float32 values summed in another order land a few units in the last
    place apart) and whose values vary (inputs all of one value, zeroed by a bug, are
    DBG401's); and two of them kept in full are equal value for value, in order. One-hot or
    0/1 inputs share their statistics from batch to batch, and full-batch training that
    reshuffles its samples (the Hugging Face ``Trainer`` on a tiny set) changes their order:
    neither is equal in full. Inputs recorded from a fixed probe batch, rather than from the
    batches trained on, read the same.

    Full-batch training (a whole small data set at each step, a graph network on its one
    graph, L-BFGS) and the "overfit one batch" sanity check do the same on purpose, so the
    finding is a note (key ``one-batch``) unless the run evaluates more samples at one step
    than it trains on (key ``repeated``, warning): a training set smaller than its held-out
    set is no split made for evaluation (they run 80/20 or 90/10), but one batch of it.

    Why it matters: the model learns one batch, not the task; the held-out loss stays where
    the first steps left it, or the run reads as overfitting.

    Typical causes: ``next(iter(loader))`` inside the loop; a batch fetched once before the
    loop; a ``Dataset`` whose ``__getitem__`` ignores its index.

    Fix: iterate over the loader (``for x, y in loader:``), or keep one iterator and call
    ``next`` on it, re-creating it at the end of each epoch.

    Args:
        records: Training records of the inputs, all alike, needed for a finding (at least 2).
    """
    if records < 2:
        raise RuleConfigError(f"DBG606 records must be at least 2, got {records}")
    train = schema.MODE_CODES["train"]
    judged = False
    for view in _tagged(ctx, "inputs"):
        training = view.modes == train
        steps = view.steps[training]
        if len(steps) < records or not (np.diff(steps) == 1).any():
            continue
        judged = True
        alike = _same_batch(view, training)
        if alike is None:
            continue
        size = float(view.stat("count")[training][0])
        evaluated = _values_per_step(view, ~training)
        repeated = evaluated > size
        why = (
            f"evaluated on {evaluated:.0f} values at one step: a training set smaller than its "
            "held-out set is one batch of it (next(iter(loader)) inside the loop?)"
            if repeated
            else "full-batch training, or a loader never advanced (next(iter(loader)) inside "
            "the loop?)"
        )
        yield Finding(
            message=(
                f"the training inputs are the same batch of {size:.0f} values at all "
                f"{len(steps)} records, steps {int(steps[0])}-{int(steps[-1])} (equal in full "
                f"at steps {alike[0]} and {alike[1]}): {why}"
            ),
            tensor=view.tag,
            first_step=int(steps[0]),
            last_step=int(steps[-1]),
            steps=len(steps),
            value=float(len(steps)),
            threshold=float(records),
            mode="train",
            key="repeated" if repeated else "one-batch",
            severity=None if repeated else Severity.info,
        )
    if not judged:
        raise RuleSkipped(
            f"no inputs recorded at {records} training steps or more, two of them consecutive"
        )


def _same_batch(view: TensorView, training: np.ndarray) -> tuple[int, int] | None:
    """Two steps whose training records of ``view`` are equal in full, when all its training
    records hold one batch (see :func:`repeated_batch`); else None."""
    counts = view.stat("count")[training]
    size = float(counts[0])
    if size < 1 or not (counts == size).all():
        return None
    # Per value: the norms over the count, so that all compare on the values' scale.
    rows = np.column_stack([view.stat(name) for name in _BATCH_IDENTITY])[training]
    rows[:, 4] /= size
    rows[:, 5] /= np.sqrt(size)
    if not np.isfinite(rows).all() or rows[0, 3] <= 0:
        return None
    if not np.allclose(rows, rows[0], rtol=0.0, atol=_ALIKE * rows[0, 5]):
        return None
    kept = np.intersect1d(
        kept_steps(view.ctx, view.tag, schema.MODE_CODES["train"]), view.steps[training]
    ).tolist()
    if len(kept) < 2:
        return None
    first = view.ctx.trace.raw(view.tag, kept[0], "train")
    last = view.ctx.trace.raw(view.tag, kept[-1], "train")
    if first is None or last is None or not np.array_equal(first, last):
        return None
    return kept[0], kept[-1]


def _values_per_step(view: TensorView, held_out: np.ndarray) -> float:
    """The most values of ``view`` recorded at one step among the records ``held_out``."""
    if not held_out.any():
        return 0.0
    steps = view.steps[held_out]
    counts = np.nan_to_num(view.stat("count")[held_out])
    return float(max(counts[steps == step].sum() for step in np.unique(steps)))


# -- DBG607 -------------------------------------------------------------------------------------


@rule(
    "DBG607",
    "labels-shifted-twice",
    severity="error",
    category="data",
    requires=(LABELS, INTEGER_INPUTS),
    label="labels shifted twice",
    # Two tokens ahead is a harder, noisier target than the next: the loss settles higher.
    explains=("DBG301:not-decreasing", "DBG303"),
)
def labels_shifted_twice(ctx: RuleContext) -> Iterator[Finding]:
    """A language model's labels are its input ids two positions on: shifted twice.

    Hugging Face's causal language models (``GPT2LMHeadModel``, ``*ForCausalLM``) take
    ``labels = input_ids`` and shift them inside their loss, so that position ``t`` learns
    the token at ``t + 1``; labels already shifted by hand (``input_ids[1:]``) are shifted
    again, and each position learns the token after the next. The loss still falls (the
    token two ahead is partly predictable), and nothing but the labels shows it: a tiny
    GPT-2 trained so reached a loss of 0.84 against its labels, and 6.9 (accuracy 0.007)
    against the next tokens, where its healthy twin reached 0.43.

    Found where a labels tensor of sequences ``(batch, length)`` (or one position shorter:
    the Hugging Face callback records a causal model's labels as its loss pairs them, after
    its shift) holds the integer inputs two positions on: ``labels[:, t] == inputs[:, t +
    2]`` at every labelled position (ignore markers, negative, are left out), at each of
    the first 3 steps (at least 2) whose full tensors both keep, with at least two distinct
    tokens compared, as DBG601 and the loss rules recognise next-token labels one position
    on. No classifier's or tagger's labels are their inputs two positions on by chance. The
    finding spans every labels record: the labels are the code's.

    Why it matters: the model learns to skip a token, and is useless for generation, while
    its loss curve looks like any language model's.

    Typical causes: ``labels = input_ids[:, 1:]`` (or a collator that shifts) passed to a
    model that shifts its labels itself.

    Fix: pass ``labels = input_ids`` (padding as -100) to a model that shifts inside its
    loss, such as transformers' causal language models; shift by hand only for a model that
    does not.
    """
    for labels, tokens in token_labels(ctx):
        if tokens_ahead(ctx, labels, tokens, 2):
            yield Finding(
                message=(
                    f"the labels ({labels.tag}) are the input ids ({tokens.tag}) two "
                    "positions on, where a causal language model learns the next token: "
                    "shifted by hand and again inside the model's loss?"
                ),
                tensor=labels.tag,
                first_step=int(labels.steps.min()),
                last_step=int(labels.steps.max()),
                steps=len(np.unique(labels.steps)),
                value=2.0,
                key="shifted-twice",
                extra={"inputs": tokens.tag},
            )
