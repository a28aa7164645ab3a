"""The fast part of the fuzzing suite: corrupted traces through ``dbg info`` and ``dbg analyze``.

The mutations and the bars live in bench/fuzz_traces.py, whose long run (10,000 cases) is
reported in docs/benchmarks.md; here hypothesis draws a few dozen cases, deterministically, and
every mutation family runs at least once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "fuzz_traces.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_traces", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_traces"] = module
    spec.loader.exec_module(module)
    return module


fuzz = _load()


def assert_holds(path: Path, what: str) -> None:
    for run in fuzz.check_case(path):
        assert not run.problems(), f"{what}: {run.command}: {run.problems()}: {run.stderr}"


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_corrupted_traces_end_cleanly(seed: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    path, what = fuzz.make_case(seed, tmp_path_factory.mktemp("fuzz"))
    assert_holds(path, what)


@pytest.mark.parametrize("kind", sorted(fuzz.SCHEMA_MUTATIONS))
def test_every_schema_mutation(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(len(kind))
    path = tmp_path / "mutated.h5"
    source = fuzz.SAMPLES[len(kind) % len(fuzz.SAMPLES)]
    path.write_bytes(source.read_bytes())
    with h5py.File(path, "r+") as handle:
        what = fuzz.SCHEMA_MUTATIONS[kind](handle, rng)
    assert_holds(path, f"{source.name}: {what}")


def test_the_bars_catch_what_they_should() -> None:
    # A checker that passes everything would make the suite above worthless.
    bad = [
        fuzz.Run("info", 2, "dbg: error: one\ndbg: error: two\n", 1.0),
        fuzz.Run("info", 2, "dbg: error: internal error: IndexError: x\n", 1.0),
        fuzz.Run("info", 1, "Traceback (most recent call last):\n", 1.0),
        fuzz.Run("info", 0, "", fuzz.LIMIT + fuzz.MARGIN + 1),
        fuzz.Run("info", 3, "", 1.0),
    ]
    assert all(run.problems() for run in bad)
    assert not fuzz.Run("info", 2, "dbg: error: x.h5: not an HDF5 file\n", 1.0).problems()
