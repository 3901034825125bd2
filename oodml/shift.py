"""Distances between two sets of feature vectors, the measure of distribution shift.

All computation is in float64.  Three distances share one scale (squared
feature units), selected everywhere by name through :data:`DISTANCES`:

* ``fid``: the Fréchet distance between the Gaussians fitted to the two sets,
  ``||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2)``, covariances with
  1/(n-1) as ``np.cov``.
* ``w2``: the squared 2-Wasserstein distance between the empirical
  distributions (exact optimal transport, POT's ``ot.emd2``).
* ``sinkhorn``: its entropic approximation (POT's ``ot.sinkhorn2``).

How the trace term is computed exactly and fast
-----------------------------------------------
With ``A`` the centred rows, ``S = A^T A / (n - 1)``, and the non-zero
eigenvalues of ``S1 S2`` are the squared singular values of
``A1 A2^T / sqrt((n1-1)(n2-1))``, so ``tr (S1 S2)^(1/2)`` is that matrix's
nuclear norm: an ``n1 x n2`` SVD instead of a ``d x d`` matrix square root.
When both sets have at least as many rows as dimensions, the symmetric form
``tr (S1^(1/2) S2 S1^(1/2))^(1/2)`` is used instead: eigenvalues of a symmetric
matrix, clipped at zero.  Never the eigenvalues of the non-symmetric product,
never a blanket ``eps`` added to covariances; the result is clamped at 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg

from .errors import OodmlError
from .registry import Registry

#: a float, or a float64 array of values computed at once (one per partition)
ArrayOrFloat = float | np.ndarray


def _as_samples(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise OodmlError(f"{what}: expected a 2-D array (samples x dimensions), got shape {x.shape}")
    if x.shape[0] < 2:
        raise OodmlError(f"{what}: needs at least 2 samples to estimate a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise OodmlError(f"{what}: features contain NaN or inf; re-extract them or drop the broken images")
    return x


def psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


@dataclass(frozen=True, eq=False)
class Gaussian:
    """Mean (d,) and covariance (d, d) of a set, with its matrix square root cached.

    Scoring many sets against one fixed side (the symmetric form) reuses
    ``sqrt_cov`` instead of recomputing a d x d eigendecomposition.
    """

    mean: np.ndarray
    cov: np.ndarray

    @cached_property
    def sqrt_cov(self) -> np.ndarray:
        return psd_sqrt(self.cov)


def trace_sqrt_product(s1: Gaussian, cov2: np.ndarray) -> float:
    """``tr (S1 S2)^(1/2)`` by the symmetric form: eigenvalues of ``S1^(1/2) S2 S1^(1/2)``, clipped at 0."""
    m = s1.sqrt_cov @ cov2 @ s1.sqrt_cov
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def trace_sqrt_of_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr (S1 S2)^(1/2)`` of two symmetric positive semi-definite (d, d) matrices.

    With the Cholesky factor ``S1 = L L^T``, ``S1 S2`` is similar to the
    symmetric ``L^T S2 L``, so the trace is the sum of the square roots of that
    matrix's eigenvalues (clipped at 0).  One Cholesky factorisation instead of
    an eigendecomposition with vectors makes this about twice as fast as the
    symmetric square root when neither side is reused; a singular ``S1``
    (Cholesky fails) falls back to :func:`trace_sqrt_product`.
    """
    try:
        factor = np.linalg.cholesky(cov1)
    except np.linalg.LinAlgError:
        return trace_sqrt_product(Gaussian(np.zeros(len(cov1)), cov1), cov2)
    trmm = scipy.linalg.blas.dtrmm   # triangular products: half the work of general ones
    m = trmm(1.0, factor, trmm(1.0, factor, np.asarray(cov2, np.float64), side=1, lower=1), side=0, lower=1,
             trans_a=1)                                            # L^T S2 L
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_from_terms(mean_term: ArrayOrFloat, trace1: ArrayOrFloat, trace2: ArrayOrFloat,
                       trace_sqrt: ArrayOrFloat) -> ArrayOrFloat:
    """The Fréchet distance from its four terms: ``||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2)``.

    The one place the formula is written; every FID here (:func:`frechet_distance`,
    :func:`frechet_distance_from_stats`, the split scorers of :mod:`oodml.splits.distance`) computes
    its terms in whichever exact way is fastest and assembles them with this.

    Args:
        mean_term: ``||mu1 - mu2||^2``, squared feature units.
        trace1, trace2: ``tr S1`` and ``tr S2``, the covariances' traces (squared feature units).
        trace_sqrt: ``tr (S1 S2)^(1/2)`` (squared feature units), >= 0.

    Returns:
        The distance in squared feature units, clamped at 0 (rounding can take a zero distance a few ulps
        below it): a float when all four are scalars, else a float64 array of their broadcast shape (one
        value per partition, when scoring many at once).  Summed left to right, so a caller that keeps
        its terms gets the same bits as before.
    """
    value = mean_term + trace1 + trace2 - 2 * trace_sqrt
    if np.ndim(value) == 0:
        return max(float(value), 0.0)
    return np.maximum(value, 0.0)


