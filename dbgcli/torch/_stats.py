"""Statistics of torch tensors computed with torch, where the tensors live.

Copying every weight and gradient to host memory every step, to compute statistics there,
costs more than a training step of a small model (and far more from a GPU). Here each tensor
takes four or five reductions in torch (min and max together, sum, sum of squares, optionally
the sum of absolute values and the squared distance to the previous value), and all results
reach the host in one transfer. The definitions are those of docs/trace-format.md; what a
reduction here does not give is left out (NaN in the trace):

* ``zero_frac``/``pos_frac`` are exact when the signs are decided by ``min`` and ``max`` (all
  positive, all negative, all zero) and otherwise computed only with ``signs=True``;
* ``l1`` only with ``l1=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dbgcli.trace import schema

_NATIVE = (torch.float32, torch.float64)


class Scratch:
    """Reusable work memory: a fresh megabyte-sized temporary per reduction costs page faults
    that take longer than the reduction itself."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < x.numel():
            buffer = self._buffers[key] = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        return buffer[: x.numel()]


_SCRATCH = Scratch()


def statistics(
    tensors: Sequence[torch.Tensor],
    *,
    l1: bool = False,
    signs: bool = False,
    previous: Sequence[torch.Tensor | None] | None = None,
    scratch: Scratch = _SCRATCH,
) -> list[dict[str, float]]:
    """Statistics of each tensor; ``previous[i]`` (updated in place) yields ``update_l2``.

    Every reduction stays on the tensors' device; one ``tolist()`` brings all results back.
    """
    with torch.no_grad():
        flats = [_float(t.detach().reshape(-1)) for t in tensors]
        parts: list[torch.Tensor] = []
        layout: list[tuple[int, bool]] = []  # per tensor: where its values start, has update
        for index, x in enumerate(flats):
            if x.numel() == 0:
                layout.append((-1, False))
                continue
            layout.append((len(parts), False))
            low, high = torch.aminmax(x)
            parts += [low, high, x.sum(), torch.dot(x, x)]
            if l1:
                parts.append(torch.abs(x, out=scratch.like(x)).sum())
            if signs:
                parts += [(x > 0).sum().to(x.dtype), (x == 0).sum().to(x.dtype)]
            before = previous[index] if previous is not None else None
            if before is not None:
                difference = torch.sub(x, before, out=scratch.like(x))
                parts.append(torch.dot(difference, difference))
                before.copy_(x)
                layout[-1] = (layout[-1][0], True)
        # All parts share their tensor's dtype (float32 or float64); one stack per dtype.
        values = _to_host(parts)
        results = []
        for x, (start, has_update) in zip(flats, layout):
            if start < 0:
                results.append({"count": 0.0, "nan_count": 0.0, "inf_count": 0.0})
                continue
            row = values[start : start + 4 + l1 + 2 * signs + has_update]
            absolute = row[4] if l1 else math.nan
            positive, zero = (row[4 + l1], row[5 + l1]) if signs else (math.nan, math.nan)
            change = row[-1] if has_update else math.nan
            results.append(_finish(x, (*row[:4], absolute, change, positive, zero), l1))
        return results


def unit_shares(x: torch.Tensor, kind: str, collection: str) -> torch.Tensor | None:
    """The per-unit activation measure of one record (docs/trace-format.md), or None.

    ``active_frac`` for ReLU-like kinds (share of each unit's values > 0), ``unsaturated_frac``
    for saturating ones (share strictly inside the non-saturated band: of the input for
    pre-activations, of the output otherwise); units are indexed by the axis
    :func:`~dbgcli.trace.schema.default_unit_axis` names. Computed where ``x`` lives.
    """
    kind = kind.lower()
    measure = schema.unit_measure(kind)
    axis = schema.default_unit_axis(x.dim())
    if measure is None or axis is None or x.numel() == 0:
        return None
    with torch.no_grad():
        x = x.detach()
        if measure == schema.UNIT_MEASURE_ACTIVE:
            inside = x > 0
        else:
            lo, hi = schema.unsaturated_band(kind, collection)
            inside = (x > lo) & (x < hi)
        units = inside.shape[axis]
        per_unit = inside.movedim(axis, -1).reshape(-1, units)
        return (per_unit.sum(0, dtype=torch.float64) / per_unit.shape[0]).to(torch.float32)


def _to_host(parts: list[torch.Tensor]) -> list[float]:
    """The 0-d results as Python floats, with one device-to-host transfer per dtype."""
    if not parts:
        return []
    if all(p.dtype == parts[0].dtype for p in parts):
        host: list[float] = torch.stack(parts).tolist()
    else:
        host = torch.stack([p.to(torch.float64) for p in parts]).tolist()
    return host


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in _NATIVE else x.to(torch.float32)


def _finish(x: torch.Tensor, row: tuple[float, ...], l1: bool) -> dict[str, float]:
    n = x.numel()
    out: dict[str, float] = {"count": float(n), "nan_count": 0.0, "inf_count": 0.0}
    low, high, total, squares, absolute, change, positive, zero = row
    if not all(math.isfinite(v) for v in (low, high, total, squares)):
        return {
            **out,
            **_with_nonfinite(x, l1),
            "update_l2": math.sqrt(change) if change == change else math.nan,
        }
    mean = total / n
    variance = max(squares / n - mean * mean, 0.0)
    if mean * mean > 100 * variance:
        # The one-pass variance lost digits; the exact two-pass one is worth a second read.
        with torch.no_grad():
            variance = float(((x - mean) ** 2).sum()) / n
    out.update(
        min=low,
        max=high,
        mean=mean,
        std=0.0 if low == high else math.sqrt(variance),
        l2=math.sqrt(squares),
        update_l2=math.sqrt(change) if change == change else math.nan,
    )
    if l1:
        out["l1"] = absolute
    out.update(_signs(low, high, positive / n, zero / n))
    return out


def _signs(low: float, high: float, positive: float, zero: float) -> dict[str, float]:
    """zero_frac and pos_frac: measured if given, else exact from the range when possible."""
    if positive == positive:
        return {"pos_frac": positive, "zero_frac": zero}
    if low > 0:
        return {"pos_frac": 1.0, "zero_frac": 0.0}
    if high < 0:
        return {"pos_frac": 0.0, "zero_frac": 0.0}
    if low == 0 and high == 0:
        return {"pos_frac": 0.0, "zero_frac": 1.0}
    return {}


def _with_nonfinite(x: torch.Tensor, l1: bool) -> dict[str, float]:
    """The slow, exact path for a tensor holding NaN or infinities (rare, and then urgent)."""
    with torch.no_grad():
        nan = torch.isnan(x)
        inf = torch.isinf(x)
        finite = x[~(nan | inf)].to(torch.float64)
        n = x.numel()
        out = {
            "nan_count": float(nan.sum()),
            "inf_count": float(inf.sum()),
            "zero_frac": float((x == 0).sum()) / n,
            "pos_frac": float((x > 0).sum()) / n,
        }
        if finite.numel():
            low, high = float(finite.min()), float(finite.max())
            mean = float(finite.mean())
            out.update(
                min=low,
                max=high,
                mean=mean,
                std=0.0 if low == high else float(finite.std(unbiased=False)),
                l2=float(torch.linalg.vector_norm(finite)),
            )
            if l1:
                out["l1"] = float(finite.abs().sum())
        return out
