"""DBG5xx: weights: poor initialisation, updates too small or too large for the weights."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from dbgcli.findings import Finding
from dbgcli.rules._context import RuleContext, TensorView, episode_findings
from dbgcli.rules._registry import Need, rule
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
    """How many output units (rows) of a weight tensor's first record have all-equal weights."""

    rows: int
    constant_rows: int
    constant: bool
    value: float


@dataclass(frozen=True)
class InitialRows(Derivation):
    """Row symmetry of a weight tensor's first record (None if its full tensor was not kept).

    Only the first record is read: the mask selects nothing else.
    """

    def wanted(self, info: TagInfo, trace: Trace) -> np.ndarray:
        mask = np.zeros(info.records, dtype=bool)
        mask[:1] = True
        return mask

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _InitialRowsAccumulator()


class _InitialRowsAccumulator(Accumulator):
    def __init__(self) -> None:
        self.result: InitialSymmetry | None = None

    def feed(self, chunk: RawChunk) -> None:
        hits = np.flatnonzero(chunk.records == 0)
        if not len(hits):
            return
        values = np.asarray(chunk.values[int(hits[0])])
        if values.ndim < 2 or values.size == 0:
            return
        rows = values.reshape(values.shape[0], -1)
        # max == min is False for a row holding NaN: NaN propagates through both.
        constant_rows = rows.max(axis=1) == rows.min(axis=1)
        constant = bool(values.max() == values.min())
        self.result = InitialSymmetry(
            rows=rows.shape[0],
            constant_rows=int(constant_rows.sum()) if rows.shape[1] > 1 else 0,
            constant=constant,
            value=float(values.flat[0]),
        )

    def finish(self) -> InitialSymmetry | None:
        return self.result


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight in PyTorch layout ``(out, in, *kernel)``."""
    receptive = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return int(np.prod(shape[1:], dtype=np.int64)), int(shape[0]) * receptive


def _initialised(ctx: RuleContext) -> list[TensorView]:
    """Weight matrices and kernels whose first record is in the analysed range.

    1-D weights (normalisation scales) start constant by design and have no fan-in.
    """
    return [
        view
        for view in ctx.tensors(collection="weights")
        if view.info.shape is not None and len(view.info.shape) >= 2 and int(view.records[0]) == 0
    ]


def _is_embedding(view: TensorView) -> bool:
    """Embedding tables are looked up, not multiplied: a row is one unit's input, fan-in 1."""
    return view.info.kind == "embedding" or "embed" in view.tag.lower()


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
      was not kept, only the whole-tensor check runs, from ``min == max``.
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

    Embedding tables (kind ``embedding`` or a tag containing "embed") skip the scale checks:
    a lookup has fan-in 1, and ``N(0, 1)`` is their standard initialisation. Tensors that are
    constant skip them too (the symmetry check reports them).

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
    views = _initialised(ctx)
    scaled: list[tuple[TensorView, float, float]] = []
    for view in views:
        symmetry: InitialSymmetry | None = view.derive(InitialRows())
        yield from _symmetry_findings(view, symmetry)
        shape = view.info.shape
        var = float(view.stat("var")[0])
        if shape is None or _is_embedding(view) or not np.isfinite(var) or var <= 0:
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


def _symmetry_findings(view: TensorView, symmetry: InitialSymmetry | None) -> Iterator[Finding]:
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
    if symmetry.constant:
        yield _at_first(
            view,
            f"every initial weight equals {symmetry.value:.4g}: all units are identical",
            symmetry.value,
            0.0,
            "constant",
            {"evidence": "full tensor"},
        )
    elif symmetry.constant_rows:
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


# -- DBG502 update-ratio --------------------------------------------------------------------------


