"""The projections of the HTML report's low-dimensional view, in numpy alone."""

from __future__ import annotations

import numpy as np

_PCA_ITERATIONS = 200
_RESIDUAL = 1e-8  # of a column's length: less left after Gram-Schmidt is rounding


def pca(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The samples on their first two principal components, and the share of variance each
    explains (empty when the samples do not vary). Values that are not finite count as 0.

    The components come from subspace iteration on the smaller of the two Gram matrices, which
    needs only matrix products: LAPACK's SVD of even a 64 x 64 matrix can take a fifth of a
    second when its threads compete with other work on a busy machine.
    """
    finite = finite_samples(values)
    centred = finite - finite.mean(axis=0)
    points = np.zeros((len(values), 2), dtype=np.float32)
    total = float(np.sum(centred * centred))
    # Identical samples are told apart from their mean by rounding alone: that is no variance.
    if total == 0 or not varies(finite):
        return points, np.empty(0)
    by_sample = len(centred) <= centred.shape[1]
    gram = centred @ centred.T if by_sample else centred.T @ centred
    count = min(2, len(gram))
    basis = np.random.default_rng(0).standard_normal((len(gram), count))
    for _ in range(_PCA_ITERATIONS):
        basis = gram @ basis
        for j in range(count):  # Gram-Schmidt on two columns
            length = float(np.sqrt(basis[:, j] @ basis[:, j]))
            for k in range(j):
                basis[:, j] -= (basis[:, k] @ basis[:, j]) * basis[:, k]
            norm = float(np.sqrt(basis[:, j] @ basis[:, j]))
            # When the samples span fewer directions than columns (all units equal, say), a
            # column is left with rounding error only, which leans on the first column: scaled
            # up, the "second component" would repeat the first. Such a column is no direction.
            basis[:, j] = basis[:, j] / norm if norm > _RESIDUAL * length else 0.0
    eigenvalues = np.einsum("ij,ij->j", basis, gram @ basis)
    if by_sample:
        points[:, :count] = basis * np.sqrt(np.maximum(eigenvalues, 0.0))
    else:
        points[:, :count] = centred @ basis
    return points, np.maximum(eigenvalues, 0.0) / total


def finite_samples(values: np.ndarray) -> np.ndarray:
    """``samples x features`` as float64, values that are not finite set to 0: one NaN unit
    must not take its sample out of the view (the statistics views show where NaN are)."""
    return np.where(np.isfinite(values), values, 0.0).astype(np.float64, copy=False)


def varies(samples: np.ndarray) -> bool:
    """Whether any sample differs from the first (exactly, unlike a computed variance)."""
    return bool((samples != samples[:1]).any())
