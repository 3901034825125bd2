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
(:func:`episode_classes`, :func:`matched_episode`), its support and its queries alike.

``oodml evaluate`` and the leaderboard's verifier score a level through the same functions
(:func:`level_draws`, :func:`class_sums`, :func:`matched_episode`); a run's or an entry's matched scores as
per-draw, per-class records are a :class:`MatchedRecords`, and several runs' are compared (``oodml compare``,
the board's ranking) through one paired class bootstrap, :func:`paired_matched_draws`, whose interval is
widened by the draws' spread as above (:func:`oodml.stats.with_draw_spread`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import OodmlError
from .knn import MAX_PRUNED_K, knn_chunks
from .metrics import _per_query
from .stats import paired_ratio_draws, percentile_interval, with_draw_spread

if TYPE_CHECKING:
    from .splits import SplitSet

#: draws per level unless asked otherwise (``--match-draws``)
DEFAULT_DRAWS = 20
#: class-bootstrap resamples behind the matched intervals
BOOTSTRAP_DRAWS = 1000


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


def search_depth(labels: np.ndarray, ks: Sequence[int]) -> int:
    """The neighbours :func:`matched_per_query` first searches each row of a level for: twice the deepest
    query's need (max(K, R)) and some, at least ``MAX_PRUNED_K`` (the pruned search costs little more up to its
    limit), at most N - 1; deeper only when a draw's kept neighbours run short."""
    _, counts = np.unique(labels, return_counts=True)
    depth = max(max(ks), int(counts.max()) - 1)
    return min(len(labels) - 1, max(2 * depth + 8, MAX_PRUNED_K))