@rule(
    "DBG502",
    "update-ratio",
    severity="warning",
    category="weights",
    requires=(WEIGHTS, UPDATES),
    per_tensor=True,
)
def update_ratio(
    ctx: RuleContext,
    *,
    large_threshold: float = 1.0,
    small_threshold: float = 1e-6,
    epsilon: float = 1e-9,
) -> Iterator[Finding]:
    """Weight updates are too large or too small compared with the weights.

    SageMaker Debugger's WeightUpdateRatio with the norm made explicit (TheDeepChecker's and
    DeepDiagnosis's "effective learning rate"). For each weight tensor and recorded step
    ``s`` whose previous record ``p`` is the record just before it in the tag, at an earlier
    step:

        ratio(s) = update_l2(s) / (l2(p) + epsilon)

    where ``update_l2(s) = ||w_s - w_p||₂`` is recorded by the writer for weights (or derived
    by the reader from consecutive full tensors) and ``l2(p) = ||w_p||₂``. When records are
    several steps apart, the ratio covers all the updates in between. Fires per record when
    ``ratio > large_threshold`` (key ``too-large``) or ``0 < ratio < small_threshold`` (key
    ``too-small``); one finding per tensor, key and episode of consecutive judged records.

    Defaults: SageMaker Debugger's 10 and 1e-8 hardly ever fire; TheDeepChecker's band
    (log10 of the ratio in [-4, -1] per update) fires on the healthy sample trace (a
    He-initialised MLP, SGD lr 0.05): its first updates reach 0.16 and, once the loss is near
    zero, its updates fall to 1.3e-5. Here: ``1`` (an update as large as the weights
    themselves rewrites the layer each step; the sample with lr 50 reaches 11 on its first
    update and NaN four steps later) and ``1e-6`` (ten times below what the converged
    healthy run reaches; near float32's 6e-8 resolution, below which updates are lost to
    rounding).

    Not judged: a record whose previous weights are exactly zero (the ratio is undefined;
    ``all-zero`` reports zero weights), a ratio of exactly 0 (a frozen layer: that is
    ``unchanged-tensor``'s finding, DBG403), NaN updates (``non-finite-tensor``), records at
    the same step as the previous one (an eval record of the same weights). Biases are left
    out: they start at zero and stay small, so their ratio says nothing.

    Why it matters: updates far larger than the weights throw the layer around and usually
    precede divergence; updates vanishingly small mean the layer has effectively stopped
    learning long before the loss says so.

    Typical causes: too large: learning rate too high, no warmup, gradient explosion, tiny
    weights. Too small: learning rate too low or decayed to nothing, vanishing gradients,
    weights grown huge (no weight decay), updates below float precision.

    Fix: tune the learning rate (a ratio around 1e-3 per step is a common rule of thumb), add
    warmup or gradient clipping, check the schedule and the gradients (DBG1xx).

    Args:
        large_threshold: Ratio above which an update counts as too large.
        small_threshold: Ratio below which a non-zero update counts as too small.
        epsilon: Added to the previous weight norm in the denominator.
    """
    for view in ctx.tensors(collection="weights"):
        update = view.stat("update_l2")
        norm = view.stat("l2")
        steps = view.steps
        follows = np.zeros(len(steps), dtype=bool)
        follows[1:] = (np.diff(view.records) == 1) & (np.diff(steps) > 0)
        previous_norm = np.concatenate(([np.nan], norm[:-1]))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = update / (previous_norm + epsilon)
        judged = follows & np.isfinite(ratio) & (previous_norm > 0)
        positions = np.flatnonzero(judged)
        if not len(positions):
            continue
        values = ratio[positions]
        yield from episode_findings(
            tensor=view.tag,
            steps=steps[positions],
            values=values,
            violating=values > large_threshold,
            threshold=large_threshold,
            key="too-large",
            modes=view.modes[positions],
            worst="max",
            message=lambda e, v: f"update/weight norm ratio {v:.3g} (> {large_threshold:g})",
        )
        yield from episode_findings(
            tensor=view.tag,
            steps=steps[positions],
            values=values,
            violating=(values > 0) & (values < small_threshold),
            threshold=small_threshold,
            key="too-small",
            modes=view.modes[positions],
            worst="min",
            message=lambda e, v: f"update/weight norm ratio {v:.3g} (< {small_threshold:g})",
        )
