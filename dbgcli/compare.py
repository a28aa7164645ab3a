"""Compare two traces that should match (a rerun, a refactor, another machine).

For every tag the two traces share, records are paired by (step, mode). Scalars and every
statistic are compared with ``rtol``/``atol``; where both traces kept the full tensor of a
record, the values are compared element-wise (``numpy.allclose`` semantics, NaN equal to NaN).
The result is an ordinary report (findings of ``CMP001``, one per tag that differs, with the
first differing step), so every output format and exit code works.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dbgcli.analysis import places_of
from dbgcli.diagnosis import diagnose
from dbgcli.findings import Finding, Severity
from dbgcli.isolation import opened
from dbgcli.report.model import Report, RuleResult, RuleStatus, TraceReport, sorted_findings
from dbgcli.trace.reader import Trace, open_trace

COMPARE_ID = "CMP001"
COMPARE_NAME = "runs-differ"
_BATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |b|`` counts as equal."""

    rtol: float = 1e-5
    atol: float = 1e-8


def compare(
    path_a: str | Path,
    path_b: str | Path,
    tolerance: Tolerance = Tolerance(),
    pattern: str | None = None,
) -> Report:
    """Compare two traces; the report has one result whose findings are the differences."""
    started = time.perf_counter()
    label = f"{path_a} vs {path_b}"
    with open_trace(path_a) as a, open_trace(path_b) as b:
        opened()
        findings = list(_differences(a, b, tolerance, pattern))
        complete = a.complete and b.complete
        places = places_of(a)
    result = RuleResult(
        id=COMPARE_ID,
        name=COMPARE_NAME,
        category="run",
        severity=Severity.error,
        summary="Tensors or series differ between two runs that should match.",
        status=RuleStatus.violated if findings else RuleStatus.passed,
        findings=tuple(findings),
        seconds=time.perf_counter() - started,
    )
    # Both traces are read at the same steps: an earlier step is an earlier divergence.
    diagnoses = diagnose(sorted_findings((result,)), lambda _: _DIVERGENCE, places, slack=0)
    return Report(
        (
            TraceReport(
                path=label,
                complete=complete,
                results=(result,),
                seconds=result.seconds,
                diagnoses=diagnoses,
                places=places,
            ),
        )
    )


class _Divergence:
    """Any difference explains every later one, so the first divergence in causal order
    (onset, then place in the computation) is the cause: weights that differ from step 12
    make the loss differ from step 13."""

    named_only: frozenset[str] = frozenset()

    def fix(self, key: str | None = None) -> str:
        return (
            "rerun both with the same seeds, data order and library versions, "
            "torch.use_deterministic_algorithms(True) and one thread; the cause's first step "
            "is where to look"
        )

    def explained_by(self, key: str) -> tuple[str, ...]:
        return (COMPARE_ID,)

    def title(self, key: str) -> str:
        return "runs differ"


_DIVERGENCE = _Divergence()


def _differences(
    a: Trace, b: Trace, tolerance: Tolerance, pattern: str | None
) -> Iterator[Finding]:
    tags_a = {info.tag: info for info in a.tags(pattern)}
    tags_b = {info.tag: info for info in b.tags(pattern)}
    for tag in sorted(set(tags_a) ^ set(tags_b)):
        only = "first" if tag in tags_a else "second"
        yield _finding(tag, f"only in the {only} trace", key="missing")
    for tag in sorted(set(tags_a) & set(tags_b)):
        info_a, info_b = tags_a[tag], tags_b[tag]
        if info_a.scalar != info_b.scalar:
            yield _finding(
                tag, "a scalar series in one trace and a tensor in the other", key="type"
            )
            continue
        steps_a, modes_a = a.index(tag)
        steps_b, modes_b = b.index(tag)
        rows_a, rows_b = _pair(steps_a, modes_a, steps_b, modes_b)
        unpaired = len(steps_a) + len(steps_b) - 2 * len(rows_a)
        if unpaired:
            yield _finding(tag, f"{unpaired} record(s) at steps only one trace has", key="steps")
        if len(rows_a) == 0:
            continue
        if info_a.scalar:
            values_a, values_b = a.scalar(tag).values[rows_a], b.scalar(tag).values[rows_b]
            what = "value"
        else:
            values_a, values_b = a.stats(tag)[rows_a], b.stats(tag)[rows_b]
            what = "statistics"
        differ = np.asarray(~_close(values_a, values_b, tolerance))
        if differ.ndim == 2:
            differ = np.asarray(differ.any(axis=1))
        steps = steps_a[rows_a]
        if differ.any():
            first = int(np.flatnonzero(differ)[0])
            gap = _max_gap(values_a, values_b)
            yield _finding(
                tag,
                f"{'values' if info_a.scalar else what} differ at {int(differ.sum())} of "
                f"{len(differ)} shared records (largest gap {gap:.3g})",
                key=what,
                first=int(steps[first]),
                last=int(steps[np.flatnonzero(differ)[-1]]),
                count=int(differ.sum()),
                value=gap,
            )
        elif not info_a.scalar and info_a.raw_records and info_b.raw_records:
            yield from _raw_differences(a, b, tag, rows_a, rows_b, steps, tolerance)


