"""The views of one trace in the HTML report, each read through the trace layer by meaning.

A view asks for its data by role (gradients, weights, activations, labels, trees...) through
:class:`~dbgcli.rules._context.RuleContext`, as the rules do, never by HDF5 path; statistics
come from the reader (stored, or derived from full tensors), and full tensors are read only
where a view needs them (histograms, the low-dimensional view, class counts), a few records
each. A view whose data the trace lacks returns a :class:`Missing` with the reason.

Quantities that a rule judges are computed with the rule's own definition and default
parameters (the dead and saturated shares, class ids of labels and predictions), so a plot
shows what the finding marked on it measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dbgcli.errors import DbgError
from dbgcli.findings import Finding
from dbgcli.lr import DISCLAIMER
from dbgcli.report.html.charts import (
    PALETTE,
    Chart,
    Figure,
    Target,
    heatmap,
    line,
    mark,
    pick,
    row_axis,
    wants_log,
)
from dbgcli.report.html.embedding import TSNE_MIN_SAMPLES, pca, tsne
from dbgcli.report.html.sampling import Columns, thin
from dbgcli.report.model import TraceReport
from dbgcli.report.text import counted
from dbgcli.rules._context import RuleContext, TensorView
from dbgcli.trace import schema
from dbgcli.trace.reader import Trace, open_trace

LINE_POINTS = 600  # points of one line at most
COLUMNS = 150  # columns of a heatmap at most
BAND_COLUMNS = 50  # points of a distribution band at most
HEAT_ROWS = 48  # tensors in one heatmap at most
PANELS = 9  # tensors in one figure of small multiples at most
HISTOGRAM_RECORDS = 3  # full tensors per histogram panel: first, middle and last stored
HISTOGRAM_BINS = 30
HISTOGRAM_MAX_ELEMENTS = 1 << 22  # larger tensors get no histogram (reading them is slow)
EMBEDDING_LAYERS = 2  # the layers closest to the output
EMBEDDING_RECORDS = 3
# Samples per panel at most. t-SNE's cost grows with their square (1,000 iterations over n x n
# matrices; bench/bench_html.py times a panel): 300 take 0.27 s per panel on the 2-core test
# machine, 1.6 s for the six panels of two layers at three steps, most of a report's 2 s; 150
# take about a third of that. The PCA shows the same samples, so that the two panels of a step
# can be compared point for point.
EMBEDDING_POINTS = 150
CONFUSION_CLASSES = 30
BALANCE_CLASSES = 60
IMPORTANCE_FEATURES = 15
_MODES: tuple[Literal["train", "eval"], ...] = ("train", "eval")


@dataclass(frozen=True)
class Missing:
    """A view the trace has no data for, and why."""

    view: str
    reason: str


@dataclass
class Source:
    """One trace as the views read it: its report, the open trace, and its findings."""

    report: TraceReport
    trace: Trace
    ctx: RuleContext
    findings: list[Finding]

    def flagged(self) -> set[str]:
        """Tags some finding names."""
        return {f.tensor for f in self.findings if f.tensor}


View = Callable[[Source], "list[Chart | Missing]"]


def trace_views(report: TraceReport) -> list[Chart | Missing]:
    """Every view of one analysed trace, in page order (an unreadable trace has none)."""
    if report.error is not None:
        return []
    try:
        trace = open_trace(report.path)
    except DbgError as error:
        return [Missing("plots", f"the trace cannot be opened again: {error}")]
    with trace:
        source = Source(report, trace, RuleContext(trace), report.findings)
        shown: list[Chart | Missing] = []
        for view in VIEWS:
            try:
                shown.extend(view(source))
            except DbgError as error:
                shown.append(Missing(view.__name__.strip("_").replace("_", " "), str(error)))
        return shown


# -- loss, accuracy and learning rate ----------------------------------------------------------


def _curves(source: Source) -> list[Chart | Missing]:
    ctx = source.ctx
    losses = [c for c in source.report.curves if c.name.endswith("loss")]
    rates = [c for c in source.report.curves if not c.name.endswith("loss")]
    accuracies = [(mode, series) for mode in _MODES if (series := ctx.accuracy(mode)) is not None]
    panels = [
        name
        for name, has in (("loss", losses), ("accuracy", accuracies), ("learning rate", rates))
        if has
    ]
    if not panels:
        return [Missing("loss and learning rate", "no loss, accuracy or learning-rate series")]
    figure = Figure(len(panels), 1, shared_xaxes=True, titles=panels)
    targets: dict[str, Target] = {}
    row = {name: index + 1 for index, name in enumerate(panels)}
    for index, curve in enumerate(losses):
        steps, values = np.asarray(curve.steps), np.asarray(curve.values)
        keep = thin(values, LINE_POINTS)
        figure.add_trace(
            line(curve.name, steps[keep], values[keep], colour=PALETTE[index]),
            row=row["loss"],
            col=1,
        )
    if losses and wants_log(
        np.concatenate([np.asarray(c.values, dtype=np.float64) for c in losses])
    ):
        figure.update_yaxes(type="log", row=row["loss"], col=1)
    for mode in _MODES:
        tag = ctx.loss_tag(mode)
        if tag is not None and losses:
            targets[tag] = Target(row["loss"])
    for index, (mode, series) in enumerate(accuracies):
        keep = thin(series.values, LINE_POINTS)
        figure.add_trace(
            line(
                f"{mode} accuracy",
                series.steps[keep],
                series.values[keep],
                colour=PALETTE[index],
                dash="dot",
            ),
            row=row["accuracy"],
            col=1,
        )
        tag = ctx.accuracy_tag(mode)
        if tag is not None:
            targets[tag] = Target(row["accuracy"])
    notes = []
    for curve in rates:
        simulated = bool(curve.note)
        steps, values = np.asarray(curve.steps), np.asarray(curve.values)
        keep = thin(values, LINE_POINTS)
        figure.add_trace(
            line(
                curve.name,
                steps[keep],
                values[keep],
                colour="#2ca02c" if simulated else "#333333",
                dash="dash" if simulated else None,
                shape="hv",
            ),
            row=row["learning rate"],
            col=1,
        )
        if curve.note:
            notes.append(f"{curve.name}: {curve.note}.")
    if rates:
        lr_values = np.concatenate([np.asarray(c.values, dtype=np.float64) for c in rates])
        if wants_log(lr_values, always=True):
            figure.update_yaxes(type="log", row=row["learning rate"], col=1)
        tag = ctx.lr_tag()
        if tag is not None:
            targets[tag] = Target(row["learning rate"])
        if notes:
            notes.append(DISCLAIMER)
    figure.update_xaxes(title={"text": "step"}, row=len(panels), col=1)
    marked = mark(figure, source.findings, targets, run_wide=Target(1))
    marks = "Shaded spans: steps of findings (hover a ⚑ label for the message). " if marked else ""
    caption = marks + " ".join(notes)
    return [Chart("curves", "Loss and learning rate", figure, caption.strip(), marked)]


# -- gradient flow and update ratios -----------------------------------------------------------


def _gradient_flow(source: Source) -> list[Chart | Missing]:
    views = source.ctx.tensors(collection="gradients")
    if not views:
        return [Missing("gradient flow", "no gradient tensors recorded")]
    rows = [(view, view.stat("l2")) for view in views]
    chart = _layer_heatmap(
        source,
        rows,
        key="gradient-flow",
        title="Gradient flow: L2 norm of each layer's gradient over steps",
        label="log10 ‖g‖",
    )
    return [chart]


def _update_ratio(source: Source) -> list[Chart | Missing]:
    rows = []
    for view in source.ctx.tensors(collection=("weights", "biases")):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = view.stat("update_l2") / view.stat("l2")
        if np.isfinite(ratio).any():
            rows.append((view, ratio))
    if not rows:
        return [
            Missing(
                "update/weight ratio",
                "no weight updates recorded (weights or biases at consecutive steps)",
            )
        ]
    chart = _layer_heatmap(
        source,
        rows,
        key="update-ratio",
        title="Update / weight ratio of each parameter over steps",
        label="log10 ‖Δw‖/‖w‖",
    )
    chart.caption += " Around -3 (an update of a thousandth of the weights) is typical for SGD."
    return [chart]


def _layer_heatmap(
    source: Source,
    rows: Sequence[tuple[TensorView, np.ndarray]],
    *,
    key: str,
    title: str,
    label: str,
) -> Chart:
    """Tensors by steps, coloured by the log10 of a positive quantity.

    Zero is drawn one decade below the smallest positive value of the figure (a log scale has
    no zero); values that are not finite leave a gap.
    """
    by_tag = {view.tag: (view, values) for view, values in rows}
    tags = pick(list(by_tag), source.flagged(), HEAT_ROWS)
    columns = Columns.of(np.concatenate([by_tag[t][0].steps for t in tags]), COLUMNS)
    grid = np.full((len(tags), len(columns)), np.nan)
    zeros = np.zeros_like(grid, dtype=bool)
    for i, tag in enumerate(tags):
        view, values = by_tag[tag]
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log10(np.abs(values))
        grid[i] = columns.reduce(view.steps, np.where(np.isneginf(logs), np.nan, logs), "max")
        is_zero = columns.reduce(view.steps, (values == 0).astype(np.float64), "max")
        zeros[i] = (is_zero == 1) & ~np.isfinite(grid[i])
    floor = math.floor(np.nanmin(grid)) - 1 if np.isfinite(grid).any() else -12
    grid[zeros] = floor
    figure = Figure()
    figure.add_trace(heatmap(tags, columns.starts, grid, label))
    row_axis(figure, tags)
    figure.update_xaxes(title={"text": "step"})
    figure.update_layout(height=max(220, 90 + 18 * len(tags)), legend={"visible": False})
    targets = {tag: Target(heat_row=i) for i, tag in enumerate(tags)}
    marked = mark(figure, source.findings, targets)
    caption = f"A value of 0 is drawn at {floor}; gaps are values that are not finite."
    if marked:
        caption = "Framed rows: findings (hover a ⚑ label). " + caption
    if len(tags) < len(by_tag):
        caption += f" {len(tags)} of {len(by_tag)} tensors shown (those with findings first)."
    return Chart(key, title, figure, caption, marked)


# -- distributions -----------------------------------------------------------------------------

_DISTRIBUTIONS = (
    ("parameters", ("weights", "biases"), "weight and bias"),
    ("gradients", ("gradients",), "gradient"),
    ("inputs", ("inputs",), "input"),
)


def _distributions(source: Source) -> list[Chart | Missing]:
    shown: list[Chart | Missing] = []
    histograms: list[Chart] = []
    for key, roles, noun in _DISTRIBUTIONS:
        views = [v for v in source.ctx.tensors(collection=roles) if not source.ctx.categorical(v)]
        if not views:
            shown.append(Missing(f"{noun} distributions", f"no {noun} tensors recorded"))
            continue
        by_tag = {view.tag: view for view in views}
        tags = pick(list(by_tag), source.flagged(), PANELS)
        shown.append(_bands(source, key, noun, [by_tag[t] for t in tags], len(views)))
        chart = _histograms(source, key, noun, [by_tag[t] for t in tags])
        if chart is not None:
            histograms.append(chart)
    if not histograms:
        shown.append(Missing("value histograms", "no full tensors of weights, gradients or inputs"))
    return shown + histograms


def _grid(count: int) -> tuple[int, int]:
    cols = min(3, count)
    return math.ceil(count / cols), cols


def _bands(source: Source, key: str, noun: str, views: list[TensorView], total: int) -> Chart:
    rows, cols = _grid(len(views))
    figure = Figure(rows, cols, titles=[_title(v.tag) for v in views])
    targets = {}
    for index, view in enumerate(views):
        row, col = divmod(index, cols)
        where = {"row": row + 1, "col": col + 1}
        targets[view.tag] = Target(row + 1, col + 1)
        columns = Columns.of(view.steps, BAND_COLUMNS)
        low = columns.reduce(view.steps, view.stat("min"), "min")
        high = columns.reduce(view.steps, view.stat("max"), "max")
        mean = columns.reduce(view.steps, view.stat("mean"), "mean")
        spread = columns.reduce(view.steps, view.stat("std"), "mean")
        first = index == 0
        for name, upper, lower, colour in (
            ("min to max", high, low, "rgba(31,119,180,0.15)"),
            ("mean ± std", mean + spread, mean - spread, "rgba(31,119,180,0.35)"),
        ):
            # A band is its upper edge, then its lower edge filled up to it; hovering the
            # mean line tells the values, so the edges take no hover.
            edge = line(
                name, columns.starts, upper, colour="rgba(0,0,0,0)", group=name, legend=False
            )
            band = line(
                name, columns.starts, lower, colour="rgba(0,0,0,0)", group=name, legend=first
            )
            band.update(fill="tonexty", fillcolor=colour)
            for trace in (edge, band):
                del trace["hovertemplate"]
                trace["hoverinfo"] = "skip"
                figure.add_trace(trace, **where)
        figure.add_trace(
            line("mean", columns.starts, mean, colour=PALETTE[0], group="mean", legend=first),
            **where,
        )
    marked = mark(figure, source.findings, targets)
    caption = (
        f"Per recorded step, from the statistics of each {noun} tensor: the range of its values "
        "(min to max), mean ± standard deviation, and the mean."
    )
    if len(views) < total:
        caption += f" {len(views)} of {total} tensors shown (those with findings first)."
    return Chart(
        f"distributions-{key}",
        f"{noun.capitalize()} distributions over steps",
        figure,
        caption,
        marked,
    )


def _histograms(source: Source, key: str, noun: str, views: list[TensorView]) -> Chart | None:
    """Histograms of the first, middle and last stored full tensor of each tensor."""
    drawn = []
    for view in views:
        elements = math.prod(view.info.shape or ())
        stored = source.trace.raw_records(view.tag)
        stored = stored[np.isin(stored, view.records)]
        if not len(stored) or elements > HISTOGRAM_MAX_ELEMENTS:
            continue
        chosen = stored[
            np.unique(np.linspace(0, len(stored) - 1, HISTOGRAM_RECORDS).round().astype(int))
        ]
        drawn.append(
            (view, [(step, v.ravel()) for step, v in _read(source.trace, view.tag, chosen)])
        )
    drawn = [(view, records) for view, records in drawn if records]
    if not drawn:
        return None
    rows, cols = _grid(len(drawn))
    figure = Figure(rows, cols, titles=[_title(view.tag) for view, _ in drawn])
    shades = ("#9ecae1", "#4292c6", "#08306b")
    for index, (_, records) in enumerate(drawn):
        row, col = divmod(index, cols)
        finite = [values[np.isfinite(values)] for _, values in records]
        present = [v for v in finite if v.size]
        if not present:
            continue
        low = min(float(v.min()) for v in present)
        high = max(float(v.max()) for v in present)
        if high == low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        for position, ((step, _), values) in enumerate(zip(records, finite)):
            counts = np.histogram(values, bins=edges)[0]
            share = counts / max(1, values.size)
            colour = shades[-len(records) + position] if len(records) <= len(shades) else None
            trace = line(f"step {step}", centres, share, colour=colour, shape="hvh", legend=False)
            del trace["x"]  # evenly spaced: the first centre and the bin width say it all
            trace.update(x0=float(centres[0]), dx=float(edges[1] - edges[0]))
            trace["hovertemplate"] = "%{x:.3g}: %{y:.1%}<extra>step " + str(step) + "</extra>"
            figure.add_trace(trace, row=row + 1, col=col + 1)
    caption = (
        "Share of the values in each bin, for the first, middle and last recorded full tensor "
        "(darker is later; hover for the step)."
    )
    return Chart(
        f"histograms-{key}", f"{noun.capitalize()} histograms from full tensors", figure, caption
    )


def _read(trace: Trace, tag: str, records: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(step, values as float64)`` of the full tensors of ``records`` (a few)."""
    steps, _ = trace.index(tag)
    mask = np.zeros(len(steps), dtype=bool)
    mask[records] = True
    read = []
    for chunk in trace.iter_raw(tag, mask=mask):
        for record, values in zip(chunk.records, chunk.values):
            read.append((int(steps[record]), np.asarray(values, dtype=np.float64)))
    return read


