"""Hostile and unlucky inputs to the reader and the CLI: one test per cause the fault campaign
found (issue: no hang, no blow-up, no silent green). Each ends in exit 2 with one line on stderr,
or reads what can be trusted, and never shows an internal error.

The writer's causes (bad records, locking, full disks) are tested in tests/test_writer_*.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from dbgcli import TraceWriter

SAMPLES = Path(__file__).resolve().parent.parent / "sample_traces"


def dbg(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script in a subprocess: stderr exactly as a shell sees it."""
    return subprocess.run(
        [sys.executable, "-m", "dbgcli", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=120,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dbg: error: ")
    assert "internal error" not in lines[0] and "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def trace(make_trace: Callable[..., Path]) -> Path:
    rng = np.random.default_rng(0)
    return make_trace(
        scalars={"loss": list(np.linspace(2.0, 0.5, 40))},
        tensors={
            "fc.weight": {"values": rng.normal(size=(40, 4, 3)), "collection": "weights"},
            "act/relu": {"values": rng.normal(size=(40, 8, 5)), "kind": "relu"},
        },
        raw_every=5,
    )


def edit(path: Path, change: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "r+") as handle:
        change(handle)
    return path


# -- 1. hangs in HDF5's C code ---------------------------------------------------------------


def test_a_file_that_makes_hdf5_loop_is_given_up_on(tmp_path: Path) -> None:
    # The fault campaign's reproducer: HDF5 loops forever in an attribute read of this file.
    looping = tmp_path / "looping.h5"
    data = bytearray((SAMPLES / "torch_tanh_saturation.h5").read_bytes())
    data[3508 : 3508 + 64] = bytes(64)
    looping.write_bytes(bytes(data))
    line = one_error_line(dbg("info", looping, "--timeout", "2"))
    assert "gave up after 2 s opening it" in line and str(looping) in line
    # One bad file among many: the others are still analysed and reported.
    result = dbg("analyze", looping, SAMPLES / "torch_healthy.h5", "--timeout", "2")
    assert "gave up after 2 s" in one_error_line(result)
    assert "torch_healthy.h5" in result.stdout and "healthy" in result.stdout


# -- 2. allocation by declared extent ----------------------------------------------------------


@pytest.mark.parametrize("rows", [2**28, 2**50])
def test_a_declared_extent_without_storage_is_not_read(trace: Path, rows: int) -> None:
    def huge_loss(handle: h5py.File) -> None:
        group = handle["scalars/loss"]
        for name in ("step", "mode", "value"):
            dtype = group[name].dtype
            del group[name]
            group.create_dataset(name, shape=(rows,), maxshape=(None,), dtype=dtype, chunks=True)
        del group.attrs["records"]

    edit(trace, huge_loss)
    result = dbg("info", trace, "--format", "json", "--memory-limit", "1024")
    assert result.returncode == 0, result.stderr
    loss = next(t for t in json.loads(result.stdout)["tags"] if t["tag"] == "loss")
    assert loss["records"] == 0


# -- 3. unexpected exception types ---------------------------------------------------------------


def _mode_0d(handle: h5py.File) -> None:
    del handle["tensors/fc.weight/mode"]
    handle["tensors/fc.weight"].create_dataset("mode", data=np.uint8(0))


def _mode_2d(handle: h5py.File) -> None:
    del handle["tensors/fc.weight/mode"]
    handle["tensors/fc.weight"].create_dataset("mode", data=np.zeros((40, 2), np.uint8))


def _nan_record(handle: h5py.File) -> None:
    segment = handle["tensors/fc.weight/raw/0"]
    record = segment["record"][()].astype(np.float64)
    record[1] = np.nan
    del segment["record"]
    segment.create_dataset("record", data=record)


def _records_inf(handle: h5py.File) -> None:
    handle["scalars/loss"].attrs["records"] = np.inf


def _closed_array(handle: h5py.File) -> None:
    handle.attrs["closed"] = np.array([1, 1])


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_mode_0d, "'mode' must be a 1-D integer array"),
        (_mode_2d, "'mode' must be a 1-D integer array"),
        (_nan_record, "'record' must be a 1-D integer array"),
        (_records_inf, "attribute 'records' must be a count"),
        (_closed_array, "'closed' must be one flag"),
    ],
    ids=["mode-0d", "mode-2d", "nan-record", "records-inf", "closed-array"],
)
def test_schema_breakage_is_named(
    trace: Path, change: Callable[[h5py.File], None], says: str
) -> None:
    edit(trace, change)
    for command in ("info", "analyze"):
        assert says in one_error_line(dbg(command, trace))


