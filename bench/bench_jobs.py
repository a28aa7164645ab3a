"""Many traces at once: ``dbg analyze --jobs 2`` against ``--jobs 1`` on the same traces.

Writes ``--traces`` small traces (a real numpy MLP run each: loss, accuracy, weights,
gradients, ReLU activations, labels and predictions) once into ``--dir``, then analyses all of
them with the default rule set in one process and in two, alternating and keeping the best of
``--repeat`` runs. Run: ``python bench/bench_jobs.py [--traces 200]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

from dbgcli.analysis import Options, analyze

ROOT = Path(__file__).resolve().parents[1]


def record_traces(directory: Path, count: int, steps: int) -> list[Path]:
    spec = importlib.util.spec_from_file_location("numpy_mlp", ROOT / "examples" / "numpy_mlp.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    scenarios = ("healthy", "dead-relu", "high-lr")
    paths = []
    for index in range(count):
        path = directory / f"run{index:04d}.h5"
        if not path.exists():
            example.train(path, scenarios[index % len(scenarios)], steps, raw_every=25, seed=index)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100, help="training steps per trace")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / "out" / "jobs")
    parser.add_argument("--quick", action="store_true", help="6 traces, 1 repeat: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.traces, args.repeat = 6, 1
    args.dir.mkdir(parents=True, exist_ok=True)
    paths = record_traces(args.dir, args.traces, args.steps)
    options = Options()
    timings: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeat):
        for jobs in (1, 2):
            start = time.perf_counter()
            report = analyze(paths, options, jobs=jobs)
            timings[jobs].append(time.perf_counter() - start)
            assert len(report.traces) == len(paths)
    one, two = min(timings[1]), min(timings[2])
    print(f"{len(paths)} traces of {args.steps} steps, default rules, best of {args.repeat}")
    print(f"    --jobs 1   {one:7.2f} s   ({one / len(paths) * 1000:.1f} ms per trace)")
    print(f"    --jobs 2   {two:7.2f} s")
    print(f"    speed-up   {one / two:7.2f}x   (target >= 1.6x)")


if __name__ == "__main__":
    main()
