"""Per-record statistics of a tensor: the exact definitions, computed on blocks of records.

The writer computes these for every recorded tensor, and the reader computes the same numbers
from raw tensors when a trace lacks them, so both sides share this module.

For one record ``x`` with ``n`` elements, over the ``F`` finite elements (neither NaN nor ±inf);
results are float64, sums are accumulated in float32 for float16, float32 and 8/16-bit integer
tensors and in float64 otherwise:

========== =====================================================================
count      ``n``
nan_count  number of NaN elements
inf_count  number of +inf or -inf elements
min, max   smallest and largest finite element (NaN if ``F == 0``)
mean       ``sum(x) / F``
std        population standard deviation ``sqrt(sum((x - mean)^2) / F)`` (exactly 0 when
           ``min == max``)
l1         ``sum(|x|)``
l2         ``sqrt(sum(x^2))``
zero_frac  ``count(x == 0) / n`` (NaN if ``n == 0``)
pos_frac   ``count(x > 0) / n`` (NaN if ``n == 0``)
update_l2  ``||x - x_prev||_2`` (in the work dtype) where ``x_prev`` is the tag's previous record (NaN if its shape differs)
           (weights and biases only; NaN otherwise)
========== =====================================================================

Derived statistics (not stored): ``abs_mean = l1 / F``, ``var = std^2``, ``finite_count = F``.

Booleans count as 0 and 1; integers are converted to float64.
"""

from __future__ import annotations

import math

import numpy as np

from dbgcli.trace import schema

NUM_COLUMNS = len(schema.STAT_COLUMNS)
COL = {name: index for index, name in enumerate(schema.STAT_COLUMNS)}

# Below this many elements per record, counting with one vectorised call per block beats one
# count_nonzero call per record.
_PER_ROW_COUNT_MIN = 4096

DERIVED_STATS = ("abs_mean", "var", "finite_count")


