"""Replay a recorded metric through learning-rate schedulers (the data behind ``dbg lr``).

The metric is the validation loss when the trace has one, else the training loss, or any
scalar series named with ``metric``. It is fed to each scheduler once per record, once per
``every`` records (their mean), or once per epoch (the mean of the epoch's records, epochs
taken from the trace's ``epoch`` series). The learning rate starts from the recorded one
(scalar ``lr`` or ``learning_rate``) when present. No plotting library is needed here; the
exports to PNG and HTML use matplotlib (extra ``plot``).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dbgcli.errors import ConfigError, MissingDataError
from dbgcli.rules._context import RuleContext
from dbgcli.schedulers import SCHEDULERS, Replay, replay
from dbgcli.trace.reader import Trace

LR_NAMES = ("lr", "learning_rate", "lr/group0")


@dataclass(frozen=True)
class SchedulerSpec:
    """A scheduler as given on the command line: ``NAME[:key=value,...]``."""

    label: str
    name: str
    params: dict[str, Any]

    @staticmethod
    def parse(text: str) -> SchedulerSpec:
        """Parse ``greedy:factor=0.5,patience=2`` (lists with ``|``: ``milestones=30|60``)."""
        name, _, rest = text.partition(":")
        name = name.strip()
        if name not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
        params: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"scheduler {text!r}: expected key=value, got {item!r}")
            parts = [_scalar(v) for v in value.split("|")]
            params[key.strip()] = parts if len(parts) > 1 else parts[0]
        return SchedulerSpec(text.strip(), name, params)


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class Metric:
    """The series fed to the schedulers: one value per replay point."""

    name: str
    steps: np.ndarray
    values: np.ndarray
    cadence: str


@dataclass(frozen=True)
class Curve:
    """One scheduler's replay with its summary numbers."""

    spec: SchedulerSpec
    replay: Replay

    def summary(self) -> dict[str, Any]:
        """Increases, decreases, resets, final, min and max learning rate."""
        lrs = self.replay.lrs if self.replay.lrs.ndim == 1 else self.replay.lrs[:, 0]
        change = np.diff(lrs)
        resets = set(self.replay.resets.tolist())
        moves = [(i + 1, d) for i, d in enumerate(change) if d != 0 and (i + 1) not in resets]
        return {
            "scheduler": self.spec.label,
            "increases": sum(1 for _, d in moves if d > 0),
            "decreases": sum(1 for _, d in moves if d < 0),
            "resets": len(resets),
            "final": float(lrs[-1]) if lrs.size else float("nan"),
            "min": float(np.min(lrs)) if lrs.size else float("nan"),
            "max": float(np.max(lrs)) if lrs.size else float("nan"),
        }


def select_metric(
    trace: Trace, metric: str | None, mode: str | None, every: int, per_epoch: bool
) -> Metric:
    """The metric series at the chosen cadence."""
    ctx = RuleContext(trace)
    if metric is None:
        if mode is not None:
            series = ctx.loss(mode)  # type: ignore[arg-type]
            name = f"{mode} loss"
        else:
            series, name = ctx.loss("eval"), "eval loss"
            if series is None:
                series, name = ctx.loss("train"), "train loss"
        if series is None:
            raise MissingDataError(
                f"{trace.path}: no loss series to replay; name one with --metric"
            )
    else:
        series = ctx.scalar(metric, mode)
        name = metric if mode is None else f"{metric} ({mode})"
        if series is None:
            scalars = ", ".join(sorted(t.tag for t in trace.tags(scalar=True))) or "none"
            raise MissingDataError(f"{trace.path}: no scalar series {metric!r}; scalars: {scalars}")
    if every < 1:
        raise ConfigError(f"--every must be >= 1, got {every}")
    if per_epoch:
        epochs = ctx.scalar("epoch")
        if epochs is None:
            raise MissingDataError(f"{trace.path}: no 'epoch' series marks epochs; use --every N")
        position = np.searchsorted(epochs.steps, series.steps, side="right") - 1
        label = np.where(position >= 0, epochs.values[np.maximum(position, 0)], -np.inf)
        groups = [np.flatnonzero(label == value) for value in np.unique(label)]
        cadence = "per epoch"
    else:
        groups = [np.arange(i, min(i + every, len(series))) for i in range(0, len(series), every)]
        cadence = "per record" if every == 1 else f"per {every} records"
    steps = np.array([series.steps[g[-1]] for g in groups], dtype=np.int64)
    with np.errstate(invalid="ignore"):
        values = np.array([float(np.mean(series.values[g])) for g in groups])
    return Metric(name, steps, values, cadence)


