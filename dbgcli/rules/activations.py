"""DBG2xx: activation functions that saturate or die."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from dbgcli.findings import Finding, Severity
from dbgcli.rules._context import Episode, RuleContext, TensorView, episode_findings
from dbgcli.rules._registry import Need, rule
from dbgcli.trace import schema

ACTIVATION_COLLECTIONS = ("activations", "preactivations")
RELU_KINDS = tuple(sorted(schema.RELU_KINDS))


def _unit_tensors(kinds: tuple[str, ...]) -> Need:
    """Activation tensors of ``kinds`` whose records have a unit axis (so a per-unit measure)."""
    return Need(
        f"per-unit activation measures of kind {', '.join(kinds)} "
        f"(collection {' or '.join(repr(c) for c in ACTIVATION_COLLECTIONS)})",
        lambda ctx: any(view.info.unit_measure is not None for view in _views(ctx, kinds)),
    )


def _views(ctx: RuleContext, kinds: tuple[str, ...]) -> list[TensorView]:
    return ctx.tensors(collection=ACTIVATION_COLLECTIONS, kind=kinds)


@rule(
    "DBG201",
    "dying-relu",
    severity="warning",
    category="activations",
    requires=_unit_tensors(RELU_KINDS),
    per_tensor=True,
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
    record and per unit, the unit's *active share*: the fraction of its values ``> 0`` over
    the batch and, for convolutions, the spatial positions (``TensorView.units()``, measure
    ``active_frac``; see docs/trace-format.md). That is the population: one recorded step,
    all samples of its batch, every position.

    * A unit is **dead** at record ``r`` if its active share, averaged over the ``min_steps``
      consecutive records of the tensor (and mode) ending at ``r``, satisfies
      ``share × 100 < threshold_inactivity``. With the defaults and a batch of 64, at most
      one of the unit's 192 values in the window may be positive. Pooling ``min_steps``
      records keeps tiny batches honest: with a batch of one, about half the units of a
      healthy layer are off on any sample, but hardly any stays off for several records.
    * The layer **violates** at that window if the share of dead units
      ``× 100 > threshold_layer``; every record of a violating window belongs to the episode.
    * Records whose activations hold NaN or ±inf are not judged (their values say nothing
      about ReLU activity; the non-finite rules report them) and break windows.

    A healthy ReLU layer has about half its *values* at zero; its units are still alive
    because each fires for some samples. Findings are one per tensor, mode and episode, with
    the largest dead share; the severity rises to error when every unit of the layer is dead,
    since then no gradient at all reaches the layers below. Applies to tensors of collection
    ``activations`` or ``preactivations`` whose kind is ReLU-like (relu, relu6, leaky_relu,
    gelu, elu, selu, silu, mish: their output is positive exactly when their input is). For
    the smooth and leaky variants a never-positive unit still passes a small gradient, but
    it has collapsed to a nearly linear or constant response, which is reported the same way.

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
        threshold_inactivity: Active share (in %) below which a unit counts as dead.
        threshold_layer: Share of dead units (in %) above which the layer is reported.
        min_steps: Consecutive records a unit's active share is pooled over (1: judge each
            record on its own).
    """
    yield from _unit_findings(
        _views(ctx, RELU_KINDS),
        threshold_inactivity,
        threshold_layer,
        min_steps,
        key="dead",
        describe=lambda share, units: (
            f"{share:.0f} % of {units} units dead (active on < {threshold_inactivity:g} % of their "
            f"values; > {threshold_layer:g} %)"
        ),
    )


