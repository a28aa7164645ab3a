"""Statistics of torch tensors computed with torch, where the tensors live.

Copying every weight and gradient to host memory every step, to compute statistics there,
costs more than a training step of a small model (and far more from a GPU). Here each tensor
takes three to five reductions in torch (min and max together, sum, sum of squares, and where
asked the sum of absolute values and the squared distance to the previous value), and all
results reach the host in one transfer. The definitions are those of docs/trace-format.md.

Activations (:func:`activation_statistics`) get every column and their per-unit measure.
Their counts go through float 0/1 indicators written into reusable scratch memory: a
comparison into a float tensor and a float sum are vectorised, a boolean mask and its sum are
several times slower. What the range already decides (the absolute sum of a non-negative
tensor is its sum; a ReLU output's zeros are its non-positive values) takes no extra pass.

Weights and gradients (:func:`statistics`) leave out what a reduction here does not give
(NaN in the trace): ``zero_frac``/``pos_frac`` unless ``min`` and ``max`` decide them (all
positive, all negative, all zero), and ``l1`` unless asked for.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch

from dbgcli.trace import schema

_NATIVE = (torch.float32, torch.float64)


class Scratch:
    """Reusable work memory: a fresh megabyte-sized temporary per reduction costs page faults
    that take longer than the reduction itself. Each thread gets its own (replicas of
    ``nn.DataParallel`` run their forward hooks side by side)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """A flat buffer of ``x``'s size, dtype and device, overwritten by the next call."""
        buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] | None
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        key = (x.dtype, x.device)
        buffer = buffers.get(key)
        if buffer is None or buffer.numel() < x.numel():
            buffer = buffers[key] = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        return buffer[: x.numel()]


_SCRATCH = Scratch()


def statistics(
    tensors: Sequence[torch.Tensor],
    *,
    l1: bool = False,
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
            parts += _moments(x)
            if l1:
                parts.append(torch.abs(x, out=scratch.like(x)).sum())
            before = previous[index] if previous is not None else None
            if before is not None:
                difference = torch.sub(x, before, out=scratch.like(x))
                parts.append(torch.dot(difference, difference))
                before.copy_(x)
                layout[-1] = (layout[-1][0], True)
        values = _to_host(parts)
        results = []
        for x, (start, has_update) in zip(flats, layout):
            if start < 0:
                results.append(_EMPTY.copy())
                continue
            row = values[start : start + 4 + l1 + has_update]
            absolute = row[4] if l1 else math.nan
            change = row[-1] if has_update else math.nan
            results.append(_finish(x, (*row[:4], absolute, change, math.nan, math.nan), l1))
        return results


def activation_statistics(
    x: torch.Tensor, kind: str, collection: str, *, scratch: Scratch = _SCRATCH
) -> tuple[dict[str, float], torch.Tensor | None]:
    """Every statistic of one activation record, and its per-unit measure (or None).

    The measure is ``active_frac`` for ReLU-like kinds (share of each unit's values > 0) and
    ``unsaturated_frac`` for saturating ones (share strictly inside the non-saturated band: of
    the input for pre-activations, of the output otherwise), over the axis
    :func:`~dbgcli.trace.schema.default_unit_axis` names; docs/trace-format.md defines both.
    It stays on ``x``'s device, as float32.
    """
    kind = kind.lower()
    with torch.no_grad():
        x = _float(x.detach())
        flat = x.reshape(-1)
        n = flat.numel()
        if n == 0:
            return _EMPTY.copy(), None
        measure = schema.unit_measure(kind)
        axis = schema.default_unit_axis(x.dim())
        moments = _moments(flat)
        units = None
        if measure is not None and axis is not None:
            counts = _unit_counts(x, measure, kind, collection, axis, scratch)
            units = (counts / (n // x.shape[axis])).to(torch.float32)
            if measure == schema.UNIT_MEASURE_ACTIVE:
                moments.append(counts.sum(dtype=_exact_count_dtype(n, x.dtype)))  # positives
        values = _to_host(moments)
        low, high, total, squares = values[:4]
        if not all(math.isfinite(v) for v in values[:4]):
            return _finish(x, (*values[:4], *[math.nan] * 4), True), units
        # What the range leaves open takes a pass each, brought back in one more transfer.
        exact = _exact_count_dtype(n, x.dtype)
        pending: dict[str, torch.Tensor] = {}
        if len(values) == 4 and low <= 0 < high:
            pending["positive"] = torch.gt(flat, 0, out=scratch.like(flat)).sum(dtype=exact)
        if low < 0 <= high:
            pending["zero"] = torch.eq(flat, 0, out=scratch.like(flat)).sum(dtype=exact)
        if low < 0 < high:
            pending["absolute"] = torch.abs(flat, out=scratch.like(flat)).sum()
        counted = dict(zip(pending, _to_host(list(pending.values()))))
        if len(values) > 4:
            positive = values[4]
        else:
            positive = counted.get("positive", float(n) if low > 0 else 0.0)
        # With no negative values, what is not positive is zero.
        zero = counted.get("zero", n - positive if low == 0 else 0.0)
        absolute = counted.get("absolute", total if low >= 0 else -total)
        return _finish(
            x, (low, high, total, squares, absolute, math.nan, positive, zero), True
        ), units


_EMPTY = {"count": 0.0, "nan_count": 0.0, "inf_count": 0.0}
_EXACT_FLOAT32_COUNT = 1 << 24


def _moments(x: torch.Tensor) -> list[torch.Tensor]:
    """min, max, sum and sum of squares of a flat tensor, as 0-d tensors on its device."""
    low, high = torch.aminmax(x)
    return [low, high, x.sum(), torch.dot(x, x)]


def _unit_counts(
    x: torch.Tensor, measure: str, kind: str, collection: str, axis: int, scratch: Scratch
) -> torch.Tensor:
    """Per unit, how many of its values the measure counts, in ``x``'s float dtype."""
    indicator = scratch.like(x).view(x.shape)
    others = [d for d in range(x.dim()) if d != axis]
    exact = _exact_count_dtype(x.numel() // x.shape[axis], x.dtype)
    if measure == schema.UNIT_MEASURE_ACTIVE:
        return torch.gt(x, 0, out=indicator).sum(others, dtype=exact)
    lo, hi = schema.unsaturated_band(kind, collection)
    # Inside (lo, hi) = above lo minus at or above hi, since lo < hi.
    above = torch.gt(x, lo, out=indicator).sum(others, dtype=exact)
    return above - torch.ge(x, hi, out=indicator).sum(others, dtype=exact)


def _exact_count_dtype(most: int, dtype: torch.dtype) -> torch.dtype:
    """A float dtype that sums up to ``most`` ones exactly: ``dtype`` (the fastest) when it
    can, float64 otherwise."""
    return dtype if most <= _EXACT_FLOAT32_COUNT else torch.float64


def _to_host(parts: list[torch.Tensor]) -> list[float]:
    """The 0-d results as Python floats, with one device-to-host transfer (in float64 when
    their dtypes differ)."""
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
