"""DBG2xx: activation functions that saturate or die."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import Episode, RuleContext, TensorView, episode_findings
from dbgcli.rules._registry import Need, rule
from dbgcli.trace import schema

ACTIVATION_COLLECTIONS = ("activations", "preactivations")
RELU_KINDS = tuple(sorted(schema.RELU_KINDS))
# A layer share needs a layer: fewer units are an output head (a binary classifier's sigmoid
# is meant to saturate once the model is confident).
MIN_UNITS = 4
# An episode that starts above the layer threshold lasts while the share stays above this
# fraction of it (hysteresis: a share hovering around the threshold is one episode).
HOLD_FRACTION = 0.8
_STARVED_OF_GRADIENT = (
    "DBG101",
    "DBG401",
    "DBG402",
    "DBG403",
    "DBG301:not-decreasing",
    "DBG303",
    "DBG502:too-small",
    "DBG503:too-low",
)


def _unit_tensors(kinds: tuple[str, ...]) -> Need:
    """Activation tensors of ``kinds`` whose records have a unit axis (so a per-unit measure)."""
    return Need(
        f"per-unit activation measures of kind {', '.join(kinds)} "
        f"(role {' or '.join(repr(c) for c in ACTIVATION_COLLECTIONS)})",
        lambda ctx: any(view.info.unit_measure is not None for view in _views(ctx, kinds)),
        looks_at="tensors",
        hint=_compiled_hint,
    )


def _compiled_hint(ctx: RuleContext, params: dict[str, Any]) -> str | None:
    """Why a compiled model's trace holds no activations (see docs/capture.md)."""
    if ctx.trace.metadata.get(schema.META_COMPILED) is True:
        return "the model ran compiled (torch.compile), whose passes record no activations"
    return None


def _views(ctx: RuleContext, kinds: tuple[str, ...]) -> list[TensorView]:
    return ctx.tensors(collection=ACTIVATION_COLLECTIONS, kind=kinds)


