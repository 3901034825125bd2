"""Class-count-matched scoring: every level scored on test sets of the same number of classes.

Recall@k and n-way accuracy rise when a level has fewer test classes to confuse, so a level with fewer
classes looks easier than its shift makes it.  oodml therefore also scores each level on N of its test
classes, N the same at every level (by default the smallest test-class count over *all* levels of the split
set, so a run of some levels and a run of all give the same matched numbers), in D draws:

* draw ``d`` of level ``L`` keeps the classes chosen by a generator seeded from the split set's digest, ``L``
  and ``d`` (:func:`draw_classes`): the same draws on every machine, for every model;
* a draw's retrieval is the level's ranking restricted to the images of its classes (gallery and queries
  both): exactly a search among those images (:func:`matched_per_query`, checked against one in the tests);
* the matched value of a level is the mean over its D draws;
* its 95% interval combines two sources (:func:`matched_interval`): the class bootstrap (the level's test
  classes resampled with replacement, 1000 times, each resample applied to every draw's per-class sums, the
  draws averaged; percentile interval) and the spread of the draws (the Monte-Carlo standard error of their
  mean, sd / sqrt(D)), added in quadrature to each side: ``low = m - sqrt((m - b_low)^2 + (1.96 se)^2)``,
  ``high = m + sqrt((b_high - m)^2 + (1.96 se)^2)``.

Few-shot episodes are matched by ways: each episode restricted to a seeded subset of N of its classes
(:func:`episode_classes`), its support and its queries alike.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import OodmlError
from .knn import MAX_PRUNED_K, knn_chunks
from .metrics import _per_query

if TYPE_CHECKING:
    from .splits import SplitSet

#: draws per level unless asked otherwise (``--match-draws``)
DEFAULT_DRAWS = 20
#: class-bootstrap resamples behind the matched intervals
BOOTSTRAP_DRAWS = 1000
_Z95 = 1.959963984540054


def matched_count(split_set: SplitSet, classes: int | str | None) -> int | None:
    """N, the test classes of every matched draw: ``"min"`` (the smallest test-class count over all levels of
    ``split_set``), a number (at most that), or None (``off``: no matching).

    Raises:
        OodmlError: a number below 2 or above the smallest level's count, or anything else.
    """
    if classes is None or classes == "off":
        return None
    smallest = min(len(lv.test_classes) for lv in split_set.levels)
    if classes == "min":
        return smallest
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or not 2 <= classes <= smallest:
        raise OodmlError(f"--match-classes {classes!r}: give a whole number from 2 to {smallest} (the fewest "
                         f"test classes of a level of {split_set.dataset}@{split_set.version}), min, or off")
    return int(classes)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, ("oodml-matched", *parts))).encode()).digest()[:8], "big")


def draw_classes(split_digest: str, level: int, draw: int, classes: Sequence[str], n: int) -> list[str]:
    """The ``n`` classes of draw ``draw`` of ``level`` (in the order of ``classes``), seeded from
    ``split_digest``, ``level`` and ``draw`` only."""
    keep = np.sort(np.random.default_rng(_seed(split_digest, level, draw)).choice(len(classes), n, replace=False))
    return [classes[i] for i in keep]


def episode_classes(split_digest: str, level: int, shots: int, episode: int, classes: Sequence[str],
                    n: int) -> list[str]:
    """The ``n`` ways of a matched few-shot episode: a seeded subset of the episode's ``classes`` (all of
    them when it has at most ``n``), in their order."""
    if len(classes) <= n:
        return list(classes)
    rng = np.random.default_rng(_seed(split_digest, level, f"{shots}-shot", episode))
    return [classes[i] for i in np.sort(rng.choice(len(classes), n, replace=False))]


def matched_per_query(embeddings: np.ndarray, labels: np.ndarray, subsets: Sequence[np.ndarray],
                      ks: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Per-query retrieval metrics of every draw, from one search of the whole level.

    Args:
        embeddings: (N, d) float array, the level's test images; labels: (N,) their int labels.
        subsets: per draw, the labels it keeps.
        ks: the K of ``recall@K``.

    Returns:
        Per draw, as :func:`oodml.metrics.per_query_metrics` (``map_depth=None``) returns for
        ``embeddings[keep], labels[keep]``, except that ``"query"`` holds rows of ``embeddings``; a subset of
        every label gives the whole level's.
    """
    x, y = torch.as_tensor(embeddings), np.asarray(labels)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    keeps = [np.isin(y, subset) for subset in subsets]
    depth = max(max(ks), int(r.max()))
    k = min(len(y) - 1, max(2 * depth + 8, MAX_PRUNED_K))  # the pruned search costs little more up to its limit
    while True:  # deep enough that every query of every draw finds its depth among its kept neighbours
        neighbours = torch.cat([nb for _, nb in knn_chunks(x, k)]).cpu().numpy()
        if k == len(y) - 1 or all(_deep_enough(neighbours, keep, r, ks) for keep in keeps):
            break
        k = min(len(y) - 1, 2 * k)
    return [_draw_per_query(neighbours, keep, y, r, ks) for keep in keeps]


