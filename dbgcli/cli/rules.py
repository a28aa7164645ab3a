"""``dbg rules list`` and ``dbg rules explain``: the catalogue, generated from the registry."""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dbgcli.cli.app import app, handle_errors
from dbgcli.cli.console import stdout_console

if TYPE_CHECKING:
    from rich.text import Text

    from dbgcli.rules._registry import Registry

rules_app = typer.Typer(help="List and explain the rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


_LITERAL = re.compile(r"``(.+?)``")

RulesFileOption = Annotated[
    list[str] | None,
    typer.Option("--rules-file", help="Also load rules from this Python file."),
]


def _registry(rules_files: list[str] | None) -> Registry:
    """The rule registry, with the rules of ``--rules-file`` files loaded into it."""
    from dbgcli.rules import REGISTRY

    for path in rules_files or []:
        REGISTRY.load_file(path)
    return REGISTRY


class ListFormat(str, Enum):
    human = "human"
    json = "json"
    markdown = "markdown"


def _describe(spec: Any) -> dict[str, Any]:
    return {
        "id": spec.id,
        "name": spec.name,
        "category": spec.category,
        "severity": spec.severity.value,
        "summary": spec.summary,
        "requires": [need.what for need in spec.requires],
        "default": spec.default_enabled,
        "params": [
            {"name": p.name, "type": p.type_name, "default": p.default, "help": p.help}
            for p in spec.params
        ],
    }


@rules_app.command("list")
@handle_errors
def list_rules(
    output_format: Annotated[
        ListFormat, typer.Option("--format", "-f", help="Output format.")
    ] = ListFormat.human,
    rules_file: RulesFileOption = None,
) -> None:
    """List every rule: id, name, category, severity, data required, parameters."""
    specs = _registry(rules_file).all()
    if output_format is ListFormat.json:
        typer.echo(json.dumps([_describe(spec) for spec in specs], indent=2, default=str))
        return
    if output_format is ListFormat.markdown:
        typer.echo(markdown_table(specs))
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=f"{len(specs)} rules (dbg rules explain ID for the maths and parameters)",
        title_justify="left",
    )
    table.add_column("id", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("what it finds", overflow="fold")
    category = None
    for spec in sorted(specs, key=lambda s: (s.category, s.id)):
        if spec.category != category:
            category = spec.category
            table.add_section()
            table.add_row("", Text(category, style="bold"), "", "")
        summary = (
            spec.summary if spec.default_enabled else f"{spec.summary} (opt-in: --select {spec.id})"
        )
        table.add_row(spec.id, spec.name, spec.severity.value, summary)
    stdout_console().print(table)


def markdown_table(specs: list[Any]) -> str:
    """The catalogue as a Markdown table (used for the README)."""
    lines = [
        "| id | name | category | severity | what it finds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in specs:
        summary = spec.summary.replace("``", "`")  # docstrings use RST literals
        lines.append(
            f"| {spec.id} | `{spec.name}` | {spec.category} | {spec.severity.value} | {summary} |"
        )
    return "\n".join(lines)


@rules_app.command("explain")
@handle_errors
def explain(
    rule: Annotated[
        str, typer.Argument(help="Rule id or name, e.g. DBG101 or vanishing-gradient.")
    ],
    rules_file: RulesFileOption = None,
) -> None:
    """Explain one rule: its maths, why it matters, causes, fix, and its parameters."""
    from rich.markdown import Markdown
    from rich.table import Table
    from rich.text import Text

    registry = _registry(rules_file)
    spec = registry.get(rule)
    console = stdout_console()
    # Docstrings are text, not Rich markup: ``[0, 1]`` or ``[tool.dbg.rules.x]`` must survive.
    title = Text(f"{spec.id} {spec.name}", style="bold")
    title.append(f"  ({spec.category}, {spec.severity.value})")
    console.print(title)
    console.print(_docstring_text(spec.summary))
    console.print()
    console.print(Markdown(spec.description))
    if spec.requires:
        console.print()
        requires = Text("Requires:", style="bold")
        requires.append(" " + "; ".join(n.what for n in spec.requires))
        console.print(requires)
    for key, targets in spec.explains.items():
        if not targets:
            continue
        # What this rule's findings are taken to cause, in the diagnosis (see dbgcli.diagnosis).
        line = Text("Explains:" if key == "*" else f"Explains ({key}):", style="bold")
        line.append(" " + ", ".join(_target_name(registry, t) for t in targets))
        console.print(line)
    if spec.params:
        table = Table(title="parameters", title_justify="left")
        for column in ("name", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for param in spec.params:
            table.add_row(
                Text(param.name),
                Text(param.type_name),
                Text(repr(param.default)),
                _docstring_text(param.help),
            )
        console.print(table)
        override = Text("Override with ")
        override.append(f"--param {spec.id}.{spec.params[0].name}=VALUE", style="bold")
        override.append(" or in ")
        override.append(f"[tool.dbg.rules.{spec.name}]", style="bold")
        override.append(".")
        console.print(override)


def _docstring_text(text: str) -> Text:
    """A line of rule documentation as Rich text, never read as markup.

    Each RST literal (text between double backticks) is shown without its backticks, in the
    style Rich's Markdown gives inline code, as the description above it is.
    """
    from rich.text import Text

    rendered = Text()
    # re.split with one group alternates plain text (even items) and literals (odd items).
    for index, part in enumerate(_LITERAL.split(text)):
        rendered.append(part, style="markdown.code" if index % 2 else "")
    return rendered


def _target_name(registry: Registry, target: str) -> str:
    """``DBG301:not-decreasing`` -> ``DBG301 loss-not-decreasing (not-decreasing)``."""
    rule_id, _, key = target.partition(":")
    found = registry.find(rule_id)
    name = f"{rule_id} {found.name}" if found is not None else rule_id
    return f"{name} ({key})" if key else name
