"""Read dbg traces: lazily, safely, and in bounded memory.

``open_trace(path)`` validates the file and lists its series from metadata alone; values are
read on demand. Scalar series and per-tensor statistics come back as numpy arrays without
touching raw tensor bytes; raw tensors stream in chunks of records. Statistics missing from a
trace (for example one written by hand with only raw tensors) are derived from the raw tensors
with the writer's own definitions.

Safety: only hard links inside the file are followed; external links, soft links, virtual
datasets and datasets with external storage are ignored and listed in
:attr:`Trace.warnings`. Every failure to read surfaces as :class:`TraceFormatError`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import h5py
import numpy as np

from dbgcli.errors import MissingDataError, TraceFormatError, TraceNotFoundError, TraceVersionError
from dbgcli.trace import roles, schema
from dbgcli.trace.derive import Derivation, RecordStats, UnitMeasures
from dbgcli.trace.stats import COL, DERIVED_STATS, derived

T = TypeVar("T")

_DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class Series:
    """Values of one series with the step and mode of every record."""

    steps: np.ndarray
    values: np.ndarray
    modes: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)

    def select(
        self, mode: str | None = None, start: int | None = None, stop: int | None = None
    ) -> Series:
        """Records of one mode and/or with ``start <= step <= stop``."""
        keep = np.ones(len(self.steps), dtype=bool)
        if mode is not None:
            keep &= self.modes == schema.MODE_CODES[mode]
        if start is not None:
            keep &= self.steps >= start
        if stop is not None:
            keep &= self.steps <= stop
        if keep.all():
            return self
        return Series(self.steps[keep], self.values[keep], self.modes[keep])

    def mode_names(self) -> list[str]:
        """Names of the modes present, in format order."""
        return [schema.MODES[code] for code in np.unique(self.modes) if code < len(schema.MODES)]


class RawChunk(NamedTuple):
    """Consecutive raw records of one shape: ``values[i]`` is record ``records[i]``."""

    records: np.ndarray
    steps: np.ndarray
    modes: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class RawSegment:
    """Where the full tensors of one shape live."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    rows: int
    dense: bool  # hand-written ``values`` dataset: row i is record i


@dataclass(frozen=True)
class TagInfo:
    """What a trace holds for one tag, read from metadata without touching values."""

    tag: str
    scalar: bool
    records: int
    collection: str | None = None
    kind: str | None = None
    role: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    has_stats: bool = False
    stat_columns: tuple[str, ...] = ()
    unit_measure: str | None = None
    unit_axis: int | None = None
    has_units: bool = False
    segments: tuple[RawSegment, ...] = ()
    path: str = ""
    truncated_from: int | None = None
    band: tuple[float, float] | None = None

    @property
    def raw_records(self) -> int:
        """Number of records whose full tensor is stored."""
        return sum(segment.rows for segment in self.segments)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Distinct shapes of the stored full tensors."""
        return tuple(segment.shape for segment in self.segments)


@dataclass
class _Cache:
    derived: dict[str, dict[Derivation, Any]] = field(default_factory=dict)
    timeline: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


class _Memory:
    """Arrays read from the trace, kept within a byte budget, least recently used dropped first.

    Rules look at the same series again and again, so keeping what was read saves re-reading;
    the budget keeps a long trace from holding all of its statistics in memory at once.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self.items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, str]) -> np.ndarray | None:
        array = self.items.get(key)
        if array is not None:
            self.items.move_to_end(key)
        return array

    def drop(self, key: tuple[str, str]) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.size -= old.nbytes

    def put(self, key: tuple[str, str], array: np.ndarray) -> None:
        self.drop(key)
        self.items[key] = array
        self.size += array.nbytes
        while self.size > self.budget and len(self.items) > 1:
            _, dropped = self.items.popitem(last=False)
            self.size -= dropped.nbytes


def open_trace(path: str | os.PathLike[str], *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Trace:
    """Open a trace for reading; raises a :class:`~dbgcli.errors.DbgError` with a clear message.

    ``cache_bytes`` bounds the memory kept for series already read (statistics, scalar
    values, unit measures); the least recently used go first. Analysis reads each tensor's
    statistics about once (see :meth:`Trace.release`), so a small budget costs little time and
    keeps memory flat however long the trace.

    The file is validated up front: it must exist, be a regular non-empty HDF5 file written in
    the dbg trace format, and not have a newer major format version.
    """
    file_path = Path(path)
    if not file_path.exists():
        raise TraceNotFoundError(f"{file_path}: no such file")
    if file_path.is_dir():
        raise TraceNotFoundError(f"{file_path}: is a directory, not a trace file")
    if not file_path.is_file():
        raise TraceNotFoundError(f"{file_path}: not a regular file")
    if file_path.stat().st_size == 0:
        raise TraceFormatError(f"{file_path}: empty file, not a trace")
    try:
        is_hdf5 = h5py.is_hdf5(file_path)
    except OSError as error:
        raise TraceFormatError(f"{file_path}: cannot read: {error}") from error
    if not is_hdf5:
        raise TraceFormatError(f"{file_path}: not an HDF5 file")
    try:
        handle = _open_read_only(file_path)
    except OSError as error:
        sizes = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(error))
        if sizes:
            raise TraceFormatError(
                f"{file_path}: truncated HDF5 file ({sizes[1]} of {sizes[2]} bytes present)"
            ) from error
        raise TraceFormatError(f"{file_path}: corrupt HDF5 file ({_short(error)})") from error
    try:
        return Trace(file_path, handle, cache_bytes=cache_bytes)
    except BaseException:
        handle.close()
        raise