def test_deeply_nested_metadata_is_ignored_with_a_warning(trace: Path) -> None:
    edit(trace, lambda handle: handle.attrs.__setitem__("metadata", "[" * 100_000 + "]" * 100_000))
    result = dbg("info", trace, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "not valid JSON" in " ".join(json.loads(result.stdout)["warnings"])


def test_a_report_that_cannot_be_written_is_one_line(trace: Path) -> None:
    line = one_error_line(dbg("analyze", trace, "--format", "sarif:/proc/version"))
    assert "cannot write the sarif report to /proc/version" in line


# -- 4. errors on stderr, warnings never as text ---------------------------------------------------


def test_analyze_errors_reach_stderr(trace: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.h5"
    assert "no such file" in one_error_line(dbg("analyze", missing))
    not_a_trace = tmp_path / "text.h5"
    not_a_trace.write_text("hello")
    assert "not an HDF5 file" in one_error_line(dbg("analyze", not_a_trace))
    assert "patience must be positive" in one_error_line(
        dbg("analyze", trace, "-p", "DBG301.patience=-1")
    )
    both = one_error_line(dbg("analyze", missing, not_a_trace))
    assert both.endswith("(and 1 more error)")


def test_a_crashing_rule_reaches_stderr_and_numpy_warnings_do_not(
    trace: Path, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.py"
    rules.write_text(
        textwrap.dedent(
            """
            import numpy as np
            from dbgcli.rules import rule

            @rule("TEAM001", "divides-by-zero", severity="warning", category="team")
            def divides_by_zero(ctx):
                "Takes a log of zero (numpy warns) and finds nothing."
                np.log(np.zeros(3))
                np.float64(1.0) / np.float64(0.0)
                return []

            @rule("TEAM002", "crashes", severity="warning", category="team")
            def crashes(ctx):
                "Crashes."
                raise RuntimeError("boom")
            """
        )
    )
    quiet = dbg("analyze", trace, "--rules-file", rules, "-s", "TEAM001")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    line = one_error_line(dbg("analyze", trace, "--rules-file", rules, "-s", "TEAM002"))
    assert "rule TEAM002 (crashes) crashed: RuntimeError: boom" in line


# -- 5. a rule cannot turn the gate green -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "jobs", "says"),
    [
        ("raise SystemExit(0)", "1", "crashed: SystemExit"),
        ("import os; os._exit(0)", "2", "exited with code 0"),
    ],
    ids=["system-exit", "os-exit-in-a-worker"],
)
def test_a_rule_that_exits_is_an_error(
    make_trace: Callable[..., Path], tmp_path: Path, body: str, jobs: str, says: str
) -> None:
    failing = make_trace(scalars={"loss": [1.0, float("nan"), 2.0]})
    rules = tmp_path / "exits.py"
    rules.write_text(
        "from dbgcli.rules import rule\n\n"
        '@rule("TEAM001", "exits", severity="warning", category="team")\n'
        "def exits(ctx):\n"
        '    "Ends the process."\n'
        f"    {body}\n"
    )
    result = dbg("analyze", failing, failing, "--rules-file", rules, "--jobs", jobs)
    assert says in one_error_line(result)


def test_a_rules_file_that_exits_on_import_is_an_error(trace: Path, tmp_path: Path) -> None:
    rules = tmp_path / "exits.py"
    rules.write_text("raise SystemExit(0)\n")
    assert "cannot import rules file" in one_error_line(
        dbg("analyze", trace, "--rules-file", rules)
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_parameter_must_be_finite(trace: Path, value: str) -> None:
    line = one_error_line(dbg("analyze", trace, "-p", f"DBG101.threshold={value}"))
    assert "not a finite number" in line


# -- 6. configuration found far away ---------------------------------------------------------------


def test_configuration_stops_at_the_project_root(trace: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "dbg.toml").write_text('rules-files = ["evil.py"]\n')
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "src").mkdir()
    assert dbg("analyze", trace, cwd=project / "src").returncode == 0
    assert not marker.exists()
    outside = tmp_path / "elsewhere" / "deeper"
    outside.mkdir(parents=True)
    assert dbg("analyze", trace, cwd=outside).returncode == 0
    assert not marker.exists()
    # Inside the project, its own configuration applies, unless --isolated.
    (project / "dbg.toml").write_text('fail-on = "info"\nselect = ["DBG301"]\n')
    assert "DBG301" in dbg("analyze", trace, "-v", cwd=project / "src").stdout
    isolated = dbg("analyze", trace, "-v", "--isolated", cwd=project / "src")
    assert isolated.returncode == 0 and "DBG101" in isolated.stdout
    assert "drop --config or --isolated" in one_error_line(
        dbg("analyze", trace, "--isolated", "--config", project / "dbg.toml")
    )


# -- 12. two evaluation passes in one step ----------------------------------------------------------


def test_a_trace_matches_itself_with_two_eval_passes_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "two-evals.h5"
    with TraceWriter(path, raw_every=1) as writer:
        for step in range(4):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
            writer.add_tensor("act/relu", np.full((2, 3), step, np.float32), step, kind="relu")
            for pass_ in range(2):
                writer.add_scalar("loss", 0.5 + pass_, step, mode="eval")
                writer.add_tensor(
                    "act/relu", np.full((2, 3), pass_, np.float32), step, mode="eval", kind="relu"
                )
    copy = tmp_path / "copy.h5"
    shutil.copyfile(path, copy)
    same = dbg("compare", path, copy)
    assert same.returncode == 0, same.stdout
    # Pairing by occurrence still sees a difference in the second pass.
    with h5py.File(copy, "r+") as handle:
        values = handle["scalars/loss/value"]
        modes = handle["scalars/loss/mode"][()]
        second_eval = np.flatnonzero(modes == 1)[1]
        values[second_eval] = 99.0
    assert dbg("compare", path, copy).returncode == 1