def _title(tag: str) -> str:
    from dbgcli.report.text import shorten_middle

    return shorten_middle(tag, 36)


# -- activations -------------------------------------------------------------------------------


def _activation_health(source: Source) -> list[Chart | Missing]:
    from dbgcli.rules._registry import REGISTRY
    from dbgcli.rules.activations import (
        MIN_UNITS,
        failing_unit_shares,
        model_output_tags,
        positions_per_sample,
    )

    views = [
        v
        for v in source.ctx.tensors(collection=("activations", "preactivations"))
        if v.info.unit_measure is not None
    ]
    outputs = model_output_tags(source.ctx)
    measured = []
    for view in views:
        units = view.units()
        if units is None or not units.shape[1]:
            continue
        active = view.info.unit_measure == schema.UNIT_MEASURE_ACTIVE
        if not active and (units.shape[1] < MIN_UNITS or view.tag in outputs):
            continue
        rule = "DBG201" if active else ("DBG202" if view.info.kind == "tanh" else "DBG203")
        measured.append((view, units, active, REGISTRY.get(rule).defaults()))
    if not measured:
        return [
            Missing(
                "activation health",
                "no per-unit activation measures (activations of a known kind: ReLU, tanh, "
                "sigmoid...)",
            )
        ]
    panels = [
        name
        for name, wanted in (("dead units", True), ("saturated units", False))
        if any(active == wanted for _, _, active, _ in measured)
    ]
    figure = Figure(len(panels), 1, shared_xaxes=True, titles=[f"share of {p} (%)" for p in panels])
    targets = {}
    thresholds: dict[int, float] = {}
    for index, (view, units, active, params) in enumerate(measured):
        row = panels.index("dead units" if active else "saturated units") + 1
        targets[view.tag] = Target(row)
        for code, rows, share in failing_unit_shares(
            view,
            units,
            params["threshold_inactivity"],
            params["min_steps"],
            positions_per_sample(view) if active else 1,
        ):
            keep = thin(share, LINE_POINTS)
            mode = schema.MODES[code]
            name = view.tag if mode == "train" else f"{view.tag} ({mode})"
            figure.add_trace(
                line(
                    name, view.steps[rows][keep], share[keep], colour=PALETTE[index % len(PALETTE)]
                ),
                row=row,
                col=1,
            )
        thresholds[row] = params["threshold_layer"]
    for row, threshold in thresholds.items():
        figure.add_hline(threshold, row)
        figure.update_yaxes(range=[-2, 102], row=row, col=1)
    figure.update_xaxes(title={"text": "step"}, row=len(panels), col=1)
    marked = mark(figure, source.findings, targets)
    caption = (
        "Per step, the share of a layer's units that are dead (a ReLU-like unit active on less "
        "than 1 % of its values, or a convolution's channel in less than 1 % of its samples at "
        "most) or saturated (a tanh or sigmoid unit whose derivative is below "
        "0.01 for most of its values), pooled over a few records as the activation rules do; "
        "the dotted line is the rules' layer threshold. Saturating output layers (fewer than "
        f"{MIN_UNITS} units, or the model's output) are left out, as the rules leave them."
    )
    return [Chart("activation-health", "Activation health per layer", figure, caption, marked)]