def frechet_distance_from_stats(mu1: np.ndarray | Gaussian, cov1: np.ndarray | None,
                                mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), in squared feature units.

    ``mu1`` may be a :class:`Gaussian` (then ``cov1`` is ``None``) so that its
    square root is computed once across calls.
    """
    g1 = mu1 if isinstance(mu1, Gaussian) else Gaussian(np.asarray(mu1, np.float64), np.asarray(cov1, np.float64))
    mu2, cov2 = np.asarray(mu2, np.float64), np.asarray(cov2, np.float64)
    diff = g1.mean - mu2
    return frechet_from_terms(diff @ diff, np.trace(g1.cov), np.trace(cov2), trace_sqrt_product(g1, cov2))


def nuclear_norm(m: np.ndarray) -> float:
    """Sum of singular values of ``m`` (any shape)."""
    return float(np.linalg.svd(m, compute_uv=False).sum())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to sample sets ``a`` (n1, d) and ``b`` (n2, d).

    Returns the FID-style value in squared feature units (float, >= 0).  Exact:
    by the nuclear norm of the centred cross product when either set has fewer
    rows than dimensions, else by the symmetric form (module docstring).

    Raises:
        OodmlError: for non-2-D input, fewer than 2 rows, NaN/inf, or mismatched widths.
    """
    a, b = _as_samples(a, "first set"), _as_samples(b, "second set")
    if a.shape[1] != b.shape[1]:
        raise OodmlError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    (n1, d), n2 = a.shape, b.shape[0]
    mu1, mu2 = a.mean(0), b.mean(0)
    a1, a2 = a - mu1, b - mu2
    if min(n1, n2) < d:
        cross = nuclear_norm(a1 @ a2.T) / np.sqrt((n1 - 1) * (n2 - 1))
        diff = mu1 - mu2
        return frechet_from_terms(diff @ diff, (a1 * a1).sum() / (n1 - 1), (a2 * a2).sum() / (n2 - 1), cross)
    return frechet_distance_from_stats(mu1, a1.T @ a1 / (n1 - 1), mu2, a2.T @ a2 / (n2 - 1))


def wasserstein_distance(a: np.ndarray, b: np.ndarray, method: str = "emd", reg: float = 0.05) -> float:
    """Squared 2-Wasserstein distance between the empirical distributions of ``a`` (n1, d) and ``b`` (n2, d).

    Uniform weights and squared Euclidean cost, so the value is on FID's scale
    (squared feature units).  ``method="emd"`` is exact (``ot.emd2``);
    ``"sinkhorn"`` is entropic OT (``ot.sinkhorn2``, log-domain) with
    regularisation ``reg`` relative to the largest pairwise cost.
    """
    import ot

    a, b = _as_samples(a, "first set"), _as_samples(b, "second set")
    if a.shape[1] != b.shape[1]:
        raise OodmlError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    cost = ot.dist(a, b, metric="sqeuclidean")
    wa, wb = np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))
    if method == "emd":
        return max(float(ot.emd2(wa, wb, cost, numItermax=10_000_000)), 0.0)
    if method == "sinkhorn":
        scale = float(cost.max()) or 1.0
        return max(float(ot.sinkhorn2(wa, wb, cost / scale, reg, method="sinkhorn_log")) * scale, 0.0)
    raise OodmlError(f"unknown optimal-transport method {method!r}; use 'emd' or 'sinkhorn'")


#: name -> distance between two sample sets (rows are samples), on FID's scale.
DISTANCES: Registry[Callable[[np.ndarray, np.ndarray], float]] = Registry("distance")
DISTANCES.register("fid", frechet_distance, description="Fréchet distance between Gaussian fits (FID), exact")
DISTANCES.register("w2", lambda a, b: wasserstein_distance(a, b, "emd"),
                   description="squared 2-Wasserstein distance between the point sets, exact (network simplex)")
