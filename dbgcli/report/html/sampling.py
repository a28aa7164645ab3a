"""Fewer points for long traces, so a report of a 100k-step run stays a few hundred kilobytes.

Two ways, both keeping what a reader looks for: :func:`thin` picks records of a line (the
lowest and highest of each stretch, and the first that is not finite, so spikes and NaN gaps
survive); :class:`Columns` groups steps into at most ``limit`` columns for heatmaps and bands,
each column starting at a recorded step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


def thin(values: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most about ``limit`` records of a line: every record when there are that
    few, else per stretch of records its lowest, its highest and its first non-finite one, plus
    the first and last records."""
    count = len(values)
    if count <= limit:
        return np.arange(count)
    values = np.asarray(values, dtype=np.float64)
    edges = np.linspace(0, count, max(1, limit // 3) + 1).astype(np.int64)
    keep = [0, count - 1]
    for begin, end in zip(edges[:-1], edges[1:]):
        if end <= begin:
            continue
        stretch = values[begin:end]
        finite = np.isfinite(stretch)
        if not finite.all():
            keep.append(begin + int(np.argmin(finite)))
        if finite.any():
            masked = np.where(finite, stretch, np.nan)
            keep.extend((begin + int(np.nanargmin(masked)), begin + int(np.nanargmax(masked))))
    return np.unique(np.asarray(keep, dtype=np.int64))


Reduction = Literal["mean", "min", "max"]


@dataclass(frozen=True)
class Columns:
    """Steps grouped into columns: column ``i`` holds the steps from ``starts[i]`` up to the
    next start (every recorded step is its own column when there are few)."""

    starts: np.ndarray

    @staticmethod
    def of(steps: np.ndarray, limit: int) -> Columns:
        """Columns over the distinct ``steps``, at most ``limit`` of them."""
        distinct = np.unique(np.asarray(steps, dtype=np.int64))
        if len(distinct) > limit:
            distinct = np.unique(distinct[np.linspace(0, len(distinct) - 1, limit).astype(int)])
        return Columns(distinct)

    def __len__(self) -> int:
        return len(self.starts)

    def reduce(self, steps: np.ndarray, values: np.ndarray, how: Reduction) -> np.ndarray:
        """``values`` (one per step in ``steps``) reduced per column; NaN where a column has no
        finite value."""
        values = np.asarray(values, dtype=np.float64)
        column = np.searchsorted(self.starts, steps, side="right") - 1
        finite = np.isfinite(values) & (column >= 0)
        column, values = column[finite], values[finite]
        out = np.full(len(self.starts), np.nan)
        if how == "mean":
            counts = np.bincount(column, minlength=len(out))
            sums = np.bincount(column, values, minlength=len(out))
            np.divide(sums, counts, out=out, where=counts > 0)
        elif how == "min":
            np.fmin.at(out, column, values)
        else:
            np.fmax.at(out, column, values)
        return out
