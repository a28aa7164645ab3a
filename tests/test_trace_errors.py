"""Bad input never yields a traceback: one line on stderr and exit code 2, through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from dbgcli import TraceWriter, open_trace
from dbgcli.errors import (
    DbgError,
    TraceFormatError,
    TraceNotFoundError,
    TraceVersionError,
    TraceWriterError,
)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dbg: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def good_trace(make_trace) -> Path:
    rng = np.random.default_rng(0)
    return make_trace(
        scalars={"loss": list(np.linspace(2, 1, 40))},
        tensors={
            "w": {"values": [rng.normal(size=(32, 16)) for _ in range(40)], "collection": "weights"}
        },
    )


def test_missing_path(cli, tmp_path: Path) -> None:
    assert_one_line_error(cli("info", tmp_path / "nope.h5"), "no such file")


def test_directory(cli, tmp_path: Path) -> None:
    assert_one_line_error(cli("info", tmp_path), "is a directory")


def test_an_empty_step_window_is_refused(cli, good_trace: Path) -> None:
    """--start after --stop analyses nothing: a gate that would pass whatever the run did."""
    assert_one_line_error(
        cli("analyze", good_trace, "--start", "30", "--stop", "10"),
        "no step to analyse: start 30 is after stop 10",
    )


def test_empty_file(cli, tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    path.touch()
    assert_one_line_error(cli("info", path), "empty file")


def test_random_bytes(cli, tmp_path: Path) -> None:
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_one_line_error(cli("info", path), "not an HDF5 file")


def test_hdf5_file_that_is_not_a_trace(cli, tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    assert_one_line_error(cli("info", path), "not a dbg trace")


def test_newer_major_version_is_refused(cli, good_trace: Path) -> None:
    with h5py.File(good_trace, "a") as f:
        f.attrs["format_version"] = "2.0"
    assert_one_line_error(cli("info", good_trace), "format 2.0 is newer", "upgrade")
    with pytest.raises(TraceVersionError):
        open_trace(good_trace)


def test_newer_minor_version_is_read(cli, good_trace: Path) -> None:
    with h5py.File(good_trace, "a") as f:
        f.attrs["format_version"] = "1.7"
    assert cli("info", good_trace).code == 0


def test_wrong_schema_is_named(cli, good_trace: Path) -> None:
    with h5py.File(good_trace, "a") as f:
        del f["scalars/loss/value"]
    assert_one_line_error(cli("info", good_trace), "'loss'", "'value'")


def test_float_steps_with_nan_are_rejected(cli, tmp_path: Path) -> None:
    path = tmp_path / "nan_steps.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "dbg-trace"
        f.attrs["format_version"] = "1.0"
        f["scalars/loss/step"] = np.array([0.0, np.nan, 2.0])
        f["scalars/loss/value"] = np.array([1.0, 2.0, 3.0])
    assert_one_line_error(cli("info", path), "not all integers")


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.1, 0.33, 0.5, 0.75, 0.9, 0.999])
def test_truncated_at_any_offset(cli, good_trace: Path, tmp_path: Path, fraction: float) -> None:
    data = good_trace.read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    result = cli("info", path)
    assert_one_line_error(result)
    assert any(word in result.stderr for word in ("truncated", "not an HDF5", "corrupt"))


def test_external_links_and_virtual_datasets_are_not_followed(
    tmp_path: Path, good_trace: Path
) -> None:
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["secret/step"] = np.arange(3)
        f["secret/value"] = np.arange(3.0)
    with h5py.File(good_trace, "a") as f:
        f["scalars"]["linked"] = h5py.ExternalLink(str(outside), "/secret")
        layout = h5py.VirtualLayout(shape=(3,), dtype="f8")
        layout[:] = h5py.VirtualSource(str(outside), "secret/value", shape=(3,))
        group = f["scalars"].create_group("virtual")
        group["step"] = np.arange(3)
        group.create_virtual_dataset("value", layout)
        f["scalars"]["soft"] = h5py.SoftLink("/scalars/loss")
    with open_trace(good_trace) as trace:
        names = {t.tag for t in trace.tags()}
        assert "linked" not in names and "soft" not in names
        assert "virtual" not in names
        assert any("external link" in w for w in trace.warnings)
        assert any("outside the file" in w for w in trace.warnings)


def test_exceptions_also_derive_from_builtins() -> None:
    assert issubclass(TraceFormatError, ValueError) and issubclass(TraceFormatError, DbgError)
    assert issubclass(TraceNotFoundError, FileNotFoundError)
    assert issubclass(TraceWriterError, OSError)


def test_console_script_prints_one_line(tmp_path: Path) -> None:
    dbg = Path(sys.executable).with_name("dbg")
    result = subprocess.run(
        [str(dbg), "info", str(tmp_path / "missing.h5")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr
    usage = subprocess.run(
        [str(dbg), "info", "--frobnicate"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2
    assert usage.stderr.strip().count("\n") == 0 and "--frobnicate" in usage.stderr


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dbgcli", "--version"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0 and result.stdout.startswith("dbg ")


def test_info_human_and_json(cli, good_trace: Path) -> None:
    human = cli("info", good_trace)
    assert human.code == 0
    assert "complete" in human.stdout and "weights" in human.stdout and "32x16" in human.stdout
    import json

    machine = cli("info", good_trace, "--format", "json")
    summary = json.loads(machine.stdout)
    assert summary["complete"] is True
    assert summary["modes"]["train"] == {"first_step": 0, "last_step": 39, "steps": 40}
    tensor = next(t for t in summary["tags"] if t["tag"] == "w")
    assert (
        tensor["shape"] == [32, 16]
        and tensor["raw_records"] == 40
        and tensor["collection"] == "weights"
    )


def test_writer_refuses_to_overwrite(tmp_path: Path, good_trace: Path) -> None:
    before = good_trace.read_bytes()
    with pytest.raises(TraceWriterError, match="already exists"):
        TraceWriter(good_trace)
    assert good_trace.read_bytes() == before
    with pytest.raises(TraceFormatError):
        other = tmp_path / "other.h5"
        with h5py.File(other, "w"):
            pass
        TraceWriter(other, resume=True)
