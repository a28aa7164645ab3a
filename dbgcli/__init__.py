"""dbg: an open, local and fast debugger for machine-learning training runs.

Record a run with :class:`TraceWriter` (or a framework hook), read it back with
:func:`open_trace`, and analyse it with the ``dbg`` command.

Importing ``dbgcli`` is cheap: the public names below are resolved on first use, so neither
h5py nor any training framework is imported until it is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbgcli._version import __version__

if TYPE_CHECKING:
    from dbgcli.trace.reader import Trace, open_trace
    from dbgcli.trace.writer import TraceWriter

__all__ = ["Trace", "TraceWriter", "__version__", "open_trace"]

_LAZY = {
    "TraceWriter": "dbgcli.trace.writer",
    "open_trace": "dbgcli.trace.reader",
    "Trace": "dbgcli.trace.reader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dbgcli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
