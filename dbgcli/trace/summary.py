"""A plain-data summary of a trace: what ``dbg info`` shows, in any output format."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dbgcli.trace import schema
from dbgcli.trace.reader import Trace, open_trace


def summarize_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """:func:`summarize` of the trace at ``path``."""
    with open_trace(path) as trace:
        return summarize(trace)


def summarize(trace: Trace) -> dict[str, Any]:
    """Describe a trace: metadata, step range per mode, and every tag.

    Reads step indexes but never tensor values.
    """
    tags = []
    per_mode: dict[str, dict[str, int]] = {}
    for info in sorted(trace.tags(), key=lambda i: (i.scalar is False, i.collection or "", i.tag)):
        steps, modes = trace.index(info.tag)
        mode_names = [schema.MODES[code] for code in np.unique(modes)]
        for code, name in enumerate(schema.MODES):
            selected = steps[modes == code]
            if selected.size == 0:
                continue
            span = per_mode.setdefault(
                name, {"first_step": int(selected.min()), "last_step": int(selected.max())}
            )
            span["first_step"] = min(span["first_step"], int(selected.min()))
            span["last_step"] = max(span["last_step"], int(selected.max()))
        entry: dict[str, Any] = {
            "tag": info.tag,
            "type": "scalar" if info.scalar else "tensor",
            "collection": info.collection,
            "kind": info.kind,
            "records": info.records,
            "modes": mode_names,
            "first_step": int(steps.min()) if steps.size else None,
            "last_step": int(steps.max()) if steps.size else None,
        }
        if not info.scalar:
            entry.update(
                shape=list(info.shape) if info.shape is not None else None,
                dtype=info.dtype,
                raw_records=info.raw_records,
                raw_shapes=[list(shape) for shape in info.shapes],
                stats="stored" if info.has_stats else "derived",
            )
        else:
            values = trace.scalar(info.tag).values
            finite = values[np.isfinite(values)]
            entry.update(
                last_value=float(values[-1]) if values.size else None,
                min=float(finite.min()) if finite.size else None,
                max=float(finite.max()) if finite.size else None,
                non_finite=int(values.size - finite.size),
            )
        tags.append(entry)
    for name, span in per_mode.items():
        span["steps"] = _distinct_steps(trace, name)
    return {
        "version": 1,
        "path": str(trace.path),
        "size_bytes": trace.file_size,
        "format_version": f"{trace.format_version[0]}.{trace.format_version[1]}",
        "dbgcli_version": trace.dbgcli_version or None,
        "created": trace.created or None,
        "complete": trace.complete,
        "incomplete_reasons": list(trace.incomplete_reasons),
        "cut_series": list(trace.cut_series),
        "warnings": list(trace.warnings),
        "metadata": trace.metadata,
        "modes": per_mode,
        "tags": tags,
    }


def _distinct_steps(trace: Trace, mode: str) -> int:
    code = schema.MODE_CODES[mode]
    seen = [steps[modes == code] for steps, modes in (trace.index(i.tag) for i in trace.tags())]
    return int(np.unique(np.concatenate(seen)).size) if seen else 0