def _embedding(source: Source) -> list[Chart | Missing]:
    from dbgcli.rules.data import ClassIds

    ctx = source.ctx
    candidates = [
        v
        for v in ctx.tensors(collection="activations")
        if v.info.raw_records and len(v.info.shape or ()) >= 2
    ] or [
        v
        for v in ctx.tensors(collection="preactivations")
        if v.info.raw_records and len(v.info.shape or ()) >= 2
    ]
    if not candidates:
        return [Missing("low-dimensional view", "no full activation tensors of a batch recorded")]
    layers = candidates[-EMBEDDING_LAYERS:]
    labels = next((v for v in ctx.tensors(collection="labels") if v.info.raw_records), None)
    label_ids = labels.derive(ClassIds()).ids if labels is not None else {}
    label_steps = labels.steps if labels is not None else np.empty(0, np.int64)
    label_records = labels.records if labels is not None else np.empty(0, np.int64)
    panels = []  # (layer, position in the layer, tag, step, samples, labels)
    for layer, view in enumerate(layers):
        stored = source.trace.raw_records(view.tag)
        stored = stored[np.isin(stored, view.records)]
        chosen = stored[
            np.unique(np.linspace(0, len(stored) - 1, EMBEDDING_RECORDS).round().astype(int))
        ]
        for position, (step, values) in enumerate(_read_batches(source.trace, view, chosen)):
            ids = None
            for record in label_records[label_steps == step]:
                candidate = label_ids.get(int(record))
                if candidate is not None and len(candidate) == len(values):
                    ids = candidate
                    break
            panels.append((layer, position, view.tag, step, values, ids))
    if not panels:
        return [Missing("low-dimensional view", "no full activation tensors of a batch recorded")]
    # Per layer a row of PCA panels, its steps side by side, and below it the t-SNE panels of
    # the same samples (no such row for a layer where no step has one).
    projected = []  # (layer, position, title, PCA points, shares, t-SNE or None, samples, labels)
    for layer, position, tag, step, values, ids in panels:
        points, explained = pca(values)
        head = f"{_title(tag)} · step {step}"
        embedded = tsne(values, points)
        projected.append((layer, position, head, points, explained, embedded, len(values), ids))
    with_tsne = {layer for layer, *_, embedded, _, _ in projected if embedded is not None}
    first_row = np.cumsum([0] + [1 + (layer in with_tsne) for layer in range(len(layers))])
    rows, cols = int(first_row[-1]), max(position for _, position, *_ in projected) + 1
    titles = [""] * (rows * cols)
    drawn = []  # (row, col, points, labels), 0-based
    blank = []  # t-SNE panels left empty, 0-based
    for layer, position, head, points, explained, embedded, count, ids in projected:
        row = int(first_row[layer])
        share = " ".join(f"{100 * e:.0f} %" for e in explained) if explained.size else "no variance"
        titles[row * cols + position] = f"{head} · PCA {share}"
        drawn.append((row, position, points, ids))
        if layer not in with_tsne:
            continue
        if embedded is None:
            why = f"{count} samples" if count < TSNE_MIN_SAMPLES else "no variance"
            titles[(row + 1) * cols + position] = f"{head} · no t-SNE ({why})"
            blank.append((row + 1, position))
        else:
            tsne_points, perplexity = embedded
            titles[(row + 1) * cols + position] = f"{head} · t-SNE perplexity {perplexity:.3g}"
            drawn.append((row + 1, position, tsne_points, ids))
    figure = Figure(rows, cols, titles=titles)
    seen: set[int] = set()
    for row, col, points, ids in drawn:
        groups = (
            [(-1, np.arange(len(points)))]
            if ids is None
            else [(int(c), np.flatnonzero(ids == c)) for c in np.unique(ids)]
        )
        for cls, members in groups:
            name = (
                "samples"
                if cls < 0 and ids is None
                else (f"class {cls}" if cls >= 0 else "no label")
            )
            figure.add_trace(
                {
                    "type": "scatter",  # at most EMBEDDING_POINTS points: SVG draws them fine
                    "mode": "markers",
                    "name": name,
                    "legendgroup": name,
                    "showlegend": cls not in seen,
                    "x": points[members, 0],
                    "y": points[members, 1],
                    "marker": {
                        "size": 5,
                        "color": PALETTE[cls % len(PALETTE)] if cls >= 0 else "#7f7f7f",
                        "opacity": 0.75,
                    },
                    "hovertemplate": name + "<extra></extra>",
                },
                row=row + 1,
                col=col + 1,
            )
            seen.add(cls)
    for layer in with_tsne:  # t-SNE coordinates have no unit or origin: nothing to read them by
        for col in range(cols):
            unread = {"row": int(first_row[layer]) + 2, "col": col + 1}
            figure.update_xaxes(**unread, showticklabels=False, zeroline=False)
            figure.update_yaxes(**unread, showticklabels=False, zeroline=False)
    for row, col in blank:
        figure.update_xaxes(row=row + 1, col=col + 1, visible=False)
        figure.update_yaxes(row=row + 1, col=col + 1, visible=False)
    labelled = any(ids is not None for *_, ids in projected)
    lacking = {
        f"are fewer than {TSNE_MIN_SAMPLES}" if count < TSNE_MIN_SAMPLES else "do not vary"
        for *_, embedded, count, _ in projected
        if embedded is None
    }
    title, caption = _embedding_text(labelled, bool(with_tsne), " or ".join(sorted(lacking)))
    return [Chart("embedding", title, figure, caption)]