def _depth(keep: np.ndarray, r: np.ndarray, ks: Sequence[int]) -> int:
    """The neighbours a search among the kept rows would return: max(K, R) capped at their count - 1."""
    return min(int(keep.sum()) - 1, max(max(ks), int(r[keep].max())))


def _deep_enough(neighbours: np.ndarray, keep: np.ndarray, r: np.ndarray, ks: Sequence[int]) -> bool:
    rows = np.flatnonzero(keep & (r > 0))
    return bool((keep[neighbours[rows]].sum(1) >= _depth(keep, r, ks)).all())


def _draw_per_query(neighbours: np.ndarray, keep: np.ndarray, y: np.ndarray, r: np.ndarray,
                    ks: Sequence[int]) -> dict[str, np.ndarray]:
    """One draw's per-query metrics: each kept query's first kept neighbours, scored as the metrics do."""
    rows = np.flatnonzero(keep & (r > 0))
    if not len(rows):
        raise OodmlError("a matched draw has no class with two or more images; use a larger --match-classes")
    depth = _depth(keep, r, ks)
    kept = keep[neighbours[rows]]
    order = np.argsort(~kept, axis=1, kind="stable")[:, :depth]   # the kept neighbours, in rank order
    chosen = np.take_along_axis(neighbours[rows], order, axis=1)
    hits = torch.from_numpy(y[chosen] == y[rows][:, None])
    values = _per_query(hits, torch.from_numpy(r[rows]), ks, None)
    return {"query": rows, **{name: v.numpy() for name, v in values.items()}}


def matched_interval(per_draw: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_classes: int,
                     resamples: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float, float]:
    """The matched value of a level and its 95% interval (the module docstring says how it is combined).

    Args:
        per_draw: per draw ``(positions, sums, queries)``: its classes' positions among the level's
            ``n_classes`` test classes, and per class the metric summed over its queries and their count.
        n_classes: the level's test classes (what the class bootstrap resamples).

    Returns:
        ``(mean over draws, low, high)``; the interval is NaN with fewer than 2 classes.
    """
    values = np.array([s.sum() / q.sum() for _, s, q in per_draw])
    mean = float(values.mean())
    if n_classes < 2:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    weights = np.apply_along_axis(np.bincount, 1, rng.integers(0, n_classes, size=(resamples, n_classes)),
                                  minlength=n_classes).astype(np.float64)
    boot = np.zeros(resamples)
    for positions, sums, queries in per_draw:
        w = weights[:, positions]
        total = w @ queries
        boot += np.divide(w @ sums, total, out=np.full(resamples, np.nan), where=total > 0)
    boot = boot[np.isfinite(boot)] / len(per_draw)
    b_low, b_high = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
    spread = _Z95 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return (mean, mean - math.hypot(mean - float(b_low), spread), mean + math.hypot(float(b_high) - mean, spread))
