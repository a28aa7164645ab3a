"""Statistics of torch tensors computed where they live: by a compiled kernel, or in batches.

Copying every weight and gradient to host memory to compute statistics there costs more than a
training step of a small model (and far more from a GPU); so does a handful of small torch
operations per tensor, which cost tens of microseconds each whatever the tensor's size. Here:

* Plain float32 tensors in host memory go through the **compiled kernel**
  (:mod:`dbgcli.torch._fused`, built where a C compiler is present): one pass over each, one
  call for all of a step's weights (or gradients, or activations of one shape), giving the
  finished statistics rows (:func:`_fused_statistics`), split among torch's intra-op threads
  as ATen splits an element-wise operation where the kernel's OpenMP runtime is torch's
  (:func:`kernel_threads`). torch's operations need five to seven passes over a weight for
  the same numbers. Everything below is the path for the other tensors (GPU, float16,
  bfloat16, float64), and for all of them without the kernel.
* Tensors of one shape and dtype are **stacked** into one ``(k, n)`` block and reduced along
  its rows, so two hundred small parameters cost a few dozen operations (:class:`Reducer`).
  Tensors of 65,536 values or more are reduced one by one without a copy: their arithmetic
  outweighs the per-operation cost, and stacking them would copy them.
* Activations of one shape (a pass's layers of one width) are stacked likewise when their
  forward pass ends (:func:`reduce_activations`), and the host turns every block with the
  same columns into statistics in one vectorised pass (:func:`compute_tables`).
* The results stay on the device, column by column, and everything a step records reaches the
  host in **one** transfer (:class:`Transfer`; :func:`to_host` is the one place that copies to
  the host); on a GPU the copy is asynchronous and the hook hands the numbers to the writer
  once it has landed, so a training step never waits for its statistics.

Every record gets the columns of the trace format (docs/trace-format.md), equal to what
:class:`dbgcli.trace.stats.StatsKernel` computes: count, NaN and inf counts, min, max, mean,
std, l2, and where asked l1, the update norm and the fractions of zeros and of positive values
(weights and gradients leave the fractions out unless their range decides them: two more
passes that the rules need of activations only). Blocks of small tensors get the two-pass
variance, centred on the mean the device computed; tensors reduced alone get the one-pass
``E[x^2] - E[x]^2`` and, where that loses digits (the writer's own test), the exact path.
Counts go through float 0/1 indicators written into reusable scratch memory: a comparison into
a float tensor and a float sum are vectorised, a boolean mask and its sum are several times
slower.

The exact path, for a record holding NaN or infinities (rare, and then urgent) or a variance
short of digits, reads the record again from the values it was reduced from (the stacked
copy, the copy kept for the update norm, or the tensor itself if it is unchanged since) and
computes in float64; that costs extra reads, for such records only.
"""

from __future__ import annotations

import array
import math
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dbgcli.trace import schema

try:
    from dbgcli.torch import _fused
except ImportError:  # built without a C compiler: the torch operations compute the same
    _fused = None  # type: ignore[assignment]
#: The kernel's calling convention this module speaks (``INTERFACE`` in _fused.c).
KERNEL_INTERFACE = 4
if getattr(_fused, "INTERFACE", None) != KERNEL_INTERFACE:
    _fused = None  # type: ignore[assignment]  # a build older than this code: torch's path

_NATIVE = (torch.float32, torch.float64)
_POINTER_CODE = "Q" if struct.calcsize("P") == 8 else "I"  # uintptr_t
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_HOST = torch.device("cpu")

#: Tensors with at least this many values are reduced alone, without being copied into a block.
STACK_BELOW = 1 << 16
_EXACT_FLOAT32_COUNT = 1 << 24
_COLUMN = {name: index for index, name in enumerate(schema.STAT_COLUMNS)}
_NONNEGATIVE_KINDS = frozenset({"relu", "relu6"})
_MOMENTS = [_COLUMN[name] for name in ("min", "max", "mean", "std", "l2")]


