"""The projections of the HTML report's low-dimensional view (dbgcli.report.html.embedding).

PCA is checked against numpy's singular value decomposition, t-SNE against scikit-learn's
exact t-SNE (a test dependency only: dbg never imports it), both on data shaped like
activations and on the degenerate batches training produces (all units equal, all samples
equal, dead units, NaN).
"""

from __future__ import annotations

import numpy as np
import pytest

from dbgcli.report.html.embedding import (
    TSNE_MIN_SAMPLES,
    conditional_probabilities,
    joint_probabilities,
    pca,
    tsne,
)


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


# -- t-SNE -------------------------------------------------------------------------------------


def blobs(seed: int = 0, count: int = 240, clusters: int = 4, features: int = 30):
    """Well separated Gaussian clusters: unit noise around centres drawn with std 4."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(clusters), count // clusters)
    centres = rng.normal(0.0, 4.0, (clusters, features))
    return centres[labels] + rng.normal(size=(count, features)), labels


def nearest_neighbour_accuracy(points: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose nearest other sample in ``points`` has their label."""
    from sklearn.neighbors import KNeighborsClassifier

    classifier = KNeighborsClassifier(n_neighbors=2).fit(points, labels)
    neighbours = classifier.kneighbors(points, return_distance=False)[:, 1]  # [:, 0] is itself
    return float(np.mean(labels[neighbours] == labels))


def kl_divergence(joint: np.ndarray, points: np.ndarray) -> float:
    """KL(P ‖ Q) of an embedding, Q the Student t of the paper (written out independently)."""
    differences = points[:, None, :].astype(np.float64) - points[None, :, :]
    kernel = 1.0 / (1.0 + np.sum(differences**2, axis=-1))
    np.fill_diagonal(kernel, 0.0)
    q = kernel / kernel.sum()
    off = ~np.eye(len(points), dtype=bool)
    return float(np.sum(joint[off] * np.log(joint[off] / np.maximum(q[off], 1e-300))))


@pytest.mark.parametrize("data", ["blobs", "digits"])
def test_tsne_is_as_trustworthy_as_scikit_learns(data: str) -> None:
    """Well separated Gaussian clusters, and 250 handwritten digits (bundled with scikit-learn),
    on which PCA is far behind (trustworthiness 0.84, nearest-neighbour accuracy 0.65): t-SNE
    must do the work."""
    from sklearn.datasets import load_digits
    from sklearn.manifold import TSNE, trustworthiness

    if data == "blobs":
        values, labels = blobs()
    else:
        digits = load_digits()
        values, labels = digits.data[:250], digits.target[:250]
    start, _ = pca(values)
    embedded = tsne(values, start)
    assert embedded is not None
    ours, perplexity = embedded
    assert perplexity == 30 and ours.shape == (len(values), 2) and np.isfinite(ours).all()
    theirs = TSNE(method="exact", init="pca", perplexity=30, random_state=0).fit_transform(values)
    ours_trust = trustworthiness(values, ours, n_neighbors=5)
    their_trust = trustworthiness(values, theirs, n_neighbors=5)
    assert ours_trust >= 0.9
    assert abs(ours_trust - their_trust) <= 0.03
    assert ours_trust > trustworthiness(values, start, n_neighbors=5) + 0.03
    assert nearest_neighbour_accuracy(ours, labels) > 0.95


def test_tsne_affinities_are_scikit_learns() -> None:
    """P, through scikit-learn's public API: the divergence it reports for its own embedding
    is the one of our P for that embedding."""
    from sklearn.manifold import TSNE

    values, _ = blobs(seed=1, count=120)
    fitted = TSNE(method="exact", init="pca", perplexity=30, random_state=0).fit(values)
    centred = values - values.mean(axis=0)
    distances = np.sum((centred[:, None, :] - centred[None, :, :]) ** 2, axis=-1)
    joint = joint_probabilities(distances, 30.0)
    assert np.isclose(joint.sum(), 1.0) and np.allclose(joint, joint.T)
    assert kl_divergence(joint, fitted.embedding_) == pytest.approx(fitted.kl_divergence_, rel=2e-3)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
@pytest.mark.parametrize("perplexity", [5.0, 30.0])
def test_each_row_has_the_perplexity_asked_for(scale: float, perplexity: float) -> None:
    """Perplexity 2^H(P_i), H in bits, whatever the scale of the distances."""
    values, _ = blobs(seed=2, count=200)
    values = values * scale
    distances = np.sum((values[:, None, :] - values[None, :, :]) ** 2, axis=-1)
    rows = conditional_probabilities(distances, perplexity)
    assert np.all(np.diag(rows) == 0) and np.allclose(rows.sum(axis=1), 1.0)
    entropy = -np.sum(
        np.where(rows > 0, rows * np.log2(np.where(rows > 0, rows, 1.0)), 0.0), axis=1
    )
    np.testing.assert_allclose(entropy, np.log2(perplexity), atol=1e-4)


def test_tsne_is_deterministic() -> None:
    values, _ = blobs(seed=3, count=80)
    first, second = (tsne(values, pca(values)[0]) for _ in range(2))
    assert first is not None and second is not None
    np.testing.assert_array_equal(first[0], second[0])


def test_tsne_of_too_few_or_identical_samples_is_none() -> None:
    rng = np.random.default_rng(4)
    for values in (
        rng.normal(size=(2, 8)),
        rng.normal(size=(TSNE_MIN_SAMPLES - 1, 8)),
        np.full((50, 8), 0.1),
        np.full((50, 8), np.nan),  # counts as zeros: identical
        np.zeros((0, 8)),
    ):
        assert tsne(values, pca(values)[0]) is None


def test_tsne_of_small_batches_caps_the_perplexity() -> None:
    values = np.random.default_rng(5).normal(size=(TSNE_MIN_SAMPLES, 3))
    embedded = tsne(values, pca(values)[0])
    assert embedded is not None
    points, perplexity = embedded
    assert perplexity == pytest.approx((TSNE_MIN_SAMPLES - 1) / 3)
    assert np.isfinite(points).all() and np.ptp(points, axis=0).min() > 0


def test_tsne_keeps_duplicates_together_and_survives_nan() -> None:
    """Dead units (features that never vary), one sample repeated (more often than the
    perplexity, so its rows cannot reach it) and NaN: finite points, the copies at one point
    as the exact gradient keeps them (rounding alone would spread them into a cloud), the
    clusters still apart."""
    values, labels = blobs(seed=6, count=120, clusters=3)
    values[:, :5] = 0.0  # dead units
    values[1:40] = values[0]  # cluster 0: one sample, 40 times
    values[50, 7] = np.nan
    values[60, 8] = np.inf
    embedded = tsne(values, pca(values)[0])
    assert embedded is not None
    points, _ = embedded
    assert np.isfinite(points).all()
    assert np.all(points[:40] == points[0])
    assert nearest_neighbour_accuracy(points[39:], labels[39:]) > 0.95
