"""The example scripts run and record what they say."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from dbgcli import open_trace

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], check=True, capture_output=True
    )


def test_numpy_mlp_example(tmp_path: Path) -> None:
    path = tmp_path / "mlp.h5"
    run_example("numpy_mlp.py", str(path), "--steps", "40", "--scenario", "dead-relu")
    with open_trace(path) as trace:
        assert trace.complete and trace.metadata["scenario"] == "dead-relu"
        assert {"loss", "accuracy", "lr"} <= {t.tag for t in trace.tags(scalar=True)}
        assert len(trace.tags(collection="gradients")) == 6


def test_greedylr_example_is_replayed_exactly(cli, tmp_path: Path) -> None:
    path = tmp_path / "greedy.h5"
    run_example("greedylr_torch.py", str(path), "--steps", "80")
    table = tmp_path / "lr.csv"
    spec = "greedy:factor=0.8,patience=3,min_lr=1e-3"
    assert (
        cli("lr", path, "--metric", "loss", "--mode", "train", "-s", spec, "--csv", table).code == 0
    )
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    recorded = [float(r["recorded_lr"]) for r in rows]
    assert recorded[1:] == [float(r[spec]) for r in rows][:-1]
