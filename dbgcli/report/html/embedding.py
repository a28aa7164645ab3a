"""The projections of the HTML report's low-dimensional view, in numpy alone."""

from __future__ import annotations

import numpy as np

_PCA_ITERATIONS = 200


def pca(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The samples on their first two principal components, and the share of variance each
    explains (empty when the samples do not vary).

    The components come from subspace iteration on the smaller of the two Gram matrices, which
    needs only matrix products: LAPACK's SVD of even a 64 x 64 matrix can take a fifth of a
    second when its threads compete with other work on a busy machine.
    """
    finite = np.where(np.isfinite(values), values, 0.0)
    centred = finite - finite.mean(axis=0)
    points = np.zeros((len(values), 2), dtype=np.float32)
    total = float(np.sum(centred * centred))
    if total == 0:
        return points, np.empty(0)
    by_sample = len(centred) <= centred.shape[1]
    gram = centred @ centred.T if by_sample else centred.T @ centred
    count = min(2, len(gram))
    basis = np.random.default_rng(0).standard_normal((len(gram), count))
    for _ in range(_PCA_ITERATIONS):
        basis = gram @ basis
        for j in range(count):  # Gram-Schmidt on two columns
            for k in range(j):
                basis[:, j] -= (basis[:, k] @ basis[:, j]) * basis[:, k]
            norm = float(np.sqrt(basis[:, j] @ basis[:, j]))
            basis[:, j] = basis[:, j] / norm if norm > 0 else 0.0
    eigenvalues = np.einsum("ij,ij->j", basis, gram @ basis)
    if by_sample:
        points[:, :count] = basis * np.sqrt(np.maximum(eigenvalues, 0.0))
    else:
        points[:, :count] = centred @ basis
    return points, np.maximum(eigenvalues, 0.0) / total