def _embedding_text(labelled: bool, with_tsne: bool, lacking: str) -> tuple[str, str]:
    """Title and caption of the low-dimensional view; ``lacking`` says why panels have no
    t-SNE ("do not vary", "are fewer than 5"), empty when all have one."""
    coloured = "coloured by its label" if labelled else "no labels recorded at these steps"
    caption = (
        f"Each point is one sample of the batch, {coloured}; layers closest to the output, at "
        "the first, middle and last step whose full tensor is stored. PCA: the samples on the "
        "first two principal components of the layer's activations (the share of variance they "
        "explain is in the title)."
    )
    if not with_tsne:
        caption += f" No t-SNE: at every step shown the samples {lacking}."
        return "Activations in two dimensions (PCA)", caption
    caption += (
        " t-SNE (van der Maaten and Hinton, 2008; computed by dbg itself, exact, from the PCA): "
        "samples that are near each other in the activations stay near each other in the "
        "plane, so the groups the layer tells apart show as clusters. Only neighbourhoods mean "
        "something: the distances between clusters, their sizes and the axes do not, and the "
        "perplexity in the title is about how many neighbours each sample keeps."
    )
    if lacking:
        caption += (
            f" Where the samples {lacking} there is no t-SNE (nor a t-SNE row for a layer "
            "where that holds at every step)."
        )
    return "Activations in two dimensions (PCA and t-SNE)", caption