def _runs(selected: np.ndarray) -> list[tuple[int, int]]:
    """``[begin, end)`` ranges of consecutive True values."""
    edges = np.diff(np.concatenate(([0], selected.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _open_read_only(path: Path) -> h5py.File:
    # Without locking, a trace can be read while its writer runs in another process; a writer
    # in this same process holds the file with locking on, and HDF5 then insists on matching.
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as error:
        if "locking flag values don't match" not in str(error):
            raise
        return h5py.File(path, "r")


class _Node:
    """A group or dataset opened through h5py's low-level API."""

    def __init__(self, oid: Any, path: str) -> None:
        self.id = oid
        self.path = path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.id.shape)

    @property
    def dtype(self) -> np.dtype:
        dtype: np.dtype = np.dtype(self.id.dtype)
        return dtype

    @property
    def backed_rows(self) -> int:
        """Rows of a dataset that storage in the file can hold.

        A dataset may declare any extent (2**50 rows in a file of a few KiB): reading what was
        never stored returns fill values, so the rows a reader may trust stop where storage
        stops. Chunked datasets are bounded by their allocated chunks, contiguous ones by their
        allocated bytes; compact ones live in the object header and are whole.
        """
        shape = self.shape
        plist = self.id.get_create_plist()
        layout = plist.get_layout()
        if layout == h5py.h5d.CHUNKED:
            return min(shape[0], int(self.id.get_num_chunks()) * int(plist.get_chunk()[0]))
        if layout == h5py.h5d.CONTIGUOUS:
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
            stored = int(self.id.get_storage_size())
            return min(shape[0], stored // row_bytes) if row_bytes else 0
        return shape[0]

    def names(self) -> list[str]:
        """Link names in creation order where the file tracks it (the writer's roots do, so
        tags come in recording order: the model's layer order), else in name order."""
        found: list[bytes] = []
        try:
            self.id.links.iterate(found.append, idx_type=h5py.h5.INDEX_CRT_ORDER)
        except (KeyError, ValueError, RuntimeError, OSError):
            found = list(self.id)
        return [name.decode("utf-8", "replace") for name in found]

    def attrs(self) -> dict[str, Any]:
        """Every attribute, numbers as int64/float64 and strings as bytes or str."""
        names: list[bytes] = []
        h5py.h5a.iterate(self.id, names.append)
        values = {}
        for name in names:
            attr = h5py.h5a.open(self.id, name)
            type_class = attr.get_type().get_class()
            dims = attr.get_space().get_simple_extent_dims()
            dtype = {
                h5py.h5t.INTEGER: np.dtype(np.int64),
                h5py.h5t.FLOAT: np.dtype(np.float64),
                h5py.h5t.STRING: h5py.string_dtype(),
            }.get(type_class)
            buffer = np.empty(dims, dtype=dtype if dtype is not None else attr.dtype)
            try:
                attr.read(buffer)
            except (OSError, TypeError, ValueError):
                # Conversions HDF5 will not do directly (fixed-length strings, say).
                buffer = np.empty(attr.shape, dtype=attr.dtype)
                attr.read(buffer)
            values[name.decode("utf-8", "replace")] = buffer[()] if buffer.shape == () else buffer
        return values


class _OutsideFile(Exception):
    """A link or dataset that would make the reader leave the file."""


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]


class Trace:
    """A read-only view of one trace. Use :func:`open_trace` to create it."""

    def __init__(
        self, path: Path, handle: h5py.File, *, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.path = path
        self._file = handle
        self._cache = _Cache()
        self._memory = _Memory(cache_bytes)
        # Outside the budget: every rule's view of a tag holds its index anyway, and tensors
        # recorded together share one copy.
        self._indexes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._last_index: tuple[np.ndarray, np.ndarray] | None = None
        # One read buffer shared by every iter_raw(..., reuse_buffer=True) of this trace.
        self._raw_buffer: np.ndarray | None = None
        self.warnings: list[str] = []
        self.incomplete_reasons: list[str] = []
        # Series longer on disk than the writer's last commit, one line each (a trace being
        # written has them all); incomplete_reasons counts them in one line.
        self.cut_series: list[str] = []
        attrs = self._guard("the root attributes", lambda: _Node(handle.id, "/").attrs())
        if _text(attrs.get(schema.ATTR_FORMAT)) != schema.FORMAT_NAME:
            raise TraceFormatError(
                f"{path}: an HDF5 file, but not a dbg trace "
                f"(root attribute '{schema.ATTR_FORMAT}' is not '{schema.FORMAT_NAME}')"
            )
        version_text = _text(attrs.get(schema.ATTR_FORMAT_VERSION))
        try:
            self.format_version = schema.parse_version(version_text)
        except (TypeError, ValueError):
            raise TraceFormatError(f"{path}: unreadable format version {version_text!r}") from None
        if self.format_version[0] > schema.FORMAT_VERSION[0]:
            raise TraceVersionError(
                f"{path}: trace format {version_text} is newer than this dbg understands "
                f"(format {schema.FORMAT_VERSION[0]}.x); upgrade dbgcli to read it"
            )
        self.dbgcli_version = _text(attrs.get(schema.ATTR_DBGCLI_VERSION))
        self.created = _text(attrs.get(schema.ATTR_CREATED))
        self.metadata = self._parse_metadata(attrs.get(schema.ATTR_METADATA))
        closed = attrs.get(schema.ATTR_CLOSED)
        if closed is not None and np.size(closed) != 1:
            raise TraceFormatError(
                f"{path}: root attribute '{schema.ATTR_CLOSED}' must be one flag, "
                f"not {_preview(closed)}"
            )
        # Set when a dbg writer started the file but never closed it (killed, or still running).
        self._unclosed = closed is not None and not bool(closed)
        if self._unclosed:
            self.incomplete_reasons.append(
                "the writer did not close the trace (killed or still running)"
            )
        self._tags: dict[str, TagInfo] = {}
        self._guard("the list of series", self._scan)
        if self.cut_series:
            count = len(self.cut_series)
            self.incomplete_reasons.append(
                f"{count} series read up to the writer's last commit (rows after it are left out)"
            )

    # -- context manager ----------------------------------------------------------------------
    def close(self) -> None:
        """Close the underlying file."""
        self._file.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- metadata -----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        """False when the writer was killed or is still running, or data had to be cut."""
        return not self.incomplete_reasons

    @property
    def file_size(self) -> int:
        """Size of the trace file in bytes."""
        return self.path.stat().st_size

    def tags(
        self,
        pattern: str | None = None,
        *,
        collection: str | None = None,
        kind: str | None = None,
        scalar: bool | None = None,
    ) -> list[TagInfo]:
        """Tags matching a glob ``pattern``, a collection, a kind and/or series type."""
        found = []
        for info in self._tags.values():
            if pattern is not None and not fnmatch.fnmatchcase(info.tag, pattern):
                continue
            if collection is not None and info.collection != collection:
                continue
            if kind is not None and info.kind != kind:
                continue
            if scalar is not None and info.scalar != scalar:
                continue
            found.append(info)
        return found

    def tag(self, name: str) -> TagInfo:
        """The :class:`TagInfo` of one tag; raises KeyError naming close matches."""
        try:
            return self._tags[name]
        except KeyError:
            raise MissingDataError(f"{self.path}: no tag {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tags

    # -- values -------------------------------------------------------------------------------
    def index(self, tag: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, modes)`` of every record of a tag."""
        cached = self._indexes.get(tag)
        if cached is None:
            info = self.tag(tag)
            steps, modes = self._guard(f"the step index of {tag!r}", lambda: self._read_index(info))
            # Tensors recorded together share their index: keep one copy of it.
            if (
                self._last_index is not None
                and np.array_equal(steps, self._last_index[0])
                and np.array_equal(modes, self._last_index[1])
            ):
                steps, modes = self._last_index
            self._last_index = (steps, modes)
            cached = self._indexes[tag] = (steps, modes)
        return cached

    def scalar(self, tag: str, mode: str | None = None) -> Series:
        """A scalar series (loss, metric, learning rate)."""
        info = self.tag(tag)
        if not info.scalar:
            raise MissingDataError(f"{tag!r} is a tensor, not a scalar series")
        values = self._memory.get(("values", tag))
        if values is None:
            values = self._guard(
                f"the values of {tag!r}",
                lambda: self._rows(info, schema.DS_VALUE).astype(np.float64),
            )
            self._memory.put(("values", tag), values)
        steps, modes = self.index(tag)
        return Series(steps, values, modes).select(mode)

    def stats(self, tag: str) -> np.ndarray:
        """The ``(records, len(STAT_COLUMNS))`` statistics of a tensor, derived if not stored."""
        cached = self._memory.get(("stats", tag))
        if cached is None:
            info = self.tag(tag)
            if info.scalar:
                raise MissingDataError(f"{tag!r} is a scalar series, not a tensor")
            cached = self._guard(f"the statistics of {tag!r}", lambda: self._load_stats(info))
            self._memory.put(("stats", tag), cached)
        return cached

    def release(self, tag: str) -> None:
        """Let go of what is kept in memory of ``tag``: statistics, unit measures, derivations.

        Anything asked for again is read or derived again.
        """
        self._memory.drop(("stats", tag))
        self._memory.drop(("units", tag))
        self._cache.derived.pop(tag, None)

    def stat(self, tag: str, name: str, mode: str | None = None) -> Series:
        """One statistic of a tensor as a series; ``name`` may be a derived statistic."""
        if name in COL:
            values = self.stats(tag)[:, COL[name]]
        elif name in DERIVED_STATS:
            # Not cached: recomputing is a few elementwise operations, and a cached copy would
            # add fresh memory per tag, which costs more than the arithmetic on long traces.
            table = self.stats(tag)
            values = derived(name, {column: table[:, COL[column]] for column in COL})
        else:
            known = ", ".join((*schema.STAT_COLUMNS, *DERIVED_STATS))
            raise MissingDataError(f"unknown statistic {name!r}; known: {known}")
        steps, modes = self.index(tag)
        return Series(steps, values, modes).select(mode)

    def units(self, tag: str) -> Series | None:
        """Per-unit activation measure ``(records, units)`` (stored, or derived from raw)."""
        info = self.tag(tag)
        if info.unit_measure is None:
            return None
        cached = self._memory.get(("units", tag))
        if cached is None:
            cached = self._guard(f"the unit measures of {tag!r}", lambda: self._load_units(info))
            self._memory.put(("units", tag), cached)
        if cached.shape[0] != info.records:
            return None
        steps, modes = self.index(tag)
        return Series(steps, cached, modes)

    def timeline(self) -> Series:
        """Wall-clock time (seconds since the epoch) at which each new step was first seen."""
        if self._cache.timeline is None:
            self._cache.timeline = self._guard("the timeline", self._read_timeline)
        steps, modes, times = self._cache.timeline
        return Series(steps, times, modes)

    def iter_raw(
        self,
        tag: str,
        *,
        mask: np.ndarray | None = None,
        max_bytes: int = _DEFAULT_CHUNK_BYTES,
        reuse_buffer: bool = False,
    ) -> Iterator[RawChunk]:
        """Stream the full tensors of a tag, segment by segment, in chunks of records.

        Args:
            tag: The tensor tag.
            mask: Boolean array over the tag's records; only selected records are yielded, and
                chunks without any selected record are not read at all.
            max_bytes: Upper bound on the bytes of one chunk (at least one record is read).
            reuse_buffer: Read every chunk into the same buffer (faster; the yielded values are
                valid only until the next chunk).
        """
        info = self.tag(tag)
        steps, modes = self.index(tag)
        for segment in info.segments:
            yield from self._guard_iter(
                f"the raw tensors of {tag!r}",
                self._iter_segment(info, segment, steps, modes, mask, max_bytes, reuse_buffer),
            )

    def raw_records(self, tag: str) -> np.ndarray:
        """Indices of the records whose full tensor is stored, in ascending order."""
        info = self.tag(tag)

        def read() -> np.ndarray:
            parts = [np.empty(0, dtype=np.int64)]
            for segment in info.segments:
                if segment.dense:
                    parts.append(np.arange(segment.rows, dtype=np.int64))
                else:
                    record_path = segment.path.rsplit("/", 1)[0] + "/" + schema.DS_RECORD
                    parts.append(self._record_ids(record_path, segment.rows, info.records, tag))
            return np.sort(np.concatenate(parts))

        return self._guard(f"the full-tensor index of {tag!r}", read)

    def derive(self, tag: str, derivations: Sequence[Derivation]) -> list[Any]:
        """Results of ``derivations`` on a tag's full tensors, computed together in one pass.

        Results are cached per (tag, derivation); only the uncached ones are computed, and
        only the records some derivation wants are read.
        """
        info = self.tag(tag)
        cache = self._cache.derived.setdefault(tag, {})
        todo = [d for d in dict.fromkeys(derivations) if d not in cache]
        if todo:
            self._guard(f"the full tensors of {tag!r}", lambda: self._derive(info, todo, cache))
        return [cache[d] for d in derivations]

    def implied_derivations(self, tag: str) -> list[Derivation]:
        """Derivations the reader would run to fill statistics or unit measures the file lacks."""
        info = self.tag(tag)
        if info.scalar or not info.segments:
            return []
        implied: list[Derivation] = []
        if self._missing_columns(info):
            implied.append(RecordStats())
        if info.unit_measure is not None and not info.has_units:
            implied.append(UnitMeasures())
        return implied

    def _derive(self, info: TagInfo, todo: list[Derivation], cache: dict[Derivation, Any]) -> None:
        masks = [d.wanted(info, self) for d in todo]
        # wanted() may itself have derived something (statistics of a trace without them).
        pending = [(d, m) for d, m in zip(todo, masks) if d not in cache]
        if not pending:
            return
        todo = [d for d, _ in pending]
        masks = [m for _, m in pending]
        if any(mask is None for mask in masks):
            union = None
        else:
            union = np.zeros(info.records, dtype=bool)
            for mask in masks:
                if mask is not None:
                    union |= mask
        accumulators = [d.start(info, self) for d in todo]
        if union is None or union.any():
            for chunk in self.iter_raw(info.tag, mask=union, reuse_buffer=True):
                for accumulator in accumulators:
                    accumulator.feed(chunk)
        for derivation, accumulator in zip(todo, accumulators):
            cache[derivation] = accumulator.finish()

    def raw(self, tag: str, step: int, mode: str | None = None) -> np.ndarray | None:
        """The full tensor recorded at ``step`` (first match), or None if it was not kept."""
        steps, modes = self.index(tag)
        hit = steps == step
        if mode is not None:
            hit &= modes == schema.MODE_CODES[mode]
        if not hit.any():
            return None
        mask = np.zeros(len(steps), dtype=bool)
        mask[int(np.flatnonzero(hit)[0])] = True
        for chunk in self.iter_raw(tag, mask=mask):
            return np.array(chunk.values[0])
        return None

    # -- scanning -----------------------------------------------------------------------------
    # The scan uses h5py's low-level API: opening objects and reading attributes through the
    # high-level wrappers costs about 100 us each, which made opening a trace with hundreds of
    # series take a noticeable fraction of a second.
    def _scan(self) -> None:
        file_node = _Node(self._file.id, "/")
        for root_name, scalar in ((schema.SCALARS, True), (schema.TENSORS, False)):
            try:
                root = self._child(file_node, root_name, group=True)
            except _OutsideFile as skipped:
                self.warnings.append(str(skipped))
                continue
            if root is None:
                continue
            for name in root.names():
                try:
                    group = self._child(root, name, group=True)
                    info = self._scan_group(group, name, scalar) if group is not None else None
                except _OutsideFile as skipped:
                    self.warnings.append(str(skipped))
                    continue
                if info is not None:
                    self._tags[info.tag] = info

    def _scan_group(self, group: _Node, name: str, scalar: bool) -> TagInfo | None:
        attrs = group.attrs()
        tag = _text(attrs.get(schema.ATTR_TAG)) or schema.decode_tag(name)
        where = f"{'scalar' if scalar else 'tensor'} {tag!r}"
        step = self._array(group, schema.DS_STEP, where, ONE_D, "iuf")
        if step is None:
            if self._unclosed:
                # Created by a writer that was stopped before its first commit of this tag.
                return None
            raise TraceFormatError(f"{self.path}: {where} has no '{schema.DS_STEP}' dataset")
        lengths = [step.backed_rows]
        mode = self._array(group, schema.DS_MODE, where, ONE_D, "iu")
        if mode is not None:
            lengths.append(mode.backed_rows)
        if scalar:
            value = self._array(group, schema.DS_VALUE, where, ONE_D, "biuf")
            if value is None:
                raise TraceFormatError(f"{self.path}: {where} has no '{schema.DS_VALUE}' dataset")
            lengths.append(value.backed_rows)
            records, cut = self._committed(attrs, lengths, where)
            return TagInfo(
                tag=tag, scalar=True, records=records, path=group.path, truncated_from=cut
            )
        stats = self._array(group, schema.DS_STATS, where, TWO_D, "iuf")
        columns: tuple[str, ...] = ()
        if stats is not None:
            lengths.append(stats.backed_rows)
            stored_columns = attrs.get(schema.ATTR_COLUMNS)
            if stored_columns is not None and (
                not isinstance(stored_columns, np.ndarray) or stored_columns.ndim != 1
            ):
                raise TraceFormatError(
                    f"{self.path}: {where}: attribute '{schema.ATTR_COLUMNS}' must list names"
                )
            columns = (
                tuple(_text(c) for c in stored_columns)
                if stored_columns is not None
                else schema.STAT_COLUMNS
            )
            if stats.shape[1] != len(columns):
                raise TraceFormatError(
                    f"{self.path}: {where}: '{schema.DS_STATS}' does not match its {len(columns)} columns"
                )
        units = self._array(group, schema.DS_UNITS, where, TWO_D, "iuf")
        if units is not None:
            lengths.append(units.backed_rows)
        dense = self._array(group, schema.DS_VALUES, where, TENSOR_RANKS, "biuf")
        if dense is not None:
            lengths.append(dense.backed_rows)
        records, cut = self._committed(attrs, lengths, where)
        segments = self._segments(group, dense, records, where)
        if stats is None and not segments and records:
            raise TraceFormatError(
                f"{self.path}: {where} has neither '{schema.DS_STATS}' nor raw tensors"
            )
        collection = _text(attrs.get(schema.ATTR_COLLECTION)) or None
        meaning = roles.tensor_role(tag, collection, _text(attrs.get(schema.ATTR_KIND)) or None)
        role = _text(attrs.get(schema.ATTR_ROLE)) or meaning.role
        kind = meaning.kind
        shape_attr = attrs.get(schema.ATTR_SHAPE)
        if shape_attr is not None and not _is_shape(shape_attr):
            raise TraceFormatError(
                f"{self.path}: {where}: attribute '{schema.ATTR_SHAPE}' is not a shape: "
                f"{_preview(shape_attr)}"
            )
        shape = (
            tuple(int(d) for d in np.atleast_1d(shape_attr))
            if shape_attr is not None
            else (segments[0].shape if segments else None)
        )
        if shape_attr is not None and np.size(shape_attr) == 0:
            shape = ()
        dtype_attr = _text(attrs.get(schema.ATTR_DTYPE)) or (
            segments[0].dtype.str if segments else None
        )
        measure = schema.unit_measure(kind) if role in roles.ACTIVATION_ROLES else None
        unit_axis_attr = attrs.get(schema.ATTR_UNIT_AXIS)
        if unit_axis_attr is not None and not (
            np.ndim(unit_axis_attr) == 0
            and np.asarray(unit_axis_attr).dtype.kind in "iu"
            and (shape is None or -len(shape) <= int(unit_axis_attr) < len(shape))
        ):
            raise TraceFormatError(
                f"{self.path}: {where}: attribute '{schema.ATTR_UNIT_AXIS}' is not an axis of "
                f"the tensor: {_preview(unit_axis_attr)}"
            )
        unit_axis = (
            int(unit_axis_attr)
            if unit_axis_attr is not None
            else (schema.default_unit_axis(len(shape)) if shape is not None and measure else None)
        )
        return TagInfo(
            tag=tag,
            scalar=False,
            records=records,
            collection=collection,
            kind=kind,
            role=role,
            band=self._band(attrs, measure, kind, role, stored_units=units is not None),
            shape=shape,
            dtype=dtype_attr,
            has_stats=stats is not None,
            stat_columns=columns,
            unit_measure=measure if unit_axis is not None else None,
            unit_axis=unit_axis,
            has_units=units is not None,
            segments=segments,
            path=group.path,
            truncated_from=cut,
        )

    def _band(
        self,
        attrs: dict[str, Any],
        measure: str | None,
        kind: str | None,
        role: str | None,
        *,
        stored_units: bool,
    ) -> tuple[float, float] | None:
        """The band of a unit measure: as stored (format 1.1 for saturation, 1.2 for ReLU-like
        kinds), the band an older writer used for its stored units, or today's band for units
        derived from raw tensors."""
        if measure is None or kind is None:
            return None
        stored = attrs.get(schema.ATTR_BAND)
        if stored is not None and np.size(stored) == 2 and np.asarray(stored).dtype.kind in "iuf":
            low, high = (float(v) for v in np.ravel(stored))
            if low < high:
                return low, high
        if stored_units and measure == schema.UNIT_MEASURE_ACTIVE:
            if self.format_version < (1, 2):
                return schema.RELU_INACTIVE_BAND
        elif stored_units and self.format_version < (1, 1):
            return schema.legacy_band(kind, role)
        return schema.unit_band(kind, role)

    def _committed(
        self, attrs: dict[str, Any], lengths: list[int], where: str
    ) -> tuple[int, int | None]:
        """Records every dataset of a series holds, cut to the writer's last commit."""
        records = min(lengths)
        committed = self._count(attrs, schema.ATTR_RECORDS, where)
        if committed is not None:
            records = min(records, committed)
        longest = max(lengths)
        if records < longest:
            self.cut_series.append(
                f"{where}: cut to {records} committed records ({longest} rows were present)"
            )
            return records, longest
        return records, None

    def _segments(
        self, group: _Node, dense: _Node | None, records: int, where: str
    ) -> tuple[RawSegment, ...]:
        segments = []
        if dense is not None:
            segments.append(
                RawSegment(dense.path, tuple(dense.shape[1:]), dense.dtype, records, True)
            )
        raw = self._child(group, schema.GROUP_RAW, group=True)
        if raw is None:
            return tuple(segments)
        for name in sorted(raw.names(), key=lambda n: (len(n), n)):
            segment = self._child(raw, name, group=True)
            if segment is None:
                continue
            values = self._array(segment, schema.DS_VALUES, where, TENSOR_RANKS, "biuf")
            record = self._array(segment, schema.DS_RECORD, where, ONE_D, "iu")
            committed = self._count(segment.attrs(), schema.ATTR_RECORDS, where)
            if self._unclosed and (committed is None or values is None or record is None):
                # Started after the writer's last commit: nothing in it is vouched for.
                continue
            if values is None or record is None:
                raise TraceFormatError(
                    f"{self.path}: {where}: raw segment {name!r} needs '{schema.DS_VALUES}' "
                    f"and '{schema.DS_RECORD}'"
                )
            rows = min(values.backed_rows, record.backed_rows)
            if committed is not None:
                rows = min(rows, committed)
            if rows and (self._unclosed or committed is None):
                # Rows pointing past the committed records belong to an interrupted commit.
                record_ids = self._dataset(record.path)[:rows]
                rows = int(np.searchsorted(record_ids, records))
            segments.append(
                RawSegment(values.path, tuple(values.shape[1:]), values.dtype, rows, False)
            )
        return tuple(segments)

    def _child(self, parent: _Node, name: str, group: bool = False) -> _Node | None:
        """A member reached through a hard link and stored inside this file, or None if absent.

        Raises _OutsideFile for links and datasets that would read outside this file; the scan
        skips the series that holds them.
        """
        encoded = name.encode()
        path = f"{parent.path.rstrip('/')}/{name}"
        if not parent.id.links.exists(encoded):
            return None
        link_type = parent.id.links.get_info(encoded).type
        if link_type != h5py.h5l.TYPE_HARD:
            kind = "external link" if link_type == h5py.h5l.TYPE_EXTERNAL else "soft link"
            raise _OutsideFile(f"ignored {kind} at {path}")
        oid = h5py.h5o.open(parent.id, encoded)
        is_group = isinstance(oid, h5py.h5g.GroupID)
        if isinstance(oid, h5py.h5d.DatasetID):
            plist = oid.get_create_plist()
            if plist.get_layout() == h5py.h5d.VIRTUAL or plist.get_external_count():
                raise _OutsideFile(f"ignored dataset with storage outside the file at {path}")
        if is_group != group:
            raise TraceFormatError(
                f"{self.path}: {path} should be a {'group' if group else 'dataset'}"
            )
        return _Node(oid, path)

    def _array(
        self, parent: _Node, name: str, where: str, ranks: range, kinds: str
    ) -> _Node | None:
        """A dataset member checked before anything reads it: its rank is in ``ranks`` and
        its dtype kind in ``kinds`` (numpy's letters), or the trace is refused."""
        node = self._child(parent, name)
        if node is None:
            return None
        if len(node.shape) not in ranks or node.dtype.kind not in kinds:
            wanted = {"iu": "integer", "iuf": "number", "biuf": "number"}.get(kinds, kinds)
            rank = f"{ranks.start}-D" if len(ranks) == 1 else f"at least {ranks.start}-D"
            raise TraceFormatError(
                f"{self.path}: {where}: '{name}' must be a {rank} {wanted} array, "
                f"not {len(node.shape)}-D {node.dtype}"
            )
        return node

    def _count(self, attrs: dict[str, Any], name: str, where: str) -> int | None:
        """An attribute that holds a count of records: absent, or a whole number >= 0."""
        value = attrs.get(name)
        if value is None:
            return None
        number = np.asarray(value)
        if (
            number.shape != ()
            or number.dtype.kind not in "iuf"
            or not np.isfinite(number)
            or number < 0
            or number != np.floor(number)
            or number > np.iinfo(np.int64).max
        ):
            raise TraceFormatError(
                f"{self.path}: {where}: attribute '{name}' must be a count, not {_preview(value)}"
            )
        return int(number)

    def _dataset(self, path: str) -> h5py.Dataset:
        obj = self._file[path]
        assert isinstance(obj, h5py.Dataset)
        return obj

    # -- loading ------------------------------------------------------------------------------
    def _first_row(self, info: TagInfo) -> int:
        """Where a series' records start in its datasets (later in a TailTrace)."""
        return 0

    def _first_timeline_row(self, rows: int) -> int:
        """Where the timeline's rows start, of ``rows`` committed (later in a TailTrace)."""
        return 0

    def _rows(self, info: TagInfo, name: str) -> np.ndarray:
        """The committed rows of one dataset of a series."""
        first = self._first_row(info)
        return np.asarray(self._dataset(f"{info.path}/{name}")[first : first + info.records])

    def _read_index(self, info: TagInfo) -> tuple[np.ndarray, np.ndarray]:
        group = self._file[info.path]
        raw_steps = self._rows(info, schema.DS_STEP)
        if raw_steps.dtype.kind == "f":
            if not np.isfinite(raw_steps).all() or (raw_steps != np.round(raw_steps)).any():
                raise TraceFormatError(f"{self.path}: steps of {info.tag!r} are not all integers")
        if raw_steps.size and (raw_steps.min() < 0 or raw_steps.max() > np.iinfo(np.int64).max):
            raise TraceFormatError(f"{self.path}: steps of {info.tag!r} are out of range")
        steps = raw_steps.astype(np.int64, copy=False)
        if schema.DS_MODE in group:
            modes = self._rows(info, schema.DS_MODE).astype(np.uint8, copy=False)
            if len(modes) and modes.max() >= len(schema.MODES):
                raise TraceFormatError(f"{self.path}: unknown mode code in {info.tag!r}")
        else:
            modes = np.zeros(info.records, dtype=np.uint8)
        return steps, modes

    def _read_timeline(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        empty = (np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.float64))
        try:
            group = self._child(_Node(self._file.id, "/"), schema.TIMELINE, group=True)
            if group is None:
                return empty
            columns = [
                self._array(group, name, "the timeline", ONE_D, kinds)
                for name, kinds in (
                    (schema.DS_STEP, "iu"),
                    (schema.DS_MODE, "iu"),
                    (schema.DS_TIME, "iuf"),
                )
            ]
        except _OutsideFile as skipped:
            self.warnings.append(str(skipped))
            return empty
        if any(column is None for column in columns):
            return empty
        n = min(column.backed_rows for column in columns if column is not None)
        committed = self._count(group.attrs(), schema.ATTR_RECORDS, "the timeline")
        if committed is not None:
            n = min(n, committed)
        first = self._first_timeline_row(n)
        step, mode, when = (self._dataset(c.path)[first:n] for c in columns if c is not None)
        return step.astype(np.int64), mode.astype(np.uint8), when.astype(np.float64)

    def _load_stats(self, info: TagInfo) -> np.ndarray:
        missing = self._missing_columns(info)
        if info.has_stats and info.stat_columns == schema.STAT_COLUMNS:
            # The layout the writer produces: read straight into the table, no second copy.
            table = np.empty((info.records, len(schema.STAT_COLUMNS)), dtype=np.float64)
            if info.records:
                dataset = self._dataset(info.path + "/" + schema.DS_STATS)
                first = self._first_row(info)
                dataset.read_direct(table, np.s_[first : first + info.records], np.s_[:])
            return table
        table = np.full((info.records, len(schema.STAT_COLUMNS)), np.nan)
        if info.has_stats:
            dataset = self._dataset(info.path + "/" + schema.DS_STATS)
            stored = np.empty((info.records, dataset.shape[1]), dtype=np.float64)
            if info.records:
                first = self._first_row(info)
                dataset.read_direct(stored, np.s_[first : first + info.records], np.s_[:])
            for position, name in enumerate(info.stat_columns):
                if name in COL:
                    table[:, COL[name]] = stored[:, position]
        if missing and info.segments:
            derived_table = self.derive(info.tag, [RecordStats()])[0]
            columns = [COL[name] for name in missing]
            table[:, columns] = derived_table[:, columns]
        return table

    def _missing_columns(self, info: TagInfo) -> list[str]:
        stored = set(info.stat_columns) if info.has_stats else set()
        return [name for name in schema.STAT_COLUMNS if name not in stored]

    def _load_units(self, info: TagInfo) -> np.ndarray:
        if info.has_units:
            return self._rows(info, schema.DS_UNITS).astype(np.float32, copy=False)
        if not info.segments:
            return np.empty((0, 0), dtype=np.float32)
        return np.asarray(self.derive(info.tag, [UnitMeasures()])[0])

    def _iter_segment(
        self,
        info: TagInfo,
        segment: RawSegment,
        steps: np.ndarray,
        modes: np.ndarray,
        mask: np.ndarray | None,
        max_bytes: int,
        reuse_buffer: bool,
    ) -> Iterator[RawChunk]:
        if segment.rows == 0:
            return
        values = self._dataset(segment.path)
        if segment.dense:
            record_ids = np.arange(segment.rows, dtype=np.int64)
        else:
            record_path = segment.path.rsplit("/", 1)[0] + "/" + schema.DS_RECORD
            record_ids = self._record_ids(record_path, segment.rows, len(steps), info.tag)
        row_bytes = max(1, int(np.prod(segment.shape, dtype=np.int64)) * segment.dtype.itemsize)
        chunk = values.chunks[0] if values.chunks else 1
        rows_per_read = max(1, max_bytes // row_bytes)
        if rows_per_read >= chunk:
            rows_per_read -= rows_per_read % chunk
        buffer = self._raw_buffer if reuse_buffer else None
        for start in range(0, segment.rows, rows_per_read):
            stop = min(segment.rows, start + rows_per_read)
            ids = record_ids[start:stop]
            selected = None if mask is None else mask[ids]
            if selected is not None and not selected.any():
                continue
            # A sparse selection reads only its runs of rows; a dense one reads the whole range
            # in one call and drops the few rows it does not want.
            dense = selected is None or selected.mean() > 0.5
            runs = [(0, stop - start)] if selected is None or dense else _runs(selected)
            count = sum(end - begin for begin, end in runs)
            nbytes = count * row_bytes
            if buffer is None or buffer.nbytes < nbytes:
                buffer = np.empty(max(nbytes, rows_per_read * row_bytes), dtype=np.uint8)
                if reuse_buffer:
                    self._raw_buffer = buffer
            out = buffer[:nbytes].view(segment.dtype).reshape(count, *segment.shape)
            if not reuse_buffer:
                buffer = None
            filled = 0
            for begin, end in runs:
                values.read_direct(
                    out, np.s_[start + begin : start + end], np.s_[filled : filled + end - begin]
                )
                filled += end - begin
            if selected is not None:
                ids = ids[selected]
                if dense and len(ids) < count:
                    out = out[selected]
            yield RawChunk(ids, steps[ids], modes[ids], out)

    def _record_ids(self, path: str, rows: int, records: int, tag: str) -> np.ndarray:
        """The record each stored full tensor belongs to, checked to point at a record."""
        ids: np.ndarray = self._dataset(path)[:rows].astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= records or (np.diff(ids) <= 0).any()):
            raise TraceFormatError(
                f"{self.path}: the full tensors of {tag!r} point at records that do not exist "
                f"or are out of order"
            )
        return ids

    # -- error handling -----------------------------------------------------------------------
    def _guard(self, what: str, read: Callable[[], T]) -> T:
        try:
            return read()
        except TraceFormatError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
            raise TraceFormatError(f"{self.path}: cannot read {what}: {_short(error)}") from error

    def _guard_iter(self, what: str, chunks: Iterator[T]) -> Iterator[T]:
        while True:
            try:
                item = next(chunks)
            except StopIteration:
                return
            except TraceFormatError:
                raise
            except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
                raise TraceFormatError(
                    f"{self.path}: cannot read {what}: {_short(error)}"
                ) from error
            yield item

    def _parse_metadata(self, raw: Any) -> dict[str, Any]:
        if raw is None:
            return {}
        try:
            value = json.loads(_text(raw))
        except (TypeError, ValueError, RecursionError):
            self.warnings.append("run metadata is not valid JSON; ignored")
            return {}
        return value if isinstance(value, dict) else {"value": value}


ONE_D = range(1, 2)
TWO_D = range(2, 3)
#: A record of a tensor of rank 0 to 31: HDF5's 32 dimensions, one of them the record axis.
TENSOR_RANKS = range(1, 33)


def _is_shape(value: Any) -> bool:
    array = np.asarray(value)
    return (
        array.ndim <= 1
        and array.size < len(TENSOR_RANKS)
        and (array.size == 0 or (array.dtype.kind in "iu" and bool((array >= 0).all())))
    )


def _preview(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def open_tail(path: str | os.PathLike[str], window: int) -> TailTrace:
    """Open the last ``window`` records of every series of a trace (of one being written, say).

    What ``dbg watch`` reads at each poll: the cost depends on ``window`` and the number of
    series, not on the length of the trace. Series keep their real steps; full tensors are
    left out (statistics, unit measures, scalars and the timeline are there), so rules that
    judge full tensors are skipped. Validation and errors are those of :func:`open_trace`.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    whole = open_trace(path)
    try:
        return TailTrace(whole, window)
    except BaseException:
        whole.close()
        raise


class TailTrace(Trace):
    """The last records of each series of an open trace; create it with :func:`open_tail`."""

    def __init__(self, whole: Trace, window: int) -> None:
        # The same file and scan as ``whole``: only what is read from the datasets changes.
        self.__dict__.update(whole.__dict__)
        self.window = window
        self._offsets: dict[str, int] = {}
        for tag, info in list(self._tags.items()):
            start = max(0, info.records - window)
            self._offsets[tag] = start
            self._tags[tag] = replace(info, records=info.records - start, segments=())

    @property
    def being_written(self) -> bool:
        """True while the writer has not closed the trace (it runs, or it was killed)."""
        return self._unclosed

    def _first_row(self, info: TagInfo) -> int:
        return self._offsets[info.tag]

    def _first_timeline_row(self, rows: int) -> int:
        return max(0, rows - self.window)