@rule(
    "DBG202",
    "tanh-saturation",
    severity="warning",
    category="activations",
    requires=_unit_tensors(("tanh",)),
    per_tensor=True,
)
def tanh_saturation(
    ctx: RuleContext,
    *,
    threshold_inactivity: float = 1.0,
    threshold_layer: float = 50.0,
    min_steps: int = 3,
) -> Iterator[Finding]:
    """Most tanh units of a layer are saturated at ±1, where their gradient is about zero.

    SageMaker Debugger's SaturatedActivation for tanh. The trace stores, per record and per
    unit, the share of the unit's values strictly inside the non-saturated band
    (``TensorView.units()``, measure ``unsaturated_frac``), over the batch and, for
    convolutions, the spatial positions. The band is fixed by the trace format
    (docs/trace-format.md), not by this rule: SageMaker Debugger's ``(-9.4999, 9.4999)``, where
    the derivative of tanh falls below about 1e-7, on pre-activations (collection
    ``preactivations``), mapped through tanh for outputs (collection ``activations``). On
    float32 outputs rounding near ±1 blurs the edge: the effective input bound is about 9 to
    10 depending on the library that computed the tanh.

    * A unit is **saturated** at record ``r`` if its unsaturated share, averaged over the
      ``min_steps`` consecutive records of the tensor (and mode) ending at ``r``, satisfies
      ``share × 100 < threshold_inactivity``.
    * The layer **violates** at that window if the share of saturated units
      ``× 100 > threshold_layer``; every record of a violating window belongs to the episode.
    * Records holding NaN or ±inf are not judged (the non-finite rules report them) and break
      windows.

    SageMaker Debugger picks the bounds from the tensor name; here the tensor's ``kind``
    (``tanh``) decides. Findings are one per tensor, mode and episode, with the largest
    saturated share; the severity rises to error when every unit of the layer is saturated,
    since then almost no gradient passes the layer.

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
        min_steps: Consecutive records a unit's unsaturated share is pooled over (1: judge
            each record on its own).
    """
    yield from _unit_findings(
        _views(ctx, ("tanh",)),
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
)
def sigmoid_saturation(
    ctx: RuleContext,
    *,
    threshold_inactivity: float = 1.0,
    threshold_layer: float = 50.0,
    min_steps: int = 3,
) -> Iterator[Finding]:
    """Most sigmoid units of a layer are saturated at 0 or 1, where their gradient is about zero.

    SageMaker Debugger's SaturatedActivation for sigmoid. The trace stores, per record and
    per unit, the share of the unit's values strictly inside the non-saturated band
    (``TensorView.units()``, measure ``unsaturated_frac``), over the batch and, for
    convolutions, the spatial positions. The band is fixed by the trace format
    (docs/trace-format.md), not by this rule: SageMaker Debugger's ``(-23, 16.99999)``, where
    the derivative of the sigmoid falls below about 1e-7, on pre-activations (collection
    ``preactivations``), mapped through the sigmoid for outputs (collection ``activations``).
    On float32 outputs rounding near 1 lowers the effective upper input bound to about 16.6.

    * A unit is **saturated** at record ``r`` if its unsaturated share, averaged over the
      ``min_steps`` consecutive records of the tensor (and mode) ending at ``r``, satisfies
      ``share × 100 < threshold_inactivity``.
    * The layer **violates** at that window if the share of saturated units
      ``× 100 > threshold_layer``; every record of a violating window belongs to the episode.
    * Records holding NaN or ±inf are not judged (the non-finite rules report them) and break
      windows.

    SageMaker Debugger picks the bounds from the tensor name; here the tensor's ``kind``
    (``sigmoid``) decides. Output layers are not examined (collections ``predictions`` and
    ``outputs``): a confident classifier is supposed to push its sigmoid towards 0 or 1.
    Findings are one per tensor, mode and episode, with the largest saturated share; the
    severity rises to error when every unit of the layer is saturated, since then almost no
    gradient passes the layer.

    Why it matters: a saturated sigmoid passes almost no gradient, so the weights feeding it
    stop learning; gates of LSTMs and GRUs stuck open or closed no longer adapt.

    Typical causes: large initial weights, inputs that are not normalised, large biases (for
    example gate biases), a learning rate that grows the pre-activations.

    Fix: Xavier/Glorot initialisation, normalise inputs, add normalisation before the sigmoid,
    lower the learning rate; for hidden layers prefer a ReLU-family activation.

    Args:
        threshold_inactivity: Unsaturated share (in %) below which a unit counts as saturated.
        threshold_layer: Share of saturated units (in %) above which the layer is reported.
        min_steps: Consecutive records a unit's unsaturated share is pooled over (1: judge
            each record on its own).
    """
    yield from _unit_findings(
        _views(ctx, ("sigmoid",)),
        threshold_inactivity,
        threshold_layer,
        min_steps,
        key="saturated",
        describe=_saturation_message("sigmoid", threshold_inactivity, threshold_layer),
    )


def _saturation_message(
    kind: str, threshold_inactivity: float, threshold_layer: float
) -> Callable[[float, int], str]:
    def describe(share: float, units: int) -> str:
        return (
            f"{share:.0f} % of {units} {kind} units saturated (inside the non-saturated band for "
            f"< {threshold_inactivity:g} % of their values; > {threshold_layer:g} %)"
        )

    return describe


def _unit_findings(
    views: list[TensorView],
    threshold_inactivity: float,
    threshold_layer: float,
    min_steps: int,
    *,
    key: str,
    describe: Callable[[float, int], str],
) -> Iterator[Finding]:
    """Findings of "too many units with a too small per-unit measure", per tensor and mode."""
    window = max(1, min_steps)
    for view in views:
        units = view.units()
        if units is None or units.shape[1] == 0:
            continue
        count = int(units.shape[1])
        measures = np.array(units, dtype=np.float32)
        nonfinite = (view.stat("nan_count") + view.stat("inf_count")) > 0
        measures[nonfinite] = np.nan
        for code in view.mode_codes:
            rows = view.positions(code)
            share = _failing_share(measures[rows], threshold_inactivity, window)
            violating = share > threshold_layer
            for finding in episode_findings(
                tensor=view.tag,
                steps=view.steps[rows],
                values=share,
                violating=violating,
                threshold=threshold_layer,
                key=key,
                modes=view.modes[rows],
                message=_per_episode(describe, count),
                extra={"units": count, "min_steps": window},
            ):
                whole_layer = finding.value is not None and finding.value >= 100.0
                yield replace(finding, severity=Severity.error) if whole_layer else finding


def _per_episode(
    describe: Callable[[float, int], str], units: int
) -> Callable[[Episode, float], str]:
    return lambda episode, share: describe(share, units)


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