DISTANCES.register("sinkhorn", lambda a, b: wasserstein_distance(a, b, "sinkhorn"),
                   description="entropic (Sinkhorn) approximation of the squared 2-Wasserstein distance")
MODES = ("class-mean", "samples")


def get_distance(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """The registered distance ``name``; an unknown name raises a one-line :class:`OodmlError`."""
    return DISTANCES[name]


def physical_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class ClassFeatures:
    """Features grouped by class, with per-class sufficient statistics.

    Args:
        features: (N, d) array, one row per image.
        labels: (N,) int array, class index of each row in ``0..C-1``.

    ``means`` (C, d) are the class means (the ``class-mean`` mode's points).
    For ``samples`` mode, ``n`` (C,), ``sums`` (C, d) and ``scatters`` (C, d, d,
    the scatter about each class mean) are additive, so the mean and covariance
    of any union of classes follow without touching the samples again
    (:meth:`union`).  ``scatters`` takes C * d * d * 8 bytes and is built on first use.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise OodmlError(f"features must be (N, d) with one label per row; got {features.shape} "
                             f"and {labels.shape}")
        if not np.isfinite(features).all():
            bad = int(np.flatnonzero(~np.isfinite(features).all(1))[0])
            raise OodmlError(f"features contain NaN or inf (first at row {bad}); re-extract them or fix that image")
        self.features, self.labels = features, labels
        self.num_classes = int(labels.max()) + 1 if len(labels) else 0
        self.n = np.bincount(labels, minlength=self.num_classes)
        self.sums = np.zeros((self.num_classes, features.shape[1]))
        np.add.at(self.sums, labels, features)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.means = self.sums / self.n[:, None]

    @cached_property
    def scatters(self) -> np.ndarray:
        d = self.features.shape[1]
        need, have = self.num_classes * d * d * 8, physical_memory()
        if need > have / 2:
            raise OodmlError(f"samples mode keeps a {d} x {d} scatter matrix per class: {self.num_classes} classes "
                             f"need {need / 2**30:.1f} GiB, more than half of this machine's "
                             f"{have / 2**30:.0f} GiB; use --mode class-mean or a narrower extractor")
        out = np.empty((self.num_classes, d, d))
        for c in range(self.num_classes):
            centred = self.features[self.labels == c] - self.means[c]
            out[c] = centred.T @ centred
        return out

    def samples(self, classes: Sequence[int]) -> np.ndarray:
        """All rows of the given classes, (sum n_c, d)."""
        return self.features[np.isin(self.labels, np.asarray(classes))]

    def union(self, classes: Sequence[int]) -> tuple[int, np.ndarray, np.ndarray]:
        """``(n, mean (d,), covariance (d, d))`` of the union of ``classes``, from sufficient statistics."""
        idx = np.asarray(classes, dtype=np.int64)
        n = int(self.n[idx].sum())
        if n < 2:
            raise OodmlError("samples mode needs at least 2 images on each side")
        mean = self.sums[idx].sum(0) / n
        between = (self.means[idx] - mean) * np.sqrt(self.n[idx])[:, None]
        scatter = self.scatters[idx].sum(0) + between.T @ between
        return n, mean, scatter / (n - 1)

    def check_samples_mode(self, classes: Sequence[int]) -> None:
        single = [int(c) for c in classes if self.n[c] < 2]
        if single:
            raise OodmlError(f"samples mode needs at least 2 images per class; class index {single[0]} has "
                             f"{self.n[single[0]]} ({len(single)} such classes); use --mode class-mean")


def split_distance(cf: ClassFeatures, train: Sequence[int], test: Sequence[int], *,
                   distance: str = "fid", mode: str = "class-mean") -> float:
    """Distance between the train and test classes of a split.

    Args:
        cf: the dataset's features by class.
        train, test: class indices of the two sides.
        distance: a key of :data:`DISTANCES`.
        mode: ``class-mean`` (the sets of class means, as in ooDML) or ``samples``
            (all image features of each side).
    """
    if mode == "class-mean":
        return get_distance(distance)(cf.means[np.asarray(train)], cf.means[np.asarray(test)])
    if mode != "samples":
        raise OodmlError(f"unknown feature mode {mode!r}; choose one of {', '.join(MODES)}")
    cf.check_samples_mode(list(train) + list(test))
    if distance == "fid":
        _, mu1, cov1 = cf.union(train)
        _, mu2, cov2 = cf.union(test)
        return frechet_distance_from_stats(mu1, cov1, mu2, cov2)
    return get_distance(distance)(cf.samples(train), cf.samples(test))
