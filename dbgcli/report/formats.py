"""Every output format of ``dbg analyze``, by name: one report model, one renderer each."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from dbgcli.report.model import Report

# Machine formats render to text; "human" renders through Rich (see dbgcli.report.human).
MACHINE_FORMATS = {
    "json": "dbgcli.report.json_report",
    "sarif": "dbgcli.report.sarif",
    "junit": "dbgcli.report.junit",
    "github": "dbgcli.report.github",
    "markdown": "dbgcli.report.markdown",
    "html": "dbgcli.report.html",
}
FORMATS = ("human", *MACHINE_FORMATS)


def machine_renderer(name: str) -> Callable[[Report], str]:
    """The ``render(report) -> str`` function of a machine format."""
    module = importlib.import_module(MACHINE_FORMATS[name])
    render: Callable[[Report], str] = module.render
    return render


def require(name: str) -> None:
    """Raise ConfigError when format ``name`` needs a package that is not installed (html needs
    plotly), so the command fails before it analyses anything."""
    if name in MACHINE_FORMATS:
        check: Callable[[], None] | None = getattr(
            importlib.import_module(MACHINE_FORMATS[name]), "require", None
        )
        if check is not None:
            check()