class Scratch:
    """Reusable work memory: a fresh megabyte-sized temporary per reduction costs page faults
    that take longer than the reduction itself. Each thread gets its own (replicas of
    ``nn.DataParallel`` run their forward hooks side by side)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """A buffer of ``x``'s shape, dtype and device, overwritten by the next call."""
        buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] | None
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        key = (x.dtype, x.device)
        buffer = buffers.get(key)
        if buffer is None or buffer.numel() < x.numel():
            buffer = buffers[key] = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        return buffer[: x.numel()].view(x.shape)


_SCRATCH = Scratch()


def to_host(parts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Every result of a step in one device-to-host copy: the hook's only transfer.

    ``parts`` are 1-d tensors on one device; they arrive as one float64 tensor. On a CUDA
    device the copy goes into pinned memory without blocking, and the returned event tells when
    it has landed; elsewhere the host tensor is complete on return.
    """
    values = torch.cat(list(parts)).to(torch.float64)
    if values.device.type == "cuda":
        with torch.cuda.device(values.device):  # the event on the stream that copies
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
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

    def add(self, *values: torch.Tensor) -> tuple[torch.device, int]:
        """Queue tensors of one device, one after the other (flattened; they reach the host
        as float64); returns where the first value will be."""
        device = values[0].device
        with self._lock:
            offset = self._sizes.get(device, 0)
            parts = self._parts.setdefault(device, [])
            size = offset
            for tensor in values:  # results of no_grad reductions, or detached
                parts.append(tensor if tensor.dim() == 1 else tensor.reshape(-1))
                size += tensor.numel()
            self._sizes[device] = size
        return device, offset

    def start(self) -> None:
        """Start the copy (one per device the results live on; one on a single device)."""
        for device, parts in self._parts.items():
            self._host[device] = to_host(parts)
        self._parts = {}

    def ready(self) -> bool:
        """Whether :meth:`values` can return without waiting for a device."""
        return all(
            event is None or event.query()  # type: ignore[no-untyped-call]
            for _, event in self._host.values()
        )

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


# Values reduced, their version then, and the record's row of ``rows`` in them.
Source = tuple[torch.Tensor, int, int, int]


@dataclass
class Pending:
    """Reductions of records queued in a :class:`Transfer`, column after column, to be turned
    into statistics once it has landed.

    ``counts`` are the records' numbers of values; ``sources`` what each was reduced from, its
    version then and its row in it: the exact path (NaN or infinities, a variance whose digits
    are lost) reads it again, if it is unchanged.
    """

    transfer: Transfer
    device: torch.device
    offset: int
    columns: tuple[str, ...]
    counts: np.ndarray
    sources: list[Source]
    precise: bool = False  # reduced in float64
    nonnegative: bool = False  # known >= 0: no absolute sum or zero count was reduced
    _table: np.ndarray | None = None

    def table(self) -> np.ndarray:
        """``(records, len(STAT_COLUMNS))`` float64 statistics in schema order, NaN where not
        computed; waits for the transfer if it has not landed."""
        if self._table is None:
            compute_tables([self])
        assert self._table is not None
        return self._table

    def statistics(self) -> list[dict[str, float]]:
        """The computed statistics of each record, by name."""
        return [
            {name: value for name, value in zip(schema.STAT_COLUMNS, row) if value == value}
            for row in self.table().tolist()
        ]

    def values(self, width: int) -> np.ndarray:
        """The ``(width, records)`` reductions as they landed, one row per column."""
        records = len(self.counts)
        landed = self.transfer.values(self.device)
        return landed[self.offset : self.offset + records * width].reshape(width, records)

    def redo(self, index: int, l1: bool) -> None:
        """Take the exact path for record ``index`` of the table (NaN or infinities, or a
        variance short of digits), if its values are still there."""
        assert self._table is not None
        row = self._table[index]
        exact = _exact(self.sources[index], l1 or self.nonnegative)
        if exact is None and np.isfinite(row[_MOMENTS]).all():
            return  # a one-pass variance, the best there is without the values
        kept = {"count": row[_COLUMN["count"]], "update_l2": row[_COLUMN["update_l2"]]}
        row[:] = np.nan
        for name, value in {**(exact or {}), **kept}.items():
            row[_COLUMN[name]] = value


def compute_tables(pendings: Sequence[Pending]) -> None:
    """Turn the reductions of ``pendings`` into their tables, waiting for their transfers if
    needed: the records of every block with the same columns at once, since the host's
    arithmetic costs the same for one record as for a hundred."""
    groups: dict[tuple[Any, ...], list[Pending]] = {}
    for pending in pendings:
        if pending._table is None:
            key = (pending.columns, pending.precise, pending.nonnegative)
            groups.setdefault(key, []).append(pending)
    for (columns, precise, nonnegative), members in groups.items():
        counts = np.concatenate([pending.counts for pending in members])
        table = np.full((len(counts), len(schema.STAT_COLUMNS)), np.nan)
        table[:, _COLUMN["count"]] = counts
        if not columns:  # empty tensors
            table[:, _COLUMN["nan_count"]] = table[:, _COLUMN["inf_count"]] = 0.0
            done = np.ones(len(counts), dtype=bool)
        else:
            width = len(columns)
            values = np.concatenate([pending.values(width) for pending in members], axis=1)
            done = _finish(dict(zip(columns, values)), counts, table, precise, nonnegative)
        first = 0
        for pending in members:
            records = len(pending.counts)
            pending._table = table[first : first + records]
            for index in np.flatnonzero(~done[first : first + records]).tolist():
                pending.redo(index, "l1" in columns)
            first += records


def _fusable(tensor: torch.Tensor) -> bool:
    """Whether the compiled kernel reduces ``tensor``: a plain float32 tensor in host memory,
    dense and contiguous. Subclasses (a DTensor, a wrapper that dispatches its operations)
    and lazily negated views do not hold their values at ``data_ptr()``: torch's path takes
    them."""
    return (
        _fused is not None
        and type(tensor) in _PLAIN_TENSORS
        and tensor.dtype == torch.float32
        and tensor.is_cpu
        and tensor.layout == torch.strided
        and tensor.is_contiguous()
        and not tensor.is_neg()
    )


def _openmp_shared_with_torch() -> bool:
    """Whether the kernel was built with OpenMP and runs on the OpenMP runtime whose threads
    are torch's: ATen's parallel backend is OpenMP, and the ``omp_get_max_threads`` the kernel
    calls is the one torch's own extension module reaches. A second runtime (a torch built
    with Intel's, say) would start threads of its own beside torch's, which keep their cores
    busy waiting for work for a while after each parallel region."""
    if _fused is None or not _fused.OPENMP:
        return False
    try:
        import ctypes

        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return False
        # RTLD_NOLOAD: torch's extension module is loaded already; never load another copy.
        torch_module = ctypes.CDLL(torch._C.__file__, mode=os.RTLD_NOLOAD)
        theirs = ctypes.cast(torch_module.omp_get_max_threads, ctypes.c_void_p).value
    except Exception:  # noqa: BLE001 - no ctypes, no such library or symbol: one thread
        return False
    return theirs is not None and theirs == _fused.openmp_address()


_SHARES_TORCH_THREADS = _openmp_shared_with_torch()


def kernel_threads() -> int:
    """How many threads the compiled kernel may split a call's tensors among: torch's
    intra-op threads (``torch.get_num_threads()``, per calling thread) where its OpenMP runtime
    is torch's own, else 1."""
    return torch.get_num_threads() if _SHARES_TORCH_THREADS else 1


def _fused_statistics(
    tensors: Sequence[torch.Tensor],
    transfer: Transfer,
    *,
    l1: bool,
    signs: bool,
    nonnegative: bool = False,
    copies: Sequence[torch.Tensor] | None = None,
    first_seen: Sequence[int] = (),
    pointers: array.array[int] | None = None,
) -> Pending:
    """The statistics of float32 host ``tensors`` by the compiled kernel, complete at once
    (no transfer, no host arithmetic): records with NaN or infinities take the exact path now.
    With ``copies``, ``update_l2`` against them (NaN for the rows ``first_seen``), and each
    copy then holds its tensor's values. ``pointers``: the tensors' addresses, if known."""
    assert _fused is not None
    counts, float_counts = _counts(tensors)
    table = np.empty((len(tensors), len(schema.STAT_COLUMNS)))
    done = np.empty(len(tensors), dtype=np.uint8)
    if pointers is None:
        pointers = _addresses(tensors)
    previous = None if copies is None else _addresses(copies)
    unfinished, _ = _fused.reduce(
        pointers, previous, counts, table, done, l1, signs, nonnegative, kernel_threads()
    )
    if first_seen:
        table[list(first_seen), _COLUMN["update_l2"]] = np.nan  # nothing to compare with yet
    sources = tensors if copies is None else copies  # equal after the pass
    pending = Pending(
        transfer,
        _HOST,
        0,
        (),
        float_counts,
        [(source, source._version, 0, 1) for source in sources],
        nonnegative=nonnegative,
    )
    pending._table = table
    if unfinished:
        for index in np.flatnonzero(done == 0).tolist():
            pending.redo(index, l1)
    return pending


_COUNTS: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}