def matched_per_query(embeddings: np.ndarray, labels: np.ndarray, subsets: Sequence[np.ndarray],
                      ks: Sequence[int], neighbours: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """Per-query retrieval metrics of every draw, from one search of the whole level.

    Args:
        embeddings: (N, d) float array, the level's test images; labels: (N,) their int labels.
        subsets: per draw, the labels it keeps.
        ks: the K of ``recall@K``.
        neighbours: the level's search when it was already run (each row's first neighbours, best first, as
            :func:`oodml.metrics.per_query_and_neighbours` keeps them, :func:`search_depth` wide or wider);
            searched here when None or too shallow for a draw.

    Returns:
        Per draw, as :func:`oodml.metrics.per_query_metrics` (``map_depth=None``) returns for
        ``embeddings[keep], labels[keep]``, except that ``"query"`` holds rows of ``embeddings``; a subset of
        every label gives the whole level's.
    """
    x, y = torch.as_tensor(embeddings), np.asarray(labels)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    keeps = [np.isin(y, subset) for subset in subsets]
    k = search_depth(y, ks)
    while True:  # deep enough that every query of every draw finds its depth among its kept neighbours
        if neighbours is None or neighbours.shape[1] < k:
            neighbours = torch.cat([nb for _, nb in knn_chunks(x, k)]).cpu().numpy()
        k = neighbours.shape[1]
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
    return (mean, *with_draw_spread(mean, percentile_interval(boot / len(per_draw)), values))


# --- one run's matched records, and the paired bootstrap of several ------------------------------------

def class_sums(per_query: dict[str, np.ndarray], labels: np.ndarray, class_labels: Sequence[int]
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per class, its retrieval queries and each per-query metric summed over them.

    Args:
        per_query: :func:`matched_per_query` (or :func:`oodml.metrics.per_query_metrics`) output: ``"query"``
            rows of ``labels`` and a (Q,) value per query of each metric.
        labels: (M,) int labels of the rows ``"query"`` indexes.
        class_labels: (C,) the labels of the classes to sum over (a level's test classes), every query's
            among them.

    Returns:
        ``(queries, sums)``: (C,) int64 query counts and metric -> (C,) float64 sums, in ``class_labels`` order
        (0 for a class without queries: one left out of a matched draw).
    """
    position = {int(c): k for k, c in enumerate(class_labels)}
    query_class = np.array([position[int(y)] for y in np.asarray(labels)[per_query["query"]]], dtype=np.int64)
    n = len(position)
    return (np.bincount(query_class, minlength=n),
            {m: np.bincount(query_class, weights=v, minlength=n) for m, v in per_query.items() if m != "query"})


def level_draws(embeddings: np.ndarray, labels: np.ndarray, classes: Sequence[str], class_index: dict[str, int],
                where: tuple[str, int], setting: tuple[int, int], ks: Sequence[int],
                neighbours: np.ndarray | None = None
                ) -> tuple[dict[str, np.ndarray], list[tuple[list[str], dict[str, np.ndarray]]]]:
    """A level scored on its whole test set and on each of its D matched draws of N classes, from one search
    (:func:`matched_per_query`): what ``oodml evaluate`` and the leaderboard's verifier both run.

    Args:
        embeddings: (M, d) the level's test images; labels: (M,) their int labels.
        classes: the level's test class names; class_index: class name -> label.
        where: ``(split digest, level number)``, which seed the draws (:func:`draw_classes`).
        setting: ``(N, D)``.
        neighbours: the level's search, when it was already run (:func:`matched_per_query`).

    Returns:
        ``(whole, per draw [(its classes, its per-query metrics)])``, each per-query dict as
        :func:`matched_per_query` returns it (``"query"``: rows of ``embeddings``).
    """
    digest, level = where
    n, draws = setting
    chosen = [draw_classes(digest, level, d, classes, n) for d in range(draws)]
    subsets = [np.array([class_index[c] for c in names]) for names in [classes, *chosen]]
    whole, *per_draw = matched_per_query(embeddings, labels, subsets, ks, neighbours)
    return whole, list(zip(chosen, per_draw, strict=True))


def matched_episode(where: tuple[str, int, int, int], support_labels: np.ndarray, query_labels: np.ndarray,
                    ways: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An episode restricted to ``ways`` of its classes (:func:`episode_classes`), support and queries alike.

    Args:
        where: ``(split digest, level, shots, episode index)``, which seed the choice.
        support_labels, query_labels: (S,), (Q,) the episode's labels 0..n-1 (:func:`oodml.protocol.episode_split`).

    Returns:
        ``(support kept (S,) bool, their labels 0..ways-1, queries kept (Q,) bool, their labels)``.
    """
    digest, level, shots, episode = where
    n_ways = int(support_labels.max()) + 1
    keep = episode_classes(digest, level, shots, episode, range(n_ways), ways)
    s_in, q_in = np.isin(support_labels, keep), np.isin(query_labels, keep)
    relabel = np.full(n_ways, -1)
    relabel[keep] = np.arange(len(keep))
    return s_in, relabel[support_labels[s_in]], q_in, relabel[query_labels[q_in]]


@dataclass
class MatchedRecords:
    """One run's class-count-matched scores as records per draw and class: what its intervals, the
    comparison of runs (:mod:`oodml.comparison`) and the leaderboard's ranking resample.

    Attributes:
        n_classes, draws: N (classes per draw) and D (draws per level).
        subsets: level -> (D, N) int64, each draw's classes as positions among the level's C test classes
            (in the order the holder states: ``Level.test_classes`` for the verifier, sorted names for a
            comparison).
        queries: level -> (D, C) float64, per draw the retrieval queries of each class (0 for one it left out).
        sums: metric -> level -> (D, C) float64, likewise the metric summed over each class's queries.
        episodes: (shots, adaptation, metric) -> level -> episode index -> value on the N-way episodes.
    """

    n_classes: int
    draws: int
    subsets: dict[int, np.ndarray]
    queries: dict[int, np.ndarray]
    sums: dict[str, dict[int, np.ndarray]]
    episodes: dict[tuple[int, str, str], dict[int, dict[int, float]]] = field(default_factory=dict)

    def draw_values(self, metric: str, level: int) -> np.ndarray:
        """(D,) the metric of each draw of ``level``: its classes' sums over their queries."""
        return self.sums[metric][level].sum(1) / self.queries[level].sum(1)

    def value(self, metric: str, level: int) -> float:
        """The matched value of ``level``: the mean over its draws."""
        return float(self.draw_values(metric, level).mean())

    def interval(self, metric: str, level: int) -> tuple[float, float, float]:
        """``(value, low, high)`` of ``level`` by :func:`matched_interval` (as ``summary.json`` states it)."""
        per_draw = [(p, self.sums[metric][level][d][p], self.queries[level][d][p])
                    for d, p in enumerate(self.subsets[level])]
        return matched_interval(per_draw, self.queries[level].shape[1])

    def reordered(self, order: dict[int, np.ndarray]) -> MatchedRecords:
        """The records with each level's classes put in another order: ``order[level]`` (C,) the old position
        of each new one (levels without an order are left out)."""
        back = {lv: np.argsort(o) for lv, o in order.items()}
        return MatchedRecords(
            self.n_classes, self.draws, {lv: np.sort(back[lv][s], axis=1) for lv, s in self.subsets.items()
                                         if lv in order},
            {lv: q[:, order[lv]] for lv, q in self.queries.items() if lv in order},
            {m: {lv: s[:, order[lv]] for lv, s in by.items() if lv in order} for m, by in self.sums.items()},
            self.episodes)


def paired_matched_draws(runs: Sequence[MatchedRecords], metric: str, levels: Sequence[int], draws: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The matched values of several runs and their paired class bootstrap.

    Every (run, matched draw) is one "run" of :func:`oodml.stats.paired_ratio_draws`: bootstrap draw ``b``
    resamples each level's *full* test-class list once, with replacement, and applies that one resample to
    every matched draw of every run (the draws of a level share most of their classes, so one resample keeps
    their overlap); the D draws are then averaged.  The runs must hold the same draws (same N, D, classes in
    one order).

    Returns:
        ``(per_draw, boot)``: (R, D, L) each matched draw's value, and (R, L, draws) the bootstrap of each
        level's matched value (mean over the D draws); combine an interval of their percentiles with the
        draws' spread (:func:`oodml.stats.with_draw_spread`).
    """
    d = runs[0].draws
    units = [[(run.sums[metric][lv][k], run.queries[lv][k]) for run in runs for k in range(d)] for lv in levels]
    boot = paired_ratio_draws(units, draws, rng).reshape(len(runs), d, len(levels), draws).mean(1)
    per_draw = np.stack([np.stack([run.draw_values(metric, lv) for lv in levels], axis=1) for run in runs])
    return per_draw, boot
