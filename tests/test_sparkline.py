"""The sparklines of the human report: a constant series is drawn flat, whatever its float noise."""

from __future__ import annotations

import math

from dbgcli.report.human import sparkline

BLOCKS = set("▁▂▃▄▅▆▇█")


def test_a_constant_rate_with_float_noise_is_flat() -> None:
    noisy = [0.1, 0.1000000001] * 10
    assert sparkline(noisy, width=20) == "▁" * 20
    assert sparkline([0.1] * 5 + [0.1 + 1e-17] * 5, width=10) == "▁" * 10
    assert sparkline([3e-4] * 7, width=7) == "▁" * 7
    assert sparkline([0.0] * 4, width=4) == "▁" * 4


def test_flat_keeps_the_non_finite_marks() -> None:
    assert sparkline([0.1, math.nan, 0.1000000001], width=3) == "▁×▁"


def test_a_real_change_is_still_drawn() -> None:
    assert sparkline([0.1] * 5 + [0.1001] * 5, width=10) == "▁" * 5 + "█" * 5
    assert sparkline([-1e-9, 1e-9], width=2) == "▁█"  # small, but all of its magnitude


def test_analyze_draws_a_constant_recorded_rate_flat(make_trace, cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    trace = make_trace(
        scalars={
            "loss": [1.0 / (1 + i) for i in range(40)],
            "lr": [0.1 if i % 3 else 0.1000000001 for i in range(40)],
        }
    )
    result = cli("analyze", trace)
    (row,) = [line for line in result.stdout.splitlines() if "recorded lr" in line]
    assert {char for char in row if char in BLOCKS} == {"▁"}


def test_analyze_says_which_curves_it_draws_on_a_log_scale(make_trace, cli, monkeypatch) -> None:
    """A curve over more than two decades is drawn on a log scale, and its line says so:
    a convex decay to 1e-9 would otherwise read as concave."""
    monkeypatch.setenv("COLUMNS", "80")
    trace = make_trace(
        scalars={
            "loss": [1.0 / (1 + i) for i in range(40)],  # 1 to 0.025: under two decades
            "lr": [1e-3 * (1 - i / 40) ** 2 + 1e-12 for i in range(40)],
        }
    )
    lines = cli("analyze", trace).stdout.splitlines()
    (rate,) = [line for line in lines if "recorded lr" in line]
    (loss,) = [line for line in lines if "train loss" in line]
    assert rate.endswith(", log)") and len(rate) <= 80
    assert loss.endswith(")") and ", log" not in loss
