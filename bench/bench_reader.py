"""Reader speed against raw h5py, measured in the same run.

(a) streaming every full tensor of a trace of STEPS steps x 21 tensors of 10,000 float32
    (``Trace.iter_raw``), against h5py ``read_direct`` of the same datasets into a reused buffer
    in blocks of the same size.
(b) every statistic of every tensor of a stats-only trace of 100,000 steps x 100 tensors
    (``Trace.stats`` plus the step index), from opening the file to the last array.

The traces are written once into ``--dir`` (default: /dev/shm when it exists, so that disk
speed does not blur the comparison; both sides read the same page-cached bytes) and reused.
Run: ``python bench/bench_reader.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import h5py
import numpy as np

from dbgcli import TraceWriter, open_trace
from dbgcli.trace import schema

CHUNK_BYTES = 64 << 20


def write_full_trace(path: Path, steps: int) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(10_000).astype(np.float32) for _ in range(21)]
    with TraceWriter(path, raw_every=1, overwrite=True) as writer:
        for step in range(steps):
            for i, array in enumerate(arrays):
                writer.add_tensor(f"grad/layer{i}", array, step, collection="gradients")


def write_stats_trace(path: Path, steps: int, tensors: int) -> None:
    small = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    with TraceWriter(path, raw_every=0, overwrite=True) as writer:
        for step in range(steps):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
            for i in range(tensors):
                writer.add_tensor(f"t{i}", small, step, collection="gradients")


def h5py_read_all_raw(path: Path) -> int:
    total = 0
    with h5py.File(path, "r") as f:
        buffer = None
        for name in f[schema.TENSORS]:
            dataset = f[schema.TENSORS][name]["raw/0/values"]
            rows = max(1, CHUNK_BYTES // (dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))))
            for start in range(0, dataset.shape[0], rows):
                stop = min(dataset.shape[0], start + rows)
                if buffer is None or buffer.shape[0] < stop - start:
                    buffer = np.empty((rows, *dataset.shape[1:]), dtype=dataset.dtype)
                dataset.read_direct(buffer, np.s_[start:stop], np.s_[0 : stop - start])
                total += (stop - start) * buffer[0].nbytes
    return total


def dbg_read_all_raw(path: Path) -> int:
    total = 0
    with open_trace(path) as trace:
        for info in trace.tags(scalar=False):
            for chunk in trace.iter_raw(info.tag, max_bytes=CHUNK_BYTES, reuse_buffer=True):
                total += chunk.values.nbytes
    return total


def dbg_read_all_stats(path: Path) -> int:
    values = 0
    with open_trace(path) as trace:
        for info in trace.tags(scalar=False):
            values += trace.stats(info.tag).size + trace.index(info.tag)[0].size
    return values


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller traces, for a smoke run")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("bench/out"),
    )
    args = parser.parse_args()
    full_steps = 20 if args.quick else 1000
    stats_steps = 500 if args.quick else 100_000
    args.dir.mkdir(parents=True, exist_ok=True)
    full = args.dir / f"dbg_bench_full_{full_steps}.h5"
    stats = args.dir / f"dbg_bench_stats_{stats_steps}.h5"
    if not full.exists():
        write_full_trace(full, full_steps)
    if not stats.exists():
        write_stats_trace(stats, stats_steps, 100)

    base_times, dbg_times = [], []
    for _ in range(args.repeat):
        seconds, base_bytes = timed(lambda: h5py_read_all_raw(full))
        base_times.append(seconds)
        seconds, dbg_bytes = timed(lambda: dbg_read_all_raw(full))
        dbg_times.append(seconds)
    assert base_bytes == dbg_bytes
    base, ours = min(base_times), min(dbg_times)
    mb = float(base_bytes) / 1e6  # type: ignore[arg-type]
    print(
        f"(a) stream every full tensor: {full_steps} steps x 21 x 10,000 float32 ({mb:.0f} MB), best of {args.repeat}"
    )
    print(f"    h5py read_direct          {base:7.3f} s  ({mb / base:6.0f} MB/s)")
    print(f"    dbg Trace.iter_raw        {ours:7.3f} s  ({mb / ours:6.0f} MB/s)")
    print(f"    ratio dbg / h5py          {ours / base:7.2f}x   (target <= 1.4x)")

    stat_times = [timed(lambda: dbg_read_all_stats(stats))[0] for _ in range(args.repeat)]
    print(
        f"(b) every statistic of every tensor: {stats_steps} steps x 100 tensors "
        f"({os.path.getsize(stats) / 1e6:.0f} MB file), best of {args.repeat}"
    )
    print(f"    dbg open + stats + steps  {min(stat_times):7.3f} s   (target < 1 s)")


if __name__ == "__main__":
    main()
