"""Plain-text helpers shared by the terminal outputs (no Rich here)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbgcli.report.model import TraceReport

ELLIPSIS = "…"
# Where a name splits into components: module paths, tag prefixes, keys.
_SEPARATORS = "./:"
# A component that is an index (``layers.3``): it means something only after its name.
_INDEX = re.compile(r"[0-9]+(?:[./:]|$)")


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


def shorten_tag(tag: str, width: int) -> str:
    """A tensor tag in at most ``width`` characters: its collection prefix and its end.

    What tells the tensors of a model apart is at the end of their names (the layer's index,
    the module, the parameter), so the end is kept in whole components (split at ``.``, ``/``
    and ``:``), as many as fit, after the collection prefix (``grad/``, ``act/``), which says
    what the record is. A last component too long on its own is cut from the middle.

    >>> shorten_tag("grad/distilbert.transformer.layer.0.attention.q_lin.weight", 40)
    'grad/…layer.0.attention.q_lin.weight'
    """
    if len(tag) <= width:
        return tag
    slash = tag.find("/")
    # The prefix is worth its characters while it is short beside the room.
    head = tag[: slash + 1] if 0 < slash + 1 <= width // 4 else ""
    body = tag[len(head) :]
    room = width - len(head) - len(ELLIPSIS)
    for index, char in enumerate(body):
        if (
            char in _SEPARATORS
            and len(body) - index - 1 <= room
            and not _INDEX.match(body, index + 1)  # an index stays with its name (layer.0)
        ):
            return head + ELLIPSIS + body[index + 1 :]
    return shorten_middle(tag, width)


def shorten_path(path: str, width: int) -> str:
    """A file path in at most ``width`` characters: the file name and as many of the folders
    that hold it as fit (``…/runs/b/run.h5``); a file name longer than that alone is cut
    from the middle, so that its start and its extension remain.

    >>> shorten_path("/tmp/explore/traces/transformer_encoder_pos_embedding.h5", 40)
    '…/transformer_encoder_pos_embedding.h5'
    """
    if len(path) <= width:
        return path
    name_start = max(path.rfind("/"), path.rfind("\\"))
    for index, char in enumerate(path):
        if char in "/\\" and len(path) - index + len(ELLIPSIS) <= width:
            return ELLIPSIS + path[index:]
    return shorten_middle(path[name_start + 1 :], width)


def shorten_apart(
    names: Iterable[str], width: int, shorten: Callable[[str, int], str] | None = None, /
) -> dict[str, str]:
    """Each name shortened to ``width`` (by ``shorten(name, width)``, :func:`shorten_tag` by
    default), and names that would look alike lengthened until they differ: two tensors
    of one report never print the same (``grad/…q_lin.weight`` twice becomes
    ``grad/…layer.0.attention.q_lin.weight`` and ``grad/…layer.1.attention.q_lin.weight``).
    Those may exceed ``width``; the terminal wraps them, within its columns."""
    cut = shorten or shorten_tag
    widths = dict.fromkeys(names, width)
    shown = {name: cut(name, width) for name in widths}
    while True:
        alike: dict[str, list[str]] = {}
        for name, short in shown.items():
            alike.setdefault(short, []).append(name)
        crowded = [name for group in alike.values() if len(group) > 1 for name in group]
        if not crowded:
            return shown
        for name in crowded:  # distinct names: in full at the latest, they differ
            widths[name] = min(len(name), widths[name] + 1)
            shown[name] = name if widths[name] >= len(name) else cut(name, widths[name])


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