@rule(
    "DBG201",
    "dying-relu",
    severity="warning",
    category="activations",
    requires=_unit_tensors(RELU_KINDS),
    per_tensor=True,
    label="dying ReLU",
    explains=(*_STARVED_OF_GRADIENT, "DBG201"),
)
def dying_relu(
    ctx: RuleContext,
    *,
    threshold_inactivity: float = 1.0,
    threshold_layer: float = 50.0,
    min_steps: int = 3,
) -> Iterator[Finding]:
    """Most units of a ReLU-like layer never fire, so no gradient flows through them.

    SageMaker Debugger's DeadRelu with its population made explicit. The trace stores, per
    record and per unit, the unit's *active share*: the fraction of its values where the
    function passes a gradient, over the batch and, for convolutions, the spatial positions
    (``TensorView.units()``, measure ``active_frac``; see docs/trace-format.md). That is the
    population: one recorded step, all samples of its batch, every position. For ReLU, ReLU6
    and LeakyReLU a value is active when it is ``> 0``; for the smooth kinds (GELU, SiLU,
    Mish, ELU, SELU) when its input is above the tail where the derivative stays below 0.01,
    the bar of the saturation rules (GELU -3.07, SiLU and Mish -6.26, ELU -4.61, SELU
    -5.17): below 0 and above that tail they are curved, with a gradient of up to 0.5, and a
    trained transformer's feed-forward units often live there, never positive.

    * A unit is **dead** at record ``r`` if its active share, averaged over the ``min_steps``
      consecutive records of the tensor (and mode) ending at ``r``, satisfies
      ``share × 100 < threshold_inactivity``. With the defaults and a batch of 64, at most
      one of the unit's 192 values in the window may be positive. Pooling ``min_steps``
      records keeps tiny batches honest: with a batch of one, about half the units of a
      healthy layer are off on any sample, but hardly any stays off for several records.
      The window counts records, not steps: what it pools is samples of the unit, and records
      10 steps apart (``stats_every``) are batches at least as independent as consecutive
      ones; the window then spans 21 steps, short beside a layer that has died.
    * A channel of a convolution is judged per sample: its share, times the ``P`` positions
      of one sample (records of four axes or more, channels first or last, or ``(batch,
      channels, length)``; see :func:`positions_per_sample`), must be below
      ``threshold_inactivity``. A channel that detects a pattern fires where the pattern is,
      on a few of an image's positions (a global max pool reads only the strongest), so a
      working detector is active on under 1 % of its values; but it fired in at most
      ``share × P`` of the samples (each active value in a sample of its own), and it is
      dead only if even that bound is under 1 % of them.
    * The layer **violates** at that window if the share of dead units
      ``× 100 > threshold_layer``; every record of a violating window belongs to the episode.
    * Records whose activations hold NaN or ±inf are not judged (their values say nothing
      about ReLU activity; the non-finite rules report them) and break windows.

    * An episode that has started lasts while the dead share stays above 80 % of
      ``threshold_layer`` (hysteresis), so a share hovering around the threshold is one
      episode; episodes are merged into one finding per tensor and mode, with the largest
      dead share.

    A healthy ReLU layer has about half its *values* at zero; its units are still alive
    because each fires for some samples. The severity is error when every unit of the layer
    is dead from some record to the end of the run (no gradient at all reaches the layers
    below, and it never recovers), warning otherwise. Applies to tensors of role
    ``activations`` or ``preactivations`` whose kind is ReLU-like (relu, relu6, leaky_relu,
    gelu, elu, selu, silu, mish). A LeakyReLU unit that is never positive still passes a
    small gradient, but it has collapsed to a linear response, which is reported the same
    way. Traces of format 1.1 and earlier stored the share ``> 0`` for every kind.

    Why it matters: a dead unit outputs zero for every input and gets zero gradient, so it
    never recovers; a layer with most units dead has lost most of its capacity, and a fully
    dead layer stops training of everything before it.

    Typical causes: a learning rate too high (one large update pushes the biases far
    negative), large negative bias initialisation, poor weight initialisation, inputs that are
    not normalised.

    Fix: lower the learning rate or add warmup, initialise with He/Kaiming and zero (or small
    positive) biases, normalise inputs, use batch normalisation, or switch to LeakyReLU, ELU or
    GELU, which keep a gradient for negative inputs.

    Args:
        threshold_inactivity: Active share (in %) below which a unit counts as dead; for a
            convolution's channel, its share times its positions per sample.
        threshold_layer: Share of dead units (in %) above which the layer is reported.
        min_steps: Consecutive records (not steps) a unit's active share is pooled over (1:
            judge each record on its own).
    """
    yield from _unit_findings(
        _views(ctx, RELU_KINDS),
        threshold_inactivity,
        threshold_layer,
        min_steps,
        key="dead",
        describe=lambda share, units, positions: (
            f"{share:.0f} % of {units} units dead (active on < {threshold_inactivity:g} % of their "
            + (
                "values"
                if positions == 1
                else f"samples at most: < {threshold_inactivity / positions:.2g} % of their "
                f"values over {positions} positions"
            )
            + f"; > {threshold_layer:g} %)"
        ),
        positions=positions_per_sample,
    )


def positions_per_sample(view: TensorView) -> int:
    """Values of one unit in one sample: the positions of a convolution's channel, every axis
    but the batch (the first) and the units', for records of four axes or more (channels
    first or last) and of three with the units on axis 1 (``(batch, channels, length)``);
    1 for features and for sequences ``(batch, time, features)``. Of the shapes the trace
    holds, the largest: ``share × P`` then bounds the samples a unit fired in for records of
    any of them."""
    axis = view.info.unit_axis
    shapes = [shape for shape in (view.info.shape, *view.info.shapes) if shape is not None]
    if axis is None or not shapes or len(shapes[0]) < 3:
        return 1
    unit = axis % len(shapes[0])
    if unit == 0 or (len(shapes[0]) == 3 and unit != 1):
        return 1
    return max(
        1,
        max(
            int(np.prod([size for at, size in enumerate(shape) if at not in (0, unit)]))
            for shape in shapes
            if len(shape) == len(shapes[0])
        ),
    )


