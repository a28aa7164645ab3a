"""``dbg lr``: what learning rate would GreedyLR (and others) have chosen for this run?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from dbgcli.cli.app import MemoryOption, TimeoutOption, app, handle_errors, limits
from dbgcli.cli.console import stdout_console
from dbgcli.isolation import Limits

PALETTE = ("green", "magenta", "cyan", "yellow", "blue", "red")


@app.command()
@handle_errors
def lr(
    trace: Annotated[Path, typer.Argument(help="Trace file (.h5).", show_default=False)],
    scheduler: Annotated[
        list[str] | None,
        typer.Option(
            "--scheduler",
            "-s",
            help="NAME[:key=value,...], e.g. greedy:factor=0.5,patience=2 (repeat to compare; lists as a|b). "
            "Names: greedy, plateau, constant, step, multistep, exponential, linear, cosine, onecycle.",
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric", help="Scalar series to replay [default: train loss, else eval loss]."
        ),
    ] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="Records of this mode only (train, eval).")
    ] = None,
    every: Annotated[
        int, typer.Option("--every", help="Step the schedulers once per N records (their mean).")
    ] = 1,
    per_epoch: Annotated[
        bool, typer.Option("--per-epoch", help="Step once per epoch (needs an 'epoch' series).")
    ] = False,
    initial_lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            help="Initial learning rate [default: the first recorded one, else the "
            "hyperparameters' learning_rate, lr or eta, else 0.1].",
        ),
    ] = None,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Write every curve to this CSV file.")
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Draw the curves to this PNG (needs matplotlib).")
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write a self-contained HTML page (needs matplotlib)."),
    ] = None,
    timeout: TimeoutOption = Limits.seconds,
    memory_limit: MemoryOption = Limits.memory_mb,
) -> None:
    """Replay the recorded loss through learning-rate schedulers and draw the curves.

    Each scheduler sees one metric value per record (or per --every N records, or per epoch)
    and sets the learning rate used after it, exactly as the reference implementations would
    (GreedyLR as in transformers, ReduceLROnPlateau as in torch). The output starts with the
    series and start rate used (the same as for the GreedyLR curve of dbg analyze), and a
    warning when the series is too short for a scheduler's patience. A replay shows what the
    scheduler would have chosen for this recorded loss sequence, not how the loss would have
    responded to it.
    """
    from rich.text import Text

    from dbgcli.errors import ConfigError
    from dbgcli.isolation import call_isolated
    from dbgcli.lr import (
        DISCLAIMER,
        SchedulerSpec,
        align,
        figure,
        replay_inputs,
        run_schedulers,
        write_csv,
        write_html,
        write_png,
    )

    specs = [SchedulerSpec.parse(text) for text in (scheduler or ["greedy"])]
    if mode is not None and mode not in ("train", "eval", "predict"):
        raise ConfigError(f"unknown mode {mode!r}; modes: train, eval, predict")
    plan, recorded = call_isolated(
        replay_inputs,
        (trace, metric, mode, every, per_epoch, initial_lr),
        str(trace),
        limits(timeout, memory_limit),
    )
    series = plan.metric
    aligned = align(series.steps, recorded) if recorded is not None else None
    curves = run_schedulers(series, specs, plan.lr)
    title = f"{trace.name}: {plan.describe()}"
    console = stdout_console()
    console.print(Text(trace.name, style="bold"))
    console.print(Text(plan.describe()))
    for spec in specs:
        warning = plan.warning(spec)
        if warning:
            console.print(Text(f"warning: {warning}", style="yellow"))
    console.print(Text(DISCLAIMER, style="dim"))
    _render(series, curves, aligned)
    if csv is not None:
        write_csv(csv, series, curves, aligned)
    if png is not None or html is not None:
        fig = figure(series, curves, aligned, title)
        if png is not None:
            write_png(png, fig)
        if html is not None:
            write_html(html, fig, curves, title)


def _render(series, curves, recorded) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    width = max(30, min(100, console.width - 12))
    lr_series = ([("recorded lr", recorded)] if recorded is not None else []) + [
        (
            curve.spec.label,
            curve.replay.lrs if curve.replay.lrs.ndim == 1 else curve.replay.lrs[:, 0],
        )
        for curve in curves
    ]
    _chart(console, series.steps, lr_series, width, 12, "learning rate")
    _chart(
        console,
        series.steps,
        [(series.name, series.values)],
        width,
        6,
        series.name,
        colours=("white",),
    )
    table = Table(title="schedulers", title_justify="left")
    for column in ("scheduler", "increases", "decreases", "resets", "final lr", "min lr", "max lr"):
        if column == "scheduler":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for curve in curves:
        row = curve.summary()
        table.add_row(
            Text(str(row["scheduler"])),
            str(row["increases"]),
            str(row["decreases"]),
            str(row["resets"]),
            f"{row['final']:.4g}",
            f"{row['min']:.4g}",
            f"{row['max']:.4g}",
        )
    console.print(table)


def _chart(console, steps, named, width: int, height: int, label: str, colours=None) -> None:  # type: ignore[no-untyped-def]
    from rich.text import Text

    from dbgcli.report.plot import line_chart

    palette = (
        ("white", *PALETTE)
        if colours is None and named and named[0][0] == "recorded lr"
        else (colours or PALETTE)
    )
    chart = line_chart(
        [steps] * len(named),
        [np.asarray(values, dtype=np.float64) for _, values in named],
        width=width,
        height=height,
    )
    gutter = max(len(chart.y_labels[0]), len(chart.y_labels[1]))
    for row, (line, owners) in enumerate(zip(chart.lines, chart.owners)):
        axis = (
            chart.y_labels[0]
            if row == 0
            else chart.y_labels[1]
            if row == len(chart.lines) - 1
            else ""
        )
        text = Text(f"{axis:>{gutter}} │")
        for char, owner in zip(line, owners):
            text.append(char, style=palette[owner % len(palette)] if owner >= 0 else None)
        console.print(text)
    console.print(Text(f"{'':>{gutter}} └" + "─" * width))
    console.print(
        Text(
            f"{'':>{gutter}}  {chart.x_labels[0]}".ljust(
                gutter + 2 + width - len(chart.x_labels[1])
            )
            + chart.x_labels[1]
        )
    )
    legend = Text(f"{'':>{gutter}}  {label}: ")
    for index, (name, _) in enumerate(named):
        legend.append(f"■ {name}  ", style=palette[index % len(palette)])
    console.print(legend)
