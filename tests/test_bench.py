"""The benchmark scripts still run: each one, in its smoke size, end to end.

Nothing here looks at a timing (they drift with the machine); the scripts only have to run
against the current package and print the lines that ``docs/benchmarks.md`` quotes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(
    ("script", "extra", "expected"),
    [
        ("bench_writer.py", ["--repeat", "1"], ["ratio writer / h5py", "us/record"]),
        ("bench_reader.py", ["--repeat", "1"], ["ratio dbg / h5py", "dbg open + stats + steps"]),
        ("bench_rules.py", ["--repeat", "1"], ["dbg, eight rules", "statistics-only trace"]),
        ("bench_jobs.py", [], ["--jobs 2", "speed-up"]),
        ("bench_watch.py", ["--repeat", "1"], ["ratio poll at", "share of the step"]),
        (
            "bench_hook.py",
            ["--repeat", "1"],
            [
                "without hook",
                "with hook",
                "overhead",
                "cost model",
                "machine speed",
                "10 parameter tensors",
            ],
        ),
        (
            "bench_hook.py",
            ["--repeat", "1", "--breakdown"],
            ["where the hook's time goes", "reductions of activations", "hand-over to the writer"],
        ),
        ("bench_reductions.py", [], ["ratio to the one used", "dist", "largest relative error"]),
        ("bench_schedulers.py", ["--speed-only"], ["dbgcli.schedulers.simulate", "reference"]),
    ],
)
def test_benchmark_script_runs(
    script: str, extra: list[str], expected: list[str], tmp_path: Path
) -> None:
    command = [sys.executable, str(BENCH / script), "--quick", *extra]
    if script in {
        "bench_writer.py",
        "bench_reader.py",
        "bench_rules.py",
        "bench_jobs.py",
        "bench_watch.py",
    }:
        command += ["--dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout, result.stdout


def test_the_hook_benchmark_splits_its_steps_by_the_speed_of_the_machine() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_hook
    finally:
        sys.path.remove(str(BENCH))
    steps = 1000
    rng = np.random.default_rng(0)
    # Blocks of 50 steps: the first 600 steps at 4 ms, the rest at 6 ms (each +-1 %).
    plain = np.where(np.arange(steps) < 600, 4e-3, 6e-3) * rng.uniform(0.99, 1.01, steps)
    recorded = np.arange(steps) % 10 == 0
    after = np.roll(recorded, 1)
    # The hook costs 5 % at the fast speed; at the slow one 2 %, plus 1.2 ms after a record.
    hooked = plain * np.where(np.arange(steps) < 600, 1.05, 1.02) + np.where(
        (np.arange(steps) >= 600) & after, 1.2e-3, 0.0
    )
    race = bench_hook.Race(
        plain, hooked, recorded, np.zeros(steps, bool), np.arange(steps) % 2 == 1, 0.0, ()
    )
    fast, slow = bench_hook.machine_speeds([race], 50)
    assert (fast.blocks, slow.blocks) == (12, 8)
    assert fast.plain == pytest.approx(4e-3, rel=0.01)
    assert slow.plain == pytest.approx(6e-3, rel=0.01)
    assert fast.overhead == pytest.approx(0.05, abs=0.002)
    assert fast.after_record == pytest.approx(0.005, abs=0.001)  # 5 % of a tenth of the steps
    assert slow.after_record == pytest.approx((0.02 + 1.2e-3 / 6e-3) / 10, abs=0.002)
    assert slow.overhead == pytest.approx(0.02 + 1.2e-3 / 6e-3 / 10, abs=0.003)

    steady = race._replace(plain=np.full(steps, 4e-3), hooked=np.full(steps, 4.2e-3))
    (only,) = bench_hook.machine_speeds([steady], 50)
    assert only.blocks == 20
    assert only.overhead == pytest.approx(0.05)


def test_the_hook_benchmark_records_nothing_with_hook_only(tmp_path: Path) -> None:
    """``--hook-only`` times the hook without the writer: nothing of a run reaches the trace,
    the statistics rows the hook hands over in one call included."""
    import argparse

    import torch

    from dbgcli.trace.reader import open_trace

    sys.path.insert(0, str(BENCH))
    try:
        import bench_hook
    finally:
        sys.path.remove(str(BENCH))
    args = argparse.Namespace(
        model="mlp", width=16, layers=2, batch=8, classes=3, stats_every=1, raw_every=1,
        include=None, exclude=None, hook_only=True,
    )  # fmt: skip
    model = bench_hook.make_model(args)
    hook = bench_hook.attach_hook(args, model, tmp_path / "run.h5")
    for _ in range(3):
        bench_hook.train_step(model, torch.randn(8, 16), torch.randint(0, 3, (8,)), hook)
    hook.remove()
    hook.writer.close()
    with open_trace(tmp_path / "run.h5") as trace:
        assert trace.tags() == []