@rule(
    "DBG202",
    "tanh-saturation",
    severity="warning",
    category="activations",
    requires=_unit_tensors(("tanh",)),
    per_tensor=True,
    label="tanh saturation",
    explains=(*_STARVED_OF_GRADIENT, "DBG202"),
)
def tanh_saturation(
    ctx: RuleContext,
    *,
    threshold_inactivity: float = 50.0,
    threshold_layer: float = 50.0,
    min_steps: int = 3,
) -> Iterator[Finding]:
    """Most tanh units of a layer are saturated at ±1, where their gradient is about zero.

    SageMaker Debugger's SaturatedActivation for tanh, with the textbook notion of
    saturation. The trace stores, per record and per unit, the share of the unit's values
    strictly inside the non-saturated band (``TensorView.units()``, measure
    ``unsaturated_frac``), over the batch and, for convolutions, the spatial positions. The
    band is where the derivative is at least 0.01: ``tanh'(z) = 1 - tanh(z)² >= 0.01``, i.e.
    ``|z| < 2.993`` on pre-activations (role ``preactivations``), ``|tanh(z)| < 0.99499`` on
    outputs (see docs/trace-format.md; traces of format 1.0 stored SageMaker Debugger's band
    ``|z| < 9.4999``, where the derivative is about 1e-7, which only counts units that pass no
    gradient at all).

    * A unit is **saturated** at record ``r`` if its unsaturated share, averaged over the
      ``min_steps`` consecutive records of the tensor (and mode) ending at ``r``, satisfies
      ``share × 100 < threshold_inactivity``: with the default 50, the unit sits where its
      derivative is below 0.01 most of the time (DeepDiagnosis counts a layer saturated when
      more than half its pre-activations lie beyond ±5).
    * The layer **violates** at that window if the share of saturated units
      ``× 100 > threshold_layer`` (SageMaker Debugger's and TheDeepChecker's 50 %); every
      record of a violating window belongs to the episode, which lasts while the share stays
      above 80 % of ``threshold_layer`` (hysteresis).
    * Records holding NaN or ±inf are not judged (the non-finite rules report them) and break
      windows. Output layers are not judged (a model fitting targets near ±1 pushes its
      final tanh there by design): layers of fewer than 4 units, and the model's output
      layer where the run metadata names it (``model_outputs``, see DBG203).

    SageMaker Debugger picks the bounds from the tensor name; here the tensor's ``kind``
    (``tanh``, from the recorded kind, collection or name) decides. One finding per tensor and
    mode, with the largest saturated share; the severity is error when every unit of the layer
    is saturated from some record to the end of the run, warning otherwise.

    Why it matters: a saturated tanh passes almost no gradient, so the weights feeding it stop
    learning; when most units of a layer saturate, the layer acts as a fixed sign function and
    gradients vanish below it.

    Typical causes: large initial weights (no Xavier/Glorot scaling), inputs that are not
    normalised, a learning rate that grows the pre-activations, deep stacks of tanh layers.

    Fix: Xavier/Glorot initialisation, normalise inputs, add batch or layer normalisation
    before the tanh, lower the learning rate, or use a ReLU-family activation.

    Args:
        threshold_inactivity: Unsaturated share (in %) below which a unit counts as saturated.
        threshold_layer: Share of saturated units (in %) above which the layer is reported.
        min_steps: Consecutive records (not steps) a unit's unsaturated share is pooled over
            (1: judge each record on its own).
    """
    yield from _unit_findings(
        _saturating(ctx, "tanh"),
        threshold_inactivity,
        threshold_layer,
        min_steps,
        key="saturated",
        describe=_saturation_message("tanh", threshold_inactivity, threshold_layer),
    )


