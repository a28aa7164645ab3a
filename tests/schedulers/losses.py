"""Deterministic loss sequences that exercise every branch of the loss-driven schedulers."""

from __future__ import annotations

import math

import numpy as np


def _random_walk(rng: np.random.Generator, n: int, start: float, scale: float) -> list[float]:
    return (start + np.cumsum(rng.normal(0.0, scale, n))).tolist()


def _inject(
    values: list[float], rng: np.random.Generator, specials: list[float], rate: float
) -> list[float]:
    out = list(values)
    for i in range(len(out)):
        if rng.random() < rate:
            out[i] = specials[int(rng.integers(len(specials)))]
    return out


def loss_sequences() -> dict[str, list[float]]:
    """Return named loss sequences, the same on every call (fixed seeds)."""
    rng = np.random.default_rng(20260318)
    seqs: dict[str, list[float]] = {}
    seqs["decreasing"] = np.linspace(10.0, 0.0, 120).tolist()
    seqs["increasing"] = np.linspace(0.0, 10.0, 120).tolist()
    seqs["constant"] = [1.0] * 150
    seqs["staircase"] = [float(level) for level in (5, 4, 3, 2, 1) for _ in range(40)]
    # Each value is the previous one minus 1e-6, so the drop is (in floating point) sometimes
    # exactly the default abs threshold and sometimes not: the strict comparison matters.
    seqs["threshold_sized_drops"] = [1.0 - k * 1e-6 for k in range(200)]
    seqs["spikes"] = [(10.0 if i % 17 == 16 else 1.0) * math.exp(-i / 60) for i in range(300)]
    seqs["oscillation"] = [1.0, 2.0] * 100
    seqs["slow_oscillation"] = [math.sin(i / 7) for i in range(300)]
    seqs["sine_noise"] = [2.0 + math.sin(i / 11) + 0.3 * float(rng.normal()) for i in range(400)]
    for name in ("walk_a", "walk_b", "walk_c"):
        seqs[name] = _random_walk(rng, 400, 5.0, 0.05)
    seqs["noisy_decay"] = (np.exp(-np.arange(500) / 120.0) * rng.lognormal(0.0, 0.2, 500)).tolist()
    seqs["uniform_noise"] = rng.random(500).tolist()
    seqs["negative_walk"] = _random_walk(rng, 400, -5.0, 0.05)
    seqs["crossing_zero"] = np.linspace(2.0, -2.0, 200).tolist()
    seqs["mixed_magnitudes"] = [
        (1e8 if i % 3 == 0 else 1e-8) * (1.0 + 0.1 * float(rng.random())) for i in range(300)
    ]
    seqs["nan_injected"] = _inject(_random_walk(rng, 400, 3.0, 0.05), rng, [math.nan], 0.02)
    seqs["inf_injected"] = _inject(
        _random_walk(rng, 400, 3.0, 0.05), rng, [math.inf, -math.inf], 0.02
    )
    seqs["nonfinite_mix"] = _inject(
        rng.random(400).tolist(), rng, [math.nan, math.inf, -math.inf], 0.05
    )
    seqs["nan_then_recover"] = (
        [1.0 / (i + 1) for i in range(100)] + [math.nan] + [1.0 / (i + 1) for i in range(100, 400)]
    )
    seqs["long_walk"] = _random_walk(rng, 5000, 10.0, 0.02)
    # Flat with tiny noise for thousands of steps: decreases reach min_lr and, with a small
    # reset_start, reset again and again.
    seqs["long_flat"] = (1.0 + 1e-9 * rng.random(3000)).tolist()
    return seqs
