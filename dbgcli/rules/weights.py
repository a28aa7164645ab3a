"""DBG5xx: weights: poor initialisation, updates too small or too large for the weights,
weights that collapse."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

import numpy as np

from dbgcli.errors import RuleConfigError
from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import RuleContext, TensorView, episode_findings, records_spanning
from dbgcli.rules._known import (
    FITTED,
    LEARNING_RATE_BY_UPDATES,
    STARVED_LR,
    added_or_scaling_parameter,
    class_count,
    clipped_gradient_norm,
    clipped_text,
    converged,
    has_normalisation,
    initial_loss,
    is_embedding,
    loss_fraction,
    lr_below,
    stayed_above,
    weight_decay,
)
from dbgcli.rules._registry import Need, rule
from dbgcli.rules.data import chance_loss
from dbgcli.trace.derive import Accumulator, Derivation
from dbgcli.trace.reader import RawChunk, TagInfo, Trace

WEIGHTS = Need.tensors(collection="weights")


def _has_updates(ctx: RuleContext) -> bool:
    return any(
        np.isfinite(view.stat("update_l2")).any() for view in ctx.tensors(collection="weights")
    )


UPDATES = Need("update norms (statistic update_l2) of weights tensors", _has_updates)


# -- DBG501 poor-weight-initialization ------------------------------------------------------------


class InitialSymmetry(NamedTuple):
    """How many output units (rows) of a weight tensor's first record have all-equal weights,
    and whether its units were still all alike in the last full tensor kept after it (None:
    no later full tensor)."""

    rows: int
    constant_rows: int
    constant: bool
    value: float
    still_alike: bool | None = None


@dataclass(frozen=True)
class InitialRows(Derivation):
    """Row symmetry of a weight tensor's first record (None if its full tensor was not kept),
    and whether it lasted to the last full tensor kept.

    Only those two records are read: the mask selects nothing else.
    """

    def wanted(self, info: TagInfo, trace: Trace) -> np.ndarray:
        mask = np.zeros(info.records, dtype=bool)
        mask[:1] = True
        kept = trace.raw_records(info.tag)
        if len(kept):
            mask[int(kept[-1])] = True
        return mask

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _InitialRowsAccumulator()


class _InitialRowsAccumulator(Accumulator):
    def __init__(self) -> None:
        self.result: InitialSymmetry | None = None
        self.later: bool | None = None  # units all alike in the latest record after the first

    def feed(self, chunk: RawChunk) -> None:
        for record, values in zip(chunk.records.tolist(), chunk.values, strict=True):
            values = np.asarray(values)
            if values.ndim < 2 or values.size == 0:
                continue
            rows = values.reshape(values.shape[0], -1)
            if record == 0:
                # max == min is False for a row holding NaN: NaN propagates through both.
                constant_rows = rows.max(axis=1) == rows.min(axis=1)
                self.result = InitialSymmetry(
                    rows=rows.shape[0],
                    constant_rows=int(constant_rows.sum()) if rows.shape[1] > 1 else 0,
                    constant=bool(values.max() == values.min()),
                    value=float(values.flat[0]),
                )
            elif np.isfinite(rows).all():
                self.later = bool((rows == rows[:1]).all())

    def finish(self) -> InitialSymmetry | None:
        if self.result is None:
            return None
        return self.result._replace(still_alike=self.later)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight in PyTorch layout ``(out, in, *kernel)``."""
    receptive = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return int(np.prod(shape[1:], dtype=np.int64)), int(shape[0]) * receptive


def _initialised(ctx: RuleContext) -> list[TensorView]:
    """Weight matrices and kernels whose first record is in the analysed range.

    1-D weights (normalisation scales) start constant by design and have no fan-in; nor do
    parameters added to the activations or scaling a branch (``pos_embed``, ``cls_token``,
    LayerScale's ``gamma``), which start constant on purpose.
    """
    return [
        view
        for view in ctx.tensors(collection="weights")
        if view.info.shape is not None
        and len(view.info.shape) >= 2
        and int(view.records[0]) == 0
        and not added_or_scaling_parameter(view.tag)
    ]


def _initial_rows_plan(
    ctx: RuleContext, params: dict[str, Any]
) -> Iterator[tuple[str, Derivation]]:
    for view in _initialised(ctx):
        yield view.tag, InitialRows()