@rule(
    "DBG203",
    "sigmoid-saturation",
    severity="warning",
    category="activations",
    requires=_unit_tensors(("sigmoid",)),
    per_tensor=True,
    label="sigmoid saturation",
    explains=(*_STARVED_OF_GRADIENT, "DBG203"),
)
def sigmoid_saturation(
    ctx: RuleContext,
    *,
    threshold_inactivity: float = 50.0,
    threshold_layer: float = 50.0,
    min_steps: int = 3,
) -> Iterator[Finding]:
    """Most sigmoid units of a layer are saturated at 0 or 1, where their gradient is about zero.

    SageMaker Debugger's SaturatedActivation for sigmoid, with the textbook notion of
    saturation. The trace stores, per record and per unit, the share of the unit's values
    strictly inside the non-saturated band (``TensorView.units()``, measure
    ``unsaturated_frac``), over the batch and, for convolutions, the spatial positions. The
    band is where the derivative is at least 0.01: ``σ'(z) = σ(z)(1 - σ(z)) >= 0.01``, i.e.
    ``|z| < 4.585`` on pre-activations (role ``preactivations``), ``0.0101 < σ(z) < 0.9899``
    on outputs (see docs/trace-format.md; traces of format 1.0 stored SageMaker Debugger's
    band ``(-23, 16.99999)``, where the derivative is about 1e-7).

    * A unit is **saturated** at record ``r`` if its unsaturated share, averaged over the
      ``min_steps`` consecutive records of the tensor (and mode) ending at ``r``, satisfies
      ``share × 100 < threshold_inactivity``: with the default 50, the unit sits where its
      derivative is below 0.01 most of the time (DeepDiagnosis: more than half of the
      pre-activations beyond ±5).
    * The layer **violates** at that window if the share of saturated units
      ``× 100 > threshold_layer`` (SageMaker Debugger's and TheDeepChecker's 50 %); every
      record of a violating window belongs to the episode, which lasts while the share stays
      above 80 % of ``threshold_layer`` (hysteresis).
    * Records holding NaN or ±inf are not judged (the non-finite rules report them) and break
      windows.

    SageMaker Debugger picks the bounds from the tensor name; here the tensor's ``kind``
    (``sigmoid``) decides. Output layers are not examined: tensors of role ``predictions`` or
    ``outputs``, layers of fewer than 4 units (a binary classifier's output), and the model's
    output layer where the run metadata names it (``model_outputs``: the PyTorch hook notes
    the activation module whose output the model returns, such as a multi-label head's
    ``nn.Sigmoid`` before ``nn.BCELoss``, and its input): a confident classifier is supposed
    to push its sigmoid towards 0 or 1. One finding per tensor and
    mode, with the largest saturated share; the severity is error when every unit of the layer
    is saturated from some record to the end of the run, warning otherwise.

    Why it matters: a saturated sigmoid passes almost no gradient, so the weights feeding it
    stop learning; gates of LSTMs and GRUs stuck open or closed no longer adapt.

    Typical causes: large initial weights, inputs that are not normalised, large biases (for
    example gate biases), a learning rate that grows the pre-activations.

    Fix: Xavier/Glorot initialisation, normalise inputs, add normalisation before the sigmoid,
    lower the learning rate; for hidden layers prefer a ReLU-family activation.

    Args:
        threshold_inactivity: Unsaturated share (in %) below which a unit counts as saturated.
        threshold_layer: Share of saturated units (in %) above which the layer is reported.
        min_steps: Consecutive records (not steps) a unit's unsaturated share is pooled over
            (1: judge each record on its own).
    """
    yield from _unit_findings(
        _saturating(ctx, "sigmoid"),
        threshold_inactivity,
        threshold_layer,
        min_steps,
        key="saturated",
        describe=_saturation_message("sigmoid", threshold_inactivity, threshold_layer),
    )


def model_output_tags(ctx: RuleContext) -> frozenset[str]:
    """The activation tags of the model's output layer, where the run metadata names them
    (``model_outputs``, the PyTorch hook's note): the saturation rules leave them out."""
    outputs = ctx.trace.metadata.get(schema.META_MODEL_OUTPUTS)
    if not isinstance(outputs, list):
        return frozenset()
    return frozenset(tag for tag in outputs if isinstance(tag, str))


def _saturating(ctx: RuleContext, kind: str) -> list[TensorView]:
    """Hidden layers of a saturating kind: output heads of fewer than MIN_UNITS units, and the
    model's output layer where the run metadata names it, left out."""
    outputs = model_output_tags(ctx)
    return [
        view
        for view in _views(ctx, (kind,))
        if view.tag not in outputs
        and view.info.unit_axis is not None
        and view.info.shape is not None
        and len(view.info.shape) > view.info.unit_axis
        and view.info.shape[view.info.unit_axis] >= MIN_UNITS
    ]


def _saturation_message(
    kind: str, threshold_inactivity: float, threshold_layer: float
) -> Callable[[float, int, int], str]:
    def describe(share: float, units: int, positions: int) -> str:
        return (
            f"{share:.0f} % of {units} {kind} units saturated (derivative >= 0.01 for "
            f"< {threshold_inactivity:g} % of their values; > {threshold_layer:g} %)"
        )

    return describe


