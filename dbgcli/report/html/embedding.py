"""The projections of the HTML report's low-dimensional view, in numpy alone: PCA and t-SNE.

scikit-learn has both, but importing it alone takes 1-2 s on a busy machine, the whole time
budget of a report; the view shows at most 150 samples per panel, few enough for the exact
algorithms.
"""

from __future__ import annotations

import math

import numpy as np

_PCA_ITERATIONS = 200
_RESIDUAL = 1e-8  # of a column's length: less left after Gram-Schmidt is rounding

TSNE_PERPLEXITY = 30.0
TSNE_MIN_SAMPLES = 5  # fewer cap the perplexity at 1: one neighbour each, no neighbourhood
_EXAGGERATION = 12.0
_EXPLORATION_ITERATIONS = 250  # with the exaggeration and momentum 0.5
_ITERATIONS = 1000  # in all
_MIN_GAIN = 0.01
_MIN_GRADIENT_NORM = 1e-7
_INIT_STD = 1e-4  # of the first coordinate of the start
_SEARCH_STEPS = 100  # of the bisection for each sample's bandwidth
_ENTROPY_TOLERANCE = 1e-5  # nats
_EPSILON = float(np.finfo(np.float64).eps)  # the smallest p_ij and q_ij, as in scikit-learn


def pca(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The samples on their first two principal components, and the share of variance each
    explains (empty when the samples do not vary). Values that are not finite count as 0.

    The components come from subspace iteration on the smaller of the two Gram matrices, which
    needs only matrix products: LAPACK's SVD of even a 64 x 64 matrix can take a fifth of a
    second when its threads compete with other work on a busy machine.
    """
    finite = finite_samples(values)
    points = np.zeros((len(values), 2), dtype=np.float32)
    # Identical samples differ from their mean by rounding alone: that is no variance.
    centred = finite - finite.mean(axis=0) if varies(finite) else np.zeros_like(finite)
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
    # + 0.0 turns -0.0 into 0.0, so that samples that are equal also look equal to np.unique.
    return np.where(np.isfinite(values), values, 0.0).astype(np.float64, copy=False) + 0.0


def varies(samples: np.ndarray) -> bool:
    """Whether any sample differs from the first (exactly, unlike a computed variance)."""
    return bool((samples != samples[:1]).any())


def tsne(values: np.ndarray, init: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The samples embedded in the plane by exact t-SNE, and the perplexity used; None when
    there are fewer than TSNE_MIN_SAMPLES samples or they do not vary.

    ``values`` is ``samples x features`` (values that are not finite count as 0, as in
    :func:`pca`); ``init`` is where the descent starts: the samples on their first two
    principal components, as :func:`pca` gives them.

    The method of van der Maaten and Hinton (2008), "Visualizing Data using t-SNE", Journal of
    Machine Learning Research 9, 2579-2605, with the optimisation schedule of scikit-learn's
    ``TSNE(method="exact", init="pca")``:

    1. Neighbours in the activations: around each sample i, a Gaussian over the others,
       ``p_j|i = exp(-β_i ‖x_i - x_j‖²) / Σ_k≠i exp(-β_i ‖x_i - x_k‖²)``, its precision β_i
       set so that the perplexity ``2^H(P_i)`` (an effective number of neighbours) is
       TSNE_PERPLEXITY (see :func:`conditional_probabilities`), capped at ``(n - 1) / 3`` for
       small batches, the limit of van der Maaten's own implementation (bhtsne). Symmetrised:
       ``p_ij = (p_j|i + p_i|j) / 2n``.
    2. Neighbours in the plane: a Student t with one degree of freedom,
       ``q_ij = (1 + ‖y_i - y_j‖²)^-1 / Σ_k≠l (1 + ‖y_k - y_l‖²)^-1``; its heavy tail lets
       samples that are moderately far apart in the activations lie far apart in the plane,
       which leaves room for the near ones (the "crowding problem").
    3. The points minimise ``KL(P ‖ Q) = Σ p_ij log(p_ij / q_ij)`` by gradient descent on
       ``∂KL/∂y_i = 4 Σ_j (p_ij - q_ij) (y_i - y_j) (1 + ‖y_i - y_j‖²)^-1``, for all i at once
       ``4 (diag(W 1) - W) Y`` with ``W = (P - Q) ∘ (1 + D)^-1`` (D: squared distances in the
       plane).

    The descent starts from ``init`` scaled so that its first coordinate has a standard
    deviation of 1e-4. 250 iterations of "early exaggeration" (P times 12, so that clusters
    form and move apart) with momentum 0.5, then 750 with momentum 0.8; learning rate
    ``max(n / 12 / 4, 50)`` (scikit-learn's "auto"); each coordinate's step has a gain (the
    delta-bar-delta rule of Jacobs, 1988) that grows by 0.2 while the coordinate keeps moving
    the same way and shrinks by a factor 0.8 when it turns, never below 0.01. Each phase stops
    early when the norm of the gained gradient falls to 1e-7. (scikit-learn also stops after
    300 iterations without progress of the divergence, which it computes every 50.) Nothing is
    random: :func:`pca` starts from a fixed seed. Samples with identical activations have
    identical gradients and stay at one point, as they would in exact arithmetic.

    The activations are not standardised feature by feature: that would give a unit that
    barely varies (a nearly dead ReLU, whose variation is noise) the weight of the units that
    carry the signal, and the plane would stop showing the geometry the layer passes on, which
    the PCA beside it shows. Their scale does not matter (the β_i follow it), and features that
    do not vary add nothing to the distances.
    """
    samples = finite_samples(values)
    count = len(samples)
    if count < TSNE_MIN_SAMPLES or not varies(samples):
        return None
    spread = float(np.std(init[:, 0]))
    if spread == 0:  # differences too small for their squares in float64: none to show
        return None
    perplexity = min(TSNE_PERPLEXITY, (count - 1) / 3)
    # Centred, so that the Gram identity below loses no digits to the activations' offset.
    joint = joint_probabilities(_squared_distances(samples - samples.mean(axis=0)), perplexity)
    rate = max(count / _EXAGGERATION / 4, 50.0)
    # Samples with the same activations (all of a dead layer's zeros, say) have the same
    # gradient, so the descent keeps them at one point; but rounding parts them, and the
    # descent then blows the split up into a cloud that shows variation where there is none
    # (40 copies of a sample spread over 3 % of the plane). Each copy moves as the first.
    _, first, copy_of = np.unique(samples, axis=0, return_index=True, return_inverse=True)
    leader = first[copy_of.ravel()]
    # The descent runs in float32, as scikit-learn's does: its time goes into passes over
    # n x n matrices, and float32 halves it. The affinities above are float64.
    points: np.ndarray = (init[leader, :2] * (_INIT_STD / spread)).astype(np.float32)
    for exaggeration, momentum, iterations in (
        (_EXAGGERATION, 0.5, _EXPLORATION_ITERATIONS),
        (1.0, 0.8, _ITERATIONS - _EXPLORATION_ITERATIONS),
    ):
        target = (joint * exaggeration).astype(np.float32)
        # Each phase starts without momentum or gains, as scikit-learn's two descents do.
        update = np.zeros_like(points)
        gains = np.ones_like(points)
        for _ in range(iterations):
            gradient = _kl_gradient(target, points)[leader]
            same_way = update * gradient < 0  # the last step went down this gradient too
            gains = np.maximum(np.where(same_way, gains + 0.2, gains * 0.8), _MIN_GAIN)
            gradient *= gains
            update = momentum * update - rate * gradient
            points += update
            if math.sqrt(float(np.sum(gradient * gradient))) <= _MIN_GRADIENT_NORM:
                break
    return points, perplexity


def conditional_probabilities(distances: np.ndarray, perplexity: float) -> np.ndarray:
    """``p_j|i`` (row i, zero diagonal) of Gaussians around each sample, from the squared
    distances between samples, each of perplexity ``perplexity``.

    Row i is ``exp(-β_i d_ij)`` normalised over j ≠ i; its entropy is
    ``H_i = log Z_i + β_i Σ_j p_j|i d_ij`` (nats), which falls as β_i grows, and β_i is
    bisected (doubled or halved until the target is bracketed, then halved intervals, at most
    100 steps, as scikit-learn does) until ``|H_i - log(perplexity)| <= 1e-5``.

    Neither shifting a row's distances by its smallest nor dividing all by their mean changes
    the ``p_j|i`` (β_i absorbs the scale), so the search runs on such distances: the nearest
    neighbour's term is then ``exp(0) = 1``, so that ``Z_i`` cannot underflow however far
    apart the samples are, and β_i = 1 starts near the answer whatever the activations' scale.
    """
    count = len(distances)
    others = ~np.eye(count, dtype=bool)
    nearest = np.min(distances, axis=1, where=others, initial=np.inf, keepdims=True)
    shifted = np.where(others, distances - nearest, 0.0)
    mean = float(np.mean(shifted[others])) if count > 1 else 0.0
    scaled = shifted / mean if mean > 0 else shifted
    target = math.log(perplexity)
    beta = np.ones(count)
    low = np.zeros(count)  # 0: no β known to be too small yet
    high = np.full(count, np.inf)  # inf: no β known to be too large yet
    for _ in range(_SEARCH_STEPS):
        rows = np.exp(-scaled * beta[:, None])
        np.fill_diagonal(rows, 0.0)
        total = rows.sum(axis=1)
        rows /= total[:, None]
        entropy = np.log(total) + beta * np.sum(scaled * rows, axis=1)
        searching = np.abs(entropy - target) > _ENTROPY_TOLERANCE
        if not searching.any():
            break
        too_flat = entropy > target  # too many neighbours: β must grow
        low = np.where(searching & too_flat, beta, low)
        high = np.where(searching & ~too_flat, beta, high)
        bisected = np.where(np.isinf(high), 2 * low, np.where(low == 0, high / 2, (low + high) / 2))
        beta = np.where(searching, bisected, beta)
    return rows


def joint_probabilities(distances: np.ndarray, perplexity: float) -> np.ndarray:
    """``p_ij = (p_j|i + p_i|j) / 2n`` from squared distances (at least 2^-52 off the
    diagonal, as in scikit-learn, so that the divergence stays finite)."""
    conditional = conditional_probabilities(distances, perplexity)
    joint: np.ndarray = np.maximum((conditional + conditional.T) / (2 * len(distances)), _EPSILON)
    np.fill_diagonal(joint, 0.0)
    return joint


def _kl_gradient(joint: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The gradient of KL(P ‖ Q) with respect to the points (see :func:`tsne`), computed in
    place as far as it goes: the descent's time is passes over these n x n matrices."""
    kernel = _squared_distances(points)
    kernel += 1.0
    np.reciprocal(kernel, out=kernel)  # (1 + ‖y_i - y_j‖²)^-1
    np.fill_diagonal(kernel, 0.0)
    weights = kernel * (1.0 / kernel.sum())  # q_ij
    np.maximum(weights, _EPSILON, out=weights)
    np.subtract(joint, weights, out=weights)
    weights *= kernel
    gradient: np.ndarray = 4.0 * (weights.sum(axis=1)[:, None] * points - weights @ points)
    return gradient


def _squared_distances(points: np.ndarray) -> np.ndarray:
    """``‖a - b‖²`` between rows, as ``‖a‖² + ‖b‖² - 2 a·b`` (a matrix product; at least 0)."""
    distances: np.ndarray = points @ points.T
    squared = distances.diagonal().copy()
    distances *= -2.0
    distances += squared[:, None]
    distances += squared[None, :]
    np.maximum(distances, 0.0, out=distances)
    return distances
