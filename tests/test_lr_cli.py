"""``dbg lr`` and the simulated GreedyLR curve of ``dbg analyze``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dbgcli.report.model import EXIT_ERROR, EXIT_OK
from dbgcli.schedulers import simulate

ROOT = Path(__file__).resolve().parents[1]
HEALTHY = ROOT / "sample_traces" / "numpy_mlp_healthy.h5"
GREEDY = ROOT / "sample_traces" / "torch_greedy_lr.h5"
XGBOOST = ROOT / "sample_traces" / "xgboost_deep_trees.h5"


@pytest.fixture
def epochs_trace(make_trace) -> Path:
    losses = [1.0 / (1 + i / 10) + 0.01 * np.sin(i) for i in range(60)]
    return make_trace(
        scalars={
            "loss": losses,
            "lr": [0.2] * 60,
            "epoch": {"values": [0, 1, 2, 3, 4, 5], "steps": [0, 10, 20, 30, 40, 50]},
        }
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_curves_csv_png_html(cli, tmp_path: Path) -> None:
    out = {suffix: tmp_path / f"curves.{suffix}" for suffix in ("csv", "png", "html")}
    result = cli(
        "lr",
        HEALTHY,
        "-s",
        "greedy",
        "-s",
        "greedy:factor=0.5,patience=2,min_lr=1e-4",
        "-s",
        "plateau:patience=3",
        "--metric",
        "loss",
        "--mode",
        "train",
        "--csv",
        out["csv"],
        "--png",
        out["png"],
        "--html",
        out["html"],
    )
    assert result.code == EXIT_OK, result.stderr
    assert "from lr 0.05" in result.stdout and "schedulers" in result.stdout
    assert any(0x2801 <= ord(ch) <= 0x28FF for ch in result.stdout)  # the braille chart
    rows = read_csv(out["csv"])
    assert len(rows) == 300
    from dbgcli import open_trace

    with open_trace(HEALTHY) as trace:
        losses = trace.scalar("loss", "train").values
    expected = simulate(losses, "greedy", lr=0.05, factor=0.5, patience=2, min_lr=1e-4)
    got = np.array([float(r["greedy:factor=0.5,patience=2,min_lr=1e-4"]) for r in rows])
    np.testing.assert_array_equal(got, expected)  # repr round-trips floats exactly
    assert {r["recorded_lr"] for r in rows} == {"0.05"}
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = out["html"].read_text()
    assert "<svg" in page and "<table>" in page and "plateau:patience=3" in page


def test_default_metric_and_cadences(cli, epochs_trace: Path, tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    assert cli("lr", epochs_trace, "--csv", table).code == EXIT_OK
    rows = read_csv(table)
    assert len(rows) == 60 and "train loss" in rows[0]
    assert float(rows[0]["greedy"]) == 0.2  # starts from the recorded learning rate
    assert cli("lr", epochs_trace, "--every", "7", "--csv", table).code == EXIT_OK
    rows = read_csv(table)
    assert [r["step"] for r in rows][:3] == ["6", "13", "20"] and len(rows) == 9
    assert cli("lr", epochs_trace, "--per-epoch", "--csv", table, "--lr", "0.01").code == EXIT_OK
    rows = read_csv(table)
    assert [r["step"] for r in rows] == ["9", "19", "29", "39", "49", "59"]
    assert float(rows[0]["greedy"]) == 0.01
    train_default = cli("lr", HEALTHY)
    assert "replay of the train loss (300 records) from lr 0.05" in train_default.stdout
    assert "eval loss (" in cli("lr", HEALTHY, "--mode", "eval").stdout


def test_bad_input_is_one_line(cli, epochs_trace: Path) -> None:
    for args, fragment in (
        (["-s", "sgdr"], "unknown scheduler 'sgdr'"),
        (["-s", "greedy:factor=2"], "factor"),
        (["-s", "greedy:patience"], "expected key=value"),
        (["-s", "greedy:bogus=1"], "unknown parameter(s) bogus"),
        (["--metric", "val_acc"], "no scalar series 'val_acc'; scalars: epoch, loss, lr"),
        (["--every", "0"], "--every must be >= 1"),
        (["--lr", "-1"], "positive"),
    ):
        result = cli("lr", epochs_trace, *args)
        assert result.code == EXIT_ERROR, args
        assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


def test_analyze_shows_the_simulated_greedy_curve(cli) -> None:
    result = cli("analyze", HEALTHY, "-q")
    assert "GreedyLR (sim.)" in result.stdout


def test_replays_a_run_trained_with_greedylr_exactly(cli, tmp_path: Path) -> None:
    """The sample was trained with dbgcli.torch.GreedyLR; dbg lr must reproduce its rates."""
    table = tmp_path / "g.csv"
    spec = "greedy:factor=0.8,patience=3,min_lr=1e-3,max_lr=0.5"
    # Explicitly, and by default: the training loss is what the run stepped GreedyLR on.
    for series in (["--metric", "loss", "--mode", "train"], []):
        result = cli("lr", GREEDY, *series, "-s", spec, "--csv", table)
        assert result.code == EXIT_OK
        rows = read_csv(table)
        recorded = [float(r["recorded_lr"]) for r in rows]
        replayed = [float(r[spec]) for r in rows]
        assert len(set(recorded)) > 5  # the scheduler really moved the rate
        assert recorded[1:] == replayed[:-1]  # the rate after loss i is the rate step i + 1 used


def _lr_note(stdout: str) -> str:
    """The line of ``dbg lr`` that says what was replayed."""
    return next(line for line in stdout.splitlines() if line.startswith("replay of "))


@pytest.mark.parametrize(
    ("trace", "note"),
    [
        (GREEDY, "replay of the train loss (200 records) from lr 0.05 (recorded lr)"),
        (XGBOOST, "replay of the train loss (60 records) from lr 0.3 (hyperparameter eta)"),
    ],
)
def test_lr_and_analyze_replay_the_same_series_from_the_same_start(
    cli, monkeypatch, tmp_path: Path, trace: Path, note: str
) -> None:
    """The GreedyLR curve of ``dbg analyze`` is the one ``dbg lr`` draws by default, and both
    say so in the same words."""
    from dbgcli.analysis import Options, analyze

    monkeypatch.setenv("COLUMNS", "200")
    table = tmp_path / "lr.csv"
    result = cli("lr", trace, "--csv", table)
    assert result.code == EXIT_OK, result.stderr
    assert _lr_note(result.stdout) == note
    assert "not how the loss would have responded to it" in result.stdout
    (report,) = analyze([trace], Options()).traces
    (curve,) = [c for c in report.curves if c.name == "GreedyLR (sim.)"]
    assert curve.note == note
    rows = read_csv(table)
    assert curve.steps == tuple(int(r["step"]) for r in rows)
    assert curve.values == tuple(float(r["greedy"]) for r in rows)


def test_start_rate_without_a_recorded_lr(make_trace, cli, monkeypatch) -> None:
    """XGBoost records no ``lr`` series: the start comes from the hyperparameters, else the
    booster configuration the callback stores, else the scheduler default, and says so."""
    monkeypatch.setenv("COLUMNS", "200")
    losses = {"loss": [1.0 / (1 + i) for i in range(20)]}
    config = {"learner": {"gradient_booster": {"tree_train_param": {"eta": "0.300000012"}}}}
    cases = [
        (
            make_trace(scalars=losses, hyperparameters={"learning_rate": 0.02, "eta": 0.3}),
            "from lr 0.02 (hyperparameter learning_rate)",
        ),
        (
            make_trace(scalars=losses, metadata={"xgboost_config": config}),
            "from lr 0.3 (xgboost_config eta)",
        ),
        (make_trace(scalars=losses), "from lr 0.1 (default, none recorded)"),
        (
            make_trace(scalars={**losses, "lr": [0.0] * 20}, hyperparameters={"lr": 0.5}),
            "from lr 0.5 (hyperparameter lr)",  # a warmup from 0 cannot be a start
        ),
        (
            # A warmup from 0 with no hyperparameters: the rate it rises to, not the default.
            make_trace(scalars={**losses, "lr": [0.002 * min(i, 5) / 5 for i in range(20)]}),
            "from lr 0.002 (highest recorded lr; the first is not a positive number)",
        ),
    ]
    for trace, start in cases:
        result = cli("lr", trace)
        assert result.code == EXIT_OK, result.stderr
        assert _lr_note(result.stdout).endswith(start)
    assert _lr_note(cli("lr", cases[0][0], "--lr", "0.7").stdout).endswith("from lr 0.7 (--lr)")


def test_a_series_too_short_for_the_patience_is_flagged(make_trace, cli, monkeypatch) -> None:
    """Eight records cannot move a scheduler of patience 10: both commands say so."""
    from dbgcli.analysis import Options, analyze

    monkeypatch.setenv("COLUMNS", "200")
    result = cli("lr", GREEDY, "--mode", "eval", "-s", "greedy", "-s", "greedy:patience=3")
    assert result.code == EXIT_OK
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: greedy cannot change the rate: 8 records are too few for patience 10 "
        "(it needs at least 11)"
    ]
    eval_only = make_trace(
        scalars={"loss": {"values": [1.0 / (1 + i) for i in range(8)], "mode": "eval"}}
    )
    (report,) = analyze([eval_only], Options()).traces
    (curve,) = [c for c in report.curves if c.name == "GreedyLR (sim.)"]
    assert curve.note == (
        "replay of the eval loss (8 records) from lr 0.1 (default, none recorded); greedy "
        "cannot change the rate: 8 records are too few for patience 10 (it needs at least 11)"
    )
    assert set(curve.values) == {0.1}  # what the warning predicts
    long_enough = cli("lr", eval_only, "-s", "greedy:patience=7")
    assert "warning" not in long_enough.stdout