def failing_unit_shares(
    view: TensorView,
    units: np.ndarray,
    threshold_inactivity: float,
    min_steps: int,
    positions: int = 1,
) -> Iterator[tuple[int, np.ndarray | slice, np.ndarray]]:
    """Per mode of ``view``'s records: the mode's code, the positions of its records, and per
    record the share (%) of its units (``units``, ``view.units()``) whose measure, times
    ``positions`` (see :func:`positions_per_sample`), averaged over ``min_steps`` records, is
    below ``threshold_inactivity``, as the unit rules judge them (NaN where no window is)."""
    measures = np.array(units, dtype=np.float32) * np.float32(positions)
    nonfinite = (view.stat("nan_count") + view.stat("inf_count")) > 0
    measures[nonfinite] = np.nan
    for code in view.mode_codes:
        rows = view.positions(code)
        yield code, rows, _failing_share(measures[rows], threshold_inactivity, max(1, min_steps))


def _unit_findings(
    views: list[TensorView],
    threshold_inactivity: float,
    threshold_layer: float,
    min_steps: int,
    *,
    key: str,
    describe: Callable[[float, int, int], str],
    positions: Callable[[TensorView], int] | None = None,
) -> Iterator[Finding]:
    """Findings of "too many units with a too small per-unit measure", per tensor and mode.
    With ``positions``, a unit's measure is judged per sample (see
    :func:`failing_unit_shares`), and ``extra`` says over how many positions."""
    window = max(1, min_steps)
    for view in views:
        units = view.units()
        if units is None or units.shape[1] == 0:
            continue
        count = int(units.shape[1])
        per_sample = 1 if positions is None else positions(view)
        extra: dict[str, Any] = {"units": count, "min_steps": window}
        if positions is not None:
            extra["positions"] = per_sample
        for _mode, rows, share in failing_unit_shares(
            view, units, threshold_inactivity, window, per_sample
        ):
            with np.errstate(invalid="ignore"):
                violating = share > threshold_layer
                holding = share > HOLD_FRACTION * threshold_layer
            for finding in episode_findings(
                tensor=view.tag,
                steps=view.steps[rows],
                values=share,
                violating=violating,
                holding=holding,
                threshold=threshold_layer,
                key=key,
                modes=view.modes[rows],
                message=_per_episode(describe, count, per_sample),
                extra=extra,
            ):
                yield replace(finding, severity=Severity.error) if _whole_to_end(share) else finding


def _whole_to_end(share: np.ndarray) -> bool:
    """Every unit fails from some judged record to the last judged one (at least two)."""
    judged = share[np.isfinite(share)]
    if len(judged) < 2 or judged[-1] < 100.0:
        return False
    failing = np.flatnonzero(judged < 100.0)
    return len(judged) - (failing[-1] + 1 if len(failing) else 0) >= 2


def _per_episode(
    describe: Callable[[float, int, int], str], units: int, positions: int
) -> Callable[[Episode, float], str]:
    return lambda episode, share: describe(share, units, positions)


def _failing_share(measures: np.ndarray, threshold: float, window: int) -> np.ndarray:
    """Per record, the largest share (%) of failing units over the windows covering it.

    ``measures`` is ``(records, units)`` with NaN rows for records that cannot be judged. A
    unit fails a window when its measure averaged over the window, × 100, is below
    ``threshold``; a window with a NaN row is not judged. Records covered by no judged window
    get NaN.
    """
    records = measures.shape[0]
    out = np.full(records, np.nan)
    if records < window:
        return out
    pooled = np.lib.stride_tricks.sliding_window_view(measures, window, axis=0).mean(axis=2)
    judged = np.isfinite(pooled).all(axis=1)
    with np.errstate(invalid="ignore"):
        failing = (pooled * 100.0 < threshold).mean(axis=1) * 100.0
    failing[~judged] = np.nan
    for offset in range(window):
        # Record i lies in the windows starting at i - window + 1 ... i.
        out[offset : offset + len(failing)] = np.fmax(out[offset : offset + len(failing)], failing)
    return out
