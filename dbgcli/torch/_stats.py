"""Statistics of torch tensors computed with torch, where the tensors live, in batches.

Copying every weight and gradient to host memory to compute statistics there costs more than a
training step of a small model (and far more from a GPU); so does a handful of small torch
operations per tensor, which cost about 28 us each time whatever the tensor's size. Here:

* Tensors of one numel and dtype are **stacked** into one ``(k, n)`` block and reduced along its
  rows, so two hundred small parameters cost a few operations (:class:`Reducer`). Tensors of
  65,536 values or more are reduced one by one without a copy: their arithmetic outweighs the
  per-operation cost, and stacking them would copy them.
* The results of everything a step records stay on the device as float64 rows, and reach the
  host in **one** transfer (:class:`Transfer`, the one place that copies to the host); on a GPU
  the copy is asynchronous and the hook hands the numbers to the writer once it has landed, so
  a training step never waits for its statistics.

Every record gets the columns of the trace format (docs/trace-format.md) that
:class:`dbgcli.trace.stats.StatsKernel` computes: count, min, max, mean, std, l2, and where asked
l1, the update norm and the fractions of zeros and of positive values (weights and gradients
leave those out unless their range decides them: they would cost two more passes; the rules
need them of activations). The variance is the two-pass one, centred on the mean the device
computed, so it keeps its digits where ``E[x^2] - E[x]^2`` would lose them. Counts go through
float 0/1 indicators written into reusable scratch memory: a comparison into a float tensor
and a float sum are vectorised, a boolean mask and its sum are several times slower.

A record holding NaN or infinities (or whose float32 sums overflow) is rare and then urgent:
its exact finite-only statistics are recomputed on the host from the values it had (the
stacked copy, or the tensor itself if it is unchanged since); that costs extra reads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dbgcli.trace import schema

_NATIVE = (torch.float32, torch.float64)

#: Tensors with at least this many values are reduced alone, without being copied into a block.
STACK_BELOW = 1 << 16
_EXACT_FLOAT32_COUNT = 1 << 24
_COLUMN = {name: index for index, name in enumerate(schema.STAT_COLUMNS)}

# Columns of the rows a reduction yields; the optional ones follow in this order when asked.
_BASE = ("min", "max", "sum", "centre", "centred")


class Scratch:
    """Reusable work memory: a fresh megabyte-sized temporary per reduction costs page faults
    that take longer than the reduction itself. Each thread gets its own (replicas of
    ``nn.DataParallel`` run their forward hooks side by side)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def like(self, x: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """A buffer of ``x``'s shape, dtype and device, overwritten by the next call with the
        same slot."""
        buffers: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] | None
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        key = (slot, x.dtype, x.device)
        buffer = buffers.get(key)
        if buffer is None or buffer.numel() < x.numel():
            buffer = buffers[key] = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        return buffer[: x.numel()].view(x.shape)


_SCRATCH = Scratch()


