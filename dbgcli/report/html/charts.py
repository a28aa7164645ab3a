"""Plotly figures of the HTML report, and the marks that put findings on them.

Everything here builds figures from numbers already read; nothing reads a trace, nothing
imports plotly (the page embeds plotly.js, which draws them). Arrays are written as float32
(and the smallest integer type) in plotly.js's base64 typed-array form: a fraction of the size
of JSON number lists.
"""

from __future__ import annotations

import base64
import html
import json
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
        figure: The figure.
        caption: How to read it, and what was left out.
        marked: Indices (into the trace's findings) of the findings marked on it.
    """

    key: str
    title: str
    figure: Figure
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


class Figure:
    """A plotly figure as plain data: ``data`` (traces) and ``layout`` (dicts), written by
    :meth:`to_json` with numpy arrays as base64 typed arrays.

    plotly's graph objects validate every property on every change; building the report's
    figures through them took most of the time of writing a report. The figures here keep to
    plotly's documented schema (the tests validate every one with ``plotly.io.from_json``).

    Panels are numbered row by row from 1, as in ``plotly.subplots.make_subplots``: panel
    ``n`` draws on axes ``x<n>``/``y<n>`` (plain ``x``/``y`` for the first).
    """

    def __init__(
        self,
        rows: int = 1,
        cols: int = 1,
        *,
        titles: Sequence[str] = (),
        shared_xaxes: bool = False,
        horizontal_spacing: float | None = None,
    ) -> None:
        self.rows, self.cols = rows, cols
        self.data: list[dict[str, Any]] = []
        self.layout: dict[str, Any] = {
            "height": max(PANEL_HEIGHT, PANEL_HEIGHT * rows * (0.75 if rows > 2 else 1)),
            "margin": {"l": 60, "r": 20, "t": 60, "b": 40},
            # At the top of the figure, above the panel titles.
            "legend": {"orientation": "h", "yref": "container", "y": 1, "yanchor": "top", "x": 0},
            "font": {"size": 11},
            "hoverlabel": {"namelength": -1},
            "annotations": [],
            "shapes": [],
        }
        across = horizontal_spacing if horizontal_spacing is not None else 0.2 / cols
        down = min(0.12, 0.3 / rows) + (0.04 if titles and rows > 1 else 0)
        width = (1 - across * (cols - 1)) / cols
        height = (1 - down * (rows - 1)) / rows
        for row in range(rows):
            for col in range(cols):
                x, y = self.axes(row + 1, col + 1)
                left, top = col * (width + across), 1 - row * (height + down)
                xaxis: dict[str, Any] = {"domain": [left, left + width], "anchor": y}
                if shared_xaxes and x != "x":
                    xaxis["matches"] = "x"
                if shared_xaxes and row < rows - 1:
                    xaxis["showticklabels"] = False
                self.layout[_axis_key(x)] = xaxis
                self.layout[_axis_key(y)] = {"domain": [top - height, top], "anchor": x}
                index = row * cols + col
                if index < len(titles) and titles[index]:
                    self.layout["annotations"].append(
                        {
                            "text": html.escape(titles[index]),
                            "x": left + width / 2,
                            "y": top,
                            "xref": "paper",
                            "yref": "paper",
                            "xanchor": "center",
                            "yanchor": "bottom",
                            "showarrow": False,
                            "font": {"size": 12},
                        }
                    )

    def axes(self, row: int = 1, col: int = 1) -> tuple[str, str]:
        """The ``(x, y)`` axis names of a panel: ``("x", "y")``, ``("x2", "y2")``..."""
        number = (row - 1) * self.cols + col
        suffix = "" if number == 1 else str(number)
        return f"x{suffix}", f"y{suffix}"

    def add_trace(self, trace: dict[str, Any], row: int = 1, col: int = 1) -> None:
        x, y = self.axes(row, col)
        self.data.append({**trace, "xaxis": x, "yaxis": y} if x != "x" else trace)

    def update_layout(self, **props: Any) -> None:
        self.layout.update(props)

    def update_xaxes(self, row: int | None = None, col: int = 1, **props: Any) -> None:
        """Set properties of the x axis of one panel (every panel when ``row`` is None)."""
        self._update_axes(0, row, col, props)

    def update_yaxes(self, row: int | None = None, col: int = 1, **props: Any) -> None:
        """Set properties of the y axis of one panel (every panel when ``row`` is None)."""
        self._update_axes(1, row, col, props)

    def _update_axes(self, which: int, row: int | None, col: int, props: dict[str, Any]) -> None:
        panels = (
            [(row, col)]
            if row is not None
            else [(r + 1, c + 1) for r in range(self.rows) for c in range(self.cols)]
        )
        for panel in panels:
            self.layout[_axis_key(self.axes(*panel)[which])].update(props)

    def add_shape(self, shape: dict[str, Any], row: int = 1, col: int = 1) -> None:
        """A shape in a panel; ``xref``/``yref`` of ``"domain"`` mean the panel's domain."""
        self.layout["shapes"].append(self._placed(shape, row, col))

    def add_annotation(self, annotation: dict[str, Any], row: int = 1, col: int = 1) -> None:
        """A text label in a panel (``"domain"`` references as for :meth:`add_shape`)."""
        self.layout["annotations"].append(self._placed(annotation, row, col))

    def add_hline(self, y: float, row: int = 1, col: int = 1, label: str = "") -> None:
        """A dotted grey reference line across a panel, with an optional label at its end."""
        self.add_shape(
            {
                "type": "line",
                "x0": 0,
                "x1": 1,
                "xref": "domain",
                "y0": y,
                "y1": y,
                "line": {"color": "#888888", "dash": "dot", "width": 1},
            },
            row,
            col,
        )
        if label:
            self.add_annotation(
                {
                    "text": html.escape(label),
                    "x": 1,
                    "xref": "domain",
                    "y": y,
                    "xanchor": "right",
                    "yanchor": "bottom",
                    "showarrow": False,
                    "font": {"color": "#888888", "size": 10},
                },
                row,
                col,
            )

    def _placed(self, item: dict[str, Any], row: int, col: int) -> dict[str, Any]:
        x, y = self.axes(row, col)
        placed = dict(item)
        for key, axis in (("xref", x), ("yref", y)):
            ref = placed.get(key)
            if ref is None:
                placed[key] = axis
            elif ref == "domain":
                placed[key] = f"{axis} domain"
        return placed

    def to_json(self) -> str:
        """The figure as JSON, numpy arrays as base64 typed arrays."""
        return json.dumps({"data": self.data, "layout": self.layout}, default=_typed_array)


def _axis_key(name: str) -> str:
    return f"{name[0]}axis{name[1:]}"


def _typed_array(value: Any) -> Any:
    """A numpy array as plotly.js's typed-array object (``{"dtype", "bdata", "shape"}``)."""
    if isinstance(value, np.generic):
        return value.item()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"cannot write {type(value).__name__} in a figure")
    if value.dtype.kind in "OUS":
        return value.tolist()
    if value.dtype.kind in "iub":
        value = _smallest_integers(value)
    elif value.dtype != np.float32:
        value = value.astype(np.float64)
    little = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
    array: dict[str, Any] = {
        "dtype": little.dtype.str[1:],
        "bdata": base64.b64encode(little.tobytes()).decode("ascii"),
    }
    if value.ndim > 1:
        array["shape"] = ", ".join(str(n) for n in value.shape)
    return array