def _read_batches(
    trace: Trace, view: TensorView, records: np.ndarray
) -> list[tuple[int, np.ndarray]]:
    """``(step, samples x features)`` of a few full activation tensors: spatial or sequence
    positions are averaged per unit, and at most EMBEDDING_POINTS samples are kept."""
    unit_axis = view.info.unit_axis
    batches = []
    for step, values in _read(trace, view.tag, records):
        if values.ndim > 2:
            axis = (
                unit_axis
                if unit_axis is not None and 0 < unit_axis < values.ndim
                else values.ndim - 1
            )
            values = np.moveaxis(values, axis, -1)
            values = values.reshape(values.shape[0], -1, values.shape[-1]).mean(axis=1)
        batches.append((step, values[:EMBEDDING_POINTS]))
    return batches


# -- data --------------------------------------------------------------------------------------


def _class_balance(source: Source) -> list[Chart | Missing]:
    from dbgcli.rules.data import ClassIds

    labels = [v for v in source.ctx.tensors(collection="labels") if v.info.raw_records]
    if not labels:
        return [Missing("class balance", "no full tensors of labels recorded")]
    view = labels[0]
    ids = view.derive(ClassIds()).ids
    by_mode: dict[str, list[np.ndarray]] = {}
    for record, mode in zip(view.records, view.modes):
        found = ids.get(int(record))
        if found is not None:
            by_mode.setdefault(schema.MODES[int(mode)], []).append(found[found >= 0])
    counts = {mode: np.bincount(np.concatenate(parts)) for mode, parts in by_mode.items()}
    counts = {mode: tally for mode, tally in counts.items() if tally.size}
    if not counts:
        return [Missing("class balance", "no labels with a class in the stored full tensors")]
    classes = max(len(c) for c in counts.values())
    if classes > BALANCE_CLASSES:
        return [Missing("class balance", f"{classes} classes: too many to draw")]
    figure = Figure()
    for index, (mode, tally) in enumerate(counts.items()):
        figure.add_trace(
            {
                "type": "bar",
                "name": mode,
                "x": [str(c) for c in range(len(tally))],
                "y": tally.astype(np.int32),
                "marker": {"color": PALETTE[index]},
                "hovertemplate": "class %{x}: %{y} labels<extra>" + mode + "</extra>",
            }
        )
    figure.update_xaxes(title={"text": "class"}, type="category")
    figure.update_yaxes(title={"text": "labels"})
    marked = mark(figure, source.findings, {view.tag: Target(steps=False)})
    stored = counted(int(source.trace.raw_records(view.tag).size), "stored full tensor")
    caption = f"Labels per class in the {stored} of {view.tag}."
    return [Chart("class-balance", "Class balance", figure, caption, marked)]


