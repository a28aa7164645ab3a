"""TraceWriter: record scalars and tensors of a training run into one HDF5 trace.

The writer is built around two promises:

* It is cheap. Records are copied into per-tag blocks; statistics are computed for a whole
  block with a few vectorised numpy calls, and blocks reach HDF5 as whole chunks.
* It never kills training and never loses what was committed. ``add_*`` never raises: a value
  it cannot convert, or any I/O error, is reported once as a :class:`DbgWarning` and the record
  is dropped (counted in :attr:`TraceWriter.dropped`). Data is committed at every
  :meth:`~TraceWriter.flush` (every ``flush_secs`` seconds and on close); a process killed at
  any moment leaves a trace that opens and holds everything up to the last commit.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from dbgcli._version import __version__
from dbgcli.errors import TraceFormatError, TraceWriterError
from dbgcli.trace import roles, schema
from dbgcli.trace.stats import COL, StatsKernel, unit_measure

# Rows per chunk of the small per-record datasets: big enough for fast reads of long runs,
# small enough that a tag with a handful of records does not allocate much disk.
_STEP_CHUNK = 4096
_STATS_CHUNK = 2048
_MIN_CHUNK = 256
# Raw chunks and blocks (what statistics are computed on, and what one h5py write carries)
# hold about 1 MiB, h5py's chunk-cache size. Short runs get smaller chunks (see _Appendable).
_RAW_CHUNK_BYTES = 1 << 20
_BLOCK_BYTES = 1 << 20


class DbgWarning(UserWarning):
    """A record was dropped or the writer hit an I/O error; training goes on."""


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def _to_numpy(value: Any) -> np.ndarray:
    """Convert numpy arrays, Python numbers and array-likes (torch tensors included) to numpy.

    Torch is never imported: a tensor is recognised by its ``detach``/``cpu`` methods.
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        tensor = value.detach()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":
            tensor = tensor.float()
        return np.asarray(tensor.cpu().numpy())
    return np.asarray(value)


