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

Metrics (one table, :data:`METRICS`: name, direction, what each needs, definition): ``recall@K`` (share of
queries with a same-class item among their K nearest); ``r_precision`` (hits in the top R, over R);
``map@r`` ((1/R) x sum over i <= R of precision@i at each hit; Musgrave et al., *A Metric Learning
Reality Check*); ``map@1000`` (the same sum over the first 1000 neighbours,
still divided by R; ooDML's mAP@1000 divides by R + 1 and, with fewer than
1000 neighbours, counts the padding as hits, so its values are not comparable);
``nmi`` and ``ami`` (k-means with as many clusters as classes, fixed seed,
scored as scikit-learn scores them; :mod:`oodml.clustering`).

The k-nearest-neighbour search (:mod:`oodml.knn`) is exact and computes each
block of the symmetric similarity matrix once, on the embeddings' device; memory
stays bounded (N x k neighbour buffers and a few score blocks) at
Stanford-Online-Products scale.  No padding can be counted as a hit because the
search never returns more neighbours than exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .clustering import adjusted_mutual_info, kmeans
from .errors import OodmlError
from .knn import knn_chunks

MAP_DEPTH = 1000
CLUSTERING_SEED = 0  # the k-means seed of nmi and ami

#: The version of the metrics' definitions above (and of :mod:`oodml.knn`'s ordering and
#: :mod:`oodml.clustering`'s k-means).  Results and leaderboard entries record it in their protocol card
#: (:func:`oodml.protocol.protocol_card`); numbers of different versions are not comparable.  Bump it, and
#: add the new version's digest to :data:`METRICS_DIGESTS`, whenever a definition changes what it returns.
METRICS_VERSION = 1
#: version -> sha256 of the definitions' outputs, rounded to 6 decimals, on the seeded case of
#: tests/test_metric_definitions.py; that test fails when a definition changes and the version does not.
#: Append only: a digest once published stays what its version computed.
METRICS_DIGESTS = {1: "dfb91142265cd7765de42c919363ec056ae29753f65bd0c07aecd3d2d7ccef80"}


@dataclass(frozen=True)
class Metric:
    """One metric that :func:`retrieval_metrics` reports, ``evaluate`` records and the leaderboard re-scores.

    Attributes:
        name: as reported; ``recall@k`` stands for one metric per K of ``ks`` (``recall@1``, ``recall@2``, ...).
        direction: ``"higher"`` or ``"lower"``: which is better.
        needs: ``"knn"`` (the neighbour search of :func:`per_query_metrics`, a value per query) or
            ``"clustering"`` (k-means over the level, ``retrieval_metrics(..., clustering=True)``; no value per query).
        definition: what it is, in the words the protocol card records (:func:`oodml.protocol.protocol_card`).
    """

    name: str
    direction: str
    needs: str
    definition: str


#: The metrics, in the order results report them.  **A new metric goes here** (and its computation in
#: :func:`_per_query` or :func:`retrieval_metrics`); :func:`metric_names` lists them for evaluate's ``--metric``,
#: the results table and the leaderboard's re-scoring (``oodml.leaderboard.verify.RETRIEVAL``).  A change to a
#: definition is a new :data:`METRICS_VERSION`.
METRICS: tuple[Metric, ...] = (
    Metric("recall@k", "higher", "knn", "hit rate at k: 1 if a same-class image is among the k nearest, else 0"),
    Metric("r_precision", "higher", "knn",
           "same-class images among the R nearest, over R (R: the other images of the query's class)"),
    Metric("map@r", "higher", "knn",
           "Musgrave et al. 2020: (1/R) x sum over ranks i <= R holding a same-class image of precision@i"),
    Metric(f"map@{MAP_DEPTH}", "higher", "knn",
           f"as map@r over the first {MAP_DEPTH} neighbours (all if fewer), still divided by R"),
    Metric("nmi", "higher", "clustering", "scikit-learn normalized_mutual_info_score, average_method arithmetic"),
    Metric("ami", "higher", "clustering", "scikit-learn adjusted_mutual_info_score, average_method arithmetic"),
)


def metric_names(ks: Sequence[int] = (1, 2, 4, 8), *, map_depth: int | None = MAP_DEPTH,
                 clustering: bool = True) -> list[str]:
    """The names :func:`retrieval_metrics` reports with these arguments, in :data:`METRICS`' order: one
    ``recall@K`` per K, ``map@<map_depth>`` unless ``map_depth`` is None, ``nmi`` and ``ami`` with ``clustering``."""
    names = []
    for metric in METRICS:
        if metric.name == "recall@k":
            names += [f"recall@{k}" for k in ks]
        elif metric.name.startswith("map@") and metric.name != "map@r":
            names += [f"map@{map_depth}"] if map_depth else []
        elif metric.needs == "knn" or clustering:
            names.append(metric.name)
    return names


