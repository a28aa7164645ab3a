"""Plotly figures of the HTML report, and the marks that put findings on them.

Everything here builds plotly figure objects from numbers already read; nothing reads a trace.
Arrays go to plotly as float32 (and small integers), which plotly writes as base64 typed
arrays: a tenth of the size of JSON number lists.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dbgcli.findings import Finding, Severity

SEVERITY_COLOURS = {
    Severity.error: "#d62728",
    Severity.warning: "#ff7f0e",
    Severity.info: "#1f77b4",
}
# Qualitative colours for classes and runs (plotly's default sequence).
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
PANEL_HEIGHT = 260
_MARK_SPACING = 15  # pixels between the labels of marks that start at the same place


@dataclass
class Chart:
    """One figure of a trace's report.

    Attributes:
        key: Short name, unique within the trace (the figure's anchor).
        title: What the figure shows.
        figure: The plotly figure.
        caption: How to read it, and what was left out.
        marked: Indices (into the trace's findings) of the findings marked on it.
    """

    key: str
    title: str
    figure: Any
    caption: str = ""
    marked: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """Where a tag is drawn: its subplot (1-based row and column) and, in a heatmap, its row
    (None: the tag spans the subplot's height). ``steps``: whether the x axis is the step."""

    row: int = 1
    col: int = 1
    heat_row: int | None = None
    steps: bool = True


def subplots(rows: int = 1, cols: int = 1, **options: Any) -> Any:
    """An empty figure of ``rows`` x ``cols`` panels with the report's look."""
    from plotly.subplots import make_subplots

    options.setdefault("vertical_spacing", min(0.12, 0.3 / max(rows, 1)))
    figure = make_subplots(rows=rows, cols=cols, **options)
    # The page applies one template to every figure (see dbgcli.report.html), so that its
    # 7 kB are written once instead of once per figure.
    figure.update_layout(
        template="none",
        height=max(PANEL_HEIGHT, PANEL_HEIGHT * rows * (0.75 if rows > 2 else 1)),
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        font={"size": 11},
        hoverlabel={"namelength": -1},
    )
    for annotation in figure.layout.annotations:  # subplot titles
        annotation.font = {"size": 12}
    return figure


def line(
    name: str,
    steps: np.ndarray,
    values: np.ndarray,
    *,
    colour: str | None = None,
    dash: str | None = None,
    shape: str = "linear",
    group: str | None = None,
    legend: bool = True,
) -> dict[str, Any]:
    """A line over steps."""
    trace: dict[str, Any] = {
        "type": "scatter",
        "mode": "lines",
        "name": name,
        "x": compact_steps(steps),
        "y": np.asarray(values, dtype=np.float32),
        "line": {"width": 1.5},
        "showlegend": legend,
        "hovertemplate": "step %{x}: %{y:.4g}<extra>" + html.escape(name) + "</extra>",
    }
    if shape != "linear":
        trace["line"]["shape"] = shape
    if colour:
        trace["line"]["color"] = colour
    if dash:
        trace["line"]["dash"] = dash
    if group:
        trace["legendgroup"] = group
    return trace


def heatmap(
    rows: Sequence[str], steps: np.ndarray, values: np.ndarray, label: str, colourscale: str
) -> dict[str, Any]:
    """A rows-by-steps heatmap. Rows are categories named by their tags; a mark frames row
    ``i`` at positions ``i - 0.5`` to ``i + 0.5`` (see :func:`row_axis`)."""
    return {
        "type": "heatmap",
        "x": compact_steps(steps),
        "y": list(rows),
        "z": np.asarray(values, dtype=np.float32),
        "colorscale": colourscale,
        "colorbar": {"title": {"text": label, "side": "right"}, "thickness": 12},
        "hovertemplate": "%{y}<br>step %{x}: %{z:.3g}<extra></extra>",
        "hoverongaps": False,
    }


def row_axis(figure: Any, rows: Sequence[str], row: int = 1, col: int = 1) -> None:
    """Show the rows of a heatmap first at the top, with tag names shortened in the middle."""
    figure.update_yaxes(
        type="category",
        tickmode="array",
        tickvals=list(rows),
        ticktext=[_short(name) for name in rows],
        autorange="reversed",
        row=row,
        col=col,
    )


def compact_steps(steps: np.ndarray) -> np.ndarray:
    """Steps as int64, which plotly writes in the smallest integer type that holds them (or
    as float64 past int32: plotly.js has no 64-bit integer arrays)."""
    steps = np.asarray(steps, dtype=np.int64)
    if len(steps) and (steps.min() < -(2**31) or steps.max() >= 2**31):
        return steps.astype(np.float64)
    return steps


def mark(
    figure: Any,
    findings: Sequence[Finding],
    targets: Mapping[str, Target],
    run_wide: Target | None = None,
) -> list[int]:
    """Put the findings about the tags of ``targets`` on the figure; returns their indices.

    The findings of one tag become one mark: a shaded span of steps (a framed row in a
    heatmap) from the first step of any of them to the last, coloured by the worst severity,
    labelled with their rule ids; hovering the label shows their messages. Findings of no tag
    (run-wide) go to ``run_wide`` when given. On figures without a step axis the mark is the
    label alone.
    """
    groups: dict[str, list[int]] = {}
    for index, finding in enumerate(findings):
        tag = finding.tensor or ""
        if tag in targets or (not tag and run_wide is not None):
            groups.setdefault(tag, []).append(index)
    stacked: dict[tuple[int, int, int | None, int], int] = {}
    for tag, indices in groups.items():
        target = targets.get(tag) if tag else run_wide
        assert target is not None
        group = [findings[i] for i in indices]
        worst = max((f.severity or Severity.info for f in group), key=lambda s: s.rank)
        colour = SEVERITY_COLOURS[worst]
        rules = " ".join(dict.fromkeys(f.rule_id for f in group))
        hover = "<br>".join(
            html.escape(f"{f.rule_id} {f.rule}: {f.message}" + (f" ({f.span})" if f.span else ""))
            for f in group
        )
        firsts = [f.first_step for f in group if f.first_step is not None]
        lasts = [f.last_step if f.last_step is not None else f.first_step for f in group]
        spans = target.steps and bool(firsts)
        first = min(firsts) if firsts else 0
        last = max(s for s in lasts if s is not None) if firsts else 0
        where = {"row": target.row, "col": target.col}
        if spans and target.heat_row is None:
            figure.add_vrect(
                x0=first - 0.5,
                x1=last + 0.5,
                fillcolor=colour,
                opacity=0.12,
                line_width=0,
                layer="below",
                **where,
            )
        elif spans and target.heat_row is not None:
            figure.add_shape(
                type="rect",
                x0=first - 0.5,
                x1=last + 0.5,
                y0=target.heat_row - 0.5,
                y1=target.heat_row + 0.5,
                line={"color": colour, "width": 2},
                **where,
            )
        place = (target.row, target.col, target.heat_row, first if spans else -1)
        shift = stacked.get(place, 0)
        stacked[place] = shift + 1
        label = {
            "text": f"⚑ {html.escape(rules)}",
            "hovertext": hover,
            "showarrow": False,
            "font": {"color": colour, "size": 10},
            "bgcolor": "rgba(255,255,255,0.8)",
            "xanchor": "left",
            **where,
        }
        if target.heat_row is not None and spans:
            label.update(x=first - 0.5, y=target.heat_row, yanchor="middle", xshift=2)
        elif spans:
            label.update(
                x=first - 0.5, y=1, yref="y domain", yanchor="top", yshift=-_MARK_SPACING * shift
            )
        else:
            label.update(
                x=0,
                xref="x domain",
                y=1,
                yref="y domain",
                yanchor="top",
                yshift=-_MARK_SPACING * shift,
            )
        figure.add_annotation(**label)
    return sorted(i for indices in groups.values() for i in indices)


def pick(tags: Sequence[str], flagged: set[str], limit: int) -> list[str]:
    """At most ``limit`` of ``tags`` in their order: those with findings first, then others
    spread evenly over the rest (the first and last layers included)."""
    if len(tags) <= limit:
        return list(tags)
    chosen = [tag for tag in tags if tag in flagged][:limit]
    others = [tag for tag in tags if tag not in flagged]
    room = limit - len(chosen)
    if room > 0 and others:
        spread = np.unique(np.linspace(0, len(others) - 1, room).round().astype(int))
        chosen.extend(others[i] for i in spread)
    order = {tag: i for i, tag in enumerate(tags)}
    return sorted(chosen, key=order.__getitem__)


def _short(name: str, width: int = 28) -> str:
    from dbgcli.report.text import shorten_middle

    return shorten_middle(name, width)