def _confusion(source: Source) -> list[Chart | Missing]:
    from dbgcli.rules.data import _labelled, _streams

    pairs = [
        (labels, predictions)
        for labels, predictions in _labelled(source.ctx)
        if predictions is not None
    ]
    if not pairs:
        return [Missing("confusion matrix", "no full tensors of labels with predictions recorded")]
    labels, predictions = pairs[0]
    assert predictions is not None
    streams = [s for s in _streams(labels, predictions) if s.paired]
    if not streams:
        return [Missing("confusion matrix", "no labels and predictions recorded at the same steps")]
    stream = min(streams, key=lambda s: ("eval", "train", "predict").index(s.mode))
    truth = np.concatenate([r.truth for r in stream.paired if r.truth is not None])
    predicted = np.concatenate([r.predicted for r in stream.paired if r.predicted is not None])
    classes = max(
        stream.width or 0, int(truth.max(initial=-1)) + 1, int(predicted.max(initial=-1)) + 1
    )
    if classes > CONFUSION_CLASSES:
        return [Missing("confusion matrix", f"{classes} classes: too many to draw")]
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = matrix / matrix.sum(axis=1, keepdims=True)
    names = [str(c) for c in range(classes)]
    figure = Figure()
    figure.add_trace(
        {
            "type": "heatmap",
            "x": names,
            "y": names,
            "z": np.nan_to_num(recall).astype(np.float32),
            "text": matrix.astype(str),
            "texttemplate": "%{text}",
            "colorscale": "Blues",
            "zmin": 0,
            "zmax": 1,
            "colorbar": {"title": {"text": "share of the class"}, "thickness": 12},
            "hovertemplate": "label %{y}, predicted %{x}: %{text} samples (%{z:.0%})<extra></extra>",
        }
    )
    figure.update_xaxes(title={"text": "predicted class"}, type="category")
    figure.update_yaxes(title={"text": "label"}, type="category", autorange="reversed")
    figure.update_layout(height=max(280, 120 + 28 * classes))
    targets = {tag: Target(steps=False) for tag in (labels.tag, predictions.tag)}
    marked = mark(figure, source.findings, targets)
    caption = (
        f"Samples by label and predicted class over the {counted(len(stream.paired), 'step')} "
        f"where {labels.tag} and {predictions.tag} were both stored ({stream.mode} mode); colour "
        "is the share of the label's samples."
    )
    return [Chart("confusion", "Confusion matrix", figure, caption, marked)]