def to_host(parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Every result of a step in one device-to-host copy: the hook's only transfer.

    ``parts`` are 1-d float64 tensors on one device. On a CUDA device the copy goes into pinned
    memory without blocking, and the returned event tells when it has landed; elsewhere the
    host tensor is complete on return.
    """
    values = parts[0] if len(parts) == 1 else torch.cat(list(parts))
    if values.device.type == "cuda":
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event
    return values.cpu(), None


class Transfer:
    """Device results gathered for one transfer; :meth:`start` sends them, :meth:`values`
    returns them on the host."""

    def __init__(self) -> None:
        self._parts: dict[torch.device, list[torch.Tensor]] = {}
        self._sizes: dict[torch.device, int] = {}
        self._host: dict[torch.device, tuple[torch.Tensor, torch.cuda.Event | None]] = {}
        self._arrays: dict[torch.device, np.ndarray] | None = None
        self._lock = threading.Lock()  # replicas of nn.DataParallel add side by side

    def add(self, values: torch.Tensor) -> tuple[torch.device, int]:
        """Queue a tensor (flattened to float64); returns where its values will be."""
        flat = values.detach().reshape(-1).to(torch.float64)
        device = flat.device
        with self._lock:
            offset = self._sizes.get(device, 0)
            self._parts.setdefault(device, []).append(flat)
            self._sizes[device] = offset + flat.numel()
        return device, offset

    def start(self) -> None:
        """Start the copy (one per device the results live on; one on a single device)."""
        for device, parts in self._parts.items():
            self._host[device] = to_host(parts)
        self._parts = {}

    def ready(self) -> bool:
        """Whether :meth:`values` can return without waiting for a device."""
        return all(event is None or event.query() for _, event in self._host.values())

    def values(self, device: torch.device) -> np.ndarray:
        """The results queued on ``device``, as float64 (waits for the copy if needed)."""
        if self._arrays is None:
            arrays = {}
            for where, (host, event) in self._host.items():
                if event is not None:
                    event.synchronize()
                arrays[where] = host.numpy()
            self._arrays = arrays
        return self._arrays[device]


@dataclass
class Pending:
    """The reductions of a block of same-sized records queued in a :class:`Transfer`, to be
    turned into statistics once it has landed.

    ``source`` is the ``(k, n)`` block the rows were reduced from and its version then: the
    exact path of records holding NaN or infinities reads it, if it is unchanged.
    """

    transfer: Transfer
    device: torch.device
    offset: int
    columns: tuple[str, ...]
    records: int
    n: int
    source: tuple[torch.Tensor, int] | None
    _table: np.ndarray | None = None

    def table(self) -> np.ndarray:
        """``(records, len(STAT_COLUMNS))`` float64 statistics in schema order, NaN where not
        computed; waits for the transfer if it has not landed."""
        if self._table is None:
            self._table = self._compute()
        return self._table

    def statistics(self) -> list[dict[str, float]]:
        """The computed statistics of each record, by name."""
        return [
            {name: value for name, value in zip(schema.STAT_COLUMNS, row) if value == value}
            for row in self.table().tolist()
        ]

    def _compute(self) -> np.ndarray:
        records, n = self.records, self.n
        table = np.full((records, len(schema.STAT_COLUMNS)), np.nan)
        table[:, _COLUMN["count"]] = n
        if n == 0:
            table[:, _COLUMN["nan_count"]] = table[:, _COLUMN["inf_count"]] = 0.0
            return table
        width = len(self.columns)
        values = self.transfer.values(self.device)[self.offset : self.offset + records * width]
        row = dict(zip(self.columns, values.reshape(records, width).T))
        finite = _finish(row, n, table)
        for index in np.flatnonzero(~finite):
            exact = _with_nonfinite(self.source, int(index), n, "l1" in row, row.get("update"))
            table[index] = np.nan
            for name, value in exact.items():
                table[index, _COLUMN[name]] = value
        return table


class Reducer:
    """Queues the reductions of a list of tensors (a model's weights, or its gradients).

    Args:
        l1: Also the sum of absolute values.
        signs: Also the fractions of zeros and of positive values (otherwise they are given
            only where min and max decide them).
        updates: Also ``update_l2``, the norm of each tensor's change since the last call that
            saw it under the same name: keeps a float32 copy of the tensors.
    """

    def __init__(self, *, l1: bool = False, signs: bool = False, updates: bool = False) -> None:
        self.l1 = l1
        self.signs = signs
        self.updates = updates
        self.columns = _columns(l1, signs, updates)
        self._previous: dict[str, torch.Tensor] = {}  # per block of names, their last values
        self._blocks: dict[str, torch.Tensor] = {}  # per block of names, its stacking memory

    def reduce(
        self, tensors: Sequence[torch.Tensor], names: Sequence[str], transfer: Transfer
    ) -> list[tuple[list[int], Pending]]:
        """Queue the statistics of ``tensors`` in ``transfer``; returns the blocks they were
        reduced in: the indices of their tensors, and what gives their statistics once the
        transfer has landed. ``names`` identify tensors across calls."""
        groups: dict[tuple[tuple[int, ...], torch.dtype, torch.device], list[int]] = {}
        blocks: list[list[int]] = []
        for index, tensor in enumerate(tensors):
            if tensor.numel() >= STACK_BELOW:
                blocks.append([index])
            else:
                groups.setdefault((tensor.shape, tensor.dtype, tensor.device), []).append(index)
        blocks[:0] = groups.values()
        with torch.no_grad():
            return [
                (
                    members,
                    self._reduce_block(
                        [tensors[i] for i in members],
                        "\0".join(names[i] for i in members),
                        transfer,
                    ),
                )
                for members in blocks
            ]

    def _reduce_block(
        self, members: list[torch.Tensor], name: str, transfer: Transfer
    ) -> Pending:
        first = members[0]
        k, n = len(members), first.numel()
        if n == 0:
            return Pending(transfer, first.device, 0, self.columns, k, 0, None)
        work = first.dtype if first.dtype in _NATIVE else torch.float32
        if k == 1 and not self.updates:
            block = first.detach().reshape(1, n)
            source = first
            if block.dtype != work:
                block = block.to(work)
        else:
            memory = self._blocks.get(name)
            if memory is None or memory.shape != (k, n) or memory.dtype != work:
                memory = torch.empty(k, n, dtype=work, device=first.device)
            torch.stack(members, out=memory.view(k, *first.shape))
            block = source = memory
            self._blocks[name] = memory
        previous = self._previous.get(name) if self.updates else None
        if previous is not None and (previous.shape != block.shape or previous.dtype != work):
            previous = None
        values = reduce_rows(
            block, l1=self.l1, signs=self.signs, updates=self.updates, previous=previous
        )
        if self.updates:
            # The stacked copy becomes the previous values, and the old previous memory the
            # next stacking memory: no copy beyond the stacking.
            self._previous[name] = block
            if previous is not None:
                self._blocks[name] = previous
            else:
                del self._blocks[name]
        device, offset = transfer.add(values)
        return Pending(transfer, device, offset, self.columns, k, n, (source, source._version))


def _columns(l1: bool, signs: bool, updates: bool) -> tuple[str, ...]:
    return (
        *_BASE,
        *(("l1",) if l1 else ()),
        *(("update",) if updates else ()),
        *(("positive", "zero") if signs else ()),
    )


def reduce_rows(
    block: torch.Tensor,
    *,
    l1: bool = False,
    signs: bool = False,
    updates: bool = False,
    previous: torch.Tensor | None = None,
    scratch: Scratch = _SCRATCH,
) -> torch.Tensor:
    """Per row of a ``(k, n)`` float32/float64 block, the columns of :func:`_columns` as a
    ``(k, columns)`` float64 tensor on the block's device: min, max, sum, the mean the device
    centred on, the sum of squared deviations from it, then as asked the absolute sum, the
    squared distance to ``previous`` (NaN without one), the counts of values > 0 and == 0."""
    rows, n = block.shape
    total = block.sum(1)
    centre = total / n
    centred = torch.sub(block, centre[:, None], out=scratch.like(block))
    columns = [block.amin(1), block.amax(1), total, centre, torch.linalg.vecdot(centred, centred)]
    if l1:
        columns.append(torch.abs(block, out=scratch.like(block)).sum(1))
    if updates:
        if previous is None:
            columns.append(torch.full((rows,), math.nan, dtype=block.dtype, device=block.device))
        else:
            difference = torch.sub(block, previous, out=scratch.like(block))
            columns.append(torch.linalg.vecdot(difference, difference))
    if signs:
        exact = _exact_count_dtype(n, block.dtype)
        indicator = scratch.like(block)
        columns.append(torch.gt(block, 0, out=indicator).sum(1, dtype=exact).to(block.dtype))
        columns.append(torch.eq(block, 0, out=indicator).sum(1, dtype=exact).to(block.dtype))
    return torch.stack(columns, dim=1).to(torch.float64)


def reduce_activation(
    x: torch.Tensor, kind: str, collection: str, transfer: Transfer, *, scratch: Scratch = _SCRATCH
) -> tuple[Pending, Callable[[], np.ndarray] | None]:
    """Queue every statistic of one activation record and its per-unit measure.

    Returns what gives the statistics once ``transfer`` has landed, and a function that gives
    the measure (float32, per unit) or None when the kind or shape has none. The measure is
    ``active_frac`` for ReLU-like kinds (share of each unit's values > 0) and
    ``unsaturated_frac`` for saturating ones (share strictly inside the non-saturated band: of
    the input for pre-activations, of the output otherwise), over the axis
    :func:`~dbgcli.trace.schema.default_unit_axis` names; docs/trace-format.md defines both.
    """
    kind = kind.lower()
    columns = _columns(True, True, False)
    with torch.no_grad():
        values = x.detach()
        n = values.numel()
        if n == 0:
            return Pending(transfer, values.device, 0, columns, 1, 0, None), None
        work = values if values.dtype in _NATIVE else values.to(torch.float32)
        rows = reduce_rows(work.reshape(1, n), l1=True, signs=True, scratch=scratch)
        device, offset = transfer.add(rows)
        pending = Pending(transfer, device, offset, columns, 1, n, (values, values._version))
        measure = schema.unit_measure(kind)
        axis = schema.default_unit_axis(work.dim())
        if measure is None or axis is None:
            return pending, None
        counts = _unit_counts(work, measure, kind, collection, axis, scratch)
        units = counts / (n // work.shape[axis])
        unit_device, unit_offset = transfer.add(units)
        size = units.numel()

        def measure_values() -> np.ndarray:
            host = transfer.values(unit_device)[unit_offset : unit_offset + size]
            return host.astype(np.float32)

        return pending, measure_values


def statistics(
    tensors: Sequence[torch.Tensor], *, l1: bool = False, signs: bool = False
) -> list[dict[str, float]]:
    """Statistics of each tensor, batched as the hook does, fetched at once (one transfer);
    columns not computed are left out."""
    transfer = Transfer()
    blocks = Reducer(l1=l1, signs=signs).reduce(
        tensors, [str(i) for i in range(len(tensors))], transfer
    )
    transfer.start()
    out: list[dict[str, float]] = [{} for _ in tensors]
    for members, pending in blocks:
        for index, stats in zip(members, pending.statistics()):
            out[index] = stats
    return out


def activation_statistics(
    x: torch.Tensor, kind: str, collection: str
) -> tuple[dict[str, float], np.ndarray | None]:
    """Every statistic of one activation record and its per-unit measure (or None), fetched
    at once; see :func:`reduce_activation`."""
    transfer = Transfer()
    pending, units = reduce_activation(x, kind, collection, transfer)
    transfer.start()
    return pending.statistics()[0], None if units is None else units()


def _unit_counts(
    x: torch.Tensor, measure: str, kind: str, collection: str, axis: int, scratch: Scratch
) -> torch.Tensor:
    """Per unit, how many of its values the measure counts, in ``x``'s float dtype."""
    indicator = scratch.like(x)
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


def _finish(row: dict[str, np.ndarray], n: int, table: np.ndarray) -> np.ndarray:
    """Fill ``table`` (schema order) with the statistics of a block's records from their
    reduction columns (see :func:`reduce_rows`); returns which records are finite (the others
    need :func:`_with_nonfinite`)."""
    low, high, total, centre, centred = (row[c] for c in _BASE)
    # An absolute sum that overflows comes with squared deviations that do.
    finite = np.isfinite(low) & np.isfinite(high) & np.isfinite(total) & np.isfinite(centred)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = total / n
        # The sum of squares from the deviations around the device's mean (exact algebra);
        # that mean differs from ``mean`` by float32 rounding only, which the variance about
        # it does not see.
        squares = np.maximum(centred + centre * (2 * total - n * centre), 0.0)
        std = np.sqrt(centred / n)
        std[low == high] = 0.0
        columns: dict[str, Any] = {
            "nan_count": 0.0,
            "inf_count": 0.0,
            "min": low,
            "max": high,
            "mean": mean,
            "std": std,
            "l2": np.sqrt(squares),
            "l1": row.get("l1", np.nan),
            "update_l2": np.sqrt(row["update"]) if "update" in row else np.nan,
        }
        if "positive" in row:
            columns["pos_frac"] = row["positive"] / n
            columns["zero_frac"] = row["zero"] / n
        else:
            # Where min and max decide them; NaN (not computed) otherwise.
            all_zero = (low == 0) & (high == 0)
            columns["pos_frac"] = np.where(
                low > 0, 1.0, np.where((high < 0) | all_zero, 0.0, np.nan)
            )
            columns["zero_frac"] = np.where(
                (low > 0) | (high < 0), 0.0, np.where(all_zero, 1.0, np.nan)
            )
    for name, column in columns.items():
        table[:, _COLUMN[name]] = column
    finite_rows: np.ndarray = finite
    return finite_rows


def _with_nonfinite(
    source: tuple[torch.Tensor, int] | None, index: int, n: int, l1: bool, change: Any
) -> dict[str, float]:
    """The slow, exact path for a record holding NaN or infinities (rare, and then urgent),
    read from row ``index`` of the values it was reduced from; if those changed since, only
    its count and update norm are known."""
    out: dict[str, float] = {"count": float(n)}
    if change is not None:
        out["update_l2"] = math.sqrt(change[index]) if change[index] >= 0 else math.nan
    if source is None or source[0]._version != source[1]:
        return out
    with torch.no_grad():
        x = source[0].detach().reshape(-1, n)[index].to("cpu", torch.float64)
        nan = torch.isnan(x)
        inf = torch.isinf(x)
        finite = x[~(nan | inf)]
        out.update(
            nan_count=float(nan.sum()),
            inf_count=float(inf.sum()),
            zero_frac=float((x == 0).sum()) / n,
            pos_frac=float((x > 0).sum()) / n,
        )
        if finite.numel():
            low, high = float(finite.min()), float(finite.max())
            out.update(
                min=low,
                max=high,
                mean=float(finite.mean()),
                std=0.0 if low == high else float(finite.std(unbiased=False)),
                l2=float(torch.linalg.vector_norm(finite)),
            )
            if l1:
                out["l1"] = float(finite.abs().sum())
        return out