@rule(
    "DBG501",
    "poor-weight-initialization",
    severity="warning",
    category="weights",
    requires=WEIGHTS,
    plan=_initial_rows_plan,
    label={
        "constant": "constant weight initialisation",
        "constant-rows": "symmetric weight initialisation",
        "too-small": "initial weights too small",
        "too-large": "initial weights too large",
        "layer-ratio": "initial scales inconsistent across layers",
    },
    explains=(
        "DBG101",
        "DBG102",
        "DBG201",
        "DBG202",
        "DBG203",
        "DBG401",
        "DBG402",
        "DBG403",
        "DBG301",
        "DBG303",
        "DBG305",
        "DBG306",
        "DBG310",
        "DBG404",
        "DBG502",
        *LEARNING_RATE_BY_UPDATES,
        # One layer initialised off scale is what makes the scales inconsistent.
        "DBG501:layer-ratio",
    ),
)
def poor_weight_initialization(
    ctx: RuleContext,
    *,
    threshold: float = 100.0,
    min_scaled_variance: float = 0.01,
    max_scaled_variance: float = 10.0,
) -> Iterator[Finding]:
    """Weights start symmetric, or at a scale that makes signals vanish or explode.

    Evaluated once per weight tensor, at its first record (the initialisation; a tensor whose
    first record lies outside ``--start``/``--stop`` is not judged). Only tensors of
    collection ``weights`` with at least two dimensions, in PyTorch layout
    ``(out, in, *kernel)``: ``fan_in = prod(shape[1:])``,
    ``fan_out = shape[0] · prod(shape[2:])``. 1-D weights (normalisation scales) start at one
    by design and are skipped. Three checks, after SageMaker Debugger's
    PoorWeightInitialization (which looks at the same questions through activations):

    * **symmetry** (keys ``constant``, ``constant-rows``): from the full tensor of the first
      record, an output unit whose incoming weights are all equal (a row of the tensor
      flattened to ``(out, -1)``), or the whole tensor constant. Constant units compute a
      multiple of the sum of their inputs; a constant tensor makes every unit identical, so
      they get identical gradients and never differentiate. If the first record's full tensor
      was not kept, only the whole-tensor check runs, from ``min == max``. A constant tensor
      whose units (rows) differ in the last full tensor kept after the first is not
      reported: a random layer after it broke the symmetry, as for LoRA's B, initialised to
      zero beside a random A (Hu et al. 2021), or a zero-initialised output head.
    * **scale** (keys ``too-small``, ``too-large``): the *scaled variance* ``s = var · fan``
      of the first record, where ``fan`` is ``fan_in`` (He expects ``s = 2``, LeCun and
      PyTorch's default about 1 and 1/3) or Glorot's ``(fan_in + fan_out) / 2`` (Glorot
      expects 1), whichever puts ``s`` closer to 1: the layer is judged by the convention it
      most plausibly follows, so Glorot layers with very unequal fans (an RGB stem, a wide
      expansion) pass, and the test does not depend on the layout of dense kernels. Fires
      when ``s < min_scaled_variance`` or ``s > max_scaled_variance``. The bounds are two
      orders of magnitude under LeCun and five times over He: ``N(0, 1)`` weights on a
      64-wide layer (``s = 64``) or ``N(0, 0.01²)`` on fewer than 100 inputs fire, while
      GPT-2's depth-scaled residual projections (``s`` about 0.013 at width 768) pass.
    * **across layers** (key ``layer-ratio``): with every layer normalised by the same
      convention, the ratio of the largest to the smallest scaled variance; fires when it
      exceeds ``threshold`` under both conventions. SageMaker Debugger uses 10 (on the
      variances of activation inputs); that fires on healthy schemes that vary the scale
      on purpose (GPT-2 scales residual projections by ``1/sqrt(2·layers)``, a factor of 24
      to 60 here), hence 100. Reported on the layer farthest (in log scale) from the median.

    **Not judged**: parameters a model adds to its activations or scales a residual branch
    with, which real models initialise constant on purpose: positional tables (``pos``,
    ``pos_embed``, ``position_embeddings``), tokens (``cls_token``, ``dist_token``,
    ``register_tokens``, ``mask_token``), layer scales (``gamma``, ``lambda_1``,
    ``layer_scale``; LayerScale starts at ``1e-5`` times ones, Touvron et al. 2021) and
    ReZero's ``alpha`` (0; Bachlechner et al. 2020), recognised by their own name (the last
    component of the tag) when it is not a layer's weight: ``weight``, ``kernel`` or ``w``,
    the names torch.nn, Keras, Flax and Haiku give the matrix or kernel a layer multiplies
    its input by (``pos_embedding.weight`` is an ``nn.Embedding`` table and judged as one).
    The symmetry argument is about units that multiply the same input by the same weights;
    a constant added to every unit's input, or a branch scaled by a constant, leaves the
    units of the layers around it distinct, and such a parameter has no fan-in.

    Embedding tables (kind ``embedding`` or a tag containing "embed", ``wte``, ``wpe``) skip
    the scale checks (a lookup has fan-in 1, and ``N(0, 1)`` is their standard
    initialisation) and the row check (a padding row is all zero by design); only a wholly
    constant table is reported. Tensors that are constant skip the scale checks (the
    symmetry check reports them).

    Parameters that a parametrisation turns into the layer's weight skip the scale checks:
    torch's ``parametrizations.weight.original`` (``original0`` and ``original1`` of
    ``weight_norm``) and the older ``weight_g`` and ``weight_v``. Their scale is not the
    layer's: weight normalisation divides the direction by its norm and multiplies by the
    magnitude ``g`` (Salimans and Kingma 2016), spectral normalisation divides by the largest
    singular value (Miyato et al. 2018).

    Models with normalisation layers (parameters named like LayerNorm, BatchNorm, RMSNorm or
    GroupNorm: ``norm``, ``ln_1``, ``bn1``...) skip the three scale checks: a normalisation
    layer rescales its input, so the forward signal no longer depends on the scale of the
    weights before it (Ioffe and Szegedy 2015, Ba et al. 2016). That is why transformers
    initialise every layer with a fixed standard deviation of 0.02 whatever its width, and
    GPT-2 scales its residual projections down by ``1/sqrt(2·layers)``; both would read as
    "too small" or "inconsistent" without normalisation.

    **Judged by what followed.** A scale that shrinks the signal (keys ``too-small`` and
    ``layer-ratio``) is a note (severity info) when the run learned regardless: no layer is too
    large, and the mean of the last 10 training losses is at most half the untrained
    model's loss (DBG301's bar for a loss that converged; for a classifier, a first loss
    above ln C / 0.9 is inflated and does not count). The yardstick assumes the activations
    He and Glorot derived it for; SIREN's ``sin(30x)`` multiplies its input by 30, and its
    hidden layers start 900 times under He's variance by design.

    Why it matters: symmetric units never learn different features; weights too small make
    activations and gradients shrink layer by layer (vanishing), too large make them grow
    (exploding, saturation), and a single badly scaled layer can dominate or choke the
    network. Training then stalls from the first step or diverges.

    Typical causes: constant or zero initialisation of hidden layers, ``randn`` without a
    scale, a custom init applied to the wrong modules, a checkpoint loaded into the wrong
    layers, layout confusion between frameworks.

    Fix: use He/Kaiming initialisation for ReLU-family layers and Glorot/Xavier for tanh and
    sigmoid (``torch.nn.init``), keep constant initialisation for biases and normalisation
    scales only, check which modules a custom init touches.

    Args:
        threshold: Largest-to-smallest ratio of the layers' scaled variances above which the
            initialisation is inconsistent across layers.
        min_scaled_variance: Scaled variance var · fan below which a layer starts too small.
        max_scaled_variance: Scaled variance var · fan above which a layer starts too large.
    """
    findings = list(
        _initialisation_findings(ctx, threshold, min_scaled_variance, max_scaled_variance)
    )
    # What a scale that shrinks the signal causes is a model that does not learn: where the
    # loss came down to half its start or below from a start no large layer inflated, the
    # signal got through (an activation the scale is made for: SIREN's sin(30x) multiplies
    # its input by 30).
    shrunk = {"too-small", "layer-ratio"}
    learned = None
    keys = {finding.key for finding in findings}
    if keys & shrunk and "too-large" not in keys:
        learned = _learned_regardless(ctx)
    for finding in findings:
        if learned is not None and finding.key in shrunk:
            finding = replace(
                finding, severity=Severity.info, message=f"{finding.message}{learned}"
            )
        yield finding


# A training loss at this fraction of its start or below has come down: DBG301's bar for a
# loss that converged rather than stalled.
_LEARNED = 0.5


def _learned_regardless(ctx: RuleContext) -> str | None:
    """``; the run learned regardless ...`` when the training loss ended at half its start or
    below, the start being that of an untrained model (for a classifier, not above ln C)."""
    series = ctx.loss("train")
    if series is None or not len(series.steps):
        return None
    fraction = loss_fraction(ctx, np.array([int(series.steps.max())]))
    initial = initial_loss(ctx)
    if fraction is None or initial is None or not fraction[0] <= _LEARNED:
        return None
    classes = class_count(ctx, from_weights=False)
    if classes is not None and initial.value > np.log(classes) / 0.9:
        return None  # a start above chance: something inflated it
    return (
        f"; the run learned regardless: its training loss fell to {fraction[0] * 100:.2g}% of "
        "its start"
    )


def _initialisation_findings(
    ctx: RuleContext, threshold: float, min_scaled_variance: float, max_scaled_variance: float
) -> Iterator[Finding]:
    views = _initialised(ctx)
    normalised = has_normalisation(ctx)
    scaled: list[tuple[TensorView, float, float]] = []
    for view in views:
        symmetry: InitialSymmetry | None = view.derive(InitialRows())
        embedding = is_embedding(view.tag, view.info.kind)
        yield from _symmetry_findings(view, symmetry, rows=not embedding)
        shape = view.info.shape
        var = float(view.stat("var")[0])
        if shape is None or embedding or normalised or not np.isfinite(var) or var <= 0:
            continue
        if _reparametrised(view.tag):
            continue
        if symmetry is not None and symmetry.constant:
            continue
        fan_in, fan_out = _fans(shape)
        by_fan_in, by_mean_fan = var * fan_in, var * (fan_in + fan_out) / 2
        scaled.append((view, by_fan_in, by_mean_fan))
        value = min((by_fan_in, by_mean_fan), key=lambda s: abs(np.log(s)))
        extra = {
            "fan_in": fan_in,
            "fan_out": fan_out,
            "variance": var,
            "var_x_fan_in": by_fan_in,
            "var_x_mean_fan": by_mean_fan,
        }
        if value < min_scaled_variance:
            yield _at_first(
                view,
                f"initial variance x fan = {value:.3g} (< {min_scaled_variance:g}; "
                f"He expects 2, Glorot 1)",
                value,
                min_scaled_variance,
                "too-small",
                extra,
            )
        elif value > max_scaled_variance:
            yield _at_first(
                view,
                f"initial variance x fan = {value:.3g} (> {max_scaled_variance:g}; "
                f"He expects 2, Glorot 1)",
                value,
                max_scaled_variance,
                "too-large",
                extra,
            )
    yield from _layer_ratio(scaled, threshold)


