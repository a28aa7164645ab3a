"""The example scripts run and record what they say."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dbgcli import TraceWriter, open_trace

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


def dbg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real ``dbg`` in a subprocess, so the example's rule does not stay registered here."""
    return subprocess.run(
        [sys.executable, "-m", "dbgcli", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )


def smooth_loss(step: int) -> float:
    return float(2.0 * np.exp(-step / 60) + 0.1 + 0.01 * np.sin(step))


def loss_trace(path: Path, spikes: dict[int, float]) -> Path:
    """A smoothly decreasing training loss, multiplied by ``spikes[step]`` at those steps."""
    with TraceWriter(path) as writer:
        for step in range(200):
            writer.add_scalar("loss", smooth_loss(step) * spikes.get(step, 1.0), step)
    return path


def test_custom_rule_example_registers_like_a_builtin(tmp_path: Path) -> None:
    rules = ROOT / "examples" / "custom_rules.py"
    spiky = loss_trace(tmp_path / "spiky.h5", {120: 4.0, 121: 3.0, 150: 2.5})
    smooth = loss_trace(tmp_path / "smooth.h5", {})
    select = ("--rules-file", rules, "--select", "loss-spike", "--fail-on", "warning")

    explained = dbg("rules", "explain", "ACME001", "--rules-file", rules)
    assert explained.returncode == 0 and "median" in explained.stdout
    assert "factor" in explained.stdout and "2.0" in explained.stdout

    result = dbg("analyze", spiky, *select, "--format", "json")
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)["traces"][0]["findings"]
    # The two spikes (steps 120-121 and 150) are two episodes of one finding on the loss.
    assert [(f["rule_id"], f["first_step"], f["last_step"], f["episodes"]) for f in findings] == [
        ("ACME001", 120, 150, 2)
    ]
    recent = np.exp(np.median([np.log(smooth_loss(t)) for t in range(100, 120)]))
    assert findings[0]["value"] == pytest.approx(4.0 * smooth_loss(120) / recent)

    assert dbg("analyze", smooth, *select).returncode == 0
    # a real healthy run: late minibatch losses differ tenfold, which is noise, not a spike
    assert dbg("analyze", ROOT / "sample_traces" / "torch_healthy.h5", *select).returncode == 0
    assert dbg("analyze", spiky, *select, "--param", "ACME001.factor=5").returncode == 0
    unknown = dbg("analyze", spiky, *select, "--param", "ACME001.size=5")
    assert unknown.returncode == 2 and "factor" in unknown.stderr
