"""Bootstrap intervals: the interval rules and the class resampling that oodml's estimates share.

Every interval oodml reports comes from a bootstrap over *classes* (classes,
not images, are the units a benchmark samples): the level distances and their
adjacent differences (:mod:`oodml.splits.levels`, :mod:`oodml.splits.adjacent`),
the rank agreement of an audit (:mod:`oodml.splits.audit`).  This module holds
the arithmetic once: pure functions, arrays in, numbers out; seeding is the
caller's (:func:`oodml.seeding.rng_for`).

* :func:`percentile_interval`: the plain percentile interval of some draws.
* :func:`shifted_interval`: the percentile interval shifted by the draws' bias
  (their median minus the estimate), for statistics that resampling biases.
* :func:`resample_indices`, :func:`resample_counts`, :func:`with_counts`: with-
  replacement resamples of units (classes), as indices or as counts, and a set
  of units under a resample; one resample applied to several sets is a
  *paired* bootstrap.
* :func:`paired_ratio_draws`: per level a ratio of unit sums (Recall@1 hits
  over queries of the drawn classes; an episode mean) for several runs under
  the same resamples (:mod:`oodml.comparison`, the board's ranking, :mod:`oodml.reference`).
* :func:`with_draw_spread`: a bootstrap interval widened by the Monte-Carlo error of an estimate that is the
  mean over seeded draws (the class-count-matched curve, :mod:`oodml.matched`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

#: The confidence of every interval oodml reports unless told otherwise.
CONFIDENCE = 0.95


def _finite(draws: np.ndarray) -> np.ndarray:
    draws = np.asarray(draws, dtype=np.float64).ravel()
    return draws[np.isfinite(draws)]


def percentile_interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of ``draws`` (any shape, flattened; NaN and infinite
    draws ignored), as ``(low, high)`` floats; NaNs when no draw is finite."""
    draws = _finite(draws)
    if not len(draws):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail])
    return float(lo), float(hi)


def shifted_interval(estimate: float, draws: np.ndarray, confidence: float = CONFIDENCE,
                     bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """The percentile interval of ``draws`` shifted by their bias, clipped to ``bounds``.

    Resampling classes with replacement duplicates some, which biases many
    statistics (a Fréchet distance of a set with duplicates is larger; a rank
    correlation is pulled towards its extremes), so the raw percentile interval
    may not even contain the estimate.  The interval returned is
    ``estimate - (median - low)`` .. ``estimate + (high - median)``: the
    spread of the draws around their median, placed around the estimate, so it
    always contains it (before clipping).

    Args:
        estimate: the statistic on the full sample.
        draws: its bootstrap draws (any shape, flattened); NaN and infinite draws are ignored.
        bounds: ``(low, high)`` the statistic's range, e.g. ``(0, inf)`` for a distance, ``(-1, 1)`` for a
            correlation.

    Returns:
        ``(low, high)`` in the estimate's units; NaNs when no draw is finite or the estimate is not finite.
    """
    draws = _finite(draws)
    if not len(draws) or not math.isfinite(estimate):
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    lo, mid, hi = np.quantile(draws, [tail, 0.5, 1 - tail])
    return max(estimate - (mid - lo), bounds[0]), min(estimate + (hi - mid), bounds[1])


def resample_indices(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap resamples of ``n`` units: (draws, n) int64 unit indices in ``[0, n)``, drawn with replacement,
    uniformly (row ``b`` is resample ``b``)."""
    return rng.integers(0, n, size=(draws, n))


def resample_counts(n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` units occurs in each of ``draws`` bootstrap resamples (:func:`resample_indices`):
    (draws, n) int64, every row summing to ``n``."""
    idx = resample_indices(n, draws, rng)
    counts = np.zeros((draws, n), dtype=np.int64)
    np.add.at(counts, (np.arange(draws)[:, None], idx), 1)
    return counts


def with_counts(members: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A set of units under one resample: each of ``members`` (unit indices) repeated as often as ``counts``
    (one row of :func:`resample_counts`) says; units it drew 0 times are left out.

    Applying one row of counts to several sets is the *paired* bootstrap: a unit the sets share carries the
    same weight in each, so a statistic's difference between them varies only through what differs.
    """
    members = np.asarray(members, dtype=np.int64)
    return np.repeat(members, counts[members])


def paired_ratio_draws(levels: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], draws: int,
                       rng: np.random.Generator) -> np.ndarray:
    """A paired bootstrap of per-unit ratios, level by level: (runs, levels, draws) float64.

    ``levels[l][r]`` is run ``r``'s ``(sums, counts)`` at level ``l``: (n_l,) arrays over the level's units
    (e.g. per test class the Recall@1 hits and the queries, or per few-shot episode its accuracy and 1), in
    the same unit order for every run.  Draw ``b`` resamples each level's units once with replacement
    (:func:`resample_indices`, levels in the order given, one ``rng`` call per level) and applies that
    resample to every run: entry ``[r, l, b]`` is ``sum(sums) / sum(counts)`` over the drawn units (NaN when
    they hold no count).  The leaderboard's ranking bootstrap is the mean over levels of this with
    ``rng = default_rng(seed)`` and levels sorted.
    """
    runs = len(levels[0]) if levels else 0
    out = np.empty((runs, len(levels), draws), dtype=np.float64)
    for at, per_run in enumerate(levels):
        idx = resample_indices(len(per_run[0][1]), draws, rng)
        for r, (sums, counts) in enumerate(per_run):
            drawn = np.asarray(counts, dtype=np.float64)[idx].sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[r, at] = np.asarray(sums, dtype=np.float64)[idx].sum(1) / drawn
            out[r, at][drawn == 0] = np.nan
    return out


def with_draw_spread(estimate: float, interval: tuple[float, float], draw_values: np.ndarray,
                     confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A bootstrap ``interval`` of ``estimate`` (the mean of ``draw_values`` over D seeded draws) widened by the
    draws' spread: their standard error ``se = z sd / sqrt(D)`` (z the normal quantile of ``confidence``; 0
    for fewer than 2 draws) added in quadrature to each side, ``low = m - sqrt((m - low)^2 + se^2)``,
    ``high = m + sqrt((high - m)^2 + se^2)``.

    Args:
        estimate: the mean over draws (or a difference of two such means).
        interval: ``(low, high)`` of the bootstrap, in the estimate's units (NaN stays NaN).
        draw_values: (D,) the estimate of each draw (or each draw's paired difference).

    Returns:
        ``(low, high)`` floats.
    """
    values = np.asarray(draw_values, dtype=np.float64).ravel()
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    se = z * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    low, high = (float(x) for x in interval)
    return estimate - math.hypot(estimate - low, se), estimate + math.hypot(high - estimate, se)
