"""Writer cost against raw h5py, measured in the same run.

(a) full tensors: STEPS steps x 21 tensors of 10,000 float32, raw kept every step.
    Baseline: buffered raw h5py appends of the same arrays (rows collected in a preallocated
    block per tensor, then one resize + write per block), the way a careful h5py user writes.
(b) statistics only: many small tensors, raw never kept. Reported as microseconds per
    ``add_tensor`` call; the baseline appends a precomputed 12-float statistics row per record
    with the same buffering.

Timings alternate baseline and writer and keep the best of ``--repeat`` runs, because the
machine is shared; files go to ``--dir`` (default /dev/shm), so both sides are timed on the
CPU work of writing, not on the disk. Run: ``python bench/bench_writer.py [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from dbgcli import TraceWriter


def raw_h5py_append(path: Path, arrays: list[np.ndarray], steps: int, block_rows: int) -> None:
    n = arrays[0].size
    with h5py.File(path, "w") as f:
        datasets = [
            f.create_dataset(
                f"t{i}", shape=(0, n), maxshape=(None, n), chunks=(block_rows, n), dtype=a.dtype
            )
            for i, a in enumerate(arrays)
        ]
        blocks = [np.empty((block_rows, n), dtype=a.dtype) for a in arrays]
        fill = 0

        def write_blocks(rows: int) -> None:
            for dataset, block in zip(datasets, blocks):
                start = dataset.shape[0]
                dataset.resize(start + rows, axis=0)
                dataset[start : start + rows] = block[:rows]

        for _ in range(steps):
            for block, array in zip(blocks, arrays):
                block[fill] = array
            fill += 1
            if fill == block_rows:
                write_blocks(fill)
                fill = 0
        if fill:
            write_blocks(fill)


def dbg_writer(path: Path, arrays: list[np.ndarray], steps: int, raw_every: int) -> None:
    with TraceWriter(path, raw_every=raw_every, overwrite=True, flush_secs=3600) as writer:
        for step in range(steps):
            for i, array in enumerate(arrays):
                writer.add_tensor(f"t{i}", array, step, collection="gradients")


def raw_h5py_stats_rows(path: Path, tensors: int, steps: int) -> None:
    row = np.arange(12, dtype=np.float64)
    block_rows = 4096
    with h5py.File(path, "w") as f:
        datasets = [
            f.create_dataset(
                f"t{i}", shape=(0, 12), maxshape=(None, 12), chunks=(block_rows, 12), dtype="f8"
            )
            for i in range(tensors)
        ]
        steps_ds = [
            f.create_dataset(
                f"s{i}", shape=(0,), maxshape=(None,), chunks=(block_rows,), dtype=np.int64
            )
            for i in range(tensors)
        ]
        blocks = [np.empty((block_rows, 12)) for _ in range(tensors)]
        step_lists: list[list[int]] = [[] for _ in range(tensors)]
        fill = 0

        def write_blocks(rows: int) -> None:
            for dataset, step_ds, block, step_list in zip(datasets, steps_ds, blocks, step_lists):
                start = dataset.shape[0]
                dataset.resize(start + rows, axis=0)
                dataset[start : start + rows] = block[:rows]
                step_ds.resize(start + rows, axis=0)
                step_ds[start : start + rows] = step_list
                step_list.clear()

        for step in range(steps):
            for block, step_list in zip(blocks, step_lists):
                block[fill] = row
                step_list.append(step)
            fill += 1
            if fill == block_rows:
                write_blocks(fill)
                fill = 0
        if fill:
            write_blocks(fill)


def best_of(repeat: int, run) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where to write (default /dev/shm, so disk write-back does not blur the comparison)",
    )
    args = parser.parse_args()
    full_steps = 20 if args.quick else 1000
    stats_steps = 500 if args.quick else 100_000
    stats_tensors = 100
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(10_000).astype(np.float32) for _ in range(21)]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        base_times, dbg_times = [], []
        for _ in range(args.repeat):
            base_times.append(
                best_of(1, lambda: raw_h5py_append(root / "raw.h5", arrays, full_steps, 26))
            )
            dbg_times.append(best_of(1, lambda: dbg_writer(root / "dbg.h5", arrays, full_steps, 1)))
        base, ours = min(base_times), min(dbg_times)
        mb = full_steps * 21 * 40_000 / 1e6
        print(f"(a) {full_steps} steps x 21 tensors x 10,000 float32, raw every step ({mb:.0f} MB)")
        print(
            f"    raw h5py buffered appends  {base:7.2f} s  ({mb / base:6.0f} MB/s), best of {args.repeat}"
        )
        print(
            f"    dbg TraceWriter            {ours:7.2f} s  ({mb / ours:6.0f} MB/s), best of {args.repeat}"
        )
        print(
            f"    ratio writer / h5py        {ours / base:7.2f}x best, "
            f"{np.median(dbg_times) / np.median(base_times):.2f}x median   (target <= 1.3x)"
        )

        small = rng.standard_normal(16).astype(np.float32)
        records = stats_steps * stats_tensors
        base = best_of(1, lambda: raw_h5py_stats_rows(root / "rows.h5", stats_tensors, stats_steps))
        ours = best_of(
            1, lambda: dbg_writer(root / "stats.h5", [small] * stats_tensors, stats_steps, 0)
        )
        print(f"(b) {stats_steps} steps x {stats_tensors} tensors of 16 float32, statistics only")
        print(f"    raw h5py, precomputed rows {base / records * 1e6:7.2f} us/record")
        print(
            f"    dbg TraceWriter.add_tensor {ours / records * 1e6:7.2f} us/record  (statistics computed)"
        )
        print(f"    ratio writer / h5py        {ours / base:7.2f}x")
        print(f"    trace size                 {(root / 'stats.h5').stat().st_size / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
