"""``dbg info``: what a trace holds."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from dbgcli.cli.app import app, handle_errors
from dbgcli.cli.console import human_size, stdout_console


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
) -> None:
    """Show what a trace holds: metadata, steps per mode, tags by collection."""
    from dbgcli.trace.reader import open_trace
    from dbgcli.trace.summary import summarize

    with open_trace(trace) as opened:
        summary = summarize(opened)
    if output_format is InfoFormat.json:
        typer.echo(json.dumps(summary, indent=2, allow_nan=False, default=str))
        return
    _render(summary)


def _render(summary: dict[str, Any]) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = stdout_console()
    status = (
        Text("complete", style="green")
        if summary["complete"]
        else Text("incomplete: " + "; ".join(summary["incomplete_reasons"]), style="yellow")
    )
    header = Table.grid(padding=(0, 2))
    header.add_row("file", f"{summary['path']} ({human_size(summary['size_bytes'])})")
    header.add_row(
        "format",
        f"dbg-trace {summary['format_version']}, written by dbgcli {summary['dbgcli_version'] or '?'}",
    )
    if summary["created"]:
        header.add_row("created", summary["created"])
    header.add_row("status", status)
    metadata = summary["metadata"]
    for key, value in metadata.items():
        if key == "hyperparameters" and isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        header.add_row(key, Text(str(value)))
    for warning in summary["warnings"]:
        header.add_row("warning", Text(warning, style="yellow"))
    console.print(Panel(header, title="trace", expand=False))

    modes = Table(title="steps per mode", title_justify="left")
    for column in ("mode", "steps", "first", "last"):
        modes.add_column(column, justify="left" if column == "mode" else "right")
    for mode, span in summary["modes"].items():
        modes.add_row(mode, str(span["steps"]), str(span["first_step"]), str(span["last_step"]))
    console.print(modes)

    scalars = [t for t in summary["tags"] if t["type"] == "scalar"]
    if scalars:
        table = Table(title="scalars", title_justify="left")
        for column in ("tag", "modes", "records", "steps", "last", "min", "max"):
            table.add_column(column, justify="left" if column in ("tag", "modes") else "right")
        for tag in scalars:
            bad = f" ({tag['non_finite']} non-finite)" if tag["non_finite"] else ""
            table.add_row(
                Text(tag["tag"]),
                ",".join(tag["modes"]),
                str(tag["records"]) + bad,
                _span(tag),
                _fmt(tag["last_value"]),
                _fmt(tag["min"]),
                _fmt(tag["max"]),
            )
        console.print(table)

    tensors = [t for t in summary["tags"] if t["type"] == "tensor"]
    by_collection: dict[str, list[dict[str, Any]]] = {}
    for tag in tensors:
        by_collection.setdefault(tag["collection"] or "(no collection)", []).append(tag)
    for collection, members in by_collection.items():
        table = Table(title=f"tensors: {collection}", title_justify="left")
        for column in (
            "tag",
            "kind",
            "shape",
            "dtype",
            "modes",
            "records",
            "steps",
            "full tensors",
        ):
            table.add_column(column, justify="right" if column in ("records", "steps") else "left")
        for tag in members:
            raw = (
                "stats only"
                if tag["raw_records"] == 0
                else f"{tag['raw_records']} of {tag['records']}"
            )
            if len(tag["raw_shapes"]) > 1:
                raw += f" ({len(tag['raw_shapes'])} shapes)"
            table.add_row(
                Text(tag["tag"]),
                tag["kind"] or "",
                "x".join(str(d) for d in tag["shape"]) if tag["shape"] is not None else "?",
                tag["dtype"] or "?",
                ",".join(tag["modes"]),
                str(tag["records"]),
                _span(tag),
                raw,
            )
        console.print(table)
    if not summary["tags"]:
        console.print("[yellow]the trace holds no records[/yellow]")


def _span(tag: dict[str, Any]) -> str:
    if tag["first_step"] is None:
        return "-"
    return f"{tag['first_step']}..{tag['last_step']}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"
