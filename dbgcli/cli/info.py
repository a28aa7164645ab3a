"""``dbg info``: what a trace holds."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dbgcli.cli.app import MemoryOption, TimeoutOption, app, handle_errors, limits
from dbgcli.cli.console import human_size, stdout_console
from dbgcli.isolation import Limits
from dbgcli.report.text import shorten_middle

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

# The hyperparameters worth a glance, in the order shown: per concept, the names the
# integrations record it under (Hugging Face TrainingArguments, Lightning hparams, XGBoost).
KEY_HYPERPARAMETERS: tuple[tuple[str, ...], ...] = (
    ("learning_rate", "lr", "eta"),
    ("per_device_train_batch_size", "train_batch_size", "batch_size"),
    ("max_steps", "num_train_epochs", "max_epochs", "epochs", "steps", "num_boost_round"),
    ("optim", "optimizer"),
    ("weight_decay",),
    ("warmup_ratio", "warmup_steps", "warmup"),
    ("lr_scheduler_type", "scheduler"),
    ("seed",),
)
# At most this many hyperparameters are shown, each value in at most VALUE_WIDTH characters.
HANDFUL = 8
VALUE_WIDTH = 24
SCALAR_COLUMNS = ("tag", "modes", "records", "steps", "last", "min", "max")
TENSOR_COLUMNS = ("tag", "kind", "shape", "dtype", "modes", "records", "steps", "full tensors")
# Tag names are never shortened below this, however many columns the rest of a table takes.
MIN_TAG_WIDTH = 12


class InfoFormat(str, Enum):
    human = "human"
    json = "json"


@app.command()
@handle_errors
def info(
    trace: Annotated[Path, typer.Argument(help="Trace file (.h5).", show_default=False)],
    output_format: Annotated[
        InfoFormat, typer.Option("--format", "-f", help="Output format.")
    ] = InfoFormat.human,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show every hyperparameter and metadata entry in full, every series cut to "
            "the last commit, and tag names unshortened.",
        ),
    ] = False,
    timeout: TimeoutOption = Limits.seconds,
    memory_limit: MemoryOption = Limits.memory_mb,
) -> None:
    """Show what a trace holds: metadata, steps per mode, tags by collection.

    The human output fits the terminal: a handful of key hyperparameters, long metadata and
    tag names shortened (tags from the middle, keeping both ends); --verbose shows them all.
    """
    from dbgcli.isolation import call_isolated
    from dbgcli.trace.summary import summarize_file

    summary = call_isolated(summarize_file, trace, str(trace), limits(timeout, memory_limit))
    if output_format is InfoFormat.json:
        typer.echo(json.dumps(summary, indent=2, allow_nan=False, default=str))
        return
    _render(summary, verbose)


def _render(summary: dict[str, Any], verbose: bool) -> None:
    from rich.text import Text

    console = stdout_console()
    _print_header(console, summary, verbose)
    modes = [
        [mode, str(span["steps"]), str(span["first_step"]), str(span["last_step"])]
        for mode, span in summary["modes"].items()
    ]
    if modes:
        _print_table(
            console, "steps per mode", ("mode", "steps", "first", "last"), modes, ("mode",), verbose
        )
    scalars = [
        [
            tag["tag"],
            ",".join(tag["modes"]),
            str(tag["records"])
            + (f" ({tag['non_finite']} non-finite)" if tag["non_finite"] else ""),
            _span(tag),
            _fmt(tag["last_value"]),
            _fmt(tag["min"]),
            _fmt(tag["max"]),
        ]
        for tag in summary["tags"]
        if tag["type"] == "scalar"
    ]
    if scalars:
        _print_table(console, "scalars", SCALAR_COLUMNS, scalars, ("tag", "modes"), verbose)
    by_collection: dict[str, list[list[str]]] = {}
    for tag in summary["tags"]:
        if tag["type"] == "tensor":
            by_collection.setdefault(tag["collection"] or "(no collection)", []).append(
                _tensor_row(tag)
            )
    for collection, tensors in by_collection.items():
        left = ("tag", "kind", "shape", "dtype", "modes", "full tensors")
        _print_table(console, f"tensors: {collection}", TENSOR_COLUMNS, tensors, left, verbose)
    if not summary["tags"]:
        console.print(Text("the trace holds no records", style="yellow"))


def _print_header(console: Console, summary: dict[str, Any], verbose: bool) -> None:
    """The panel of file facts, status and run metadata."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    fields: list[tuple[str, str | Text]] = [
        ("file", f"{summary['path']} ({human_size(summary['size_bytes'])})"),
        (
            "format",
            f"dbg-trace {summary['format_version']}, "
            f"written by dbgcli {summary['dbgcli_version'] or '?'}",
        ),
    ]
    if summary["created"]:
        fields.append(("created", summary["created"]))
    fields.append(("status", _status(summary, verbose)))
    metadata = summary["metadata"]
    keys = ["format", *metadata, *(["warning"] if summary["warnings"] else [])]
    # The panel's border and padding take four columns, the gap after the keys two.
    width = max(20, console.width - 4 - max(len(key) for key in keys) - 2)
    for key, value in metadata.items():
        if key == "hyperparameters" and isinstance(value, Mapping):
            fields.append((key, _hyperparameters(value, width, verbose)))
        else:
            fields.append((key, _metadata_value(value, width, verbose)))
    fields.extend(("warning", Text(warning, style="yellow")) for warning in summary["warnings"])
    header = Table.grid(padding=(0, 2))
    for key, value in fields:
        header.add_row(key, value)
    console.print(Panel(header, title="trace", expand=False))