def metric(name: str) -> Metric:
    """The :data:`METRICS` entry of a reported name (``recall@4`` is ``recall@k``'s, ``map@500`` ``map@1000``'s).

    Raises:
        OodmlError: a name no metric reports, with the names that exist.
    """
    for entry in METRICS:
        stem = entry.name.partition("@")[0]
        if name == entry.name or (entry.name in ("recall@k", f"map@{MAP_DEPTH}") and name.startswith(f"{stem}@")
                                  and name[len(stem) + 1:].isdigit()):
            return entry
    raise OodmlError(f"unknown metric {name!r}; the metrics are {', '.join(m.name for m in METRICS)}")


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


def per_query_metrics(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                      ks: Sequence[int] = (1, 2, 4, 8), normalize: bool = True,
                      device: str | torch.device | None = None,
                      map_depth: int | None = MAP_DEPTH) -> dict[str, np.ndarray]:
    """The retrieval metrics of every query, for confidence intervals and per-class breakdowns.

    Returns ``{"query": int64 row indices of the queries (R >= 1), "recall@1": float64 values, ...}``,
    every array of length Q; :func:`retrieval_metrics` is their mean.  Arguments as there.
    """
    return per_query_and_neighbours(embeddings, labels, ks=ks, normalize=normalize, device=device,
                                    map_depth=map_depth)[0]


def per_query_and_neighbours(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                             ks: Sequence[int] = (1, 2, 4, 8), normalize: bool = True,
                             device: str | torch.device | None = None, map_depth: int | None = MAP_DEPTH,
                             keep: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`per_query_metrics` and, from the same search, every row's first ``keep`` neighbours: what the
    class-count-matched draws restrict (:func:`oodml.matched.level_draws`), so a level is searched once.

    Returns:
        ``(per query, neighbours)``: as :func:`per_query_metrics`, and (N, min(keep, N - 1)) int64 row indices,
        nearest first, ties to the lower index (the prefix of any deeper search's).
    """
    x, y = _check(embeddings, labels)
    if device is not None:
        x, y = x.to(device), y.to(device)
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    queries = r > 0
    if not queries.any():
        raise OodmlError("no class has two or more samples, so no query has a relevant neighbour")
    k = min(x.shape[0] - 1, max(max(ks), int(r.max()), map_depth or 0, keep))
    parts: dict[str, list[torch.Tensor]] = {}
    kept = []
    for start, neighbours in knn_chunks(x, k, normalize=normalize):
        kept.append(neighbours[:, :keep])
        rows = slice(start, start + neighbours.shape[0])
        chosen = queries[rows]
        hits = y[neighbours[chosen]] == y[rows][chosen][:, None]
        for name, values in _per_query(hits, r[rows][chosen], ks, map_depth).items():
            parts.setdefault(name, []).append(values)
    out = {name: torch.cat(v).cpu().numpy() for name, v in parts.items()}
    return {"query": torch.nonzero(queries).flatten().cpu().numpy(), **out}, torch.cat(kept).cpu().numpy()


def summary_metrics(per_query: dict[str, np.ndarray], ks: Sequence[int] = (1, 2, 4, 8),
                    map_depth: int | None = MAP_DEPTH) -> dict[str, float]:
    """The mean of each per-query metric (:func:`per_query_metrics` output) and ``"queries"``, their number."""
    out: dict[str, float] = {name: float(per_query[name].mean())
                             for name in metric_names(ks, map_depth=map_depth, clustering=False)}
    out["queries"] = int(len(per_query["query"]))
    return out


def clustering_metrics(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                       normalize: bool = True, device: str | torch.device | None = None,
                       seed: int = CLUSTERING_SEED) -> dict[str, float]:
    """``{"nmi": ..., "ami": ...}``: k-means with as many clusters as classes (arguments as
    :func:`retrieval_metrics`)."""
    from sklearn.metrics import normalized_mutual_info_score

    x, y = _check(embeddings, labels)
    if device is not None:
        x, y = x.to(device), y.to(device)
    points = torch.nn.functional.normalize(x.float(), dim=1) if normalize else x.float()
    assign = kmeans(points, len(torch.unique(y)), seed=seed).labels
    truth = y.cpu().numpy()
    return {"nmi": float(normalized_mutual_info_score(truth, assign)), "ami": adjusted_mutual_info(truth, assign)}


def retrieval_metrics(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                      ks: Sequence[int] = (1, 2, 4, 8), normalize: bool = True,
                      device: str | torch.device | None = None, clustering: bool = True,
                      map_depth: int | None = MAP_DEPTH, seed: int = CLUSTERING_SEED) -> dict[str, float]:
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
    out = summary_metrics(per_query, ks, map_depth)
    if clustering:
        out.update(clustering_metrics(embeddings, labels, normalize=normalize, device=device, seed=seed))
    return out
