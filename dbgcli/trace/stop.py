"""Stop requests: how a process that watches a trace asks the writer to end the run.

The request is a small JSON file next to the trace, ``<trace>.stop`` (``run.h5.stop``), written
atomically (a temporary file renamed over it), so that the writer never has a second HDF5
writer on its file and never reads half a request. The writer looks for it at each commit
(one ``stat``), keeps the request, records it in the trace's metadata under ``stop`` and
removes the file when it closes; the framework integrations end training at the next step
boundary. See docs/watch.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STOP_SUFFIX = ".stop"


@dataclass(frozen=True)
class StopRequest:
    """Who asked the run to stop, when (ISO 8601 UTC) and why (the finding, in one line)."""

    by: str
    reason: str
    requested_at: str
    rule: str | None = None
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stop_request_path(trace: str | os.PathLike[str]) -> Path:
    """The stop-request file of a trace: ``run.h5`` -> ``run.h5.stop``."""
    path = Path(trace)
    return path.with_name(path.name + STOP_SUFFIX)


def new_request(
    by: str, reason: str, *, rule: str | None = None, step: int | None = None
) -> StopRequest:
    """A request stamped with the current time."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return StopRequest(by=by, reason=reason, requested_at=now, rule=rule, step=step)


def write_stop_request(trace: str | os.PathLike[str], request: StopRequest) -> Path:
    """Ask the writer of ``trace`` to stop: write the request file atomically."""
    target = stop_request_path(trace)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(request.to_dict()), encoding="utf-8")
    os.replace(temporary, target)
    return target


def read_stop_request(trace: str | os.PathLike[str]) -> StopRequest | None:
    """The pending request of ``trace``, or None (no file, or a file that is not a request)."""
    try:
        data = json.loads(stop_request_path(trace).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    step = data.get("step")
    rule = data.get("rule")
    return StopRequest(
        by=str(data.get("by", "unknown")),
        reason=str(data.get("reason", "")),
        requested_at=str(data.get("requested_at", "")),
        rule=str(rule) if rule is not None else None,
        step=int(step) if isinstance(step, int) else None,
    )


def clear_stop_request(trace: str | os.PathLike[str]) -> None:
    """Remove the request file of ``trace`` if there is one."""
    try:
        stop_request_path(trace).unlink()
    except FileNotFoundError:
        pass