def _tensor_row(tag: dict[str, Any]) -> list[str]:
    raw = "stats only" if tag["raw_records"] == 0 else f"{tag['raw_records']} of {tag['records']}"
    if len(tag["raw_shapes"]) > 1:
        raw += f" ({len(tag['raw_shapes'])} shapes)"
    return [
        tag["tag"],
        tag["kind"] or "",
        "x".join(str(d) for d in tag["shape"]) if tag["shape"] is not None else "?",
        tag["dtype"] or "?",
        ",".join(tag["modes"]),
        str(tag["records"]),
        _span(tag),
        raw,
    ]


def _status(summary: dict[str, Any], verbose: bool) -> Text:
    """``complete``, or why not; ``verbose`` lists the series cut to the last commit."""
    from rich.text import Text

    if summary["complete"]:
        return Text("complete", style="green")
    reasons = list(summary["incomplete_reasons"])
    if verbose:
        reasons += summary["cut_series"]
    return Text("incomplete: " + "; ".join(reasons), style="yellow")


def _hyperparameters(values: Mapping[str, Any], width: int, verbose: bool) -> Text:
    """Every hyperparameter (``verbose``), else the key ones that fit two lines of ``width``
    and how many more there are.

    A Hugging Face run stores all of its TrainingArguments (about 100). Shown first are the
    ones that tell runs apart: learning rate, batch size, epochs or steps, optimizer, weight
    decay, warmup, schedule and seed, each under the first of its usual names that is set
    (None, -1 and empty values are not: ``max_steps=-1`` gives way to ``num_train_epochs``);
    then the others in their order, up to a handful.
    """
    from rich.text import Text

    if verbose:
        return Text(", ".join(f"{k}={v}" for k, v in values.items()))
    names = []
    for usual in KEY_HYPERPARAMETERS:
        name = next((n for n in usual if n in values and not _unset(values[n])), None)
        if name is not None:
            names.append(name)
    usual_names = {name for usual in KEY_HYPERPARAMETERS for name in usual}
    names += [name for name in values if name not in usual_names]
    items = [f"{name}={shorten_middle(str(values[name]), VALUE_WIDTH)}" for name in names]
    count = min(HANDFUL, len(items))
    while count and len(textwrap.wrap(", ".join(items[:count]) + _more(values, count), width)) > 2:
        count -= 1
    text = Text(", ".join(items[:count]))
    text.append(_more(values, count), style="dim")
    return text


def _more(values: Mapping[str, Any], shown: int) -> str:
    hidden = len(values) - shown
    return f" +{hidden} more (--verbose)" if hidden else ""


def _unset(value: Any) -> bool:
    return value is None or value == -1 or (isinstance(value, (str, list, dict)) and not value)


def _metadata_value(value: Any, width: int, verbose: bool) -> Text:
    """A metadata entry, or its size instead when it takes more than two lines of ``width``
    (a whole configuration, such as ``xgboost_config``) and not ``verbose``."""
    from rich.text import Text

    text = str(value)
    if verbose or len(textwrap.wrap(text, width)) <= 2:
        return Text(text)
    return Text(f"{len(text):,} characters (--verbose)", style="dim")


def _print_table(
    console: Console,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: Sequence[str],
    verbose: bool,
) -> None:
    """A table whose first column (names) takes the width the others leave, each name
    shortened from the middle to fit (unless ``verbose``: then long names wrap). A column
    whose cells are all the same (every gradient a float32 of the training mode, recorded
    at the same steps) is said once in the title instead, leaving the names the room."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    shared = [i for i in range(1, len(columns)) if len(rows) > 1 and len({r[i] for r in rows}) == 1]
    said = [f"{columns[i]} {rows[0][i]}" for i in shared if rows[0][i] not in ("", "-")]
    kept = [i for i in range(len(columns)) if i not in shared]
    columns, rows = [columns[i] for i in kept], [[row[i] for i in kept] for row in rows]
    # Wrapped between its parts, never inside one ("full tensors 3 of 25" stays whole).
    lines = [title]
    for part in said:
        if len(lines[-1]) + 3 + len(part) <= console.width:
            lines[-1] += f" · {part}"
        else:
            lines.append(f"  {part}")
    console.print(Text("\n".join(lines), style="table.title"), soft_wrap=True)
    others = sum(
        max(len(column), *(len(row[i]) for row in rows))
        for i, column in enumerate(columns)
        if i > 0
    )
    # No vertical rules, a space after each cell: two characters a column (a blank rule and
    # the padding) but the last, and all the rest for names.
    room = max(MIN_TAG_WIDTH, console.width - others - (2 * len(columns) - 1))
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    for index, column in enumerate(columns):
        table.add_column(
            column,
            justify="left" if column in left else "right",
            overflow="fold" if index == 0 else "ellipsis",
            no_wrap=index > 0,
        )
    for row in rows:
        tag = row[0] if verbose else shorten_middle(row[0], room)
        table.add_row(Text(tag), *(Text(cell) for cell in row[1:]))
    console.print(table)


def _span(tag: dict[str, Any]) -> str:
    if tag["first_step"] is None:
        return "-"
    return f"{tag['first_step']}..{tag['last_step']}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
