"""Retrieval and clustering metrics for embeddings, every sample a query against all others.

Conventions (those of pytorch-metric-learning's ``AccuracyCalculator`` with
``k="max_bin_count"``, which the test suite checks to 1e-6):

* the query itself is excluded *by index*, not by dropping the first column of
  the ranking, so duplicate embeddings cannot shift it; ties between equally
  similar references go to the lower index;
* embeddings are L2-normalised unless ``normalize=False`` (then neighbours are
  by Euclidean distance);
* R is the number of *other* samples of the query's class; queries with R = 0
  are left out as queries but stay in the reference set as distractors.

Metrics: ``recall@K`` (share of queries with a same-class item among their K
nearest); ``r_precision`` (hits in the top R, over R); ``map@r`` ((1/R) x sum
over i <= R of precision@i at each hit; Musgrave et al., *A Metric Learning
Reality Check*); ``map@1000`` (the same sum over the first 1000 neighbours,
still divided by R; ooDML's mAP@1000 divides by R + 1 and, with fewer than
1000 neighbours, counts the padding as hits, so its values are not comparable);
``nmi`` and ``ami`` (k-means with as many clusters as classes, fixed seed,
scored with scikit-learn).

The k-nearest-neighbour search is exact and runs in query chunks on the
embeddings' device, so memory stays bounded (about ``chunk x N`` scores) at
Stanford-Online-Products scale; no padding can be counted as a hit because the
search never returns more neighbours than exist.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .errors import OodmlError

MAP_DEPTH = 1000


def _check(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    x = torch.as_tensor(embeddings)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if x.ndim != 2 or not x.is_floating_point():
        raise OodmlError(f"embeddings must be a 2-D float array (samples x dimensions), got {tuple(x.shape)} "
                         f"{x.dtype}")
    if y.shape != (x.shape[0],):
        raise OodmlError(f"{y.shape[0] if y.ndim else 0} labels for {x.shape[0]} embeddings")
    bad = (~torch.isfinite(x)).any(1)
    if bad.any():
        raise OodmlError(f"embeddings contain NaN or inf in {int(bad.sum())} of {x.shape[0]} rows "
                         f"(first at row {int(bad.nonzero()[0, 0])})")
    if x.shape[0] < 2:
        raise OodmlError("retrieval metrics need at least 2 samples")
    return x, y.long()


def _topk_lowest_index_ties(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores per row, ordered by score descending then index ascending.

    ``torch.topk`` breaks ties arbitrarily.  Inside the top k, a stable sort by
    index then score fixes the order; rows where the k-th value is tied with
    values outside the top k (rare with float scores, common with duplicates)
    are redone exactly, keeping the lowest indices.
    """
    extra = min(k + 1, scores.shape[1])
    values, idx = torch.topk(scores, extra, dim=1, sorted=True)
    kth = values[:, k - 1:k]
    # The k-th value is tied outside the top k exactly when the (k+1)-th equals it.
    boundary = (values[:, k] == values[:, k - 1] if extra > k
                else torch.zeros(len(scores), dtype=torch.bool, device=scores.device))
    idx = idx[:, :k]
    if boundary.any():
        rows = boundary.nonzero()[:, 0]
        sub, sub_kth = scores[rows], kth[rows]
        greater, equal = sub > sub_kth, sub == sub_kth
        take = greater | (equal & (equal.cumsum(1) <= k - greater.sum(1, keepdim=True)))
        idx[rows] = take.nonzero()[:, 1].view(len(rows), k)
    idx = torch.sort(idx, dim=1).values
    order = torch.sort(-scores.gather(1, idx), dim=1, stable=True).indices
    return idx.gather(1, order)