class StatsKernel:
    """Computes statistics for blocks of records, reusing scratch memory between calls.

    Sums go through BLAS matrix-vector products: ``float32`` accumulation for float16,
    float32 and small-integer tensors (relative error of order 1e-7 per million elements in
    practice), ``float64`` for everything else. Reusing scratch blocks matters: a fresh
    multi-megabyte temporary per block costs page faults that are slower than the arithmetic.
    """

    def __init__(self) -> None:
        self._scratch: dict[np.dtype, np.ndarray] = {}
        self._mask = np.empty(0, dtype=bool)
        self._ones: dict[tuple[int, np.dtype], np.ndarray] = {}

    def _buffer(self, rows: int, n: int, dtype: np.dtype) -> np.ndarray:
        scratch = self._scratch.get(dtype)
        if scratch is None or scratch.size < rows * n:
            scratch = self._scratch[dtype] = np.empty(rows * n, dtype=dtype)
        return scratch[: rows * n].reshape(rows, n)

    def _mask_buffer(self, rows: int, n: int) -> np.ndarray:
        if self._mask.size < rows * n:
            self._mask = np.empty(rows * n, dtype=bool)
        return self._mask[: rows * n].reshape(rows, n)

    def _ones_vector(self, n: int, dtype: np.dtype) -> np.ndarray:
        ones = self._ones.get((n, dtype))
        if ones is None:
            ones = self._ones[(n, dtype)] = np.ones(n, dtype=dtype)
        return ones

    def compute(self, block: np.ndarray) -> np.ndarray:
        """Statistics of each record in ``block`` (shape ``(rows, *shape)``).

        Returns a ``(rows, len(STAT_COLUMNS))`` float64 array; ``update_l2`` is left NaN (see
        :meth:`update_norms`).
        """
        rows = block.shape[0]
        flat = _as_numeric(block).reshape(rows, -1)
        n = flat.shape[1]
        out = np.full((rows, NUM_COLUMNS), np.nan)
        out[:, COL["count"]] = n
        if rows == 0:
            return out
        if n == 0:
            out[:, COL["nan_count"]] = 0
            out[:, COL["inf_count"]] = 0
            return out
        lo = flat.min(axis=1)
        hi = flat.max(axis=1)
        finite_rows = np.isfinite(lo) & np.isfinite(hi)
        if finite_rows.all():
            self._finite_block(flat, lo, hi, out)
        else:
            for r in range(rows):
                if finite_rows[r]:
                    self._finite_block(
                        flat[r : r + 1], lo[r : r + 1], hi[r : r + 1], out[r : r + 1]
                    )
                else:
                    _row_with_nonfinite(flat[r], out[r])
        return out

    def _finite_block(
        self, flat: np.ndarray, lo: np.ndarray, hi: np.ndarray, out: np.ndarray
    ) -> None:
        rows, n = flat.shape
        work = _work_dtype(flat.dtype)
        if flat.dtype == work and flat.flags.c_contiguous:
            x = flat
        else:
            x = self._buffer(rows, n, work)
            np.copyto(x, flat, casting="unsafe")
        ones = self._ones_vector(n, work)
        out[:, COL["nan_count"]] = 0
        out[:, COL["inf_count"]] = 0
        out[:, COL["min"]] = lo
        out[:, COL["max"]] = hi
        with np.errstate(over="ignore", invalid="ignore"):
            total = (x @ ones).astype(np.float64)
            squares = _row_dots(x).astype(np.float64)
            magnitude = self._buffer(rows, n, work)
            np.abs(x, out=magnitude)
            l1 = (magnitude @ ones).astype(np.float64)
        overflowed = ~(np.isfinite(total) & np.isfinite(squares) & np.isfinite(l1))
        for r in np.flatnonzero(overflowed):
            # float32 sums of huge (exploding) values overflow where float64 ones do not.
            values = flat[r].astype(np.float64)
            total[r], squares[r], l1[r] = values.sum(), np.dot(values, values), np.abs(values).sum()
        out[:, COL["l1"]] = l1
        out[:, COL["l2"]] = np.sqrt(squares)
        mean = total / n
        out[:, COL["mean"]] = mean
        with np.errstate(over="ignore", invalid="ignore"):
            var = np.maximum(squares / n - mean * mean, 0.0)
        # E[x^2] - E[x]^2 loses about log10(mean^2 / var) digits; where that could reach the
        # sixth significant digit, recompute those rows with the exact two-pass formula.
        shaky = mean * mean > (1e2 if work == np.float32 else 1e6) * var
        for r in np.flatnonzero(shaky):
            centred = flat[r].astype(np.float64) - mean[r]
            var[r] = np.dot(centred, centred) / n
        std = np.sqrt(var)
        std[lo == hi] = 0.0
        out[:, COL["std"]] = std
        mask = self._mask_buffer(rows, n)
        out[:, COL["zero_frac"]] = _count_rows(np.equal(flat, 0, out=mask)) / n
        out[:, COL["pos_frac"]] = _count_rows(np.greater(flat, 0, out=mask)) / n

    @staticmethod
    def update_norms(block: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """``||x_i - x_{i-1}||_2`` for each record, the first against ``previous`` (or NaN).

        Differences are taken in the statistics' work dtype (float32 for float32 tensors),
        which avoids float64 copies of every weight at every step.
        """
        rows = block.shape[0]
        flat = _as_numeric(block).reshape(rows, -1)
        work = _work_dtype(flat.dtype)
        norms = np.full(rows, np.nan)
        with np.errstate(over="ignore", invalid="ignore"):
            if rows > 1:
                norms[1:] = np.sqrt(_row_dots(np.subtract(flat[1:], flat[:-1], dtype=work)))
            if previous is not None and rows:
                prev = _as_numeric(previous).reshape(1, -1)
                if prev.shape[1] == flat.shape[1]:
                    norms[0] = np.sqrt(_row_dots(np.subtract(flat[:1], prev, dtype=work))[0])
        return norms


_FLOAT32_EXACT = frozenset(
    np.dtype(t) for t in (np.float16, np.float32, np.int8, np.uint8, np.int16, np.uint16)
)


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """float32 where it represents every value exactly and BLAS is fastest, else float64."""
    return np.dtype(np.float32) if dtype in _FLOAT32_EXACT else np.dtype(np.float64)


def _as_numeric(block: np.ndarray) -> np.ndarray:
    if block.dtype == np.bool_:
        return block.view(np.uint8)
    return block


def _row_dots(x: np.ndarray) -> np.ndarray:
    """Row-wise dot products ``x_i . x_i`` through BLAS (faster than einsum)."""
    dots: np.ndarray = (x[:, None, :] @ x[:, :, None]).reshape(-1)
    return dots


def _count_rows(mask: np.ndarray) -> np.ndarray:
    if mask.shape[1] >= _PER_ROW_COUNT_MIN:
        return np.array([np.count_nonzero(row) for row in mask], dtype=np.float64)
    counts: np.ndarray = mask.sum(axis=1, dtype=np.float64)
    return counts


def _row_with_nonfinite(row: np.ndarray, out: np.ndarray) -> None:
    values = row.astype(np.float64)
    n = values.size
    nan = np.isnan(values)
    inf = np.isinf(values)
    out[COL["nan_count"]] = np.count_nonzero(nan)
    out[COL["inf_count"]] = np.count_nonzero(inf)
    out[COL["zero_frac"]] = np.count_nonzero(values == 0) / n
    out[COL["pos_frac"]] = np.count_nonzero(values > 0) / n
    finite = values[~(nan | inf)]
    if finite.size == 0:
        return
    lo, hi = finite.min(), finite.max()
    mean = finite.sum() / finite.size
    out[COL["min"]] = lo
    out[COL["max"]] = hi
    out[COL["mean"]] = mean
    out[COL["std"]] = (
        0.0 if lo == hi else np.sqrt(np.dot(finite - mean, finite - mean) / finite.size)
    )
    out[COL["l1"]] = np.abs(finite).sum()
    out[COL["l2"]] = np.sqrt(np.dot(finite, finite))


def derived(name: str, columns: dict[str, np.ndarray]) -> np.ndarray:
    """A derived statistic (see :data:`DERIVED_STATS`) from stored columns."""
    finite: np.ndarray = columns["count"] - columns["nan_count"] - columns["inf_count"]
    if name == "finite_count":
        return finite
    if name == "abs_mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(finite > 0, columns["l1"] / np.maximum(finite, 1), np.nan)
    if name == "var":
        return columns["std"] ** 2
    raise KeyError(name)


def unit_measure(
    block: np.ndarray, measure: str, band: tuple[float, float] | None, unit_axis: int
) -> np.ndarray:
    """Per-unit measure of each record: ``(rows, units)`` float32.

    ``active_frac``: share of the unit's values outside ``band``, the kind's ``(low, high]``
    inactive band (see ``schema.inactive_band``; > 0 without one). ``unsaturated_frac``:
    share of the unit's values strictly inside ``band`` (the kind's non-saturated band, see
    ``schema.unsaturated_band``). NaN counts for neither. ``unit_axis`` indexes a record (not
    the block).
    """
    values = _as_numeric(block)
    if measure == schema.UNIT_MEASURE_ACTIVE:
        low, high = band or schema.RELU_INACTIVE_BAND
        inside = values > high
        if low > -math.inf:
            inside |= (values <= low) & (values > -math.inf)
    else:
        assert band is not None, "a saturation measure needs its band"
        lo, hi = band
        inside = (values > lo) & (values < hi)
    axis = unit_axis + 1
    moved = np.moveaxis(inside, axis, -1)
    rows, units = moved.shape[0], moved.shape[-1]
    shares: np.ndarray = (
        moved.reshape(rows, -1, units).mean(axis=1, dtype=np.float64).astype(np.float32)
    )
    return shares