class _Appendable:
    """A chunked, resizable dataset grown along axis 0, created on first append."""

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

    def append(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        if self.dataset is None:
            # The first write shows how fast the series grows: a short run gets small chunks
            # (small files), a long run large ones (fast reads).
            self.chunk = max(self.min_chunk, min(self.max_chunk, len(rows)))
            self.dataset = self.group.create_dataset(
                self.name,
                shape=(0, *self.row_shape),
                maxshape=(None, *self.row_shape),
                chunks=(self.chunk, *self.row_shape),
                dtype=self.dtype,
            )
        dataset = self.dataset
        start, count = self.length, len(rows)
        chunk = self.chunk
        if start + count > self.capacity:
            self.capacity = max(
                start + count, self.capacity + self.capacity // 2, start + 8 * chunk
            )
            dataset.resize(self.capacity, axis=0)
        done = 0
        if rows.dtype == dataset.dtype and rows.flags.c_contiguous:
            # Rows up to the next chunk boundary go through h5py; whole chunks are written as
            # raw bytes, which skips HDF5's selection and conversion machinery (about twice
            # as fast, and exact since the chunks are unfiltered and of the rows' dtype).
            done = min(count, (-start) % chunk)
            if done:
                dataset[start : start + done] = rows[:done]
            offset = (0,) * len(self.row_shape)
            while count - done >= chunk:
                dataset.id.write_direct_chunk(
                    (start + done, *offset), rows[done : done + chunk].data
                )
                done += chunk
        if done < count:
            dataset[start + done : start + count] = rows[done:]
        self.length = start + count

    def rows_to_boundary(self, default: int) -> int:
        """Rows that would fill the current partial chunk (``default`` when aligned)."""
        if self.dataset is None:
            return default
        return (-self.length) % self.chunk or min(default, self.chunk)

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


class _Index:
    """The ``step``/``mode`` (and optional ``time``) columns shared by every series."""

    def __init__(self, group: h5py.Group, with_time: bool = False) -> None:
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

    def write_pending(self) -> None:
        self.step.append(np.asarray(self.pending_steps, dtype=np.int64))
        self.mode.append(np.asarray(self.pending_modes, dtype=np.uint8))
        if self.time is not None:
            self.time.append(np.asarray(self.pending_times, dtype=np.float64))
        self.pending_steps.clear()
        self.pending_modes.clear()
        self.pending_times.clear()


class _ScalarSeries:
    def __init__(self, group: h5py.Group) -> None:
        self.group = group
        self.index = _Index(group)
        self.value = _Appendable(group, schema.DS_VALUE, (), np.float64, _STEP_CHUNK, _MIN_CHUNK)
        self.pending_values: list[float] = []

    def add(self, value: float, step: int, mode: int) -> None:
        self.index.pending_steps.append(step)
        self.index.pending_modes.append(mode)
        self.pending_values.append(value)

    @property
    def pending(self) -> int:
        return len(self.pending_values)

    def write(self) -> None:
        self.index.write_pending()
        self.value.append(np.asarray(self.pending_values, dtype=np.float64))
        self.pending_values.clear()

    def commit(self) -> None:
        self.group.attrs[schema.ATTR_RECORDS] = self.value.length

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

    def write(self) -> None:
        if self.pending_records:
            self.record.append(np.concatenate(self.pending_records))
            self.pending_records.clear()

    def commit(self) -> None:
        self.group.attrs[schema.ATTR_RECORDS] = min(self.values.length, self.record.length)

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
        self.band = (
            schema.unsaturated_band(self.kind, self.role)
            if self.measure == schema.UNIT_MEASURE_UNSATURATED and self.kind is not None
            else None
        )
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
    ) -> None:
        """A record whose statistics (and unit measures) were computed by the caller."""
        self.finish_block()  # records stay in order when both kinds are mixed
        if not self.described:
            if self.unit_axis is None and self.measure is not None:
                self.unit_axis = schema.default_unit_axis(len(shape))
            self._write_attrs(shape, dtype)
        self.pending_stats.append(stats.reshape(1, -1))
        if self.measure is not None:
            self.pending_units.append(self._fit_units(units))
        if raw is not None and raw.size:
            segment = self._segment(raw.shape, raw.dtype)
            segment.values.append(raw.reshape(1, *raw.shape))
            segment.pending_records.append(np.array([self.records], dtype=np.int64))
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

    def finish_block(self) -> None:
        """Compute statistics of the pending block and write its raw rows."""
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
            segment.values.append(rows[keep] if not keep.all() else rows)
            segment.pending_records.append(record_ids.astype(np.int64))
            # After a partial write (a commit mid-block), end the next block on the chunk
            # boundary so that later blocks are whole chunks again.
            self.block_limit = segment.values.rows_to_boundary(self.block_rows)
        self.fill = 0
        self.keep_raw.clear()

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
            group = raw.create_group(str(len(raw)))
            group.attrs[schema.ATTR_SHAPE] = np.asarray(shape, dtype=np.int64)
            segment = self.segments[key] = _RawSegment(group, shape, dtype)
        return segment

    # -- writing ------------------------------------------------------------------------------
    def write(self) -> None:
        self.finish_block()
        for segment in self.segments.values():
            segment.write()
        self.index.write_pending()
        if self.pending_stats:
            self.stats.append(np.concatenate(self.pending_stats))
            self.pending_stats.clear()
        if self.pending_units:
            units = np.concatenate(self.pending_units)
            if units.shape[1]:
                if self.units is None:
                    self.units = _Appendable(
                        self.group,
                        schema.DS_UNITS,
                        (units.shape[1],),
                        np.float32,
                        schema.chunk_rows(units.shape[1] * 4, _RAW_CHUNK_BYTES),
                    )
                self.units.append(units)
            self.pending_units.clear()

    def commit(self) -> None:
        for segment in self.segments.values():
            segment.commit()
        self.group.attrs[schema.ATTR_RECORDS] = self.stats.length

    def columns(self) -> list[_Appendable]:
        own = [*self.index.columns(), self.stats, *([self.units] if self.units is not None else [])]
        return own + [column for segment in self.segments.values() for column in segment.columns()]

    def release_block(self) -> None:
        if self.block is not None:
            self.writer._buffered_bytes -= self.block.nbytes
            self.block = None


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
        flush_secs: Commit buffered records at most this many seconds apart (also on close).
        overwrite: Replace an existing file. Without it an existing file is refused, or
            appended to with ``resume=True``.
        resume: Append to an existing trace (after a restart from a checkpoint). Records that
            were never committed by the earlier writer are discarded.
        metadata: Free-form JSON-serialisable run metadata.
        hyperparameters: Stored under ``metadata["hyperparameters"]``.
        framework: Stored under ``metadata["framework"]``.
        max_buffer_bytes: Commit early when pending tensor blocks exceed this many bytes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        raw_every: int = 1,
        flush_secs: float = 10.0,
        overwrite: bool = False,
        resume: bool = False,
        metadata: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        framework: str | None = None,
        max_buffer_bytes: int = 256 << 20,
    ) -> None:
        if int(raw_every) < 0:
            raise ValueError(f"raw_every must be >= 0, got {raw_every!r}")
        if overwrite and resume:
            raise ValueError("overwrite and resume exclude each other")
        self.path = Path(path)
        self.raw_every = int(raw_every)
        self.flush_secs = float(flush_secs)
        self.max_buffer_bytes = int(max_buffer_bytes)
        self.dropped = 0
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._kernel = StatsKernel()
        self._buffered_bytes = 0
        self._warned: set[str] = set()
        self._failed: BaseException | None = None
        self._closed = False
        self._scalars: dict[str, _ScalarSeries] = {}
        self._tensors: dict[str, _TensorSeries] = {}
        self._last_step: int | None = None
        self._last_mode = -1
        self._metadata: dict[str, Any] = dict(metadata or {})
        if hyperparameters is not None:
            self._metadata["hyperparameters"] = dict(hyperparameters)
        if framework is not None:
            self._metadata["framework"] = framework
        self._metadata_dirty = True
        self._file = self._open(resume, overwrite)
        self._timeline = _Index(self._file.require_group(schema.TIMELINE), with_time=True)
        self._scalar_root = self._root(schema.SCALARS)
        self._tensor_root = self._root(schema.TENSORS)
        if resume:
            self._load_existing()
        self._file.attrs[schema.ATTR_CLOSED] = False
        self._write_metadata()
        self._file.flush()
        self._last_flush = time.monotonic()
        _OPEN_WRITERS.add(self)

    def _open(self, resume: bool, overwrite: bool) -> h5py.File:
        exists = self.path.exists()
        if exists and not (resume or overwrite):
            raise TraceWriterError(
                f"{self.path} already exists; pass overwrite=True to replace it "
                "or resume=True to append to it"
            )
        try:
            if resume and exists:
                handle = h5py.File(self.path, "a")
                if handle.attrs.get(schema.ATTR_FORMAT) != schema.FORMAT_NAME:
                    handle.close()
                    raise TraceFormatError(f"{self.path} is not a dbg trace; refusing to append")
                if (
                    schema.parse_version(handle.attrs[schema.ATTR_FORMAT_VERSION])[0]
                    != schema.FORMAT_VERSION[0]
                ):
                    handle.close()
                    raise TraceFormatError(f"{self.path} has another major format version")
                if "metadata" in handle.attrs:
                    stored = json.loads(handle.attrs[schema.ATTR_METADATA])
                    self._metadata = {**stored, **self._metadata}
                return handle
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = h5py.File(self.path, "w")
        except OSError as error:
            raise TraceWriterError(f"cannot open {self.path} for writing: {error}") from error
        attrs = handle.attrs
        attrs[schema.ATTR_FORMAT] = schema.FORMAT_NAME
        attrs[schema.ATTR_FORMAT_VERSION] = schema.FORMAT_VERSION_STR
        attrs[schema.ATTR_DBGCLI_VERSION] = __version__
        attrs[schema.ATTR_CREATED] = _now_iso()
        return handle

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
            for segment_group in group.get(schema.GROUP_RAW, {}).values():
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
                step, mode_code = self._accept(tag, step, mode)
                number = float(value.detach() if hasattr(value, "detach") else value)
                series = self._scalars.get(tag)
                if series is None:
                    series = self._scalars[tag] = _ScalarSeries(
                        self._scalar_root.create_group(schema.encode_tag(tag))
                    )
                    series.group.attrs[schema.ATTR_TAG] = tag
                series.add(number, step, mode_code)
                self._after_add(step, mode_code)
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._drop(tag, error)

    def add_scalars(self, values: Mapping[str, Any], step: int, *, mode: str = "train") -> None:
        """Record several scalars at the same step."""
        for tag, value in values.items():
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
                are detached and copied to the CPU).
            step: Global step (for example the optimizer step).
            collection: Group the tensor belongs to: ``weights``, ``biases``, ``gradients``,
                ``activations``, ``preactivations``, ``inputs``, ``labels``, ``predictions``...
                Fixed by the first record of the tag.
            kind: Activation function (``relu``, ``tanh``, ``sigmoid``, ...) or another
                subtype. Fixed by the first record of the tag.
            mode: ``train``, ``eval`` or ``predict``.
            raw: Force (True) or suppress (False) keeping the full tensor for this record.
            unit_axis: Axis of a record that indexes units for activation measures (default:
                the last axis of 2-D and 3-D tensors, axis 1 of 4-D and larger ones).
            track_updates: Record ``update_l2`` against the previous record (default: for
                weights and biases).

        A shape or dtype that differs from earlier records (a last partial batch, a variable
        sequence length) is fine: statistics are per record, and full tensors of each distinct
        shape go to their own raw segment.
        """
        with self._lock:
            try:
                step, mode_code = self._accept(tag, step, mode)
                array = value if type(value) is np.ndarray else _to_numpy(value)
                series = self._tensors.get(tag)
                if series is None or array.dtype is not series.block_dtype:
                    if array.dtype.kind not in "biuf":
                        raise TypeError(f"unsupported dtype {array.dtype}")
                if series is None:
                    group = self._tensor_root.create_group(schema.encode_tag(tag))
                    group.attrs[schema.ATTR_TAG] = tag
                    series = self._tensors[tag] = _TensorSeries(
                        self,
                        group,
                        tag,
                        collection,
                        kind,
                        unit_axis,
                        None if track_updates is None else bool(track_updates),
                    )
                if raw is None:
                    keep = self.raw_due(step)
                else:
                    keep = bool(raw)
                series.add(array, step, mode_code, keep)
                self._after_add(step, mode_code)
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._drop(tag, error)

    def raw_due(self, step: int) -> bool:
        """Whether a record at ``step`` keeps its full tensor by default (every ``raw_every``)."""
        return self.raw_every > 0 and step % self.raw_every == 0

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
        ``schema.STAT_COLUMNS`` order (NaN: not computed), kept as it is: the cheapest form
        for hooks that record hundreds of tensors a step. ``units`` is the per-unit activation measure of the record, and
        ``value``, when given, is kept as the record's full tensor. ``shape`` and ``dtype``
        describe the tensor (the first record of a tag fixes the tag's metadata).
        """
        with self._lock:
            try:
                step, mode_code = self._accept(tag, step, mode)
                if isinstance(stats, np.ndarray):
                    if stats.shape != (len(schema.STAT_COLUMNS),):
                        raise ValueError(f"a statistics row has {len(schema.STAT_COLUMNS)} values")
                    row = stats
                else:
                    row = np.full(len(schema.STAT_COLUMNS), np.nan)
                    for name, number in stats.items():
                        row[COL[name]] = float(number)
                raw = None if value is None else _to_numpy(value)
                series = self._tensors.get(tag)
                if series is None:
                    group = self._tensor_root.create_group(schema.encode_tag(tag))
                    group.attrs[schema.ATTR_TAG] = tag
                    series = self._tensors[tag] = _TensorSeries(
                        self, group, tag, collection, kind, None, False
                    )
                units_row = None if units is None else _to_numpy(units)
                series.add_precomputed(
                    row,
                    units_row,
                    raw,
                    tuple(int(d) for d in shape),
                    np.dtype(dtype),
                    step,
                    mode_code,
                )
                self._after_add(step, mode_code)
            except Exception as error:  # noqa: BLE001 - never let recording kill training
                self._drop(tag, error)

    def set_metadata(self, **values: Any) -> None:
        """Merge top-level keys into the run metadata (hyperparameters, framework, ...)."""
        with self._lock:
            self._metadata.update(values)
            self._metadata_dirty = True

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the run metadata."""
        return dict(self._metadata)

    def flush(self) -> None:
        """Write every pending record and commit: after this returns, a kill loses nothing."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._closed or self._failed is not None or os.getpid() != self._pid:
            return
        try:
            self._commit()
        except Exception as error:  # noqa: BLE001
            self._fail(error)

    def close(self) -> None:
        """Commit everything, mark the trace complete and close the file. Idempotent."""
        with self._lock:
            if self._closed or os.getpid() != self._pid:
                return
            try:
                if self._failed is None:
                    self._commit()
                    for column in self._columns():
                        column.trim()
                    self._file.attrs[schema.ATTR_CLOSED] = True
                    self._file.flush()
            except Exception as error:  # noqa: BLE001
                self._fail(error)
            finally:
                self._closed = True
                _OPEN_WRITERS.discard(self)
                for tensor in self._tensors.values():
                    tensor.release_block()
                try:
                    self._file.close()
                except Exception:  # noqa: BLE001 - the file may already be unusable
                    pass

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

    # -- internals ----------------------------------------------------------------------------
    def _accept(self, tag: str, step: Any, mode: str) -> tuple[int, int]:
        """Validate a record's tag, step and mode; returns ``(step, mode code)``."""
        code = _MODE_CODES.get(mode)
        if (
            code is None
            or self._closed
            or self._failed is not None
            or type(tag) is not str
            or not tag
        ):
            if self._closed:
                raise RuntimeError("the writer is closed")
            if self._failed is not None:
                raise RuntimeError(f"the writer stopped after an I/O error: {self._failed}")
            if not isinstance(tag, str) or not tag:
                raise TypeError(f"tag must be a non-empty string, got {tag!r}")
            raise ValueError(f"mode must be one of {', '.join(schema.MODES)}, got {mode!r}")
        if type(step) is not int:
            if isinstance(step, float) and not step.is_integer():
                raise ValueError(f"step must be an integer, got {step!r}")
            step = int(step)
        return step, code

    def _after_add(self, step: int, mode: int) -> None:
        if step != self._last_step or mode != self._last_mode:
            self._last_step, self._last_mode = step, mode
            timeline = self._timeline
            timeline.pending_steps.append(step)
            timeline.pending_modes.append(mode)
            timeline.pending_times.append(time.time())
        if (
            time.monotonic() - self._last_flush >= self.flush_secs
            or self._buffered_bytes > self.max_buffer_bytes
        ):
            self._flush_locked()

    def _commit(self) -> None:
        for scalar in self._scalars.values():
            if scalar.pending:
                scalar.write()
        for tensor in self._tensors.values():
            tensor.write()
        self._timeline.write_pending()
        if self._metadata_dirty:
            self._write_metadata()
        # Data first, then the record counts that vouch for it: a kill between the two file
        # flushes leaves counts that are stale, never counts that point at unwritten rows.
        self._file.flush()
        for scalar in self._scalars.values():
            scalar.commit()
        for tensor in self._tensors.values():
            tensor.commit()
        self._timeline.step.group.attrs[schema.ATTR_RECORDS] = self._timeline.step.length
        self._file.flush()
        self._last_flush = time.monotonic()
        self._trim_buffers()

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

    def _write_metadata(self) -> None:
        self._file.attrs[schema.ATTR_METADATA] = json.dumps(
            self._metadata, default=_json_default, allow_nan=True
        )
        self._metadata_dirty = False

    def _drop(self, tag: Any, error: BaseException) -> None:
        self.dropped += 1
        key = f"{tag!r}:{type(error).__name__}"
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(
                f"dbg: dropped a record of {tag!r}: {error} (further ones are counted silently)",
                DbgWarning,
                stacklevel=3,
            )

    def _fail(self, error: BaseException) -> None:
        self._failed = error
        warnings.warn(
            f"dbg: writing {self.path} failed ({error}); recording stops here, "
            "everything committed before stays readable",
            DbgWarning,
            stacklevel=3,
        )