def knn_chunks(embeddings: torch.Tensor, k: int, *, normalize: bool = True,
               chunk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Exact k nearest neighbours of every row among the *other* rows, in query chunks.

    Yields ``(start, indices)`` with ``indices`` of shape (chunk, k), int64, for
    rows ``start .. start + chunk``.  Cosine similarity on L2-normalised rows
    (``normalize=True``) or Euclidean distance; the query is excluded by index;
    ties go to the lower index.  ``k`` is capped at N - 1, so no padding exists.
    """
    x = embeddings.float()
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    n = x.shape[0]
    k = min(k, n - 1)
    chunk = chunk or max(1, min(n, (64 << 20) // max(n, 1)))  # about 256 MB of float32 scores per chunk
    sq = (x * x).sum(1)
    for start in range(0, n, chunk):
        q = x[start:start + chunk]
        scores = q @ x.T
        if not normalize:
            scores = 2 * scores - sq[None, :] - sq[start:start + chunk, None]  # minus squared distance
        rows = torch.arange(q.shape[0], device=x.device)
        scores[rows, rows + start] = -torch.inf
        yield start, _topk_lowest_index_ties(scores, k)


def knn(embeddings: torch.Tensor, k: int, *, normalize: bool = True, chunk: int | None = None) -> torch.Tensor:
    """All of :func:`knn_chunks` at once: (N, min(k, N - 1)) neighbour indices."""
    return torch.cat([idx for _, idx in knn_chunks(embeddings, k, normalize=normalize, chunk=chunk)])


def _per_query(hits: torch.Tensor, r: torch.Tensor, ks: Sequence[int],
               map_depth: int | None) -> dict[str, torch.Tensor]:
    """Per-query values from a (Q, k) boolean hit matrix and each query's R (all R >= 1)."""
    k = hits.shape[1]
    ranks = torch.arange(1, k + 1, device=hits.device, dtype=torch.float64)
    precision_at_hit = hits.cumsum(1).double() / ranks * hits
    within_r = ranks[None, :] <= r[:, None]
    r64 = r.double()
    out = {f"recall@{kk}": hits[:, :kk].any(1).double() for kk in ks}
    out["r_precision"] = (hits & within_r).sum(1).double() / r64
    out["map@r"] = (precision_at_hit * within_r).sum(1) / r64
    if map_depth:
        out[f"map@{map_depth}"] = precision_at_hit[:, :map_depth].sum(1) / r64
    return out


def kmeans(x: torch.Tensor, clusters: int, *, iterations: int = 20, seed: int = 0, chunk: int = 4096) -> np.ndarray:
    """Lloyd's k-means on the embeddings' device, centroids initialised from a seeded sample of rows.

    Returns cluster assignments, int64 (N,).
    """
    generator = torch.Generator().manual_seed(seed)
    init = torch.randperm(x.shape[0], generator=generator)[:clusters].to(x.device)
    centroids = x[init].clone()
    assign = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(iterations):
        c_sq = (centroids * centroids).sum(1)
        for start in range(0, x.shape[0], chunk):
            block = x[start:start + chunk]
            assign[start:start + chunk] = (c_sq[None, :] - 2 * block @ centroids.T).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=clusters).to(x.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
    return assign.cpu().numpy()


def per_query_metrics(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                      ks: Sequence[int] = (1, 2, 4, 8), normalize: bool = True,
                      device: str | torch.device | None = None,
                      map_depth: int | None = MAP_DEPTH) -> dict[str, np.ndarray]:
    """The retrieval metrics of every query, for confidence intervals and per-class breakdowns.

    Returns ``{"query": int64 row indices of the queries (R >= 1), "recall@1": float64 values, ...}``,
    every array of length Q; :func:`retrieval_metrics` is their mean.  Arguments as there.
    """
    x, y = _check(embeddings, labels)
    if device is not None:
        x, y = x.to(device), y.to(device)
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    queries = r > 0
    if not queries.any():
        raise OodmlError("no class has two or more samples, so no query has a relevant neighbour")
    k = min(x.shape[0] - 1, max(max(ks), int(r.max()), map_depth or 0))
    parts: dict[str, list[torch.Tensor]] = {}
    for start, neighbours in knn_chunks(x, k, normalize=normalize):
        rows = slice(start, start + neighbours.shape[0])
        keep = queries[rows]
        hits = y[neighbours[keep]] == y[rows][keep][:, None]
        for name, values in _per_query(hits, r[rows][keep], ks, map_depth).items():
            parts.setdefault(name, []).append(values)
    out = {name: torch.cat(v).cpu().numpy() for name, v in parts.items()}
    return {"query": torch.nonzero(queries).flatten().cpu().numpy(), **out}


def retrieval_metrics(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                      ks: Sequence[int] = (1, 2, 4, 8), normalize: bool = True,
                      device: str | torch.device | None = None, clustering: bool = True,
                      map_depth: int | None = MAP_DEPTH, seed: int = 0) -> dict[str, float]:
    """Retrieval metrics with every sample as a query against all others.

    Args:
        embeddings: (N, d) float array or tensor.
        labels: (N,) int class labels.
        ks: the K of ``recall@K``.
        normalize: L2-normalise rows (cosine retrieval); else Euclidean.
        device: where to run the search (default: the embeddings' device).
        clustering: also compute ``nmi`` and ``ami`` (k-means; the costly part at scale).
        map_depth: depth of ``map@<depth>`` (default 1000); ``None`` skips it, so the
            search needs only max(K, R) neighbours instead of 1000.

    Returns:
        ``{"recall@1": ..., "recall@2": ..., "r_precision": ..., "map@r": ...,
        "map@1000": ..., "nmi": ..., "ami": ...}`` as floats in [0, 1] (and
        ``"queries"``, the number of queries with R >= 1).

    Raises:
        OodmlError: for a non-2-D or non-float input, NaN/inf rows, label/row mismatch.
    """
    per_query = per_query_metrics(embeddings, labels, ks=ks, normalize=normalize, device=device,
                                  map_depth=map_depth)
    queries = per_query.pop("query")
    out: dict[str, float] = {name: float(values.mean()) for name, values in per_query.items()}
    out["queries"] = int(len(queries))
    if clustering:
        from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

        x, y = _check(embeddings, labels)
        if device is not None:
            x, y = x.to(device), y.to(device)
        points = torch.nn.functional.normalize(x.float(), dim=1) if normalize else x.float()
        assign = kmeans(points, len(torch.unique(y)), seed=seed)
        truth = y.cpu().numpy()
        out["nmi"] = float(normalized_mutual_info_score(truth, assign))
        out["ami"] = float(adjusted_mutual_info_score(truth, assign))
    return out
