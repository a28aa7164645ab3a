"""The benchmark scripts still run: each one, in its smoke size, end to end.

Nothing here looks at a timing (they drift with the machine); the scripts only have to run
against the current package and print the lines that ``docs/benchmarks.md`` quotes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
            ["without hook", "with hook", "overhead", "cost model", "10 parameter tensors"],
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