# -- trees -------------------------------------------------------------------------------------


def _trees(source: Source) -> list[Chart | Missing]:
    from dbgcli.rules._registry import REGISTRY
    from dbgcli.rules.trees import _depth_views, _feature_namer, importance_type_of

    shown: list[Chart | Missing] = []
    depths = _depth_views(source.ctx)
    importances = [
        v for v in source.ctx.tensors(collection="feature_importance") if v.info.raw_records
    ]
    if not depths and not importances:
        return [Missing("trees", "no tree depths or feature importance (XGBoost) recorded")]
    if depths:
        figure = Figure()
        targets = {}
        for index, view in enumerate(depths):
            for name, stat, dash in (("deepest tree", "max", None), ("mean depth", "mean", "dot")):
                values = view.stat(stat)
                keep = thin(values, LINE_POINTS)
                figure.add_trace(
                    line(
                        f"{name} ({view.tag})" if len(depths) > 1 else name,
                        view.steps[keep],
                        values[keep],
                        colour=PALETTE[index],
                        dash=dash,
                    )
                )
            targets[view.tag] = Target()
        limit = REGISTRY.get("DBG701").defaults()["depth"]
        figure.add_hline(limit, label=f"DBG701 depth {limit}")
        figure.update_xaxes(title={"text": "boosting round"})
        figure.update_yaxes(title={"text": "depth"}, rangemode="tozero")
        marked = mark(figure, source.findings, targets)
        shown.append(
            Chart(
                "tree-depth",
                "Tree depth per boosting round",
                figure,
                "Depth of the trees added each round (edges from the root to the deepest leaf).",
                marked,
            )
        )
    else:
        shown.append(Missing("tree depth", "no tree depths recorded"))
    if importances:
        figure = Figure(
            1,
            len(importances),
            titles=[importance_type_of(v.info) or v.tag for v in importances],
            horizontal_spacing=0.12,
        )
        targets = {}
        for index, view in enumerate(importances):
            last = source.trace.raw_records(view.tag)[-1]
            ((step, scores),) = _read(source.trace, view.tag, np.array([last]))
            total = scores[np.isfinite(scores)].sum()
            share = scores / total if total > 0 else np.zeros_like(scores)
            order = np.argsort(-share, kind="stable")[:IMPORTANCE_FEATURES][::-1]
            feature_name = _feature_namer(source.ctx, view)
            figure.add_trace(
                {
                    "type": "bar",
                    "orientation": "h",
                    "x": share[order].astype(np.float32),
                    "y": [feature_name(int(i)) for i in order],
                    "marker": {"color": PALETTE[index]},
                    "showlegend": False,
                    "hovertemplate": "%{y}: %{x:.1%}<extra></extra>",
                },
                row=1,
                col=index + 1,
            )
            targets[view.tag] = Target(1, index + 1, steps=False)
        figure.update_xaxes(tickformat=".0%")
        marked = mark(figure, source.findings, targets)
        caption = f"Share of each feature in the importance of the final model (round {step}); at most {IMPORTANCE_FEATURES} features per type."
        shown.append(Chart("importance", "Feature importance", figure, caption, marked))
    else:
        shown.append(Missing("feature importance", "no full feature-importance tensors recorded"))
    return shown


VIEWS: tuple[View, ...] = (
    _curves,
    _gradient_flow,
    _update_ratio,
    _activation_health,
    _distributions,
    _embedding,
    _class_balance,
    _confusion,
    _trees,
)