def recorded_lr(trace: Trace) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps, values)`` of the recorded learning rate of the first parameter group, if any."""
    for name in LR_NAMES:
        if name in trace and trace.tag(name).scalar:
            series = trace.scalar(name, "train")
            if len(series):
                return series.steps, series.values
    return None


def run_schedulers(metric: Metric, specs: Sequence[SchedulerSpec], lr: float) -> list[Curve]:
    """Replay the metric through each scheduler; total-step parameters default to its length."""
    curves = []
    for spec in specs:
        params = dict(spec.params)
        if spec.name in ("cosine", "onecycle") and "total_steps" not in params:
            params["total_steps"] = len(metric.values)
        curves.append(Curve(spec, replay(metric.values, spec.name, lr=lr, **params)))
    return curves


def write_csv(
    path: Path, metric: Metric, curves: Sequence[Curve], recorded: np.ndarray | None
) -> None:
    """One row per replay point: step, metric, recorded lr, one column per scheduler."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", metric.name, "recorded_lr", *(c.spec.label for c in curves)])
        for i, step in enumerate(metric.steps):
            row: list[Any] = [int(step), repr(float(metric.values[i]))]
            row.append("" if recorded is None else repr(float(recorded[i])))
            row.extend(repr(float(_first(c.replay.lrs)[i])) for c in curves)
            writer.writerow(row)


def figure(metric: Metric, curves: Sequence[Curve], recorded: np.ndarray | None, title: str) -> Any:
    """A matplotlib figure: learning rates above, the metric below (needs the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "PNG and HTML export need matplotlib: pip install 'dbgcli[plot]'"
        ) from None
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=(2, 1))
    if recorded is not None:
        top.plot(
            metric.steps,
            recorded,
            color="black",
            linewidth=2,
            drawstyle="steps-post",
            label="recorded lr",
        )
    for curve in curves:
        top.plot(
            metric.steps, _first(curve.replay.lrs), drawstyle="steps-post", label=curve.spec.label
        )
    top.set_ylabel("learning rate")
    top.set_yscale("log")
    top.legend(loc="best", fontsize="small")
    top.set_title(title)
    bottom.plot(metric.steps, metric.values, color="tab:gray")
    bottom.set_ylabel(metric.name)
    bottom.set_xlabel(f"step ({metric.cadence})")
    fig.tight_layout()
    return fig


def write_png(path: Path, fig: Any) -> None:
    """Save the figure as a PNG."""
    fig.savefig(path, dpi=110)


def write_html(path: Path, fig: Any, curves: Sequence[Curve], title: str) -> None:
    """A self-contained HTML page: the figure as inline SVG and the summary table."""
    svg = io.StringIO()
    fig.savefig(svg, format="svg")
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in curve.summary().values())
        + "</tr>"
        for curve in curves
    )
    heads = "".join(
        f"<th>{h}</th>"
        for h in ("scheduler", "increases", "decreases", "resets", "final", "min", "max")
    )
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{svg.getvalue()}<table><tr>{heads}</tr>{rows}</table></body></html>\n",
        encoding="utf-8",
    )


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _first(lrs: np.ndarray) -> np.ndarray:
    return lrs if lrs.ndim == 1 else lrs[:, 0]


def align(steps: np.ndarray, source: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The recorded value in effect at each of ``steps`` (the last record at or before it)."""
    source_steps, values = source
    position = np.searchsorted(source_steps, steps, side="right") - 1
    return np.where(position >= 0, values[np.maximum(position, 0)], np.nan)
