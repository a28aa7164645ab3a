"""Cost of one ``dbg watch`` poll against the length of the run, and of in-process ``stop_on``.

(a) One poll that finds new records: open the trace, read the last ``--window`` records of
    every series (:func:`dbgcli.trace.reader.open_tail`) and run every rule over them, on a
    statistics-only trace of 100 tensors and a loss, at 1,000 and at 100,000 recorded steps
    (the traces of ``bench_reader.py``). The poll judges a bounded tail, so the two should cost
    about the same: the script prints their ratio. A whole ``dbg analyze`` of each trace is
    timed beside it for scale.
(b) ``attach(..., stop_on="warning")``: the checks it adds to a training step (one loss and
    every gradient through :class:`dbgcli.live_rules.LiveRules`), timed over the same numbers
    the hook records, against the plain training step of ``bench_hook.py``'s MLP, as a share
    of that step.

Run: ``python bench/bench_watch.py [--quick] [--repeat 5] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_hook import make_model, train_step
from bench_reader import write_stats_trace

from dbgcli.analysis import Options, analyze
from dbgcli.live_rules import LiveRules
from dbgcli.watch import Watcher

TENSORS = 100


def poll_seconds(paths: list[Path], window: int, repeat: int) -> list[float]:
    """Median seconds of one poll that reads and judges, per trace. The traces take turns, so
    that the machine's drift hits them alike; a fresh watcher each time, and a first round
    (imports, caches) not counted."""
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(repeat + 1):
        for index, path in enumerate(paths):
            watcher = Watcher(path, Options(), window=window, quiet=0.0)
            start = time.perf_counter()
            watcher.poll()
            times[index].append(time.perf_counter() - start)
            assert watcher.reads == 1
    return [statistics.median(seconds[1:]) for seconds in times]


def analyze_seconds(path: Path) -> float:
    start = time.perf_counter()
    analyze([path], Options())
    return time.perf_counter() - start


def stop_on_share(repeat: int, steps: int) -> tuple[float, float]:
    """(seconds the stop_on checks add per step, seconds of the plain step)."""
    args = argparse.Namespace(model="mlp", layers=4, width=512, classes=10)  # bench_hook.py's MLP
    model = make_model(args)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, args.width, generator=generator), torch.randint(0, 10, (64,))
    plain = statistics.median(train_step(model, x, y, None) for _ in range(steps))
    names = [f"grad/{name}" for name, _ in model.network.named_parameters()]
    rng = np.random.default_rng(0)
    losses = 2.0 + rng.standard_normal(steps) * 0.01
    norms = np.abs(rng.standard_normal((steps, len(names)))) + 1.0
    checks = []
    for _ in range(repeat):
        rules = LiveRules("warning")
        start = time.perf_counter()
        for step in range(steps):
            rules.loss(float(losses[step]), step)
            for index, name in enumerate(names):
                rules.gradient(name, 0.0, float(norms[step, index]), step)
        checks.append((time.perf_counter() - start) / steps)
    return statistics.median(checks), plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="200 and 2,000 steps, a window of 100: a smoke run"
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    folder = args.dir or Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    lengths = (200, 2_000) if args.quick else (1_000, 100_000)
    window = min(args.window, 100) if args.quick else args.window

    paths = [folder / f"bench_watch_{steps}.h5" for steps in lengths]
    for steps, path in zip(lengths, paths):
        if not path.exists():
            write_stats_trace(path, steps, TENSORS)
    polls = poll_seconds(paths, window, args.repeat)
    for steps, path, poll in zip(lengths, paths, polls):
        print(
            f"{steps:>7,} steps x {TENSORS} tensors: one poll {poll * 1e3:7.1f} ms "
            f"(window {window}, median of {args.repeat}); "
            f"whole analyze {analyze_seconds(path) * 1e3:8.1f} ms"
        )
    short, long = lengths
    print(f"ratio poll at {long:,} / poll at {short:,} steps: {polls[1] / polls[0]:.2f}")

    checks, step = stop_on_share(args.repeat, 20 if args.quick else 300)
    print(
        f"stop_on checks per step {checks * 1e6:.1f} us; plain MLP step {step * 1e3:.2f} ms; "
        f"share of the step {checks / step:.2%}"
    )


if __name__ == "__main__":
    main()
