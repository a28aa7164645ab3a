"""TraceWriter: record scalars and tensors of a training run into one HDF5 trace.

The writer is built around two promises:

* It is cheap. Records are copied into per-tag blocks; statistics are computed for a whole
  block with a few vectorised numpy calls, and blocks reach HDF5 as whole chunks.
* It never kills training and never loses what was committed. ``add_*`` never raises: every
  record is checked when it is added (dbgcli.trace._checks) and a bad one is dropped and counted
  (:attr:`TraceWriter.dropped_by_reason`, and the trace's ``dropped_records`` attribute) without
  touching the file. Problems are reported through :mod:`logging` (logger ``dbgcli``), never as
  exceptions or warnings. Data is committed at every :meth:`~TraceWriter.flush` (every
  ``flush_secs`` seconds and on close); a commit that cannot write (a full disk) keeps the
  records in memory and is tried again at the next one. A process killed at any moment leaves
  a trace that opens and holds everything up to the last commit.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from dbgcli._version import __version__
from dbgcli.errors import TraceFormatError, TraceWriterError
from dbgcli.trace import _checks, roles, schema
from dbgcli.trace._checks import Rejected
from dbgcli.trace._disk import NO_ROOM, TraceClaim
from dbgcli.trace.stats import COL, StatsKernel, unit_measure
from dbgcli.trace.stop import StopRequest, clear_stop_request, new_request, read_stop_request

log = logging.getLogger("dbgcli")

# Rows per chunk of the small per-record datasets: big enough for fast reads of long runs,
# small enough that a tag with a handful of records does not allocate much disk.
_STEP_CHUNK = 4096
_STATS_CHUNK = 2048
_MIN_CHUNK = 256
# Raw chunks and blocks (what statistics are computed on, and what one h5py write carries)
# hold about 1 MiB, h5py's chunk-cache size. Short runs get smaller chunks (see _Appendable).
_RAW_CHUNK_BYTES = 1 << 20
_BLOCK_BYTES = 1 << 20
# Room reserved on disk beyond the data of a batch of writes, for HDF5's own metadata (object
# headers, chunk indexes, the superblock), plus some per dataset written.
_METADATA_ROOM = 1 << 20
_ROOM_PER_DATASET = 16 << 10
# What a record of statistics alone adds to what is held until a commit (about its row).
_STATS_ROW_BYTES = 128
# Calls of add_tensor_stats_rows whose checked shapes, dtypes and collections are kept.
_CHECKED_LIMIT = 4096


class _NoRoom(OSError):
    """The disk has no room for the next batch of writes (nothing was written)."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, "no space left on the device", str(path))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Appendable:
    """A chunked, resizable dataset grown along axis 0, created on first append.

    Rows that could not be written yet (a full disk, or a commit still to come) wait in
    ``queued``, oldest first. Writing is safe to retry: ``length`` only moves once a batch of
    rows is entirely in the file, so a failed write is simply written again.
    """

    def __init__(
        self,
        group: h5py.Group,
        name: str,
        row_shape: tuple[int, ...],
        dtype: Any,
        max_chunk: int,
        min_chunk: int = 1,
    ) -> None:
        self.group = group
        self.name = name
        self.row_shape = row_shape
        self.dtype = np.dtype(dtype)
        self.max_chunk = max_chunk
        self.min_chunk = min(min_chunk, max_chunk)
        existing = group.get(name)
        self.dataset: h5py.Dataset | None = existing if isinstance(existing, h5py.Dataset) else None
        # ``length`` rows are written; the dataset's extent (``capacity``) runs ahead of them,
        # because one resize per append is a large share of the cost of a small append. The
        # extent is trimmed to the length on close; readers rely on the committed counts.
        self.length = 0 if self.dataset is None else int(self.dataset.shape[0])
        self.capacity = self.length
        self.chunk = 0 if self.dataset is None else int(self.dataset.chunks[0])
        self.queued: list[np.ndarray] = []

    def queue(self, rows: np.ndarray) -> None:
        """Keep rows for the next :meth:`write_queued` (they are not copied)."""
        if len(rows):
            self.queued.append(rows)

    def push(self, rows: np.ndarray, room: bool) -> None:
        """Write rows now if nothing waits before them and the disk has ``room``; else queue a
        copy. A failed write queues a copy too, then raises."""
        if self.queued or not room:
            self.queue(np.array(rows, copy=True))
            return
        try:
            self.append(rows)
        except BaseException:
            self.queue(np.array(rows, copy=True))
            raise

    def write_queued(self) -> None:
        while self.queued:
            self.append(self.queued[0])
            self.queued.pop(0)

    @property
    def queued_rows(self) -> int:
        return sum(len(rows) for rows in self.queued)

    def write_cost(self) -> int:
        """Bytes of file the queued rows can take: every chunk they touch."""
        rows = self.queued_rows
        if not rows:
            return 0
        chunk = self.chunk or max(self.min_chunk, min(self.max_chunk, len(self.queued[0])))
        first = self.length % chunk if self.dataset is not None else 0
        chunks = -(-(first + rows) // chunk)
        row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        return int(chunks * chunk * max(1, row_bytes)) + _ROOM_PER_DATASET

    def append(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        if self.dataset is None:
            # The first write shows how fast the series grows: a short run gets small chunks
            # (small files), a long run large ones (fast reads).
            chunk = max(self.min_chunk, min(self.max_chunk, len(rows)))
            self.dataset = self.group.create_dataset(
                self.name,
                shape=(0, *self.row_shape),
                maxshape=(None, *self.row_shape),
                chunks=(chunk, *self.row_shape),
                dtype=self.dtype,
            )
            self.chunk = chunk
        dataset = self.dataset
        start, count = self.length, len(rows)
        chunk = self.chunk
        if start + count > self.capacity:
            capacity = max(start + count, self.capacity + self.capacity // 2, start + 8 * chunk)
            dataset.resize(capacity, axis=0)
            self.capacity = capacity
        if rows.dtype == dataset.dtype and rows.flags.c_contiguous:
            # Rows up to the next chunk boundary, and after the last whole chunk, go through
            # HDF5's low-level write; whole chunks are written as raw bytes, which skips its
            # selection and conversion machinery (about twice as fast, and exact since the
            # chunks are unfiltered and of the rows' dtype).
            done = min(count, (-start) % chunk)
            _write_rows(dataset, start, rows[:done])
            offset = (0,) * len(self.row_shape)
            while count - done >= chunk:
                dataset.id.write_direct_chunk(
                    (start + done, *offset), rows[done : done + chunk].data
                )
                done += chunk
            _write_rows(dataset, start + done, rows[done:])
        else:
            dataset[start : start + count] = rows
        self.length = start + count

    def rows_to_boundary(self, default: int) -> int:
        """Rows that would fill the current partial chunk (``default`` when aligned)."""
        if self.dataset is None:
            return default
        end = self.length + self.queued_rows
        return (-end) % self.chunk or min(default, self.chunk)

    def truncate(self, length: int) -> None:
        """Drop rows past ``length`` (uncommitted rows of a trace being resumed)."""
        if self.dataset is not None and self.capacity > length:
            self.dataset.resize(length, axis=0)
            self.length = self.capacity = min(self.length, length)

    def trim(self) -> None:
        """Shrink the extent to the rows written (the file then shows its true lengths)."""
        if self.dataset is not None and self.capacity > self.length:
            self.dataset.resize(self.length, axis=0)
            self.capacity = self.length


def _committed(columns: list[_Appendable]) -> int:
    """Records every column holds in the file."""
    return min(column.length for column in columns)


def _write_rows(dataset: h5py.Dataset, start: int, rows: np.ndarray) -> None:
    """Write C-contiguous rows of the dataset's dtype at ``start`` through HDF5's low-level
    interface: a third of the cost of h5py's slicing, which a commit pays for every column of
    every series."""
    if not len(rows):
        return
    file_space = dataset.id.get_space()
    file_space.select_hyperslab((start, *(0,) * (rows.ndim - 1)), rows.shape)
    dataset.id.write(h5py.h5s.create_simple(rows.shape), file_space, rows)


_RECORDS_ATTRIBUTE = schema.ATTR_RECORDS.encode()


def _write_count(group: h5py.Group, records: int) -> None:
    # An existing count is overwritten in place: a fifth of the cost of replacing it.
    if h5py.h5a.exists(group.id, _RECORDS_ATTRIBUTE):
        attribute = h5py.h5a.open(group.id, _RECORDS_ATTRIBUTE)
        if attribute.shape == () and attribute.dtype == np.int64:
            attribute.write(np.asarray(records, dtype=np.int64))
            return
    group.attrs[schema.ATTR_RECORDS] = records


def _new_series_group(root: h5py.Group, tag: str) -> h5py.Group:
    """A series' group, vouching for no row yet: the reader serves no more rows than
    ``records``, so rows written ahead of a commit (or pre-allocated) are never read as data."""
    group = root.create_group(schema.encode_tag(tag))
    group.attrs[schema.ATTR_TAG] = tag
    group.attrs[schema.ATTR_RECORDS] = 0
    return group


class _Index:
    """The ``step``/``mode`` (and optional ``time``) columns shared by every series."""

    def __init__(self, group: h5py.Group, with_time: bool = False) -> None:
        self.group = group
        self.step = _Appendable(group, schema.DS_STEP, (), np.int64, _STEP_CHUNK, _MIN_CHUNK)
        self.mode = _Appendable(group, schema.DS_MODE, (), np.uint8, _STEP_CHUNK, _MIN_CHUNK)
        self.time = (
            _Appendable(group, schema.DS_TIME, (), np.float64, _STEP_CHUNK, _MIN_CHUNK)
            if with_time
            else None
        )
        self.pending_steps: list[int] = []
        self.pending_modes: list[int] = []
        self.pending_times: list[float] = []

    def columns(self) -> list[_Appendable]:
        return [self.step, self.mode, *([self.time] if self.time is not None else [])]

    def stage(self) -> None:
        """Move the pending rows to their columns' queues."""
        self.step.queue(np.asarray(self.pending_steps, dtype=np.int64))
        self.mode.queue(np.asarray(self.pending_modes, dtype=np.uint8))
        if self.time is not None:
            self.time.queue(np.asarray(self.pending_times, dtype=np.float64))
        self.pending_steps.clear()
        self.pending_modes.clear()
        self.pending_times.clear()

    def write(self) -> None:
        for column in self.columns():
            column.write_queued()

    def commit(self) -> None:
        _write_count(self.group, _committed(self.columns()))


class _ScalarSeries:
    def __init__(self, group: h5py.Group) -> None:
        self.group = group
        self.index = _Index(group)
        self.value = _Appendable(group, schema.DS_VALUE, (), np.float64, _STEP_CHUNK, _MIN_CHUNK)
        self.pending_values: list[float] = []
        self.records = self.value.length  # records added, committed or not

    def add(self, value: float, step: int, mode: int) -> None:
        self.index.pending_steps.append(step)
        self.index.pending_modes.append(mode)
        self.pending_values.append(value)
        self.records += 1

    def stage(self) -> None:
        self.index.stage()
        self.value.queue(np.asarray(self.pending_values, dtype=np.float64))
        self.pending_values.clear()

    def write(self) -> None:
        self.index.write()
        self.value.write_queued()

    def committed(self) -> int:
        return _committed(self.columns())

    def commit(self) -> None:
        _write_count(self.group, self.committed())

    def columns(self) -> list[_Appendable]:
        return [*self.index.columns(), self.value]


class _RawSegment:
    """Full tensors of one shape: ``raw/<k>/values`` plus the record index of each row."""

    def __init__(self, group: h5py.Group, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.group = group
        row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        self.values = _Appendable(
            group, schema.DS_VALUES, shape, dtype, schema.chunk_rows(row_bytes, _RAW_CHUNK_BYTES)
        )
        self.record = _Appendable(group, schema.DS_RECORD, (), np.int64, _STEP_CHUNK, _MIN_CHUNK)
        self.pending_records: list[np.ndarray] = []

    def stage(self) -> None:
        if self.pending_records:
            self.record.queue(np.concatenate(self.pending_records))
            self.pending_records.clear()

    def commit(self) -> None:
        _write_count(self.group, _committed(self.columns()))

    def columns(self) -> list[_Appendable]:
        return [self.values, self.record]


class _TensorSeries:
    """One tensor tag: a block of pending records, their statistics, and raw segments."""

    def __init__(
        self,
        writer: TraceWriter,
        group: h5py.Group,
        tag: str,
        collection: str | None,
        kind: str | None,
        unit_axis: int | None,
        track_updates: bool | None,
    ) -> None:
        self.writer = writer
        self.group = group
        self.index = _Index(group)
        self.stats = _Appendable(
            group,
            schema.DS_STATS,
            (len(schema.STAT_COLUMNS),),
            np.float64,
            _STATS_CHUNK,
            _MIN_CHUNK // 2,
        )
        self.units: _Appendable | None = None
        self.collection = collection
        # What the tensor is decides its unit measure and band, whatever it was called.
        meaning = roles.tensor_role(tag, collection, kind)
        stored_role = group.attrs.get(schema.ATTR_ROLE)
        self.role = str(stored_role) if stored_role is not None else meaning.role
        self.kind = meaning.kind
        self.measure = (
            schema.unit_measure(self.kind) if self.role in roles.ACTIVATION_ROLES else None
        )
        self.band = schema.unit_band(self.kind, self.role) if self.measure else None
        self.unit_axis = unit_axis
        self.unit_count: int | None = None
        self.track_updates = (
            self.role in schema.UPDATE_TRACKED_ROLES if track_updates is None else track_updates
        )
        self.segments: dict[tuple[tuple[int, ...], str], _RawSegment] = {}
        self.pending_stats: list[np.ndarray] = []
        self.pending_units: list[np.ndarray] = []
        self.block: np.ndarray | None = None
        self.block_shape: tuple[int, ...] = ()
        self.block_dtype: np.dtype = np.dtype(np.float64)
        self.block_rows = 0
        self.block_limit = 0  # records the current block takes: its size, or less to re-align
        self.fill = 0
        self.keep_raw: list[bool] = []
        self.last_row: np.ndarray | None = None
        self.records = 0  # records added, committed or not
        # Whether the tag's shape and dtype attributes are written (asking h5py costs 100 us).
        self.described = schema.ATTR_SHAPE in group.attrs

    # -- adding -------------------------------------------------------------------------------
    def add(self, array: np.ndarray, step: int, mode: int, keep_raw: bool) -> None:
        block = self.block
        if block is None or array.shape != self.block_shape or array.dtype != self.block_dtype:
            self.finish_block()
            block = self._new_block(array)
        elif self.fill == self.block_limit:
            self.finish_block()
        block[self.fill] = array
        self.fill += 1
        self.keep_raw.append(keep_raw)
        if keep_raw:
            self.writer._charge_raw(step, array.nbytes)  # now: the block is written later
        self.index.pending_steps.append(step)
        self.index.pending_modes.append(mode)
        self.records += 1

    def add_precomputed(
        self,
        stats: np.ndarray,
        units: np.ndarray | None,
        raw: np.ndarray | None,
        shape: tuple[int, ...],
        dtype: np.dtype,
        step: int,
        mode: int,
        room: bool | None = None,
    ) -> None:
        """A record whose statistics (and unit measures) were computed by the caller; ``room``:
        whether the disk space for ``raw`` is reserved already (None: reserve it now)."""
        self.finish_block()  # records stay in order when both kinds are mixed
        if not self.described:
            if self.unit_axis is None and self.measure is not None:
                self.unit_axis = schema.default_unit_axis(len(shape))
            self._write_attrs(shape, dtype)
        if self.measure is not None:
            self.pending_units.append(self._fit_units(units))
        if raw is not None and raw.size:
            self.writer._charge_raw(step, raw.nbytes)
            segment = self._segment(raw.shape, raw.dtype)
            self._keep_raw(segment, raw.reshape(1, *raw.shape), room)
            segment.pending_records.append(np.array([self.records], dtype=np.int64))
        self.add_row(stats.reshape(1, -1), step, mode)

    @property
    def takes_rows_alone(self) -> bool:
        """Whether a record of statistics alone is :meth:`add_row` and nothing more: the
        series is described, has no unit measure and no block of its own pending."""
        return self.described and not self.fill and self.measure is None

    def add_row(self, stats: np.ndarray, step: int, mode: int) -> None:
        """Append a record's ``(1, columns)`` statistics with its step and mode (its unit
        measures and full tensor, if any, are the caller's)."""
        self.pending_stats.append(stats)
        self.index.pending_steps.append(step)
        self.index.pending_modes.append(mode)
        self.records += 1

    def _fit_units(self, units: np.ndarray | None) -> np.ndarray:
        if units is None:
            return np.full((1, self.unit_count or 0), np.nan, dtype=np.float32)
        row = np.asarray(units, dtype=np.float32).reshape(1, -1)
        if self.unit_count is None:
            self.unit_count = row.shape[1]
        if row.shape[1] != self.unit_count:
            return np.full((1, self.unit_count), np.nan, dtype=np.float32)
        return row

    def _new_block(self, array: np.ndarray) -> np.ndarray:
        if self.unit_axis is None and self.measure is not None:
            self.unit_axis = schema.default_unit_axis(array.ndim)
        if not self.described:
            self._write_attrs(array.shape, array.dtype)
        self.release_block()
        row_bytes = max(1, array.nbytes)
        rows = schema.chunk_rows(row_bytes, _BLOCK_BYTES, max_rows=16384)
        self.block = np.empty((rows, *array.shape), dtype=array.dtype)
        self.block_shape, self.block_dtype, self.block_rows = array.shape, array.dtype, rows
        self.block_limit = rows
        self.writer._buffered_bytes += self.block.nbytes
        self.fill = 0
        return self.block

    def _write_attrs(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.described = True
        attrs = self.group.attrs
        attrs[schema.ATTR_SHAPE] = np.asarray(shape, dtype=np.int64)
        attrs[schema.ATTR_DTYPE] = dtype.str
        attrs[schema.ATTR_COLUMNS] = list(schema.STAT_COLUMNS)
        if self.collection:
            attrs[schema.ATTR_COLLECTION] = self.collection
        if self.role:
            attrs[schema.ATTR_ROLE] = self.role
        if self.kind:
            attrs[schema.ATTR_KIND] = self.kind
        if self.measure is not None and self.unit_axis is not None:
            attrs[schema.ATTR_UNIT_AXIS] = self.unit_axis
            attrs[schema.ATTR_UNIT_MEASURE] = self.measure
            if self.band is not None:
                attrs[schema.ATTR_BAND] = np.asarray(self.band, dtype=np.float64)

    def finish_block(self, staging: bool = False) -> None:
        """Compute statistics of the pending block and write its raw rows (``staging``: queue
        them for the commit's writes instead, which then own the block)."""
        block = self.block
        if block is None or self.fill == 0:
            return
        rows = block[: self.fill]
        stats = self.writer._kernel.compute(rows)
        if self.track_updates:
            stats[:, COL["update_l2"]] = StatsKernel.update_norms(rows, self.last_row)
            self.last_row = rows[-1].copy()
        self.pending_stats.append(stats)
        if self.measure is not None:
            self.pending_units.append(self._units(rows))
        keep = np.asarray(self.keep_raw, dtype=bool)
        # A tensor with no elements has nothing to keep; its statistics record count = 0.
        if keep.any() and rows[0].size:
            first_record = self.records - self.fill
            record_ids = first_record + np.flatnonzero(keep)
            segment = self._segment(rows.shape[1:], rows.dtype)
            kept = rows[keep] if not keep.all() else rows
            if staging:
                segment.values.queue(kept)
                if kept is rows:
                    self.release_block()  # the queue holds it now; the next add takes a new one
            else:
                self._keep_raw(segment, kept)
            segment.pending_records.append(record_ids.astype(np.int64))
            # After a partial write (a commit mid-block), end the next block on the chunk
            # boundary so that later blocks are whole chunks again.
            self.block_limit = segment.values.rows_to_boundary(self.block_rows)
        self.fill = 0
        self.keep_raw.clear()

    def _keep_raw(self, segment: _RawSegment, rows: np.ndarray, room: bool | None = None) -> None:
        """Write full tensors now if the disk has room for them (``room``: known already),
        else keep them for a commit."""
        values = segment.values
        try:
            values.push(rows, self.writer._room(2 * rows.nbytes) if room is None else room)
        except Exception as error:  # noqa: BLE001 - kept in the queue, written at a commit
            self.writer._report_io(error)

    def _units(self, rows: np.ndarray) -> np.ndarray:
        axis = self.unit_axis
        if axis is None or rows.ndim - 1 <= axis or self.kind is None or self.measure is None:
            return np.full((len(rows), self.unit_count or 0), np.nan, dtype=np.float32)
        measured = unit_measure(rows, self.measure, self.band, axis)
        if self.unit_count is None:
            self.unit_count = measured.shape[1]
        if measured.shape[1] != self.unit_count:
            # A record whose unit count differs cannot share the (N, U) dataset.
            return np.full((len(rows), self.unit_count), np.nan, dtype=np.float32)
        return measured

    def _segment(self, shape: tuple[int, ...], dtype: np.dtype) -> _RawSegment:
        key = (shape, dtype.str)
        segment = self.segments.get(key)
        if segment is None:
            raw = self.group.require_group(schema.GROUP_RAW)
            number = len(raw)
            while str(number) in raw:
                number += 1
            group = raw.create_group(str(number))
            group.attrs[schema.ATTR_SHAPE] = np.asarray(shape, dtype=np.int64)
            group.attrs[schema.ATTR_RECORDS] = 0
            segment = self.segments[key] = _RawSegment(group, shape, dtype)
        return segment

    # -- writing ------------------------------------------------------------------------------
    def stage(self) -> None:
        """Move every pending record to its columns' queues (memory only)."""
        self.finish_block(staging=True)
        for segment in self.segments.values():
            segment.stage()
        self.index.stage()
        if self.pending_stats:
            self.stats.queue(np.concatenate(self.pending_stats))
            self.pending_stats.clear()
        if self.pending_units:
            # Rows of records added before the unit count was known have no columns: they
            # get NaN measures, so that row i of the units dataset stays record i's.
            width = max(rows.shape[1] for rows in self.pending_units)
            if width:
                units = np.concatenate(
                    [
                        rows if rows.shape[1] else np.full((len(rows), width), np.nan, np.float32)
                        for rows in self.pending_units
                    ]
                )
                if self.units is None:
                    self.units = _Appendable(
                        self.group,
                        schema.DS_UNITS,
                        (width,),
                        np.float32,
                        schema.chunk_rows(width * 4, _RAW_CHUNK_BYTES),
                    )
                    earlier = self.records - len(units)
                    if earlier > 0:  # staged before, while no record had measures
                        self.units.queue(np.full((earlier, width), np.nan, np.float32))
                self.units.queue(units)
            self.pending_units.clear()

    def write(self) -> None:
        for column in self.columns():
            column.write_queued()

    def committed(self) -> int:
        own = [*self.index.columns(), self.stats, *([self.units] if self.units is not None else [])]
        return _committed(own)

    def commit(self) -> None:
        for segment in self.segments.values():
            segment.commit()
        _write_count(self.group, self.committed())

    def columns(self) -> list[_Appendable]:
        own = [*self.index.columns(), self.stats, *([self.units] if self.units is not None else [])]
        return own + [column for segment in self.segments.values() for column in segment.columns()]

    def release_block(self) -> None:
        if self.block is not None:
            self.writer._buffered_bytes -= self.block.nbytes
            self.block = None


#: The ``raw_budget`` of the traces the integrations create: 1 MiB of full tensors per step
#: on average, about 1 GiB per 1,000 steps. A model whose full tensors take at most 100 MiB a
#: step (about ten million parameters) keeps every ``raw_every``-th step (100 by default);
#: BERT-base's weights, gradients and activations, 1.5 GB a step, come about 1,400 steps
#: apart instead of 100 (docs/capture.md, "Full tensors of a large model").
DEFAULT_RAW_BUDGET = 1 << 20


def check_raw_settings(
    trace: object = None, *, raw_every: Any = None, raw_budget: Any = None
) -> None:
    """Refuse full-tensor settings before a trace is created: below 0, or given (not None)
    with an open writer, which keeps its own.

    Raises:
        ValueError: Naming the first setting refused.
    """
    for name, value in (("raw_every", raw_every), ("raw_budget", raw_budget)):
        if value is None:
            continue
        if isinstance(trace, TraceWriter):
            raise ValueError(f"{name} applies to a new trace; set it on the TraceWriter instead")
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


_OPEN_WRITERS: weakref.WeakSet[TraceWriter] = weakref.WeakSet()
_MODE_CODES = schema.MODE_CODES


@atexit.register
def _close_open_writers() -> None:
    for writer in list(_OPEN_WRITERS):
        writer.close()


class TraceWriter:
    """Record a training run into an HDF5 trace.

    Use it as a context manager::

        with TraceWriter("run.h5", hyperparameters={"lr": 0.1}) as tw:
            for step in range(steps):
                ...
                tw.add_scalar("loss", loss, step)
                tw.add_tensor("grad/fc1.weight", fc1.weight.grad, step, collection="gradients")

    Args:
        path: Trace file to create.
        raw_every: Keep full tensors on steps divisible by this (1: every step; 0: never).
            Statistics are recorded for every tensor on every call regardless.
        raw_budget: Bytes of full tensors per step, on average, that the steps ``raw_every``
            picks may keep (0: no limit). Once those kept since this writer's first take
            more, the next ones are skipped until the average is back within it, so a large
            model keeps its full tensors further apart; a step is kept for all of its
            records or for none. Full tensors forced with ``raw=True`` are kept regardless,
            and count only at a step the budget keeps.
        flush_secs: Commit buffered records at most this many seconds apart (also on close).
        overwrite: Replace an existing file. Without it an existing file is refused, or
            appended to with ``resume=True``.
        resume: Append to an existing trace (after a restart from a checkpoint). Records that
            were never committed by the earlier writer are discarded.
        metadata: Free-form JSON-serialisable run metadata (a key that cannot be stored is
            dropped and counted).
        hyperparameters: Stored under ``metadata["hyperparameters"]``.
        framework: Stored under ``metadata["framework"]``.
        max_buffer_bytes: Commit early when pending tensor blocks exceed this many bytes; while
            the disk is full, hold at most about this many bytes of records.

    Raises:
        TraceWriterError: At construction only: the file exists (without ``overwrite`` or
            ``resume``), another writer holds it (it is left untouched), or there is no room
            on the disk for an empty trace.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        raw_every: int = 1,
        raw_budget: int = 0,
        flush_secs: float = 10.0,
        overwrite: bool = False,
        resume: bool = False,
        metadata: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        framework: str | None = None,
        max_buffer_bytes: int = 256 << 20,
    ) -> None:
        check_raw_settings(raw_every=raw_every, raw_budget=raw_budget)
        if overwrite and resume:
            raise ValueError("overwrite and resume exclude each other")
        self.path = Path(path)
        self.raw_every = int(raw_every)
        self.raw_budget = int(raw_budget)
        # The budget's account (see raw_due): the first step raw_due kept, every step it kept,
        # and the bytes of their full tensors.
        self._raw_first: int | None = None
        self._raw_steps: set[int] = set()
        self._raw_bytes = 0
        self.flush_secs = float(flush_secs)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.dropped_by_reason: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._kernel = StatsKernel()
        self._buffered_bytes = 0
        self._reported: set[str] = set()
        # The last error of a commit that could not write; records are kept until one can.
        self._io_error: BaseException | None = None
        self._held_bytes = 0  # records held in memory since that error (approximately)
        self._closed = False
        self._scalars: dict[str, _ScalarSeries] = {}
        self._tensors: dict[str, _TensorSeries] = {}
        self._checked: dict[Any, Any] = {}  # see _checked_records
        self._last_step: int | None = None
        self._last_mode = -1
        self._newest: dict[int, int] = {}  # the newest step seen, per mode
        # Inside late_records: when each (step, mode) started, as the integration noted it.
        self._late_started: Mapping[tuple[int, str], float] | None = None
        self._metadata: dict[str, Any] = {}
        self._metadata_json = "{}"
        # What the file's attributes hold, so that a commit writes them only when they change.
        self._written: dict[str, str] = {}
        self._dropped_before: Counter[str] = Counter()  # by earlier writers of a resumed trace
        given = dict(metadata or {})
        if hyperparameters is not None:
            given["hyperparameters"] = dict(hyperparameters)
        if framework is not None:
            given["framework"] = framework
        self._stop_request: StopRequest | None = None
        self._claim = self._claim_path(resume, overwrite)
        try:
            if not self._claim.reserve(0, _METADATA_ROOM):
                raise _NoRoom(self.path)
            self._file = self._open(resume)
            self._timeline = _Index(self._file.require_group(schema.TIMELINE), with_time=True)
            self._scalar_root = self._root(schema.SCALARS)
            self._tensor_root = self._root(schema.TENSORS)
            if resume:
                self._load_existing()
            self._start_watchable()
            self._merge_metadata(given)
            # The skeleton: with it on disk the file opens whatever happens next.
            if not self._room(0):
                raise _NoRoom(self.path)
            self._file.attrs[schema.ATTR_CLOSED] = False
            self._write_metadata()
            self._file.flush()
        except Exception as error:
            self._abandon()
            if isinstance(error, (TraceWriterError, TraceFormatError)):
                raise
            problem = (
                "no space left on the device"
                if isinstance(error, OSError) and error.errno in NO_ROOM
                else str(error).splitlines()[0]
            )
            raise TraceWriterError(f"cannot create the trace {self.path}: {problem}") from error
        self._last_flush = time.monotonic()
        _OPEN_WRITERS.add(self)

    def _claim_path(self, resume: bool, overwrite: bool) -> TraceClaim:
        """Lock the path before HDF5 opens it: a trace another writer holds is never touched."""
        exclusive = not (resume or overwrite)
        # Whether the file holds nothing of value (so a failed set-up may remove it).
        self._fresh = not self.path.exists()
        if exclusive and not self._fresh:
            raise TraceWriterError(
                f"{self.path} already exists; pass overwrite=True to replace it "
                "or resume=True to append to it"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TraceWriterError(f"cannot open {self.path} for writing: {error}") from error
        return TraceClaim(self.path, exclusive=exclusive)

    def _open(self, resume: bool) -> h5py.File:
        # HDF5's own locking is off: our claim is the lock (and HDF5's would conflict with it).
        if resume and self.path.stat().st_size:
            handle = h5py.File(self.path, "r+", locking=False)
            try:
                if handle.attrs.get(schema.ATTR_FORMAT) != schema.FORMAT_NAME:
                    raise TraceFormatError(f"{self.path} is not a dbg trace; refusing to append")
                if (
                    schema.parse_version(handle.attrs[schema.ATTR_FORMAT_VERSION])[0]
                    != schema.FORMAT_VERSION[0]
                ):
                    raise TraceFormatError(f"{self.path} has another major format version")
                if schema.ATTR_METADATA in handle.attrs:
                    self._metadata = dict(json.loads(handle.attrs[schema.ATTR_METADATA]))
                if schema.ATTR_DROPPED in handle.attrs:
                    self._dropped_before.update(json.loads(handle.attrs[schema.ATTR_DROPPED]))
            except BaseException:
                handle.close()
                raise
            return handle
        self._fresh = True
        handle = h5py.File(self.path, "w", locking=False)
        attrs = handle.attrs
        attrs[schema.ATTR_FORMAT] = schema.FORMAT_NAME
        attrs[schema.ATTR_FORMAT_VERSION] = schema.FORMAT_VERSION_STR
        attrs[schema.ATTR_DBGCLI_VERSION] = __version__
        attrs[schema.ATTR_CREATED] = _now_iso()
        return handle

    def _abandon(self) -> None:
        """Undo a constructor that failed: close, remove a file it created or emptied, unlock."""
        handle = getattr(self, "_file", None)
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()
        if self._fresh:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._claim.release()

    def _root(self, name: str) -> h5py.Group:
        """A root group of series; new ones track creation order, so that readers list tags
        in recording order (which is the model's layer order for the framework hooks)."""
        if name in self._file:
            group: h5py.Group = self._file[name]
            return group
        return self._file.create_group(name, track_order=True)

    def _load_existing(self) -> None:
        """Pick up the series of a trace being resumed, dropping uncommitted tails."""
        timeline = self._timeline
        assert timeline.time is not None
        committed = int(
            timeline.step.group.attrs.get(
                schema.ATTR_RECORDS, min(timeline.step.length, timeline.mode.length)
            )
        )
        for column in (timeline.step, timeline.mode, timeline.time):
            column.truncate(committed)
        for name, group in self._scalar_root.items():
            series = _ScalarSeries(group)
            committed = int(group.attrs.get(schema.ATTR_RECORDS, series.value.length))
            for column in (series.index.step, series.index.mode, series.value):
                column.truncate(committed)
            series.records = series.committed()
            self._scalars[schema.decode_tag(name)] = series
        for name, group in self._tensor_root.items():
            attrs = group.attrs
            collection = attrs.get(schema.ATTR_COLLECTION)
            tag = schema.decode_tag(name)
            tensor = _TensorSeries(
                self,
                group,
                tag,
                str(collection) if collection is not None else None,
                str(attrs[schema.ATTR_KIND]) if schema.ATTR_KIND in attrs else None,
                int(attrs[schema.ATTR_UNIT_AXIS]) if schema.ATTR_UNIT_AXIS in attrs else None,
                None,
            )
            committed = int(attrs.get(schema.ATTR_RECORDS, tensor.stats.length))
            for column in (tensor.index.step, tensor.index.mode, tensor.stats):
                column.truncate(committed)
            if schema.DS_UNITS in group:
                tensor.units = _Appendable(
                    group, schema.DS_UNITS, group[schema.DS_UNITS].shape[1:], np.float32, 1
                )
                tensor.units.truncate(committed)
                tensor.unit_count = tensor.units.row_shape[0]
            tensor.records = committed
            raw_root = group.get(schema.GROUP_RAW, {})
            for number in list(raw_root):
                segment_group = raw_root[number]
                if schema.DS_VALUES not in segment_group or schema.DS_RECORD not in segment_group:
                    del raw_root[number]  # started after the last commit: nothing committed
                    continue
                values = segment_group[schema.DS_VALUES]
                segment = _RawSegment(segment_group, tuple(values.shape[1:]), values.dtype)
                kept = int(segment_group.attrs.get(schema.ATTR_RECORDS, values.shape[0]))
                records = (
                    segment.record.dataset[:kept] if segment.record.dataset is not None else []
                )
                kept = int(np.searchsorted(records, committed))
                segment.values.truncate(kept)
                segment.record.truncate(kept)
                tensor.segments[(tuple(values.shape[1:]), values.dtype.str)] = segment
            self._tensors[tag] = tensor

    # -- public API ---------------------------------------------------------------------------
    def add_scalar(self, tag: str, value: Any, step: int, *, mode: str = "train") -> None:
        """Record one scalar (loss, metric, learning rate) at ``step``.

        NaN and infinities are data and are recorded as they are.
        """
        with self._lock:
            try:
                tag, step, mode_code = self._accept(tag, step, mode)
                number = _checks.scalar(value)
                series = self._scalars.get(tag)
                if series is None:
                    series = self._scalars[tag] = _ScalarSeries(
                        self._new_group(self._scalar_root, tag)
                    )
                series.add(number, step, mode_code)
                self._after_add(step, mode_code, 32)
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._drop(tag, error)
                self._forget_empty(tag)

    def add_scalars(self, values: Mapping[str, Any], step: int, *, mode: str = "train") -> None:
        """Record several scalars at the same step."""
        try:
            items = list(values.items())
        except Exception as error:  # noqa: BLE001
            self._drop(
                values,
                Rejected("value", f"not a mapping: {_checks.describe_error(error)}"),
                "the scalars",
            )
            return
        for tag, value in items:
            self.add_scalar(tag, value, step, mode=mode)

    def add_tensor(
        self,
        tag: str,
        value: Any,
        step: int,
        *,
        collection: str | None = None,
        kind: str | None = None,
        mode: str = "train",
        raw: bool | None = None,
        unit_axis: int | None = None,
        track_updates: bool | None = None,
    ) -> None:
        """Record a tensor at ``step``: its statistics always, its values every ``raw_every``.

        Args:
            tag: Name of the tensor, e.g. ``"grad/fc1.weight"``.
            value: numpy array, Python number, or anything with ``__array__`` (torch tensors
                are detached and copied to the CPU): bool, integers or floats, at most 31
                dimensions.
            step: Global step (for example the optimizer step), from 0 to 2**63 - 1.
            collection: Group the tensor belongs to: ``weights``, ``biases``, ``gradients``,
                ``activations``, ``preactivations``, ``inputs``, ``labels``, ``predictions``...
                Fixed by the first record of the tag.
            kind: Activation function (``relu``, ``tanh``, ``sigmoid``, ...) or another
                subtype. Fixed by the first record of the tag.
            mode: ``train``, ``eval`` or ``predict``.
            raw: Force (True) or suppress (False) keeping the full tensor for this record.
            unit_axis: Axis of a record that indexes units for activation measures (default:
                the last axis of 2-D and 3-D tensors, axis 1 of 4-D and larger ones; negative
                counts from the end).
            track_updates: Record ``update_l2`` against the previous record (default: for
                weights and biases).

        A shape or dtype that differs from earlier records (a last partial batch, a variable
        sequence length) is fine: statistics are per record, and full tensors of each distinct
        shape go to their own raw segment. A record that breaks one of the rules above is
        dropped and counted (see :attr:`dropped_by_reason`).
        """
        with self._lock:
            try:
                tag, step, mode_code = self._accept(tag, step, mode)
                array = _checks.array(value)
                track = None
                if (
                    collection is not None
                    or kind is not None
                    or unit_axis is not None
                    or track_updates is not None
                ):
                    collection = _checks.text(collection, "collection")
                    kind = _checks.text(kind, "kind")
                    unit_axis = _checks.unit_axis(unit_axis, array.ndim)
                    track = _checks.flag(track_updates, "track_updates")
                keep = self.raw_due(step) if raw is None else bool(_checks.flag(raw, "raw"))
                series = self._tensors.get(tag)
                if series is None:
                    series = self._tensors[tag] = _TensorSeries(
                        self,
                        self._new_group(self._tensor_root, tag),
                        tag,
                        collection,
                        kind,
                        unit_axis,
                        track,
                    )
                series.add(array, step, mode_code, keep)
                self._after_add(step, mode_code, array.nbytes)
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._drop(tag, error)
                self._forget_empty(tag)

    def raw_due(self, step: int) -> bool:
        """Whether a record at ``step`` keeps its full tensor by default: every ``raw_every``
        steps, from the second such step on only while the full tensors kept since the first
        average at most ``raw_budget`` bytes per step. A step it keeps stays kept for every
        record of that step (a hook asks once per pass and once per optimizer step)."""
        if self.raw_every <= 0 or step % self.raw_every:
            return False
        if not self.raw_budget or step in self._raw_steps:
            return True
        # No lock: torch.compile traces a hook that asks, and breaks its graph at one. Two
        # threads asking at once at most both keep the same step.
        if self._raw_first is None:
            self._raw_first = step
        elif self._raw_bytes > self.raw_budget * (step - self._raw_first):
            return False
        self._raw_steps.add(step)
        return True

    def _charge_raw(self, step: int, nbytes: int) -> None:
        """Count a full tensor against ``raw_budget`` if its step is one raw_due kept (those
        forced with ``raw=True`` at other steps cost the budget nothing)."""
        if step in self._raw_steps:
            self._raw_bytes += nbytes

    def add_tensor_stats(
        self,
        tag: str,
        stats: Mapping[str, float] | np.ndarray,
        step: int,
        *,
        shape: tuple[int, ...],
        dtype: Any,
        collection: str | None = None,
        kind: str | None = None,
        mode: str = "train",
        units: Any = None,
        value: Any = None,
    ) -> None:
        """Record a tensor whose statistics were computed where it lives (a GPU, say).

        Framework hooks use this to avoid copying every tensor to the host every step. ``stats``
        maps statistic names (see docs/trace-format.md) to values; a column left out is NaN
        ("not computed"). It may also be a float64 row of every column in
        ``schema.STAT_COLUMNS`` order (NaN: not computed), kept as it is. ``units`` is the
        per-unit activation measure of the record, and ``value``, when given, is kept as the
        record's full tensor. ``shape`` and ``dtype`` describe the tensor (the first record of
        a tag fixes the tag's metadata). :meth:`add_tensor_stats_rows` records many at once.
        """
        with self._lock:
            try:
                row = _checks.statistics(stats, COL)
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._drop(tag, error)
                return
            units_list = None if units is None else [units]
            values = None if value is None else [value]
            self._add_stats_rows(
                [tag],
                row[None],
                step,
                [shape],
                [dtype],
                [collection],
                kind,
                mode,
                units_list,
                values,
            )

    def add_tensor_stats_rows(
        self,
        tags: Sequence[str],
        rows: np.ndarray,
        step: int,
        *,
        shapes: Sequence[tuple[int, ...]],
        dtypes: Sequence[Any],
        collections: Sequence[str | None],
        kind: str | None = None,
        mode: str = "train",
        units: Sequence[Any] | None = None,
        values: Sequence[Any] | None = None,
    ) -> None:
        """Record tensors of one step and mode whose statistics were computed where they live,
        one row of ``rows`` each (``(len(tags), len(schema.STAT_COLUMNS))``, as
        :meth:`add_tensor_stats` takes one): what a hook records at a step costs one call
        instead of hundreds. ``shapes``, ``dtypes``, ``collections`` and, when given,
        ``units`` and ``values`` (full tensors; None for a record without) are per record. A
        record that fails a check is dropped alone.
        """
        with self._lock:
            try:
                tags = list(tags)
                columns = len(schema.STAT_COLUMNS)
                if (
                    not isinstance(rows, np.ndarray)
                    or rows.shape != (len(tags), columns)
                    or rows.dtype.kind not in "iuf"
                ):
                    raise Rejected(
                        "stats",
                        f"statistics rows must be a ({len(tags)}, {columns}) array of numbers, "
                        f"got {_checks.describe(rows)}",
                    )
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                for tag in tags if isinstance(tags, list) else [tags]:
                    self._drop(tag, error)
                return
            self._add_stats_rows(
                tags, rows, step, shapes, dtypes, collections, kind, mode, units, values
            )

    def _add_stats_rows(
        self,
        tags: Sequence[Any],
        rows: np.ndarray,
        step: Any,
        shapes: Sequence[Any],
        dtypes: Sequence[Any],
        collections: Sequence[Any],
        kind: Any,
        mode: Any,
        units: Sequence[Any] | None,
        values: Sequence[Any] | None,
    ) -> None:
        rows = rows.astype(np.float64, copy=False)
        try:
            # The step, mode and kind are the call's: checked once, a failure drops every record.
            step_number, mode_code = self._accept_when(step, mode)
            kind_text = _checks.text(kind, "kind")
        except Exception as error:  # noqa: BLE001 - never let recording kill training
            for tag in tags:
                self._drop(tag, error)
            return
        checked = self._checked_records(len(tags), shapes, dtypes, collections)
        if (
            values is None
            and units is None
            and self._add_known_rows(tags, rows, step_number, mode_code, checked)
        ):
            return
        # One disk reservation for every full tensor of the call, rather than one each.
        room = self._room_for(values) if values is not None else None
        added = 0
        nbytes = 0
        for index, tag in enumerate(tags):
            try:
                if type(tag) is not str or tag not in self._tensors:
                    tag = _checks.tag(tag)
                answer = checked[index]
                if isinstance(answer, Exception):
                    raise answer
                dims, stored_dtype, collection = answer
                value = None if values is None else values[index]
                raw = None if value is None else _checks.array(value)
                unit = None if units is None else units[index]
                units_row = None if unit is None else _checks.array(unit)
                series = self._tensors.get(tag)
                if series is None:
                    series = self._tensors[tag] = _TensorSeries(
                        self,
                        self._new_group(self._tensor_root, tag),
                        tag,
                        collection,
                        kind_text,
                        None,
                        False,
                    )
                series.add_precomputed(
                    rows[index], units_row, raw, dims, stored_dtype, step_number, mode_code, room
                )
                added += 1
                nbytes += _STATS_ROW_BYTES if raw is None else raw.nbytes
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._drop(tag, error)
                self._forget_empty(tag)
        if added:
            self._after_add(step_number, mode_code, nbytes)

    def _add_known_rows(
        self, tags: Sequence[Any], rows: np.ndarray, step: int, mode: int, checked: list[Any]
    ) -> bool:
        """The records of a call of statistics rows alone, when all of them passed their
        checks and each tag's series takes rows alone (:attr:`_TensorSeries.takes_rows_alone`):
        a hook's every recorded step after its first, without the per-record checks. Returns
        False, having added nothing, where any of that fails."""
        known = []
        for tag, answer in zip(tags, checked):
            series = self._tensors.get(tag) if type(tag) is str else None
            if series is None or isinstance(answer, Exception) or not series.takes_rows_alone:
                return False
            known.append(series)
        for index, series in enumerate(known):
            series.add_row(rows[index : index + 1], step, mode)
        if known:
            self._after_add(step, mode, _STATS_ROW_BYTES * len(known))
        return True

    def _checked_records(
        self, count: int, shapes: Any, dtypes: Any, collections: Any
    ) -> list[tuple[tuple[int, ...], np.dtype, str | None] | Exception]:
        """Per record of a :meth:`add_tensor_stats_rows` call, its checked shape, stored dtype
        and collection, or why it is refused. A hook sends the same at every recorded step, so
        the answers of a call whose records all pass are kept (a bounded cache); a refusal is
        checked again each time, and holds nothing of the call once it is reported."""
        try:
            key: Any = (count, tuple(shapes), tuple(dtypes), tuple(collections))
            answers = self._checked.get(key)
        except Exception:  # noqa: BLE001 - not hashable, or not sequences: checked every time
            key, answers = None, None
        if answers is None:
            answers = []
            for index in range(count):
                try:
                    answers.append(
                        (
                            _checks.shape(shapes[index]),
                            _checks.dtype_check(dtypes[index]),
                            _checks.text(collections[index], "collection"),
                        )
                    )
                except Exception as error:  # noqa: BLE001 - the record is refused alone
                    answers.append(error)
            if key is not None and not any(isinstance(a, Exception) for a in answers):
                if len(self._checked) >= _CHECKED_LIMIT:
                    self._checked.clear()
                self._checked[key] = answers
        return answers

    def set_metadata(self, **values: Any) -> None:
        """Merge top-level keys into the run metadata (hyperparameters, framework, ...).

        A key whose value cannot be stored as JSON (a cycle, nesting deeper than 64 levels) is
        dropped and counted under ``metadata``; the other keys are kept.
        """
        with self._lock:
            try:
                self._merge_metadata(values)
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._drop(values, error, "the metadata")

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the run metadata."""
        return dict(self._metadata)

    @property
    def dropped(self) -> int:
        """Records (and metadata keys) dropped so far, whatever the reason."""
        return sum(self.dropped_by_reason.values())

    @contextlib.contextmanager
    def late_records(
        self, started: Mapping[tuple[int, str], float] | None = None
    ) -> Iterator[None]:
        """Records added inside belong to steps the run has already passed (an integration
        that hands a step's statistics over after the next step began, as the PyTorch hook
        does): one of a step older than the newest of its mode adds no timeline row, so the
        timeline keeps when each step was first seen and a step going back still means a run
        resumed from an earlier step.

        Args:
            started: When each ``(step, mode)`` started (seconds since the epoch), as the
                integration noted it: a step new to the timeline gets that time rather than
                the time its records were handed over.
        """
        self._late_started = started or {}
        try:
            yield
        finally:
            self._late_started = None

    def flush(self) -> None:
        """Write every pending record and commit: after this returns, a kill loses nothing
        (unless the disk is full: the records are then kept and written at the next commit)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._closed or os.getpid() != self._pid:
            return
        try:
            self._commit()
        except Exception as error:  # noqa: BLE001 - never let recording kill training
            self._report_io(error)

    def close(self) -> None:
        """Commit everything, mark the trace complete and close the file. Idempotent.

        The trace is marked complete only if every record reached it; otherwise it stays
        readable up to its last commit and the lost records are counted under ``unwritten``.
        """
        with self._lock:
            if self._closed or os.getpid() != self._pid:
                return
            try:
                self._commit()
                if self._room(0):
                    for column in self._columns():
                        column.trim()
                    self._file.attrs[schema.ATTR_CLOSED] = True
                    self._file.flush()
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._report_io(error)
                self._count_unwritten()
            finally:
                self._closed = True
                self._end_watchable()
                _OPEN_WRITERS.discard(self)
                for tensor in self._tensors.values():
                    tensor.release_block()
                with contextlib.suppress(Exception):  # the file may already be unusable
                    self._file.close()
                self._claim.release()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- stop requests (dbg watch --stop, stop_on) and liveness --------------------------------
    @property
    def stop_requested(self) -> StopRequest | None:
        """The request to end the run (from ``dbg watch --stop`` or an in-process check), or
        None. Integrations end training at the next step boundary once it is set."""
        return self._stop_request

    def request_stop(
        self, reason: str, *, by: str, rule: str | None = None, step: int | None = None
    ) -> None:
        """Ask the run to stop (the first request wins); the trace records who, when and why."""
        with self._lock:
            if self._stop_request is None:
                self._accept_stop(new_request(by, reason, rule=rule, step=step))

    def _start_watchable(self) -> None:
        # A request file left by an earlier run of this path is not meant for this one; the
        # process id lets ``dbg watch`` tell a writer that died from one that is slow.
        clear_stop_request(self.path)
        self._merge_metadata({"writer": {"pid": os.getpid(), "host": socket.gethostname()}})

    def _check_stop_request(self) -> None:
        """At each commit: one stat for the request file of ``dbg watch --stop``."""
        if self._stop_request is None:
            request = read_stop_request(self.path)
            if request is not None:
                self._accept_stop(request)

    def _accept_stop(self, request: StopRequest) -> None:
        self._stop_request = request
        self._merge_metadata(
            {
                "stop": {
                    **request.to_dict(),
                    "seen_at": _now_iso(),
                    "seen_at_step": self._last_step,
                }
            }
        )

    def _end_watchable(self) -> None:
        try:
            clear_stop_request(self.path)
        except OSError:
            pass

    # -- internals ----------------------------------------------------------------------------
    def _accept(self, tag: Any, step: Any, mode: Any) -> tuple[str, int, int]:
        """Check a record's tag, step and mode; returns ``(tag, step, mode code)``."""
        if self._closed:  # the reason, even for a record whose tag is bad too
            raise Rejected("closed", "the writer is closed")
        if type(tag) is not str or tag not in self._scalars and tag not in self._tensors:
            tag = _checks.tag(tag)
        return (tag, *self._accept_when(step, mode))

    def _accept_when(self, step: Any, mode: Any) -> tuple[int, int]:
        """Check that records can be taken at ``step`` in ``mode``; returns ``(step, mode
        code)``."""
        if self._closed:
            raise Rejected("closed", "the writer is closed")
        if self._io_error is not None and self._held_bytes > self.max_buffer_bytes:
            if time.monotonic() - self._last_flush >= self.flush_secs:
                self._flush_locked()  # the disk may have room again
        if self._io_error is not None and self._held_bytes > self.max_buffer_bytes:
            raise Rejected(
                "held_limit",
                f"{self._held_bytes} bytes are held waiting for the disk ({self._io_error})",
            )
        if type(step) is not int or not 0 <= step <= _checks.MAX_STEP:
            step = _checks.step(step)
        code = _MODE_CODES.get(mode) if type(mode) is str else None
        return step, _checks.mode(mode) if code is None else code

    def _forget_empty(self, tag: Any) -> None:
        """Remove what a tag's failed first record left behind: no empty series or group."""
        if type(tag) is not str or not tag:
            return
        with contextlib.suppress(Exception):
            name = schema.encode_tag(tag)
            for series, root in (
                (self._scalars, self._scalar_root),
                (self._tensors, self._tensor_root),
            ):
                known = series.get(tag)
                if known is None or known.records == 0:
                    series.pop(tag, None)
                    if name in root:
                        del root[name]

    def _new_group(self, root: h5py.Group, tag: str) -> h5py.Group:
        if not self._room(0):
            raise _NoRoom(self.path)
        return _new_series_group(root, tag)

    def _after_add(self, step: int, mode: int, nbytes: int) -> None:
        late = self._late_started
        if (step != self._last_step or mode != self._last_mode) and not (
            late is not None and step < self._newest.get(mode, -1)
        ):
            self._newest[mode] = max(step, self._newest.get(mode, -1))
            self._last_step, self._last_mode = step, mode
            timeline = self._timeline
            timeline.pending_steps.append(step)
            timeline.pending_modes.append(mode)
            started = None if late is None else late.get((step, schema.MODES[mode]))
            timeline.pending_times.append(time.time() if started is None else started)
        if self._io_error is not None:
            # While the disk is full, retry at the commit interval only.
            self._held_bytes += nbytes
            if time.monotonic() - self._last_flush >= self.flush_secs:
                self._flush_locked()
        elif (
            time.monotonic() - self._last_flush >= self.flush_secs
            or self._buffered_bytes > self.max_buffer_bytes
        ):
            self._flush_locked()

    def _commit(self) -> None:
        """Write everything pending, then the record counts that vouch for it.

        Nothing is written unless the disk has room for all of it (then _NoRoom: the records
        wait). A series that fails to write keeps its rows for the next commit; the others are
        committed anyway.
        """
        self._last_flush = time.monotonic()
        self._check_stop_request()
        series: list[tuple[str, Any]] = [("the timeline", self._timeline)]
        series += list(self._scalars.items())
        series += list(self._tensors.items())
        for _, each in series:
            each.stage()
        cost = sum(column.write_cost() for column in self._columns())
        if not self._room(cost + 2 * len(self._metadata_json)):
            raise _NoRoom(self.path)
        failures: list[tuple[str, BaseException]] = []
        for tag, each in series:
            try:
                each.write()
            except Exception as error:  # noqa: BLE001 - the other series still commit
                failures.append((tag, error))
        self._write_metadata()
        # Data first, then the record counts that vouch for it: a kill between the two file
        # flushes leaves counts that are stale, never counts that point at unwritten rows.
        self._file.flush()
        for _, each in series:
            each.commit()
        self._file.flush()
        self._trim_buffers()
        if failures:
            first_tag, first_error = failures[0]
            raise OSError(
                f"{len(failures)} series kept for the next commit ({first_tag!r}: {first_error})"
            )
        if self._io_error is not None:
            log.warning("dbg: writing %s works again; the records held were written", self.path)
            self._io_error = None
            self._held_bytes = 0
            self._reported = {key for key in self._reported if not key.startswith("io:")}

    def _room(self, nbytes: int) -> bool:
        """Reserve disk space for ``nbytes`` of data plus HDF5's metadata; False if full."""
        return self._claim.reserve(self._file.id.get_filesize(), nbytes + _METADATA_ROOM)

    def _room_for(self, values: Sequence[Any]) -> bool | None:
        """:meth:`_room` for full tensors about to be written (None: some size is unknown,
        so each reserves its own)."""
        try:
            total = sum(0 if value is None else int(value.nbytes) for value in values)
        except Exception:  # noqa: BLE001 - not arrays: checked and dropped one by one
            return None
        return self._room(2 * total) if total else None

    def _columns(self) -> list[_Appendable]:
        """Every dataset the writer appends to."""
        columns = self._timeline.columns()
        for scalar in self._scalars.values():
            columns += scalar.columns()
        for tensor in self._tensors.values():
            columns += tensor.columns()
        return columns

    def _trim_buffers(self) -> None:
        if self._buffered_bytes > self.max_buffer_bytes:
            for tensor in self._tensors.values():
                tensor.release_block()

    def _merge_metadata(self, values: Mapping[str, Any]) -> None:
        """Merge keys into the metadata, dropping (and counting) those JSON cannot hold."""
        merged = {**self._metadata, **values}
        try:
            encoded = _checks.metadata_json(merged)
        except Rejected:
            for key, value in values.items():
                try:
                    _checks.metadata_json({key: value})
                except Rejected as error:
                    self._drop(key, error, "the metadata key")
                    merged.pop(key)
                    if key in self._metadata:
                        merged[key] = self._metadata[key]
            encoded = _checks.metadata_json(merged)
        self._metadata = merged
        self._metadata_json = encoded

    def _write_metadata(self) -> None:
        """The run metadata and the dropped-record counts, where they changed."""
        texts = {schema.ATTR_METADATA: self._metadata_json}
        if self.dropped_by_reason or self._dropped_before:
            dropped = self._dropped_before + self.dropped_by_reason
            texts[schema.ATTR_DROPPED] = json.dumps(dict(dropped), sort_keys=True)
        for name, text in texts.items():
            if self._written.get(name) != text:
                self._file.attrs[name] = text
                self._written[name] = text

    def _drop(self, tag: Any, error: BaseException, what: str = "a record of") -> None:
        reason = error.reason if isinstance(error, Rejected) else "error"
        self.dropped_by_reason[reason] += 1
        label = _checks.describe(tag)
        self._report(
            f"{label}:{reason}:{type(error).__name__}",
            "dbg: dropped %s %s (%s: %s); training goes on, further ones are only counted "
            "(TraceWriter.dropped_by_reason)",
            what,
            label,
            reason,
            _checks.describe_error(error),
        )

    def _report_io(self, error: BaseException) -> None:
        if self._io_error is None:
            self._io_error = error
            self._held_bytes = self._buffered_bytes
        self._report(
            f"io:{type(error).__name__}",
            "dbg: cannot write %s now (%s); records are kept in memory (up to "
            "max_buffer_bytes) and written at the next commit",
            self.path,
            _checks.describe_error(error),
        )

    def _count_unwritten(self) -> None:
        """Count the records a final commit could not write (they are lost)."""
        lost = sum(each.records - each.committed() for each in self._scalars.values())
        lost += sum(each.records - each.committed() for each in self._tensors.values())
        if lost > 0:
            self.dropped_by_reason["unwritten"] += lost
            log.warning(
                "dbg: %d records could not be written to %s and are lost; the trace holds "
                "everything up to its last commit",
                lost,
                self.path,
            )

    def _report(self, key: str, message: str, *args: Any) -> None:
        """Log once per kind of problem. Never raises: it runs where training must go on."""
        if key in self._reported:
            return
        self._reported.add(key)
        with contextlib.suppress(Exception):
            log.warning(message, *args)