def _smallest_integers(value: np.ndarray) -> np.ndarray:
    low, high = (int(value.min()), int(value.max())) if value.size else (0, 0)
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return value.astype(dtype)
    return value.astype(np.float64)


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
        "x": np.asarray(steps, dtype=np.int64),
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
    rows: Sequence[str], steps: np.ndarray, values: np.ndarray, label: str
) -> dict[str, Any]:
    """A rows-by-steps heatmap. Rows are categories named by their tags; a mark frames row
    ``i`` at positions ``i - 0.5`` to ``i + 0.5`` (see :func:`row_axis`)."""
    return {
        "type": "heatmap",
        "x": np.asarray(steps, dtype=np.int64),
        "y": list(rows),
        "z": np.asarray(values, dtype=np.float32),
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": label, "side": "right"}, "thickness": 12},
        "hovertemplate": "%{y}<br>step %{x}: %{z:.3g}<extra></extra>",
        "hoverongaps": False,
    }


def row_axis(figure: Figure, rows: Sequence[str], row: int = 1, col: int = 1) -> None:
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


def wants_log(values: np.ndarray, always: bool = False) -> bool:
    """Whether a log axis suits ``values``: none negative, and the positive ones spanning more
    than two decades (or any positive ones, with ``always``); a zero is then not drawn."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if not positive.size or (finite < 0).any():
        return False
    return always or float(positive.max() / positive.min()) > 100


def mark(
    figure: Figure,
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
            figure.add_shape(
                {
                    "type": "rect",
                    "x0": first - 0.5,
                    "x1": last + 0.5,
                    "y0": 0,
                    "y1": 1,
                    "yref": "domain",
                    "fillcolor": colour,
                    "opacity": 0.12,
                    "line": {"width": 0},
                    "layer": "below",
                },
                **where,
            )
        elif spans and target.heat_row is not None:
            figure.add_shape(
                {
                    "type": "rect",
                    "x0": first - 0.5,
                    "x1": last + 0.5,
                    "y0": target.heat_row - 0.5,
                    "y1": target.heat_row + 0.5,
                    "line": {"color": colour, "width": 2},
                },
                **where,
            )
        place = (target.row, target.col, target.heat_row, first if spans else -1)
        shift = stacked.get(place, 0)
        stacked[place] = shift + 1
        label: dict[str, Any] = {
            "text": f"⚑ {html.escape(rules)}",
            "hovertext": hover,
            "showarrow": False,
            "font": {"color": colour, "size": 10},
            "bgcolor": "rgba(255,255,255,0.8)",
            "xanchor": "left",
        }
        if target.heat_row is not None and spans:
            label.update(x=first - 0.5, y=target.heat_row, yanchor="middle", xshift=2)
        elif spans:
            label.update(
                x=first - 0.5, y=1, yref="domain", yanchor="top", yshift=-_MARK_SPACING * shift
            )
        else:
            label.update(
                x=0, xref="domain", y=1, yref="domain", yanchor="top", yshift=-_MARK_SPACING * shift
            )
        figure.add_annotation(label, **where)
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
