"""Rule-engine speed and memory, against reading the same bytes with raw h5py in the same run.

(a) Eight rules (vanishing gradient, exploding gradient, non-finite tensor, loss not
    decreasing, all zero, unchanged tensor, update ratio, tensor variance, dying ReLU: the
    smdebug replay of rules-prior-art.md §6) on a trace of STEPS steps x 21 tensors of 10,000
    float32 with full tensors every step and injected anomalies (vanishing gradient from 60 %,
    one NaN at 80 %, a frozen weight from 40 %, an all-zero ReLU output from 50 %, a constant
    loss from 70 %), against h5py ``read_direct`` of every full tensor. The same at 4x the
    steps shows how time scales.
(b) Every rule on a statistics-only trace of 100,000 steps x 100 tensors.
(c) Peak memory of ``dbg analyze`` on both sizes of (a) and on (b), from ``/usr/bin/time -v``
    (max RSS), to show it stays flat as the trace grows.

Traces are written once into ``--dir`` (default /dev/shm, so the comparison is not about the
disk) and reused. Run: ``python bench/bench_rules.py [--quick]``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from dbgcli import TraceWriter
from dbgcli.analysis import Options, analyze
from dbgcli.trace import schema

EIGHT = ("DBG101", "DBG102", "DBG404", "DBG301", "DBG401", "DBG403", "DBG502", "DBG402", "DBG201")
CHUNK_BYTES = 64 << 20


def write_full_trace(path: Path, steps: int) -> None:
    """7 weights, 7 gradients, 7 ReLU outputs of 100x100 float32, full tensors every step."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.05, (100, 100)).astype(np.float32) for _ in range(7)]
    update = [rng.normal(0, 1e-4, (100, 100)).astype(np.float32) for _ in range(7)]
    grads = [rng.normal(0, 1e-3, (100, 100)).astype(np.float32) for _ in range(7)]
    acts = [np.maximum(rng.normal(0, 1, (100, 100)), 0).astype(np.float32) for _ in range(7)]
    with TraceWriter(path, raw_every=1, overwrite=True) as writer:
        for step in range(steps):
            loss = 2.0 * np.exp(-step / steps) if step < 0.7 * steps else 2.0 * np.exp(-0.7)
            writer.add_scalar("loss", loss + 0.01 * np.sin(step), step)
            for i in range(7):
                if not (i == 3 and step >= 0.4 * steps):  # frozen weight from 40 %
                    weights[i] += update[(i + step) % 7]
                writer.add_tensor(f"layer{i}.weight", weights[i], step, collection="weights")
                grad = grads[(i + step) % 7]
                if i == 1 and step >= 0.6 * steps:  # vanishing from 60 %
                    grad = grad * 1e-6
                if i == 2 and step == int(0.8 * steps):  # one NaN at 80 %
                    grad = grad.copy()
                    grad[0, 0] = np.nan
                writer.add_tensor(f"grad/layer{i}.weight", grad, step, collection="gradients")
                act = acts[(i + step) % 7]
                if i == 4 and step >= 0.5 * steps:  # all-zero ReLU output from 50 %
                    act = np.zeros_like(act)
                writer.add_tensor(f"act/relu{i}", act, step, collection="activations", kind="relu")


def write_stats_trace(path: Path, steps: int, tensors: int) -> None:
    rng = np.random.default_rng(1)
    small = [rng.normal(0, 1e-2, 64).astype(np.float32) for _ in range(8)]
    with TraceWriter(path, raw_every=0, overwrite=True) as writer:
        for step in range(steps):
            writer.add_scalar("loss", 1.0 / (1 + step / 1000), step)
            for i in range(tensors):
                collection = ("weights", "gradients", "activations")[i % 3]
                kind = "relu" if collection == "activations" else None
                writer.add_tensor(
                    f"t{i}", small[(i + step) % 8], step, collection=collection, kind=kind
                )


def h5py_read_everything(path: Path) -> int:
    total = 0
    buffer = np.empty(CHUNK_BYTES, dtype=np.uint8)
    with h5py.File(path, "r") as f:
        for name in f[schema.TENSORS]:
            dataset = f[schema.TENSORS][name]["raw/0/values"]
            row = int(np.prod(dataset.shape[1:])) * dataset.dtype.itemsize
            rows = max(1, CHUNK_BYTES // row)
            for start in range(0, dataset.shape[0], rows):
                stop = min(dataset.shape[0], start + rows)
                out = (
                    buffer[: (stop - start) * row]
                    .view(dataset.dtype)
                    .reshape(stop - start, *dataset.shape[1:])
                )
                dataset.read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])
                total += out.nbytes
    return total


def best(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mb(path: Path, select: str = ",".join(EIGHT)) -> float:
    """Max RSS of a separate ``dbg analyze`` process via /usr/bin/time -v."""
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "dbgcli",
        "analyze",
        str(path),
        "--select",
        select,
        "-f",
        "json",
        "-o",
        "/dev/null",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return int(match.group(1)) / 1024 if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller traces, for a smoke run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("bench/out"),
    )
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    small_steps = 20 if args.quick else 1000
    stats_steps = 1_000 if args.quick else 100_000
    sizes = (small_steps, 4 * small_steps)
    paths = {steps: args.dir / f"dbg_bench_rules_{steps}.h5" for steps in sizes}
    for steps, path in paths.items():
        if not path.exists():
            write_full_trace(path, steps)
    stats_path = args.dir / f"dbg_bench_rules_stats_{stats_steps}.h5"
    if not stats_path.exists():
        write_stats_trace(stats_path, stats_steps, 100)

    options = Options(select=EIGHT)
    rule_times: dict[int, float] = {}
    for steps, path in paths.items():
        base = best(args.repeat, lambda p=path: h5py_read_everything(p))
        rules = best(args.repeat, lambda p=path: analyze([p], options))
        rule_times[steps] = rules
        report = analyze([path], options)
        found = sorted({(f.rule_id, f.tensor, f.first_step) for f in report.traces[0].findings})
        size = path.stat().st_size / 1e6
        print(
            f"(a) {steps} steps x 21 x 10,000 float32, full tensors every step ({size:.0f} MB), best of {args.repeat}"
        )
        print(f"    h5py read_direct of every full tensor  {base:7.3f} s")
        print(
            f"    dbg, eight rules                       {rules:7.3f} s   ratio {rules / base:5.2f}x  (target <= 1.5x)"
        )
        print(f"    findings (rule, tensor, first step): {found}")
    one, four = rule_times[sizes[0]], rule_times[sizes[1]]
    print(f"    {sizes[1]} steps take {four / one:.2f}x the {sizes[0]}-step time (target <= 4.4x)")

    everything = best(args.repeat, lambda: analyze([stats_path], Options(select=("all",))))
    print(
        f"(b) every rule on a statistics-only trace of {stats_steps} steps x 100 tensors "
        f"({stats_path.stat().st_size / 1e6:.0f} MB): {everything:.2f} s (target < 3 s)"
    )

    if Path("/usr/bin/time").exists():
        for steps, path in paths.items():
            print(
                f"(c) peak RSS of dbg analyze, eight rules, {steps} steps ({path.stat().st_size / 1e6:.0f} MB trace): {peak_rss_mb(path):.0f} MB"
            )
        print(
            f"(c) peak RSS of dbg analyze, every rule, statistics-only trace of (b) "
            f"({stats_path.stat().st_size / 1e6:.0f} MB): {peak_rss_mb(stats_path, 'all'):.0f} MB"
        )


if __name__ == "__main__":
    main()