def _reparametrised(tag: str) -> bool:
    """A parameter that a parametrisation turns into the layer's weight: torch's
    ``<module>.parametrizations.<name>.original`` (``original0``, ``original1`` of
    ``weight_norm``) and the older ``weight_norm``'s ``weight_g`` and ``weight_v``."""
    parts = re.split(r"[./]", tag)
    return "parametrizations" in parts or parts[-1] in ("weight_g", "weight_v")


def _at_first(
    view: TensorView, message: str, value: float, threshold: float, key: str, extra: dict[str, Any]
) -> Finding:
    return Finding(
        message=message,
        tensor=view.tag,
        first_step=int(view.steps[0]),
        last_step=int(view.steps[0]),
        steps=1,
        value=value,
        threshold=threshold,
        mode=view.mode_name(0),
        key=key,
        extra=extra,
    )


def _symmetry_findings(
    view: TensorView, symmetry: InitialSymmetry | None, *, rows: bool
) -> Iterator[Finding]:
    if symmetry is None:
        # No full tensor of the first record: the whole-tensor check still works from min/max.
        low, high = float(view.stat("min")[0]), float(view.stat("max")[0])
        clean = view.stat("nan_count")[0] == 0 and view.stat("count")[0] >= 2
        if clean and low == high:
            yield _at_first(
                view,
                f"every initial weight equals {low:.4g} (from statistics)",
                low,
                0.0,
                "constant",
                {"evidence": "statistics"},
            )
        return
    if symmetry.constant and symmetry.still_alike is not False:
        yield _at_first(
            view,
            f"every initial weight equals {symmetry.value:.4g}: all units are identical",
            symmetry.value,
            0.0,
            "constant",
            {"evidence": "full tensor"},
        )
    elif symmetry.constant_rows and rows and not symmetry.constant:
        yield _at_first(
            view,
            f"{symmetry.constant_rows} of {symmetry.rows} output units start with equal weights",
            float(symmetry.constant_rows),
            0.0,
            "constant-rows",
            {"rows": symmetry.rows},
        )


def _layer_ratio(
    scaled: list[tuple[TensorView, float, float]], threshold: float
) -> Iterator[Finding]:
    if len(scaled) < 2:
        return
    ratios = []
    for column, convention in ((1, "var x fan_in"), (2, "var x (fan_in + fan_out) / 2")):
        values = np.array([entry[column] for entry in scaled])
        ratios.append((float(values.max() / values.min()), convention, values))
    ratio, convention, values = min(ratios, key=lambda item: item[0])
    if not ratio > threshold:
        return
    logs = np.log(values)
    outlier = int(np.argmax(np.abs(logs - np.median(logs))))
    view = scaled[outlier][0]
    low, high = int(np.argmin(values)), int(np.argmax(values))
    yield Finding(
        message=(
            f"initial scales differ {ratio:.3g}x across layers (> {threshold:g}x; {convention}: "
            f"{scaled[low][0].tag} {values[low]:.3g}, {scaled[high][0].tag} {values[high]:.3g})"
        ),
        tensor=view.tag,
        first_step=int(min(entry[0].steps[0] for entry in scaled)),
        last_step=int(max(entry[0].steps[0] for entry in scaled)),
        steps=1,
        value=ratio,
        threshold=threshold,
        mode=view.mode_name(0),
        key="layer-ratio",
        extra={
            "smallest": scaled[low][0].tag,
            "largest": scaled[high][0].tag,
            "convention": convention,
        },
    )


# -- update ratios --------------------------------------------------------------------------------

# Per-step update/weight norm ratios outside [MIN_RATIO, MAX_RATIO]: TheDeepChecker's band for
# log10(mean |update| / mean |weight|) is [-4, -1] and DeepDiagnosis's bounds for the effective
# learning rate lr·||dW||/||W|| are 1e-5 and 1e-1. A healthy run typically sits near 1e-3
# (Karpathy's rule of thumb) to 1e-2 for small models.
MAX_RATIO = 0.1
MIN_RATIO = 1e-4


def _matrices(ctx: RuleContext) -> list[TensorView]:
    """Weight matrices and kernels with recorded updates: not 1-D scales, not embedding tables
    (only the rows of the batch's tokens are updated), not parameters added to the activations
    or scaling a branch (``pos_embed``, ``cls_token``: they may start at zero, so their
    relative update says nothing)."""
    return [
        view
        for view in ctx.tensors(collection="weights")
        if view.info.shape is not None
        and len(view.info.shape) >= 2
        and not is_embedding(view.tag, view.info.kind)
        and not added_or_scaling_parameter(view.tag)
    ]