def _pair(
    steps_a: np.ndarray, modes_a: np.ndarray, steps_b: np.ndarray, modes_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Record indices of A and B that share (step, mode, occurrence): the k-th record of a
    step and mode in A pairs with the k-th in B (two evaluation passes in one step are two
    records)."""
    _, rows_a, rows_b = np.intersect1d(
        _record_keys(steps_a, modes_a),
        _record_keys(steps_b, modes_b),
        assume_unique=True,
        return_indices=True,
    )
    order = np.argsort(rows_a)
    return rows_a[order], rows_b[order]


_KEY = np.dtype([("step", np.int64), ("mode", np.int64), ("occurrence", np.int64)])


def _record_keys(steps: np.ndarray, modes: np.ndarray) -> np.ndarray:
    """One unique key per record: its step, mode and how many records of that step and mode
    came before it."""
    keys = np.empty(len(steps), dtype=_KEY)
    keys["step"], keys["mode"] = steps, modes
    order = np.lexsort((modes, steps))
    same = np.zeros(len(steps), dtype=bool)
    if len(steps) > 1:
        sorted_keys = keys[order]
        same[1:] = (sorted_keys["step"][1:] == sorted_keys["step"][:-1]) & (
            sorted_keys["mode"][1:] == sorted_keys["mode"][:-1]
        )
    # Position within each run of equal (step, mode), in record order (lexsort is stable).
    position = np.arange(len(steps))
    run_start = np.maximum.accumulate(np.where(same, 0, position))
    keys["occurrence"][order] = position - run_start
    return keys


def _raw_differences(
    a: Trace,
    b: Trace,
    tag: str,
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    steps: np.ndarray,
    tolerance: Tolerance,
) -> Iterator[Finding]:
    """Element-wise comparison of the full tensors both traces kept, in bounded batches."""
    have_a = _raw_mask(a, tag)[rows_a]
    have_b = _raw_mask(b, tag)[rows_b]
    both = np.flatnonzero(have_a & have_b)
    info = a.tag(tag)
    row_bytes = max(1, int(np.prod(info.shape or (1,))) * np.dtype(info.dtype or "f8").itemsize)
    batch = max(1, _BATCH_BYTES // (2 * row_bytes))
    differing: list[int] = []
    gap = 0.0
    for start in range(0, len(both), batch):
        chosen = both[start : start + batch]
        tensors_a = _records(a, tag, rows_a[chosen])
        tensors_b = _records(b, tag, rows_b[chosen])
        for position in chosen:
            x, y = tensors_a[int(rows_a[position])], tensors_b[int(rows_b[position])]
            if x.shape != y.shape or not np.allclose(
                x, y, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True
            ):
                differing.append(int(position))
                if x.shape == y.shape:
                    gap = max(gap, _max_gap(x, y))
    if differing:
        yield _finding(
            tag,
            f"full tensors differ at {len(differing)} of {len(both)} records kept by both "
            f"(largest gap {gap:.3g})",
            key="values",
            first=int(steps[differing[0]]),
            last=int(steps[differing[-1]]),
            count=len(differing),
            value=gap,
        )


def _raw_mask(trace: Trace, tag: str) -> np.ndarray:
    mask = np.zeros(trace.tag(tag).records, dtype=bool)
    mask[trace.raw_records(tag)] = True
    return mask


def _records(trace: Trace, tag: str, rows: np.ndarray) -> dict[int, np.ndarray]:
    mask = np.zeros(trace.tag(tag).records, dtype=bool)
    mask[rows] = True
    return {
        int(record): np.array(values)
        for chunk in trace.iter_raw(tag, mask=mask)
        for record, values in zip(chunk.records, chunk.values)
    }


def _close(x: np.ndarray, y: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    close: np.ndarray = np.isclose(x, y, rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True)
    return close


def _max_gap(x: np.ndarray, y: np.ndarray) -> float:
    with np.errstate(invalid="ignore"):
        gaps = np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64))
    finite = gaps[np.isfinite(gaps)]
    return float(finite.max()) if finite.size else float("nan")


def _finding(
    tag: str,
    message: str,
    *,
    key: str,
    first: int | None = None,
    last: int | None = None,
    count: int = 0,
    value: float | None = None,
) -> Finding:
    return Finding(
        message=message,
        tensor=tag,
        first_step=first,
        last_step=last,
        steps=count,
        value=value,
        key=key,
        rule_id=COMPARE_ID,
        rule=COMPARE_NAME,
        severity=Severity.error,
    )
