"""Quantities computed from full tensors in one streaming pass.

A :class:`Derivation` describes a quantity (per-record statistics, per-unit activity, "is this
record all-close to the previous one", label counts...). ``Trace.derive(tag, derivations)``
streams the tag's full tensors once and feeds every chunk to each derivation's accumulator, so
adding a rule that needs another quantity of the same tensor does not re-read its bytes.
Derivations are frozen dataclasses: equal derivations share one computation and one cached
result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dbgcli.trace import schema
from dbgcli.trace.stats import COL, StatsKernel, unit_measure

if TYPE_CHECKING:
    from dbgcli.trace.reader import RawChunk, TagInfo, Trace


class Accumulator(ABC):
    """Receives the chunks of one pass and produces the result."""

    @abstractmethod
    def feed(self, chunk: RawChunk) -> None:
        """Consume one chunk. Copy anything kept: chunk buffers are reused."""

    @abstractmethod
    def finish(self) -> Any:
        """The derived quantity."""


class Derivation(ABC):
    """A quantity of one tag computed from its full tensors. Subclasses are frozen dataclasses."""

    def wanted(self, info: TagInfo, trace: Trace) -> np.ndarray | None:
        """Boolean mask of the records this derivation needs (None: every record with raw)."""
        return None

    @abstractmethod
    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        """A fresh accumulator for one pass over ``info``'s full tensors."""


@dataclass(frozen=True)
class RecordStats(Derivation):
    """The statistics table (see dbgcli.trace.stats) of records whose full tensor is stored."""

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _StatsAccumulator(info)


class _StatsAccumulator(Accumulator):
    def __init__(self, info: TagInfo) -> None:
        self.table = np.full((info.records, len(schema.STAT_COLUMNS)), np.nan)
        self.kernel = StatsKernel()
        self.tracked = info.role in schema.UPDATE_TRACKED_ROLES
        self.previous: np.ndarray | None = None
        self.previous_record = -2

    def feed(self, chunk: RawChunk) -> None:
        computed = self.kernel.compute(chunk.values)
        if self.tracked:
            consecutive = chunk.records[0] == self.previous_record + 1
            norms = StatsKernel.update_norms(chunk.values, self.previous if consecutive else None)
            # Only consecutive records describe one update.
            norms[np.diff(chunk.records, prepend=self.previous_record) != 1] = np.nan
            computed[:, COL["update_l2"]] = norms
            self.previous = np.array(chunk.values[-1])
            self.previous_record = int(chunk.records[-1])
        self.table[chunk.records] = computed

    def finish(self) -> np.ndarray:
        return self.table


@dataclass(frozen=True)
class UnitMeasures(Derivation):
    """Per-unit activation measure ``(records, units)`` (see docs/trace-format.md)."""

    def start(self, info: TagInfo, trace: Trace) -> Accumulator:
        return _UnitsAccumulator(info)


class _UnitsAccumulator(Accumulator):
    def __init__(self, info: TagInfo) -> None:
        self.info = info
        self.shape = info.segments[0].shape if info.segments else None
        usable = (
            self.shape is not None
            and info.unit_axis is not None
            and info.unit_measure is not None
            and info.kind is not None
            and len(self.shape) > info.unit_axis
        )
        units = (
            self.shape[info.unit_axis]
            if usable and self.shape is not None and info.unit_axis is not None
            else 0
        )
        self.units = np.full((info.records if usable else 0, units), np.nan, dtype=np.float32)

    def feed(self, chunk: RawChunk) -> None:
        info = self.info
        if self.units.shape[0] == 0 or chunk.values.shape[1:] != self.shape:
            return
        assert (
            info.unit_measure is not None and info.kind is not None and info.unit_axis is not None
        )
        self.units[chunk.records] = unit_measure(
            chunk.values, info.unit_measure, info.band, info.unit_axis
        )

    def finish(self) -> np.ndarray:
        return self.units
