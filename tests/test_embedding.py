"""The projections of the HTML report's low-dimensional view (dbgcli.report.html.embedding).

PCA is checked against numpy's singular value decomposition, on data shaped like activations
and on the degenerate batches training produces (all units equal, all samples equal, NaN).
"""

from __future__ import annotations

import numpy as np

from dbgcli.report.html.embedding import pca


def test_pca_matches_the_singular_value_decomposition() -> None:
    rng = np.random.default_rng(0)
    for samples, features in ((64, 20), (20, 64)):  # both Gram matrices
        values = rng.normal(size=(samples, features)) * np.linspace(3.0, 0.1, features)
        points, explained = pca(values)
        centred = values - values.mean(axis=0)
        left, singular, _ = np.linalg.svd(centred, full_matrices=False)
        np.testing.assert_allclose(explained, singular[:2] ** 2 / np.sum(singular**2), rtol=1e-6)
        expected = left[:, :2] * singular[:2]
        signs = np.sign(np.sum(points * expected, axis=0))
        np.testing.assert_allclose(points * signs, expected, rtol=1e-4, atol=1e-4)


def test_pca_of_samples_along_one_direction_has_no_second_component() -> None:
    """All units equal (a constant initialisation): one direction, whatever rounding says."""
    for seed in range(5):  # whether rounding leans on the first column depends on the data
        values = np.outer(np.random.default_rng(seed).normal(size=64), np.ones(32))
        points, explained = pca(values)
        np.testing.assert_allclose(explained, [1.0, 0.0], atol=1e-12)
        assert np.all(points[:, 1] == 0) and np.std(points[:, 0]) > 0.5


def test_pca_of_identical_samples_has_no_variance() -> None:
    """Their mean differs from them in the last bit: that is not a variance to show."""
    for value in (0.0, 0.1, 0.7):
        points, explained = pca(np.full((64, 5), value))
        assert explained.size == 0 and not points.any()


def test_pca_counts_values_that_are_not_finite_as_zero() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=(30, 8))
    broken = values.copy()
    broken[3, 2], broken[7, 5], broken[9, 0] = np.nan, np.inf, -np.inf
    repaired = broken.copy()
    repaired[~np.isfinite(repaired)] = 0.0
    points, explained = pca(broken)
    assert np.isfinite(points).all()
    np.testing.assert_array_equal(explained, pca(repaired)[1])
