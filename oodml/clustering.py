"""Lloyd's k-means for NMI/AMI, with the policy of faiss's ``Kmeans`` as pytorch-metric-learning calls it.

Policy (faiss ``Clustering``, ``niter=20``, ``nredo=1``): centroids start at a
seeded random sample of distinct rows; each iteration assigns every row to its
nearest centroid (squared Euclidean distance) and moves each centroid to the
mean of its rows; an emptied cluster is refilled by splitting a populous one
(a copy of its centroid, both perturbed by +-1/1024 in alternating
coordinates, the cluster to split drawn with probability proportional to its
size minus one).  pytorch-metric-learning then labels every row by its nearest
final centroid; so does :func:`kmeans`.  The random draws are torch's, not
faiss's, so the two give different (equally good) clusterings.

Two things make it cheaper than running every iteration in full, without
changing the result:

* Once an iteration leaves every assignment as it was, every centroid stays
  where it was and so does every later iteration (a fixed point): stop there.
* A row whose own centroid did not move (same members, same mean) can only
  switch to a centroid that did, so it is compared with the moved centroids
  only; rows whose own centroid moved are compared with all.  Late iterations, where few clusters change, then cost a
  fraction of a full pass.

Distances are ``|c|^2 - 2 x.c`` (float32; ``|x|^2`` does not change the
argmin), ties to the lower centroid index.

Scores.  :func:`adjusted_mutual_info` is scikit-learn's
``adjusted_mutual_info_score`` (arithmetic normalisation), with the expected
mutual information under the hypergeometric model computed over *distinct*
class and cluster sizes: each term depends on a class's size a and a
cluster's size b only, so the sum over all class-cluster pairs is a sum over
distinct (a, b) pairs weighted by how many pairs share them.  With 11,000
classes of about 5 images that is a few hundred pairs instead of 1.2e8 (the
library's loop takes about 25 s on two cores at Stanford Online Products'
size; this takes milliseconds).  The terms are scikit-learn's, in float64; only
their order of summation differs (tested equal to 1e-10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import gammaln

SPLIT_EPS = 1 / 1024  # faiss's perturbation when it splits a cluster to refill an empty one
KMEANS_ITERATIONS = 20  # faiss's niter as pytorch-metric-learning sets it


@dataclass(frozen=True)
class KMeansResult:
    """``labels``: (N,) int64 cluster of each row; ``iterations``: centroid updates run (at most the
    requested number, fewer at a fixed point); ``multiply_adds``: point-centroid dot-product
    multiply-adds spent on assignments (N x K x d for each full pass)."""

    labels: np.ndarray
    iterations: int
    multiply_adds: int


def _nearest(points: torch.Tensor, centroids: torch.Tensor, squares: torch.Tensor,
             chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row and its distance |c|^2 - 2 x.c: (P,) int64 and (P,) float32."""
    labels = torch.empty(len(points), dtype=torch.long, device=points.device)
    distances = torch.empty(len(points), device=points.device)
    for start in range(0, len(points), chunk):
        block = torch.addmm(squares, points[start:start + chunk], centroids.T, alpha=-2)
        distances[start:start + chunk], labels[start:start + chunk] = block.min(1)
    return labels, distances


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> None:
    """Refill the centroids of empty clusters in place, faiss-style, by splitting populous ones."""
    sizes = counts.double().cpu()
    sign = torch.ones(centroids.shape[1], device=centroids.device)
    sign[1::2] = -1
    for empty in (counts == 0).nonzero()[:, 0].tolist():
        split = int(torch.multinomial((sizes - 1).clamp(min=0), 1, generator=generator))
        centroids[empty] = centroids[split] * (1 + SPLIT_EPS * sign)
        centroids[split] = centroids[split] * (1 - SPLIT_EPS * sign)
        sizes[empty] = sizes[split] / 2
        sizes[split] -= sizes[empty]


def kmeans(points: torch.Tensor, clusters: int, *, iterations: int = KMEANS_ITERATIONS, seed: int = 0,
           chunk: int = 4096) -> KMeansResult:
    """Lloyd's k-means on the points' device; the faiss policy of the module docstring.

    Args:
        points: (N, d) float tensor, N >= clusters.
        clusters: K, the number of clusters.
        iterations: centroid updates (faiss's ``niter``; pytorch-metric-learning uses 20).
        seed: seeds the initial sample and the splits of empty clusters.
        chunk: rows per distance block (chunk x K float32 scores in memory).

    Returns:
        :class:`KMeansResult`; ``labels`` are the nearest final centroids.
    """
    x = points.float()
    n, d = x.shape
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=generator)[:clusters].to(x.device)].clone()
    labels, distances = _nearest(x, centroids, (centroids * centroids).sum(1), chunk)
    multiply_adds = n * clusters * d
    done = 0
    while done < iterations:
        counts = torch.bincount(labels, minlength=clusters)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        updated = sums / counts.clamp(min=1)[:, None].to(x.dtype)  # empty clusters: 0, then refilled
        _split_empty(updated, counts, generator)
        moved = (updated != centroids).any(1)
        centroids = updated
        done += 1
        if not moved.any():
            break  # a fixed point: every later iteration would repeat this one
        squares = (centroids * centroids).sum(1)
        labels, distances = labels.clone(), distances.clone()
        own_moved = moved[labels]
        # Rows whose own centroid moved: against every centroid.
        rows = own_moved.nonzero()[:, 0]
        labels[rows], distances[rows] = _nearest(x[rows], centroids, squares, chunk)
        multiply_adds += len(rows) * clusters * d
        # The others kept their distance to their own centroid: against the moved centroids only,
        # switching when one is nearer (or as near with a lower index).
        rows, candidates = (~own_moved).nonzero()[:, 0], moved.nonzero()[:, 0]
        if len(rows):
            best, best_distance = _nearest(x[rows], centroids[candidates], squares[candidates], chunk)
            best = candidates[best]
            own, own_distance = labels[rows], distances[rows]
            switch = (best_distance < own_distance) | ((best_distance == own_distance) & (best < own))
            labels[rows[switch]], distances[rows[switch]] = best[switch], best_distance[switch]
            multiply_adds += len(rows) * len(candidates) * d
    return KMeansResult(labels=labels.cpu().numpy(), iterations=done, multiply_adds=multiply_adds)