def _counts(tensors: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The tensors' numbers of values, as the kernel's int64 lengths and a record's float64
    counts: the same lists come back at every recorded step, and each numpy call costs tens of
    microseconds in the caches a training step leaves. The arrays are shared: read, never
    written (not marked read-only: under torch.compile, dynamo would trace that and turn them
    into tensors)."""
    key = tuple(t.numel() for t in tensors)
    found = _COUNTS.get(key)
    if found is None:
        if len(_COUNTS) >= 256:
            _COUNTS.clear()
        lengths = np.array(key, dtype=np.int64)
        found = _COUNTS[key] = (lengths, lengths.astype(np.float64))
    return found


def _addresses(tensors: Sequence[torch.Tensor]) -> array.array[int]:
    """The tensors' data pointers, as the kernel's buffer of uintp (a stdlib array: building
    a numpy one costs several times more in the caches a training step leaves)."""
    return array.array(_POINTER_CODE, [t.data_ptr() for t in tensors])


class Reducer:
    """Queues the reductions of a list of tensors (a model's weights, or its gradients).

    Args:
        l1: Also the sum of absolute values.
        signs: Also the fractions of zeros and of positive values (otherwise they are given
            only where min and max decide them).
        updates: Also ``update_l2``, the norm of each tensor's change since the last call that
            saw it under the same name: keeps a float32 copy of the tensors (two of those
            stacked in blocks, swapped at each call: the stacking is the copy).
    """

    def __init__(self, *, l1: bool = False, signs: bool = False, updates: bool = False) -> None:
        self.l1 = l1
        self.signs = signs
        self.updates = updates
        self._previous: dict[str, torch.Tensor] = {}  # per block of names, their last values
        self._blocks: dict[str, torch.Tensor] = {}  # per block of names, its stacking memory

    def reduce(
        self, tensors: Sequence[torch.Tensor], names: Sequence[str], transfer: Transfer
    ) -> list[tuple[list[int], Pending]]:
        """Queue the statistics of ``tensors`` in ``transfer``; returns the blocks they were
        reduced in: the indices of their tensors, and what gives their statistics once the
        transfer has landed. ``names`` identify tensors across calls.

        Tensors of one shape and dtype are stacked and reduced together; large ones are
        reduced one by one, and their results gathered into one block per kind.
        """
        groups: dict[tuple[tuple[int, ...], torch.dtype, torch.device], list[int]] = {}
        singles: list[int] = []
        empty: list[int] = []
        fused: list[int] = []
        for index, tensor in enumerate(tensors):
            n = tensor.numel()
            if n == 0:
                empty.append(index)
            elif _fusable(tensor):
                fused.append(index)
            elif n >= STACK_BELOW:
                singles.append(index)
            else:
                groups.setdefault((tensor.shape, tensor.dtype, tensor.device), []).append(index)
        blocks: list[tuple[list[int], Pending]] = []
        gathered: dict[tuple[Any, ...], tuple[list[int], list[_Reduced]]] = {}
        if fused:
            chosen = [tensors[i] for i in fused]
            pending = self._reduce_fused(chosen, [names[i] for i in fused], transfer)
            blocks.append((fused, pending))
        with torch.no_grad():
            for members in groups.values():
                reduced = self._reduce_block(
                    [tensors[i] for i in members], "\0".join(names[i] for i in members)
                )
                blocks.append((members, reduced.queue([reduced], transfer)))
            for index in singles:
                reduced = self._reduce_block([tensors[index]], names[index])
                key = (tuple(reduced.columns), reduced.device, reduced.precise)
                indices, parts = gathered.setdefault(key, ([], []))
                indices.append(index)
                parts.append(reduced)
        for indices, parts in gathered.values():
            blocks.append((indices, parts[0].queue(parts, transfer)))
        if empty:
            counts = np.zeros(len(empty))
            device = tensors[empty[0]].device
            blocks.append((empty, Pending(transfer, device, 0, (), counts, [])))
        return blocks

    def _reduce_fused(
        self, members: list[torch.Tensor], names: list[str], transfer: Transfer
    ) -> Pending:
        """The statistics of ``members`` by the compiled kernel: one pass over each tensor
        (and its kept copy), one call for all of them, no stacking."""
        if not self.updates:
            return _fused_statistics(members, transfer, l1=self.l1, signs=self.signs)
        copies: list[torch.Tensor] = []
        first_seen: list[int] = []
        for row, (tensor, name) in enumerate(zip(members, names)):
            previous = self._previous.get(name)
            if (
                previous is None
                or previous.shape != tensor.shape
                or previous.dtype != torch.float32  # kept by torch's path (a float64 block)
                or not previous.is_cpu
            ):
                previous = self._previous[name] = torch.zeros_like(tensor)
                first_seen.append(row)
            copies.append(previous)
        return _fused_statistics(
            members, transfer, l1=self.l1, signs=self.signs, copies=copies, first_seen=first_seen
        )

    def _reduce_block(self, members: list[torch.Tensor], name: str) -> _Reduced:
        first = members[0]
        k, n = len(members), first.numel()
        work = first.dtype if first.dtype in _NATIVE else torch.float32
        if k == 1:
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
        columns = reduce_rows(
            block, l1=self.l1, signs=self.signs, previous=previous, centred=n < STACK_BELOW
        )
        if self.updates and k == 1:
            # One copy of a large tensor, overwritten each time (it is the exact path's source
            # until the next reduction).
            if previous is None:
                previous = self._previous[name] = torch.empty_like(block)
            previous.copy_(block)
            source = previous
        elif self.updates:
            # The stacked copy becomes the previous values, and the old previous memory the
            # next stacking memory: no copy beyond the stacking.
            self._previous[name] = block
            if previous is not None:
                self._blocks[name] = previous
            else:
                del self._blocks[name]
        version = source._version
        sources = [(source, version, row, k) for row in range(k)]
        return _Reduced(columns, n, sources, block.device, work == torch.float64)


@dataclass
class _Reduced:
    """The reductions of one block, before they are queued."""

    columns: dict[str, torch.Tensor]
    n: int
    sources: list[Source]
    device: torch.device
    precise: bool
    nonnegative: bool = False

    def queue(self, blocks: list[_Reduced], transfer: Transfer) -> Pending:
        """Queue these blocks' reductions (of the same columns) as one :class:`Pending`."""
        names = tuple(self.columns)
        device, offset = transfer.add(*(b.columns[name] for name in names for b in blocks))
        counts = np.concatenate([np.full(len(b.sources), float(b.n)) for b in blocks])
        sources = [source for b in blocks for source in b.sources]
        return Pending(
            transfer, device, offset, names, counts, sources, self.precise, self.nonnegative
        )


def reduce_rows(
    block: torch.Tensor,
    *,
    l1: bool = False,
    signs: bool = False,
    previous: torch.Tensor | None = None,
    centred: bool = True,
    scratch: Scratch = _SCRATCH,
) -> dict[str, torch.Tensor]:
    """Per row of a ``(k, n)`` float32/float64 block, its reductions as ``(k,)`` tensors on
    the block's device: ``min``, ``max``, ``sum``; then either the mean the device centred on
    (``centre``) and the norm of the deviations from it (``deviation``), or, with
    ``centred=False``, the sum of squares (``squares``: one pass fewer, and the host checks
    the digits of the variance); then as asked the absolute sum (``l1``), the sum of squares
    of the difference to ``previous`` (``update_squares``; the difference is written into
    ``previous``, which the caller overwrites next), and the counts of values > 0 and == 0
    (``positive``, ``zero``)."""
    k, n = block.shape
    work = scratch.like(block)  # each use below is reduced before the next overwrites it
    total = block.sum(1)
    if k == 1:
        # A single row takes one pass for min and max (torch's aminmax along a dimension is
        # many times slower) and BLAS dot products for its squares: faster than vector_norm,
        # and no less exact.
        flat = block.reshape(n)
        low, high = torch.aminmax(flat)
        columns = {"min": low, "max": high, "sum": total}
    else:
        columns = {"min": block.amin(1), "max": block.amax(1), "sum": total}

    def squares(rows: torch.Tensor) -> torch.Tensor:
        if k == 1:
            single = rows.reshape(n)
            return torch.dot(single, single)
        norms: torch.Tensor = torch.linalg.vector_norm(rows, dim=1)
        return norms.square_()

    if centred:
        centre = total / n
        deviations = torch.sub(block, centre[:, None], out=work)
        columns["centre"] = centre
        columns["deviation"] = torch.linalg.vector_norm(deviations, dim=1)
    else:
        columns["squares"] = squares(block)
    if l1:
        columns["l1"] = torch.abs(block, out=work).sum(1)
    if previous is not None:
        columns["update_squares"] = squares(torch.sub(block, previous, out=previous))
    if signs:
        exact = _exact_count_dtype(n, block.dtype)
        columns["positive"] = torch.gt(block, 0, out=work).sum(1, dtype=exact)
        columns["zero"] = torch.eq(block, 0, out=work).sum(1, dtype=exact)
    return columns


class StackMemory:
    """Memory that activation records are stacked into, reused while their shapes recur.

    :meth:`release_unused` lets go of the shapes not asked for since it last ran, so that
    inputs whose size changes from batch to batch (sequences padded per batch) do not pile up
    a buffer per size.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self._used: set[tuple[Any, ...]] = set()

    def get(
        self, owner: Any, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A buffer of this shape, dtype and device for ``owner`` (blocks of one pass that
        share a shape do not share memory: each stays the exact path's source until the
        next pass)."""
        key = (owner, shape, dtype, device)
        self._used.add(key)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buffer

    def release_unused(self) -> None:
        """Drop the buffers no :meth:`get` asked for since the last call."""
        self._buffers = {key: self._buffers[key] for key in self._used}
        self._used = set()

    def __len__(self) -> int:
        return len(self._buffers)


def reduce_activations(
    tensors: Sequence[torch.Tensor],
    kind: str,
    collection: str,
    transfer: Transfer,
    *,
    memory: StackMemory | None = None,
    scratch: Scratch = _SCRATCH,
) -> tuple[Pending, list[Callable[[], np.ndarray]] | None]:
    """Queue every statistic of activation records of one shape, dtype and device, and their
    per-unit measures, reduced together.

    Returns what gives the records' statistics once ``transfer`` has landed, and per record a
    function that gives its measure (float32, per unit), or None when the kind or shape has
    none. The measure is ``active_frac`` for ReLU-like kinds (share of each unit's values > 0)
    and ``unsaturated_frac`` for saturating ones (share strictly inside the non-saturated band:
    of the input for pre-activations, of the output otherwise), over the axis
    :func:`~dbgcli.trace.schema.default_unit_axis` names; docs/trace-format.md defines both.

    Several records are stacked into one block (into ``memory``, when given), so that each
    reduction is one operation for all of them.
    """
    kind = kind.lower()
    first = tensors[0]
    k, n = len(tensors), first.numel()
    if n == 0:
        return Pending(transfer, first.device, 0, (), np.zeros(k), []), None
    # A ReLU output is >= 0: its absolute sum is its sum and what is not positive is zero
    # (checked against its minimum; the exact path takes it if that ever fails).
    nonnegative = kind in _NONNEGATIVE_KINDS and collection == "activations"
    measure = schema.unit_measure(kind)
    axis = schema.default_unit_axis(first.dim())
    if all(_fusable(t) for t in tensors):
        return _reduce_activations_fused(
            tensors, kind, collection, transfer, nonnegative, measure, axis
        )
    with torch.no_grad():
        work_dtype = first.dtype if first.dtype in _NATIVE else torch.float32
        if k == 1:
            source = first.detach()
            stacked = (source if source.dtype == work_dtype else source.to(work_dtype))[None]
        else:
            shape = (k, *first.shape)
            block_memory = (
                torch.empty(shape, dtype=work_dtype, device=first.device)
                if memory is None
                else memory.get((kind, collection), shape, work_dtype, first.device)
            )
            source = stacked = torch.stack([t.detach() for t in tensors], out=block_memory)
        block = stacked.reshape(k, n)
        columns = reduce_rows(block, l1=not nonnegative, centred=False, scratch=scratch)
        counts = None
        if measure is not None and axis is not None:
            counts = _unit_counts(stacked, measure, kind, collection, axis + 1, scratch)
        exact = _exact_count_dtype(n, work_dtype)
        if counts is not None and schema.unit_band(kind, collection) == schema.RELU_INACTIVE_BAND:
            columns["positive"] = counts.sum(1, dtype=exact)
        else:
            columns["positive"] = torch.gt(block, 0, out=scratch.like(block)).sum(1, dtype=exact)
        if not nonnegative:
            columns["zero"] = torch.eq(block, 0, out=scratch.like(block)).sum(1, dtype=exact)
        version = source._version
        sources = [(source, version, row, k) for row in range(k)]
        reduced = _Reduced(
            columns, n, sources, first.device, work_dtype == torch.float64, nonnegative
        )
        pending = reduced.queue([reduced], transfer)
        if counts is None:
            return pending, None
        assert axis is not None  # counts exist only with a unit axis
        units = counts / (n // first.shape[axis])
        unit_device, unit_offset = transfer.add(units)
        width = units.shape[1]

        def measure_of(row: int) -> Callable[[], np.ndarray]:
            def measure_values() -> np.ndarray:
                at = unit_offset + row * width
                return transfer.values(unit_device)[at : at + width].astype(np.float32)

            return measure_values

        return pending, [measure_of(row) for row in range(k)]


def _reduce_activations_fused(
    tensors: Sequence[torch.Tensor],
    kind: str,
    collection: str,
    transfer: Transfer,
    nonnegative: bool,
    measure: str | None,
    axis: int | None,
) -> tuple[Pending, list[Callable[[], np.ndarray]] | None]:
    """:func:`reduce_activations` by the compiled kernel: one pass over each record for its
    statistics and one for its per-unit counts, no stacking, complete at once."""
    pointers = _addresses(tensors)
    pending = _fused_statistics(
        tensors,
        transfer,
        l1=not nonnegative,
        signs=True,
        nonnegative=nonnegative,
        pointers=pointers,
    )
    first = tensors[0]
    if measure is None or axis is None:
        return pending, None
    assert _fused is not None
    units = first.shape[axis]
    band = schema.unit_band(kind, collection)
    assert band is not None  # every kind with a measure has a band
    low, high = band
    outside = measure == schema.UNIT_MEASURE_ACTIVE
    if outside and low == -math.inf:
        # Active above the band only (ReLU's > 0): the kernel's plain count above a bound.
        low, high, outside = high, math.nan, False
    outer = math.prod(first.shape[:axis])
    inner = first.numel() // (outer * units)
    measures = np.empty((len(tensors), units), dtype=np.float32)
    _fused.count_units(pointers, outer, units, inner, low, high, outside, measures)

    def measure_of(row: int) -> Callable[[], np.ndarray]:
        return lambda: measures[row]

    return pending, [measure_of(row) for row in range(len(tensors))]


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
    at once; see :func:`reduce_activations`."""
    transfer = Transfer()
    pending, units = reduce_activations([x], kind, collection, transfer)
    transfer.start()
    return pending.statistics()[0], None if units is None else units[0]()


def _unit_counts(
    x: torch.Tensor, measure: str, kind: str, collection: str, axis: int, scratch: Scratch
) -> torch.Tensor:
    """Per record (the first axis of ``x``) and unit (``axis``), how many of its values the
    measure counts, in ``x``'s float dtype: ``(records, units)``."""
    indicator = scratch.like(x)
    others = [d for d in range(1, x.dim()) if d != axis]
    exact = _exact_count_dtype(x[0].numel() // x.shape[axis], x.dtype)
    if measure == schema.UNIT_MEASURE_ACTIVE:
        low, high = schema.inactive_band(kind, collection)
        above = torch.gt(x, high, out=indicator).sum(others, dtype=exact)
        if low == -math.inf:
            return above
        # Outside (low, high] below it too: in (-inf, low], the live dip of GELU and SiLU.
        below = torch.gt(x, -math.inf, out=indicator).sum(others, dtype=exact)
        return above + below - torch.gt(x, low, out=indicator).sum(others, dtype=exact)
    lo, hi = schema.unsaturated_band(kind, collection)
    # Inside (lo, hi) = above lo minus at or above hi, since lo < hi.
    above = torch.gt(x, lo, out=indicator).sum(others, dtype=exact)
    return above - torch.ge(x, hi, out=indicator).sum(others, dtype=exact)


def _exact_count_dtype(most: int, dtype: torch.dtype) -> torch.dtype:
    """A float dtype that sums up to ``most`` ones exactly: ``dtype`` (the fastest) when it
    can, float64 otherwise."""
    return dtype if most <= _EXACT_FLOAT32_COUNT else torch.float64


def _finish(
    row: dict[str, np.ndarray], n: np.ndarray, table: np.ndarray, precise: bool, nonnegative: bool
) -> np.ndarray:
    """Fill ``table`` (schema order) with the statistics of a block's records from their
    reductions (see :func:`reduce_rows`); returns which records are done: the others hold NaN
    or infinities, or a variance whose digits a one-pass formula lost, and take :func:`_exact`.
    """
    low, high, total = row["min"], row["max"], row["sum"]
    with np.errstate(invalid="ignore", over="ignore"):
        mean = total / n
        if "deviation" in row:
            # From the deviations around the device's mean (exact algebra); that mean differs
            # from ``mean`` by float32 rounding only, which the variance about it does not see.
            centre, deviations = row["centre"], row["deviation"] ** 2
            variance = deviations / n
            squares = np.maximum(deviations + centre * (2 * total - n * centre), 0.0)
            done = np.isfinite(deviations)
        else:
            squares = row["squares"]
            variance = np.maximum(squares / n - mean * mean, 0.0)
            # E[x^2] - E[x]^2 loses about log10(mean^2 / var) digits: as the writer does.
            done = np.isfinite(squares) & ~(mean * mean > (1e6 if precise else 1e2) * variance)
        done &= np.isfinite(low) & np.isfinite(high) & np.isfinite(total)
        if nonnegative:
            done &= low >= 0
            row = {**row, "l1": total, "zero": n - row["positive"]}
        std = np.sqrt(variance)
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
            "update_l2": np.sqrt(row.get("update_squares", np.nan)),
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
    done_rows: np.ndarray = done
    return done_rows


def _exact(source: Source, l1: bool) -> dict[str, float] | None:
    """Every statistic of a record read again from the values it was reduced from, computed
    in float64 (for records holding NaN or infinities, rare and then urgent, or whose
    variance needs a second pass); None if those values changed since."""
    values, version, row, rows = source
    if values._version != version:
        return None
    out: dict[str, float] = {}
    with torch.no_grad():
        x = values.detach().reshape(rows, -1)[row].to("cpu", torch.float64)
        n = x.numel()
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
