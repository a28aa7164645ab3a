"""Line charts in the terminal, drawn with braille characters (2x4 dots per cell).

No plotting dependency: a chart is a list of text lines plus, for each series, the indices of
the cells it coloured, so the caller (Rich) can colour them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Braille dot bits by (column, row) inside a cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


@dataclass(frozen=True)
class Chart:
    """A rendered chart: plain lines and, per cell, which series drew it (-1: none)."""

    lines: list[str]
    owners: list[list[int]]
    y_labels: tuple[str, str]
    x_labels: tuple[str, str]


def line_chart(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    *,
    width: int = 60,
    height: int = 10,
    log: bool | None = None,
) -> Chart:
    """Draw several series on one canvas; ``log`` (default: when the range spans > 2 decades)."""
    finite = [y[np.isfinite(y)] for y in ys]
    values = (
        np.concatenate([v for v in finite if v.size])
        if any(v.size for v in finite)
        else np.array([0.0, 1.0])
    )
    all_x = (
        np.concatenate([np.asarray(x, dtype=np.float64) for x in xs if len(x)])
        if any(len(x) for x in xs)
        else np.array([0.0, 1.0])
    )
    if log is None:
        log = bool(values.min() > 0 and values.max() / values.min() > 100)
    transform = np.log10 if log else (lambda v: v)
    low, high = float(transform(values.min())), float(transform(values.max()))
    if high == low:
        low, high = low - 1, high + 1
    x_low, x_high = float(all_x.min()), float(all_x.max())
    if x_high == x_low:
        x_high = x_low + 1
    dots_w, dots_h = width * 2, height * 4
    cells = [[0] * width for _ in range(height)]
    owners = [[-1] * width for _ in range(height)]
    for series, (x, y) in enumerate(zip(xs, ys)):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        keep = np.isfinite(y) & (y > 0 if log else True)
        if not keep.any():
            continue
        px = np.round((x[keep] - x_low) / (x_high - x_low) * (dots_w - 1)).astype(int)
        py = np.round((transform(y[keep]) - low) / (high - low) * (dots_h - 1)).astype(int)
        previous = None
        for point in zip(px, py):
            for dx, dy in _segment(previous, point):
                row = height - 1 - dy // 4
                cells[row][dx // 2] |= _DOTS[dx % 2][3 - dy % 4]
                owners[row][dx // 2] = series
            previous = point
    lines = ["".join(chr(0x2800 + bits) if bits else " " for bits in row) for row in cells]
    label = _number_label
    top, bottom = (10**high, 10**low) if log else (high, low)
    return Chart(lines, owners, (label(top), label(bottom)), (label(x_low), label(x_high)))


def _segment(start: tuple[int, int] | None, end: tuple[int, int]) -> list[tuple[int, int]]:
    """Dots of a straight line from ``start`` to ``end`` (just ``end`` when there is no start)."""
    if start is None:
        return [end]
    (x0, y0), (x1, y1) = start, end
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    return [
        (round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps))
        for i in range(1, steps + 1)
    ]


def _number_label(value: float) -> str:
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.3g}"
