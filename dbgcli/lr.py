"""Replay a recorded metric through learning-rate schedulers (the data behind ``dbg lr``).

:func:`plan_replay` decides what a replay of a trace uses, for ``dbg lr`` and for the
simulated GreedyLR curve of ``dbg analyze`` alike, so both draw the same curve: the training
loss when the trace has one, else the validation loss, or any scalar series named with
``metric``; fed to each scheduler once per record, once per ``every`` records (their mean), or
once per epoch (the mean of the epoch's records, epochs taken from the trace's ``epoch``
series); from the first recorded learning rate (scalar ``lr``, ``learning_rate`` or
``lr/group0``), else the one in the run's hyperparameters (``learning_rate``, ``lr``, XGBoost's
``eta``), else 0.1. A replay shows what the scheduler would have chosen for this recorded loss
sequence, not how the loss would have responded to it. No plotting library is needed here; the
exports to PNG and HTML use matplotlib (extra ``plot``).
"""

from __future__ import annotations

import csv
import html
import inspect
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dbgcli.errors import ConfigError, MissingDataError
from dbgcli.rules._context import RuleContext
from dbgcli.schedulers import SCHEDULERS, Replay, replay

# Hyperparameter names of the initial learning rate: Hugging Face, PyTorch habit, XGBoost.
HYPERPARAMETER_LR_NAMES = ("learning_rate", "lr", "eta")
DEFAULT_LR = 0.1
DISCLAIMER = (
    "A replay shows what the scheduler would have chosen for this recorded loss sequence, "
    "not how the loss would have responded to it."
)


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
    """The series fed to the schedulers: one value per replay point.

    ``name`` labels columns and charts (``train loss``); ``subject`` names the series in a
    sentence (``the train loss``, ``series 'acc'``); ``records`` counts the records behind
    the points (more than the points with ``every`` or per epoch).
    """

    name: str
    steps: np.ndarray
    values: np.ndarray
    cadence: str
    subject: str
    records: int


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay of a trace feeds the schedulers, and where each part came from."""

    metric: Metric
    lr: float
    lr_source: str
    """Where ``lr`` came from: ``recorded lr``, ``hyperparameter <name>``, ``xgboost_config
    eta``, ``highest recorded lr; the first is not a positive number``, ``--lr``, or
    ``default, none recorded``."""

    def describe(self) -> str:
        """Which series, at which cadence, from which rate and why.

        For example ``replay of the eval loss (8 records) from lr 0.3 (hyperparameter eta)``.
        """
        metric = self.metric
        points = len(metric.values)
        count = (
            f"({points} records)"
            if metric.cadence == "per record"
            else f"{metric.cadence} ({metric.records} records, {points} points)"
        )
        return f"replay of {metric.subject} {count} from lr {self.lr:g} ({self.lr_source})"

    def warning(self, spec: SchedulerSpec) -> str:
        """Why ``spec`` cannot move on this series, or ``""``.

        A scheduler with ``patience`` p changes the rate only after more than p improving
        (GreedyLR) or non-improving records in a row, so a series of p points or fewer leaves
        the rate where it started, whatever the losses.
        """
        parameter = inspect.signature(SCHEDULERS[spec.name]).parameters.get("patience")
        if parameter is None:
            return ""
        patience = spec.params.get("patience", parameter.default)
        points = len(self.metric.values)
        if not isinstance(patience, int) or points > patience:
            return ""
        unit = "records" if self.metric.cadence == "per record" else "points"
        return (
            f"{spec.label} cannot change the rate: {points} {unit} are too few for patience "
            f"{patience} (it needs at least {patience + 1})"
        )

    def note(self, spec: SchedulerSpec) -> str:
        """:meth:`describe`, followed by :meth:`warning` for ``spec`` when there is one."""
        warning = self.warning(spec)
        return self.describe() + (f"; {warning}" if warning else "")


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


def plan_replay(
    ctx: RuleContext,
    metric: str | None = None,
    mode: str | None = None,
    every: int = 1,
    per_epoch: bool = False,
    lr: float | None = None,
) -> ReplayPlan:
    """The series, cadence and start rate of a replay of ``ctx``'s trace.

    Args:
        ctx: The trace, seen through an analysis's step and mode filters (or none).
        metric: A scalar series to replay instead of the loss.
        mode: Only records of this mode (``train`` or ``eval`` loss when ``metric`` is None).
        every: Feed the mean of every ``every`` records.
        per_epoch: Feed the mean of each epoch's records.
        lr: The start rate, instead of the recorded one.

    Raises:
        MissingDataError: If the trace has no such series, or no ``epoch`` series per epoch.
        ConfigError: If ``every`` is below 1 or ``lr`` is not a positive number.
    """
    if lr is not None:
        if not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"initial learning rate must be a positive number, got {lr!r}")
        start, source = lr, "--lr"
    else:
        start, source = start_lr(ctx)
    return ReplayPlan(select_metric(ctx, metric, mode, every, per_epoch), start, source)


def start_lr(ctx: RuleContext) -> tuple[float, str]:
    """The rate a replay starts from, and where it was found.

    The first recorded learning rate, else the run's hyperparameters (``learning_rate``,
    ``lr``, ``eta``), else XGBoost's own configuration (``eta``), else the highest recorded
    rate, else 0.1. A first recorded rate that is not positive (a warmup starting at 0) is
    no start, since no scheduler can move from 0; the rate such a warmup rises to is the one
    the run was set to train at, which the hyperparameters name where they were recorded.
    """
    recorded = ctx.lr()
    if recorded is not None and len(recorded) and _positive(recorded.values[0]) is not None:
        return float(recorded.values[0]), "recorded lr"
    trace = ctx.trace
    hyperparameters = trace.metadata.get("hyperparameters")
    if isinstance(hyperparameters, Mapping):
        for name in HYPERPARAMETER_LR_NAMES:
            value = _positive(hyperparameters.get(name))
            if value is not None:
                return value, f"hyperparameter {name}"
    eta = _positive(
        _lookup(
            trace.metadata.get("xgboost_config"),
            ("learner", "gradient_booster", "tree_train_param", "eta"),
        )
    )
    if eta is not None:
        return eta, "xgboost_config eta"
    if recorded is not None:
        rates = np.asarray(recorded.values, dtype=np.float64)
        rates = rates[np.isfinite(rates) & (rates > 0)]
        if len(rates):
            return float(rates.max()), "highest recorded lr; the first is not a positive number"
    return DEFAULT_LR, "default, none recorded"


def _positive(value: Any) -> float | None:
    """``value`` as a positive finite float (numbers or numeric strings), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, np.number)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _lookup(tree: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def select_metric(
    ctx: RuleContext, metric: str | None, mode: str | None, every: int, per_epoch: bool
) -> Metric:
    """The metric series at the chosen cadence.

    By default the training loss, else the validation loss: one point per training record is
    how the GreedyLR authors step it, and how the learning rate is recorded to compare with.
    """
    trace = ctx.trace
    if metric is None:
        if mode is not None:
            series = ctx.loss(mode)  # type: ignore[arg-type]
            name = f"{mode} loss"
        else:
            series, name = ctx.loss("train"), "train loss"
            if series is None:
                series, name = ctx.loss("eval"), "eval loss"
        if series is None:
            raise MissingDataError(
                f"{trace.path}: no loss series to replay; name one with --metric"
            )
        subject = f"the {name}"
    else:
        series = ctx.scalar(metric, mode)
        name = metric if mode is None else f"{metric} ({mode})"
        subject = f"series {metric!r}" + ("" if mode is None else f" of mode {mode}")
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
    return Metric(name, steps, values, cadence, subject, len(series))


def replay_inputs(
    arguments: tuple[str | os.PathLike[str], str | None, str | None, int, bool, float | None],
) -> tuple[ReplayPlan, tuple[np.ndarray, np.ndarray] | None]:
    """Read what ``dbg lr`` replays from the trace at ``arguments[0]``: the
    :func:`plan_replay` of the other arguments and the :func:`recorded_lr`."""
    from dbgcli.trace.reader import open_trace

    path, metric, mode, every, per_epoch, initial_lr = arguments
    with open_trace(path) as trace:
        ctx = RuleContext(trace)
        return plan_replay(ctx, metric, mode, every, per_epoch, initial_lr), recorded_lr(ctx)


def recorded_lr(ctx: RuleContext) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps, values)`` of the recorded learning rate of the first parameter group, if any
    (found by meaning: :meth:`RuleContext.lr`)."""
    series = ctx.lr()
    return (series.steps, series.values) if series is not None and len(series) else None


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
