"""Plain-text helpers shared by the terminal outputs (no Rich here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbgcli.report.model import TraceReport

ELLIPSIS = "…"
# Where a name splits into components: module paths, tag prefixes, keys.
_SEPARATORS = "./:"


def counted(count: int, noun: str) -> str:
    """``"1 finding"``, ``"3 findings"``: a count with its noun, plural unless one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def shorten_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, shortened from the middle with ``…``.

    Both ends survive: the start says where a tensor sits (``grad/bert.encoder…``) and the end
    what it is (``…key.bias``), while cutting at the end would leave many tensors of one model
    looking the same. The end keeps whole components when a separator (``.``, ``/``, ``:``) lies
    in its half, and the start takes the characters left over.

    >>> shorten_middle("bert.encoder.layer.0.attention.self.key.bias", 30)
    'bert.encoder.lay…self.key.bias'
    """
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    budget = width - 1
    tail = text[len(text) - budget // 2 :] if budget // 2 else ""
    cut = next((i for i, char in enumerate(tail) if char in _SEPARATORS), -1)
    # Starting the end at a component boundary is worth a few characters, not half of them.
    if 0 <= cut < len(tail) // 2:
        tail = tail[cut + 1 :]
    return text[: budget - len(tail)] + ELLIPSIS + tail


def run_line(trace: TraceReport) -> str:
    """The run in one line: steps per mode, series, framework, and whether it is complete."""
    summary = trace.summary
    parts = []
    modes = summary.get("modes", {})
    if modes:
        parts.append(
            ", ".join(
                f"{m} {s['first_step']}..{s['last_step']} ({s['steps']} steps)"
                for m, s in modes.items()
            )
        )
    tensors = summary.get("tensors", 0)
    scalars = summary.get("scalars", 0)
    parts.append(
        f"{counted(scalars, 'scalar')}, {counted(tensors, 'tensor')}"
        + (f" ({summary.get('raw_tensors', 0)} with full values)" if tensors else "")
    )
    if summary.get("framework"):
        parts.append(str(summary["framework"]))
    if not trace.complete:
        parts.append("incomplete: " + "; ".join(trace.incomplete_reasons))
    return " · ".join(parts)