def expected_mutual_information(class_sizes: np.ndarray, cluster_sizes: np.ndarray) -> float:
    """E[MI] of two labellings with these class and cluster sizes under random assignment (hypergeometric), nats.

    The same terms as scikit-learn's ``expected_mutual_information``, summed over distinct
    (class size, cluster size) pairs times their multiplicity (module docstring).

    Args:
        class_sizes: (R,) positive ints, the images of each class; they sum to N.
        cluster_sizes: (C,) positive ints, the images of each cluster; they sum to N.
    """
    a_values, a_counts = np.unique(np.asarray(class_sizes, dtype=np.int64), return_counts=True)
    b_values, b_counts = np.unique(np.asarray(cluster_sizes, dtype=np.int64), return_counts=True)
    n = int(np.sum(class_sizes))
    if len(class_sizes) == 1 or len(cluster_sizes) == 1:
        return 0.0
    emi = 0.0
    for a, pairs in zip(a_values.tolist(), a_counts.tolist(), strict=True):
        # n_ij runs up to min(a, b): at most a columns; cluster sizes in chunks so a chunk holds ~1e6 terms
        step = max(1, TERMS_PER_CHUNK // a)
        for start in range(0, len(b_values), step):
            b, counts = b_values[start:start + step], b_counts[start:start + step]
            emi += pairs * float(_emi_terms(a, b.astype(np.float64), n).sum(1) @ counts)
    return emi


#: (cluster sizes x n_ij) terms computed at once by :func:`expected_mutual_information` (about 8 MB each array)
TERMS_PER_CHUNK = 1 << 20


def _emi_terms(a: int, b: np.ndarray, n: int) -> np.ndarray:
    """(len(b), a) float64: scikit-learn's EMI term for class size ``a``, each cluster size ``b`` and
    n_ij = 1 .. a, 0 outside max(1, a + b - N) <= n_ij <= min(a, b)."""
    nij = np.arange(1, a + 1, dtype=np.float64)[None, :]
    col = b[:, None]
    valid = (nij <= col) & (nij >= a + col - n)
    log_term = np.log(n) + np.log(nij) - np.log(a) - np.log(col)
    gln = (gammaln(a + 1) + gammaln(col + 1) + gammaln(n - a + 1) + gammaln(n - col + 1) - gammaln(nij + 1)
           - gammaln(n + 1) - gammaln(np.maximum(a - nij, 0) + 1) - gammaln(np.maximum(col - nij, 0) + 1)
           - gammaln(np.maximum(n - a - col + nij, 0) + 1))
    return np.where(valid, nij / n * log_term * np.exp(np.where(valid, gln, -np.inf)), 0.0)


def _entropy(sizes: np.ndarray) -> float:
    """Entropy of a labelling with these class sizes, nats (scikit-learn's ``_entropy``)."""
    n = float(sizes.sum())
    return float(-np.sum((sizes / n) * (np.log(sizes) - np.log(n))))


def adjusted_mutual_info(truth: np.ndarray, assigned: np.ndarray) -> float:
    """Adjusted mutual information of two labellings: scikit-learn's ``adjusted_mutual_info_score``
    (arithmetic mean of the entropies, its special cases and its eps clamping), with the expected
    mutual information from :func:`expected_mutual_information`.

    Args:
        truth, assigned: (N,) int labels (classes and clusters).

    Returns:
        AMI, at most 1 (1: the same partition; about 0: independent ones).
    """
    from sklearn.metrics import mutual_info_score
    from sklearn.metrics.cluster import contingency_matrix

    truth, assigned = np.asarray(truth), np.asarray(assigned)
    classes, class_sizes = np.unique(truth, return_counts=True)
    clusters, cluster_sizes = np.unique(assigned, return_counts=True)
    if len(classes) == len(clusters) == 1 or len(classes) == len(clusters) == 0:
        return 1.0
    if len(classes) == 1 or len(clusters) == 1:
        return 0.0
    mi = mutual_info_score(truth, assigned, contingency=contingency_matrix(truth, assigned, sparse=True))
    emi = expected_mutual_information(class_sizes, cluster_sizes)
    tiny = np.finfo(np.float64).eps
    denominator = (_entropy(class_sizes) + _entropy(cluster_sizes)) / 2 - emi
    denominator = min(denominator, -tiny) if denominator < 0 else max(denominator, tiny)
    numerator = mi - emi
    numerator = min(numerator, -tiny) if numerator < 0 else max(numerator, tiny)
    return float(numerator / denominator)