def per_step_ratio(view: TensorView) -> np.ndarray:
    """``||w_s - w_p|| / (||w_p|| · (s - p))`` per record ``s`` whose previous record ``p`` of
    the tag is at an earlier step; NaN elsewhere (first records, an eval record of the same
    weights, zero previous weights, NaN updates).

    When records are several steps apart (``stats_every``), the update spans them all and is
    divided by the gap: the mean update of one step when the steps in between pull the same
    way, a lower bound of it in any case (the norm of a sum is at most the sum of the norms),
    so a ratio above an upper bound is above it for sure. Steps that cancel one another (noise
    around a minimum) make it an underestimate, by about ``sqrt(gap)`` for independent steps:
    3.2 at 10, inside the factor of 10 between a healthy ratio (1e-3) and the lower bounds
    (1e-4, 1e-5), which is why those bounds are read on the same ratio.
    """
    update, norm, steps = view.stat("update_l2"), view.stat("l2"), view.steps
    previous_norm = np.concatenate(([np.nan], norm[:-1]))
    gap = np.concatenate(([0], np.diff(steps))).astype(np.float64)
    follows = np.zeros(len(steps), dtype=bool)
    follows[1:] = (np.diff(view.records) == 1) & (gap[1:] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = update / (previous_norm * gap)
    judged = follows & np.isfinite(ratio) & (previous_norm > 0)
    return np.where(judged, ratio, np.nan)


def centred_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median of the finite values among the ``window`` records centred on each record (NaN
    when fewer than half of them are finite, unless the series has no more): what a layer's
    ratio typically is around there."""
    count = len(values)
    out = np.full(count, np.nan)
    if count == 0 or window < 1:
        return out
    before = (window - 1) // 2
    padded = np.concatenate((np.full(before, np.nan), values, np.full(window - 1 - before, np.nan)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    finite = np.isfinite(windows).sum(axis=1)
    # Half a window, or every finite value there is (a run that diverges to NaN within a few
    # steps leaves only those few).
    enough = finite >= max(1, min((window + 1) // 2, int(np.isfinite(values).sum())))
    if enough.any():
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows have no median
            out[enough] = np.nanmedian(windows[enough], axis=1)
    return out


# Small updates are what was asked for where the schedule has brought the learning rate below
# this fraction of its peak (warmup, decay), and what a fitted model makes once its training
# loss is below this fraction of its start.
_ASKED_LITTLE = 0.1


@dataclass(frozen=True)
class LayerRatios:
    """Every weight matrix's typical per-step update ratio, and the network's at each step.

    Attributes:
        steps: The steps any weight matrix was recorded at, ascending.
        layers: Per weight matrix: its view, the column of each of its records in ``steps``
            and its typical ratio per record (NaN where not judged).
        network: The median layer's typical ratio at each step (NaN where none is judged).
        judged, high, low: Per step, how many layers are judged, above ``MAX_RATIO`` and
            strictly between 0 and ``MIN_RATIO``.
    """

    steps: np.ndarray
    layers: tuple[tuple[TensorView, np.ndarray, np.ndarray], ...]
    network: np.ndarray
    judged: np.ndarray
    high: np.ndarray
    low: np.ndarray


def layer_ratios(ctx: RuleContext, window: int, high: float, low: float) -> LayerRatios:
    """:class:`LayerRatios` of the trace (computed once per analysis for DBG502 and DBG503)."""

    def compute() -> LayerRatios:
        views = [view for view in _matrices(ctx.unfocused()) if len(view.steps)]
        steps = (
            np.unique(np.concatenate([view.steps for view in views]))
            if views
            else np.zeros(0, dtype=np.int64)
        )
        judged = np.zeros(len(steps), dtype=np.int64)
        above = np.zeros(len(steps), dtype=np.int64)
        below = np.zeros(len(steps), dtype=np.int64)
        layers = []
        for view in views:
            typical = centred_median(per_step_ratio(view), records_spanning(view.steps, window))
            column = np.searchsorted(steps, view.steps)
            finite = np.isfinite(typical)
            np.add.at(judged, column[finite], 1)
            np.add.at(above, column[finite & (typical > high)], 1)
            np.add.at(below, column[finite & (typical > 0) & (typical < low)], 1)
            layers.append((view, column, typical))
        return LayerRatios(
            steps, tuple(layers), _network_ratio(len(steps), layers), judged, above, below
        )

    return ctx.shared(("layer-ratios", window, high, low), compute)


def _network_ratio(
    count: int, layers: list[tuple[TensorView, np.ndarray, np.ndarray]]
) -> np.ndarray:
    """The median layer's typical ratio at each step."""
    out = np.full(count, np.nan)
    if not layers:
        return out
    columns = np.concatenate([c[np.isfinite(t)] for _, c, t in layers])
    values = np.concatenate([t[np.isfinite(t)] for _, _, t in layers])
    if not len(columns):
        return out
    order = np.lexsort((values, columns))
    columns, values = columns[order], values[order]
    starts = np.flatnonzero(np.concatenate(([True], np.diff(columns) > 0)))
    ends = np.append(starts[1:], len(columns))
    lower = values[starts + (ends - starts - 1) // 2]
    upper = values[starts + (ends - starts) // 2]
    out[columns[starts]] = (lower + upper) / 2
    return out


# -- DBG502 update-ratio --------------------------------------------------------------------------

# A layer is out of line when its typical ratio is this many times above (or below) the
# median layer's: an order of magnitude, as a parameter group with its own learning rate
# makes it (a healthy network's layers sit within a few times of each other).
OUTLIER_FACTOR = 10.0


@rule(
    "DBG502",
    "update-ratio",
    severity="warning",
    category="weights",
    requires=(WEIGHTS, UPDATES),
    per_tensor=True,
    label={"too-large": "updates too large for one layer", "too-small": "a layer not learning"},
    explains={
        "too-large": ("DBG102", "DBG201", "DBG202", "DBG203", "DBG305", "DBG306", "DBG404"),
        "too-small": ("DBG301:not-decreasing", "DBG303"),
    },
)
def update_ratio(
    ctx: RuleContext,
    *,
    large_threshold: float = MAX_RATIO,
    small_threshold: float = MIN_RATIO / 10,
    outlier: float = OUTLIER_FACTOR,
    window: int = 5,
) -> Iterator[Finding]:
    """One layer's weight updates are too large or too small, out of line with the others.

    SageMaker Debugger's WeightUpdateRatio with the norm made explicit (TheDeepChecker's and
    DeepDiagnosis's "effective learning rate"), judged layer by layer against the rest of the
    network. For each weight matrix or kernel (two or more dimensions: biases and normalisation
    scales start at 0 or 1 and say nothing, and so do the parameters a model adds to its
    activations or scales a branch with, ``pos_embed``, ``cls_token``, ``gamma``, which
    ``poor-weight-initialization`` leaves alone for the same reason; embedding tables update
    only the rows of the batch) and recorded step ``s`` whose previous record ``p`` is the
    record just before it, at an earlier step:

        ratio(s) = ||w_s - w_p||₂ / (||w_p||₂ · (s - p))

    from the recorded ``update_l2`` and ``l2`` (see ``per_step_ratio``: with records several
    steps apart, the mean over the steps between them, a lower bound of one step's). The
    layer's *typical* ratio at ``s`` is the median of the ratios of the records within
    ``window`` steps centred on ``s``, so a few large first updates or a single spike is not
    a finding. The window is counted in steps because a record ``N`` steps after the previous
    one already averages ``N`` updates: recorded every step, the median of 5 records;
    recorded every 10th step, each record alone (a median of 5 records would span 50 steps
    and hide the first dozen steps, where a rate far too high does its damage).

    * **too large** (key ``too-large``): typical ratio ``> large_threshold``, 0.1 by default
      (TheDeepChecker's upper bound, ``log10`` of the ratio above -1, and DeepDiagnosis's
      effective learning rate above 1e-1), **and** ``outlier`` (10) times the other layers'
      typical ratio at that step (their median; the other layer's when there are two; a
      network of one layer has nothing to compare with and is left to DBG503).
    * **too small** (key ``too-small``): typical ratio ``< small_threshold`` (1e-5,
      DeepDiagnosis's lower bound), not 0, and below the median layer's divided by
      ``outlier``, at records where the training loss is still above a tenth of its start
      and the latest held-out loss above a tenth of its first (a fitted model rightly makes
      tiny updates; see vanishing-gradient, DBG101), and the recorded learning rate is at
      least a tenth of its peak (a warmup or a decay to zero asks for tiny updates).

    The comparison with the other layers is what makes this rule about *one* layer: a layer
    initialised small on purpose (GPT-2 scales its residual projections by
    ``1/sqrt(2·layers)``) moves relatively fast under Adam early on, a few times the others;
    a parameter group with its own learning rate moves orders of magnitude apart. When most
    layers are off together, the learning rate as a whole is (``learning-rate``, DBG503,
    which explains these findings). A ratio of exactly 0 (a frozen layer) is
    ``unchanged-tensor``'s (DBG403). One finding per tensor and key.

    Why it matters: updates far larger than the weights throw the layer around and usually
    precede divergence; updates vanishingly small mean the layer has effectively stopped
    learning long before the loss says so.

    Typical causes: a parameter group with a learning rate far above or below the others, a
    layer with tiny weights, exploding or vanishing gradients into one layer, weights grown
    huge (no weight decay).

    Fix: check the learning rate of each parameter group, the gradients of the layer (DBG1xx)
    and its weight norm; a ratio around 1e-3 per step is a common rule of thumb.

    Args:
        large_threshold: Typical per-step ratio above which a layer's updates are too large.
        small_threshold: Typical per-step ratio below which a layer's updates are too small.
        outlier: How many times the median layer's ratio a layer must be off by.
        window: Steps whose records' median is a layer's typical ratio.
    """
    if window < 1:
        raise RuleConfigError(f"DBG502 window must be at least 1, got {window}")
    ratios = layer_ratios(ctx, window, MAX_RATIO, MIN_RATIO)
    mine = {view.tag for view in _matrices(ctx)}
    for view, column, typical in ratios.layers:
        if view.tag not in mine:
            continue
        # The other layers' median: with two layers the other one (a median of two would
        # include this layer itself), with more the median of all (one layer barely moves it).
        network = np.where(
            ratios.judged[column] == 2, 2 * ratios.network[column] - typical, ratios.network[column]
        )
        network[ratios.judged[column] < 2] = np.nan
        with np.errstate(invalid="ignore"):
            large = (typical > large_threshold) & (typical > outlier * network)
            small = (typical > 0) & (typical < small_threshold) & (typical * outlier < network)
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=typical,
            violating=large,
            threshold=large_threshold,
            key="too-large",
            modes=view.modes,
            worst="max",
            message=lambda e, v: (
                f"updates of {v:.3g}x the weights per step (median over {window} steps; "
                f"> {large_threshold:g} and > {outlier:g}x the median layer's)"
            ),
        )
        asked = ~lr_below(ctx, view.steps, _ASKED_LITTLE) & ~converged(
            ctx, view.steps, _ASKED_LITTLE
        )
        yield from episode_findings(
            tensor=view.tag,
            steps=view.steps,
            values=typical,
            violating=asked & small,
            threshold=small_threshold,
            key="too-small",
            modes=view.modes,
            worst="min",
            message=lambda e, v: (
                f"updates of {v:.3g}x the weights per step (median over {window} steps; "
                f"< {small_threshold:g} and < the median layer's / {outlier:g})"
            ),
        )


# -- DBG503 learning-rate -------------------------------------------------------------------------

_TOO_HIGH_EFFECTS = (
    "DBG101",
    "DBG102",
    "DBG201",
    "DBG202",
    "DBG203",
    "DBG301",
    "DBG303",
    "DBG305",
    "DBG306",
    "DBG401",
    "DBG402",
    "DBG403",
    "DBG404",
    "DBG502:too-large",
)


# A learning rate at most this share of its final value at the middle of a run that never
# lowers it was still warming up through the second half.
_STILL_RISING = 0.75
# Falls back to the start of a warmup that make it one restarted, not a warmup cut once.
_RESTARTS = 2
# What updates too small to change the model lead to.
_STARVED_EFFECTS = ("DBG301:not-decreasing", "DBG303", "DBG403", "DBG502:too-small")


@rule(
    "DBG503",
    "learning-rate",
    severity="warning",
    category="weights",
    requires=(WEIGHTS, UPDATES),
    label={
        "too-high": "learning rate too high",
        "too-low": "learning rate too low",
        "decayed": "learning rate decayed to nothing early",
        "clipped": "gradients clipped to nothing",
        "still-rising": "learning rate still warming up at the end",
        "rose-until-diverged": "learning rate raised until the loss diverged",
        "warmup-restarted": "learning rate warmup restarted",
    },
    explains={
        "too-high": _TOO_HIGH_EFFECTS,
        "too-low": _STARVED_EFFECTS,
        "decayed": _STARVED_EFFECTS,
        "clipped": _STARVED_EFFECTS,
        "still-rising": _STARVED_EFFECTS,
        "rose-until-diverged": _TOO_HIGH_EFFECTS,
        "warmup-restarted": _STARVED_EFFECTS,
    },
)
def learning_rate(
    ctx: RuleContext,
    *,
    max_ratio: float = MAX_RATIO,
    min_ratio: float = MIN_RATIO,
    window: int = 10,
    diverged: float = 1.5,
    stuck_fraction: float = 0.8,
    starved_share: float = 0.2,
) -> Iterator[Finding]:
    """The learning rate is too high or too low: updates across the network are out of scale.

    The learning rate itself says little across optimizers and models (Adam at 1e-3 and SGD
    at 0.1 are both ordinary); what it does to the weights says a lot. For every weight
    matrix or kernel the per-step update ratio ``||w_s - w_p|| / (||w_p|| · (s - p))`` (see
    ``update-ratio``, DBG502) is smoothed into its *typical* value: the median of the records
    within ``window`` steps centred on each record (each record alone when records are 10 steps
    apart: it already averages the 10 updates). At a step, the network's updates are too large
    when most of the layers recorded there are above ``max_ratio`` (so one odd layer, DBG502's
    business, does not decide), too small when every layer is below ``min_ratio`` (vanishing
    gradients starve the first layers while the last ones still move; a learning rate too low
    starves them all).

    * **too high** (key ``too-high``): the network's typical ratio is above ``max_ratio``
      (0.1: TheDeepChecker's unstable-learning bound, ``log10`` of the update/weight ratio
      above -1, and DeepDiagnosis's effective-learning-rate bound 1e-1; a healthy run sits near
      1e-3 to 1e-2) at some step, **and** the training loss shows it: it became non-finite, rose
      above ``diverged`` (1.5) times its first value at some record, or ended (mean of its last
      10 records) above ``stuck_fraction`` of its first value or, for a classifier, at chance
      (DBG303's band: a rate that kills the network in its first steps takes a loss that started
      far above ``ln C``, from huge first logits, down to chance and no further). Every such
      step moves each layer by more than a tenth of its size, so the optimizer overshoots; the
      runs of the calibration corpus whose rate is 10 to 100 times too high reach 0.25 to 0.9
      and their loss spikes to 1.6 to 1000 times its start, while healthy runs stay below 0.1 (a
      healthy GPT-2 peaks at 0.09 in its first steps). A run whose updates are large but whose
      loss falls well is not reported: large updates that work are not a problem. The median
      over ``window`` steps keeps the largest first updates from counting alone. Without a
      training loss the updates decide alone.
    * **too low** (key ``too-low``): the network's typical ratio is below ``min_ratio``
      (1e-4, TheDeepChecker's lower bound) for at least half of the judged steps, **and** the
      training has not learned: the mean of the last 10 training losses is still above
      ``stuck_fraction`` of the first or, for a classifier, not below chance (DBG303's band,
      or above it: tiny updates can still shrink first logits that were far too large,
      taking the loss from far above ``ln C`` down to chance, which is no learning). Steps
      where the recorded learning rate is below a tenth of its peak (warmup, decay) are not
      judged. A model whose loss falls well with tiny updates is not reported.
    * **clipped to nothing** (key ``clipped``): updates too low as above while the total
      norm of the recorded gradients (over every gradient tensor of a step) is the same
      value, within 0.1 %, at nine in ten of the training records: the gradients are clipped
      to that norm (``clip_grad_norm_``'s ``max_norm``) at every step, far below their own
      size, whatever the learning rate.
    * **still warming up at the end** (key ``still-rising``): the recorded learning rate
      never falls, ends the run at its peak, is at most 3/4 of it at the middle of the run
      (a linear warmup over the whole run is at half), and the training loss ends above
      ``stuck_fraction`` of its start: a warmup is a short
      first stretch of a run, and one that lasts all of it never reaches the rate the run
      was tuned for (its length in epochs where steps were meant, a schedule built for a
      longer run).
    * **raised until the loss diverged** (key ``rose-until-diverged``): the same rate that
      never falls and is still rising in the second half, while the training loss diverged
      at a rate at least twice the first positive one: from some record on, the median of
      the next 10 (non-finite ones counted as above any bar) stays above ``diverged`` times
      its start, so one heavy-tailed batch is no divergence. The loss fell at the first rate
      and blew up at a higher one, so the schedule's rise took it there (a step decay's
      factor above 1, ``gamma=10`` meant as 0.1, a warmup to a peak too high; a
      learning-rate range test does it on purpose, and the message names the rate at the
      lowest loss). Dated from the schedule's first record, a cause of what the divergence
      brings (the effects of a rate too high). A loss that diverged at less than twice the
      first rate is neither this nor still warming up: it did not starve.
    * **warmup restarted** (key ``warmup-restarted``): the recorded learning rate falls
      abruptly (below half its value from one record to the next) back to where it started, at
      least twice, and between those falls it only rises, over 3 records or more and by more
      than 2x. That is a warmup begun again and again: a scheduler (or its lambda's step count)
      created inside the epoch loop, so the rate never gets past the first epoch's share of the
      warmup. Warm restarts (SGDR) and cyclic schedules fall between their restarts and are not
      it. Reported whatever the loss did: the run trained at a rate it was not tuned for.
    * **decayed to nothing early** (key ``decayed``): the recorded learning rate falls below
      ``STARVED_LR`` (1e-4) of its peak and stays there to the end, for at least
      ``starved_share`` (20 %) of the recorded steps. Updates four orders of magnitude below
      the ones the run was tuned for change nothing: a warmup starts there and a decay to
      zero ends there for a sliver of the run, while a schedule that stays there (a step
      decay stepped every batch instead of every epoch, a step size far too short) trains
      for nothing. The finding starts where the fall that ends there began (the last rise of
      the rate before it; the first record for a schedule that only falls): from there the
      schedule starves the run, and the loss that stays high from the start is its symptom.
      Unless the model had fitted its data when the rate got there (the training loss, or
      the held-out loss, at a tenth of its start, as DBG101 and DBG502 read it): a
      ``ReduceLROnPlateau`` without a floor cuts a converged run's rate again and again
      (one at 98 % held-out accuracy went to 3e-7), which starves nothing.

    The finding names the recorded learning rate when there is one. The values are typical
    per-step ratios; with records several steps apart (``stats_every``) they are the mean
    update of the steps in between, a lower bound of the per-step update, so "too high" stays
    certain, and "too low" keeps a margin (see ``per_step_ratio``).

    Why it matters: a learning rate far too high makes the loss oscillate or diverge, throws
    ReLUs into their dead zone and saturating units into their flat tails, and ends in
    non-finite values; one far too low makes training crawl, so the run ends long before the
    model has learned anything.

    Typical causes: too high: a learning rate copied from another optimizer or batch size
    (SGD's 0.1 for Adam), no warmup, a unit mistake, a schedule that raises it (a step
    decay's factor above 1); too low: the opposite mistakes, a schedule that decays it to
    nothing early.

    Fix: run a learning-rate range test (increase it over a few hundred steps and pick a value
    somewhat below where the loss blows up); aim for update/weight ratios around 1e-3 per step;
    add warmup and gradient clipping against early spikes, with a bound that cuts only spikes
    (one that cuts every step starves the run); end a warmup within the first tenth of the
    run, and create the scheduler once, before the epoch loop; ``dbg lr`` replays the recorded
    loss through GreedyLR and other schedules.

    Fix (key ``clipped``): raise ``clip_grad_norm_``'s ``max_norm`` (the Trainer's
    ``max_grad_norm``, Lightning's ``gradient_clip_val``) until it cuts only the spikes, or
    clip by value only against outliers.

    Fix (key ``decayed``): step the scheduler as often as it was built for (a step decay per
    epoch, not per batch; ReduceLROnPlateau on a validation loss once per evaluation), or
    lengthen its step size; keep a floor (``min_lr``, ``eta_min``) near a hundredth of the
    peak.

    Fix (key ``still-rising``): give the warmup a tenth of the run or less, in the unit the
    scheduler counts (optimizer steps, not epochs), and build the schedule for this run's
    length.

    Fix (key ``warmup-restarted``): create the scheduler once, before the epoch loop, and
    step it once per optimizer step.

    Fix (key ``rose-until-diverged``): check the schedule's factor (a step decay's ``gamma``
    below 1) and the warmup's peak and length; for a learning-rate range test, take a rate
    somewhat below the one at the lowest loss.

    Args:
        max_ratio: Typical per-step update/weight ratio above which the rate is too high.
        min_ratio: Typical per-step update/weight ratio below which the rate is too low.
        window: Steps whose records' median is a layer's typical ratio (see DBG502).
        diverged: A too-high rate, and one raised until the loss diverged, need the training
            loss to rise above this multiple of its first value (or turn non-finite; a
            too-high rate also counts a loss that ends stuck).
        stuck_fraction: The training loss counts as stuck while the mean of its last 10
            records is above this fraction of the first (for both keys).
        starved_share: Share of the recorded steps the learning rate must spend below 1e-4
            of its peak to be reported as decayed to nothing.
    """
    if window < 1:
        raise RuleConfigError(f"DBG503 window must be at least 1, got {window}")
    yield from _decayed(ctx, starved_share)
    yield from _still_rising(ctx, stuck_fraction, diverged)
    yield from _restarted_warmup(ctx)
    ratios = layer_ratios(ctx, window, max_ratio, min_ratio)
    if not ratios.layers:
        return
    steps, network, judged, high, low = (
        ratios.steps,
        ratios.network,
        ratios.judged,
        ratios.high,
        ratios.low,
    )
    lr = _lr_text(ctx)
    too_high = (judged > 0) & (high * 2 > judged)
    trouble = _loss_trouble(ctx, diverged, stuck_fraction) if too_high.any() else None
    if too_high.any() and trouble != "":
        said = f"; {trouble}" if trouble else ""
        yield from _run_wide(
            ctx,
            steps,
            network,
            too_high,
            threshold=max_ratio,
            key="too-high",
            worst="max",
            message=lambda v: (
                f"updates of {v:.3g}x the weights per step across the network{lr} "
                f"(median layer, > {max_ratio:g}; healthy runs sit near 1e-3 to 1e-2){said}"
            ),
        )
    asked = (judged > 0) & ~lr_below(ctx, steps, _ASKED_LITTLE)
    too_low = asked & (low == judged)
    learned_nothing = _learned_nothing(ctx, steps[-1], stuck_fraction)
    if learned_nothing is not None and asked.any() and too_low.sum() * 2 >= asked.sum():
        clipped = clipped_gradient_norm(ctx)
        cause = "" if clipped is None else clipped_text(clipped)
        yield from _run_wide(
            ctx,
            steps,
            network,
            too_low,
            threshold=min_ratio,
            key="too-low" if clipped is None else "clipped",
            worst="min",
            message=lambda v: (
                f"updates of {v:.3g}x the weights per step across the network{lr} "
                f"(median layer; every layer < {min_ratio:g}) while {learned_nothing}{cause}"
            ),
        )


def _learned_nothing(ctx: RuleContext, step: int, stuck_fraction: float) -> str | None:
    """How the training loss up to ``step`` (the mean of its last 10 records) shows that the
    run learned nothing, in words: it is still above ``stuck_fraction`` of the untrained
    model's loss or, for a classifier, not below chance (DBG303's band or above it: a loss
    that started far above ``ln C``, from large first logits, and fell only to chance has
    learned the output's scale, not the task). None when it learned, or without a training
    loss."""
    fraction = loss_fraction(ctx, np.array([step]))
    if fraction is None or not np.isfinite(fraction[0]):
        return None
    if fraction[0] > stuck_fraction:
        return f"the training loss is still {fraction[0]:.0%} of its start"
    initial = initial_loss(ctx)
    chance = chance_loss(ctx, class_count(ctx))
    if initial is None or chance is None:
        return None
    end = float(fraction[0]) * initial.value
    if not chance.not_below(end):
        return None
    return f"the training loss ended at {end:.3g}, not below chance ({chance.text})"


def _lr_schedule(ctx: RuleContext) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and values of the recorded learning rate in step order, when it holds at least
    10 records, all finite: enough to tell a schedule's shape."""
    series = ctx.lr()
    if series is None or len(series) < 10 or not np.isfinite(series.values).all():
        return None
    order = np.argsort(series.steps, kind="stable")
    return series.steps[order], series.values[order].astype(np.float64)


def _still_rising(ctx: RuleContext, stuck_fraction: float, diverged: float) -> Iterator[Finding]:
    """The finding of a warmup the run never finished (key ``still-rising``): the recorded
    learning rate never falls, ends at its peak, is at most 3/4 of it at the middle of the
    run, and the training loss ends above ``stuck_fraction`` of its start; or, where the
    loss diverged at a rate at least twice the first positive one, of a rate raised until it
    did (key ``rose-until-diverged``)."""
    schedule = _lr_schedule(ctx)
    if schedule is None:
        return
    steps, values = schedule
    peak, middle = float(values[-1]), float(values[len(values) // 2])
    # Still climbing through the second half: a warmup that ended before it would have its
    # peak there already.
    if not (peak > 0 and np.all(np.diff(values) >= 0) and middle <= _STILL_RISING * peak):
        return
    blow_up = _divergence(ctx, diverged)
    if blow_up is not None:
        # A loss that blew up did not starve: the rise took it there, or something else did.
        raised = _raised_into(ctx, steps, values, blow_up)
        if raised is not None:
            yield raised
        return
    stuck = loss_fraction(ctx, steps[-1:])
    if stuck is None or not stuck[0] > stuck_fraction:
        return
    yield Finding(
        message=(
            f"the learning rate rose for the whole run, from {values[0]:.3g} to {peak:.3g} at "
            f"its last step ({middle:.3g} at the middle of the run), while the training loss "
            f"ended at {stuck[0]:.0%} of its start: a warmup longer than the run (its length "
            "in epochs where steps were meant, or a schedule set for a longer run?)"
        ),
        tensor=ctx.lr_tag(),
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
        steps=len(values),
        value=peak,
        threshold=None,
        mode="train",
        key="still-rising",
    )


# A rate at least this multiple of the one the run started at when the loss diverged was
# raised into the divergence: the loss fell at the first rate and did not blow up there.
_RAISED_INTO = 2.0


class _Divergence(NamedTuple):
    """Where the training loss diverged: its record there, and the lowest before it."""

    step: int
    value: float
    best_step: int
    best: float


def _divergence(ctx: RuleContext, diverged: float) -> _Divergence | None:
    """The first training loss record that went above ``diverged`` times the untrained
    model's loss, or non-finite, and stayed there (:func:`stayed_above`). None otherwise, and
    without a finite record before it."""
    series = ctx.loss("train")
    initial = initial_loss(ctx)
    if series is None or initial is None or not initial.value > 0:
        return None
    order = np.argsort(series.steps, kind="stable")
    steps = series.steps[order]
    losses = series.values[order].astype(np.float64)
    bad = np.flatnonzero(stayed_above(losses, diverged * initial.value))
    if not len(bad) or not np.isfinite(losses[: bad[0]]).any():
        return None
    at = int(bad[0])
    best = int(np.nanargmin(np.where(np.isfinite(losses[:at]), losses[:at], np.nan)))
    return _Divergence(int(steps[at]), float(losses[at]), int(steps[best]), float(losses[best]))


def _raised_into(
    ctx: RuleContext, steps: np.ndarray, values: np.ndarray, blow_up: _Divergence
) -> Finding | None:
    """The finding of a rate that only rose until the training loss diverged (key
    ``rose-until-diverged``), when it diverged at ``_RAISED_INTO`` times the first positive
    rate or more (a warmup from 0 starts at the second record)."""
    positive = values[values > 0]
    if not len(positive):
        return None

    def rate_at(step: int) -> float:
        return float(values[max(int(np.searchsorted(steps, step, side="right")) - 1, 0)])

    rate, first = rate_at(blow_up.step), float(positive[0])
    if not rate >= _RAISED_INTO * first:
        return None
    blew = "turned non-finite" if not np.isfinite(blow_up.value) else f"rose to {blow_up.value:.3g}"
    return Finding(
        message=(
            f"the learning rate only rose, from {values[0]:.3g} to {values[-1]:.3g}, and the "
            f"training loss, lowest at step {blow_up.best_step} ({blow_up.best:.3g}, at a rate "
            f"of {rate_at(blow_up.best_step):.3g}), {blew} at step {blow_up.step} at "
            f"{rate:.3g}, {rate / first:.3g}x the first rate, and stayed there: a schedule "
            "that raises the rate without end (a decay factor above 1, gamma=10 for 0.1, or a "
            "warmup to a peak too high or longer than the run) took it past what the model "
            "trains at; in a learning-rate range test, which does so on purpose, pick a rate "
            "somewhat below the one at the lowest loss"
        ),
        tensor=ctx.lr_tag(),
        first_step=int(steps[0]),
        last_step=blow_up.step,
        steps=int(np.count_nonzero(steps <= blow_up.step)),
        value=rate / first,
        threshold=_RAISED_INTO,
        mode="train",
        key="rose-until-diverged",
    )


def _restarted_warmup(ctx: RuleContext) -> Iterator[Finding]:
    """The finding of a warmup restarted before it ends (key ``warmup-restarted``): the
    recorded learning rate falls abruptly (below half its value in one record) back to where
    it started, at least twice, and between those falls it only rises."""
    schedule = _lr_schedule(ctx)
    if schedule is None:
        return
    steps, values = schedule
    if not ((values >= 0).all() and values.max() > 0):
        return
    falls = np.flatnonzero(values[1:] < values[:-1] / 2) + 1
    if len(falls) < _RESTARTS:
        return
    cycles = np.split(values, falls)
    starts = np.array([cycle[0] for cycle in cycles])
    # Every cycle but the last (cut by the end of the run) rises over several records without
    # a fall, and each starts where the first did: the same warmup from its beginning, not a
    # decay's restart (nor two rates that alternate in one series).
    rising = all(
        len(cycle) >= 3 and np.all(np.diff(cycle) >= 0) and cycle[-1] > 2 * cycle[0]
        for cycle in cycles[:-1]
    )
    if not (rising and np.allclose(starts, starts[0], rtol=0.1)):
        return
    peak = float(values.max())
    period = int(np.median(np.diff(steps[falls])))
    yield Finding(
        message=(
            f"the learning rate rose from {starts[0]:.3g} and fell back to it {len(falls)} "
            f"times, every {period} steps, without ever decaying: a warmup restarted before it "
            f"ends (a scheduler created inside the epoch loop?), cut at {peak:.3g} at most"
        ),
        tensor=ctx.lr_tag(),
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
        steps=len(values),
        value=float(len(falls)),
        threshold=float(_RESTARTS),
        mode="train",
        key="warmup-restarted",
    )


def _decayed(ctx: RuleContext, starved_share: float) -> Iterator[Finding]:
    """The finding of a learning rate that sat at nothing for a good part of the run while
    the loss stopped falling (key ``decayed``)."""
    series = ctx.lr()
    if series is None or len(series) < 2:
        return
    order = np.argsort(series.steps, kind="stable")
    steps, values = series.steps[order], series.values[order]
    peak = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
    if not peak > 0:
        return
    with np.errstate(invalid="ignore"):
        starved = values < STARVED_LR * peak
    # The stretch that lasts to the end: a warmup that starts from 0 is not it.
    if not starved[-1]:
        return
    calm = np.flatnonzero(~starved)
    first = int(calm[-1]) + 1 if len(calm) else 0
    if (len(values) - first) < starved_share * len(values):
        return
    if converged(ctx, steps[first : first + 1], FITTED, latest=False)[0]:
        # Fitted before the rate got there: a plateau scheduler cutting a converged run's
        # rate, not a schedule that starved it.
        return
    share = (len(values) - first) / len(values)
    lowest = float(np.nanmin(values[first:]))
    # The schedule took the rate there from the last time it rose (its first record, for one
    # that only falls): the cause dates from the start of that fall.
    with np.errstate(invalid="ignore"):
        rises = np.flatnonzero(np.diff(values[: first + 1]) > 0)
    falling = int(rises[-1]) + 1 if len(rises) else 0
    yield Finding(
        message=(
            f"the learning rate fell from {values[falling]:.3g} at step {steps[falling]} to "
            f"below {STARVED_LR:g} of its peak {peak:.3g} at step {steps[first]} (down to "
            f"{lowest:.3g}) and stayed there for {share:.0%} of the run"
        ),
        tensor=ctx.lr_tag(),
        first_step=int(steps[falling]),
        last_step=int(steps[-1]),
        steps=len(values) - falling,
        value=lowest / peak,
        threshold=STARVED_LR,
        mode="train",
        key="decayed",
    )


def _loss_trouble(ctx: RuleContext, diverged: float, stuck_fraction: float) -> str | None:
    """How the training loss went wrong, in words; ``""`` when it did not; None without a
    training loss (then the updates alone decide)."""
    series = ctx.loss("train")
    if series is None or not len(series):
        return None
    order = np.argsort(series.steps, kind="stable")
    values = series.values[order].astype(np.float64)
    if not np.isfinite(values).all():
        return "the loss became non-finite"
    start = float(values[0])
    if not start > 0:
        return None
    peak = float(values[1:].max()) if len(values) > 1 else start
    if peak > diverged * start:
        return f"the loss rose to {peak:.3g}, {peak / start:.3g}x its start"
    initial = initial_loss(ctx)  # a resumed run's first loss is a trained model's
    if initial is None or not initial.value > 0:
        return None
    end = float(values[-10:].mean())
    if end > stuck_fraction * initial.value:
        return f"the loss ended at {end / initial.value:.0%} of {initial.name}"
    # Down from a start far above chance (huge first logits) to chance is no learning.
    chance = chance_loss(ctx, class_count(ctx))
    if chance is not None and chance.holds(end):
        return f"the loss ended at chance, {end:.3g} ({chance.text})"
    return ""


def _lr_text(ctx: RuleContext) -> str:
    series = ctx.lr()
    if series is None or not np.isfinite(series.values).any():
        return ""
    peak = float(np.nanmax(series.values))
    return f" at a recorded learning rate of up to {peak:.3g}"


def _run_wide(
    ctx: RuleContext,
    steps: np.ndarray,
    values: np.ndarray,
    violating: np.ndarray,
    *,
    threshold: float,
    key: str,
    worst: Literal["max", "min"],
    message: Callable[[float], str],
) -> Iterator[Finding]:
    yield from episode_findings(
        tensor=ctx.lr_tag(),
        steps=steps,
        values=values,
        violating=violating,
        threshold=threshold,
        key=key,
        worst=worst,
        message=lambda e, v: message(v),
    )


# -- DBG504 weights-collapsed ---------------------------------------------------------------------


@rule(
    "DBG504",
    "weights-collapsed",
    severity="warning",
    category="weights",
    requires=WEIGHTS,
    per_tensor=True,
    label="weights collapsed toward zero",
    # Weights near zero pass almost no signal forward and almost no gradient back.
    explains=(
        "DBG101",
        "DBG201",
        "DBG301:not-decreasing",
        "DBG303",
        "DBG402",
        "DBG502",
        "DBG601:mispredicted",
        "DBG604",
    ),
)
def weights_collapsed(ctx: RuleContext, *, min_fraction: float = 0.01) -> Iterator[Finding]:
    """A layer's weights shrink toward zero: their scale falls far below where they started.

    Per weight tensor of two or more dimensions (matrices and kernels; not 1-D scales, nor
    parameters added to activations such as ``pos_embed``, which may start at zero), the
    root mean square of its values, ``l2 / sqrt(count)``, at every record against its first
    record with a positive one. A record below ``min_fraction`` (1 %) of that start
    violates. The initialisation sets each layer's scale so that signals keep their size
    through it (He, Glorot); a layer at a hundredth of it passes a hundredth of the signal
    forward and of the gradient back, and a stack of them passes nothing. Healthy runs of the
    calibration corpus shrink to 0.63 of their start at the most (GPT-2's position table
    under weight decay, docs/benchmarks.md); the fault shrinks by many orders of magnitude.
    One finding per tensor, from the record the decline started at (the largest scale
    before the first violating record) to the last violating one, counting the violating
    records; the value is the smallest fraction reached.

    The message gives the optimizer's weight decay when the PyTorch hook noted it (run
    metadata ``optimizer``, the largest over its parameter groups) and asks whether it is
    too strong: SGD's L2 takes ``lr * weight_decay`` of every weight per step
    (``1 / (1 - momentum)`` times that with momentum), as AdamW's decoupled decay does, so
    ``weight_decay=0.5`` meant as ``5e-4`` outweighs the gradients once the loss stops
    pushing back; Adam's coupled L2 goes through its normalisation, which makes it act
    otherwise but no less strongly. Without weight decay the message says so.

    Why it matters: a collapsed layer starves everything after it; the loss stalls near
    chance, gradients vanish, activations die, and no learning rate brings it back while the
    pull to zero lasts.

    Typical causes: a weight decay orders of magnitude too strong (or applied twice: in the
    loss and in the optimizer), an L1 or L2 penalty weighted far above the data loss, a bug
    that rescales the weights in place.

    Fix: use a weight decay of 1e-4 to 1e-2 (AdamW's decoupled decay for Adam), check the
    regularisation terms of the loss, keep normalisation scales and biases out of the decay.

    Args:
        min_fraction: Fraction of its starting scale below which a layer's weights count as
            collapsed.
    """
    if not 0 < min_fraction < 1:
        raise RuleConfigError(f"DBG504 min_fraction must be in (0, 1), got {min_fraction:g}")
    decay = weight_decay(ctx.trace.metadata)
    if decay is None:
        why = " (a weight decay too strong?)"
    elif decay > 0:
        why = f": the optimizer's weight decay is {decay:g} (too strong?)"
    else:
        why = " without weight decay (a penalty in the loss, or weights rescaled in place?)"
    for view in ctx.tensors(collection="weights"):
        shape = view.info.shape
        if shape is None or len(shape) < 2 or added_or_scaling_parameter(view.tag):
            continue
        order = np.argsort(view.steps, kind="stable")
        steps = view.steps[order]
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = view.stat("l2")[order] / np.sqrt(view.stat("count")[order])
        started = np.flatnonzero(np.isfinite(scale) & (scale > 0))
        if not started.size:
            continue
        first = int(started[0])
        fraction = scale / scale[first]
        # From the first non-zero scale on: a layer initialised to zero starts there.
        later = fraction[first:]
        below = first + np.flatnonzero(np.isfinite(later) & (later < min_fraction))
        if not below.size:
            continue
        onset = first + int(np.argmax(fraction[first : below[0] + 1]))
        smallest = below[int(np.argmin(fraction[below]))]
        yield Finding(
            message=(
                f"weights shrank to {fraction[smallest]:.2g} of their starting scale (RMS "
                f"{scale[first]:.3g} at step {int(steps[first])} -> {scale[smallest]:.3g} at "
                f"step {int(steps[smallest])}; < {min_fraction:g}){why}"
            ),
            tensor=view.tag,
            first_step=int(steps[onset]),
            last_step=int(steps[below[-1]]),
            steps=int(below.size),
            value=float(fraction[smallest]),
            threshold=min_fraction,
            key="collapsed",
            extra={"weight_decay": decay},
        )
