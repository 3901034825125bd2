"""Searching for train/test class splits of graded shift.

Two algorithms:

* :func:`swap_progression`: a faithful reimplementation of the ooDML procedure
  (centroid-ranked swaps with a short tabu history), and
  :func:`removal_continuation`, its harder continuation by class removal.
* :func:`greedy_levels` (the default): steepest-ascent and steepest-descent
  swaps from a seeded random split, every candidate on a shortlist scored
  exactly, then levels picked at evenly spaced distances along the path, with
  class removal only beyond what swaps reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import OodmlError
from ..shift import frechet_distance
from .scoring import GenericScorer, MeanFID


@dataclass(frozen=True)
class SplitState:
    """One train/test split along a search path.

    Attributes:
        train, test: class names (``swap_progression``) or class indices (``greedy_levels``).
        distance: train-to-test distance of this split.
        swaps: swaps applied from the start (negative along a path of decreasing distance).
        kind: ``"swap"`` or ``"removal"`` (some classes were removed from both sides).
    """

    train: tuple
    test: tuple
    distance: float
    swaps: int = 0
    kind: str = "swap"
    removed: tuple = field(default=())


# --- the ooDML procedure ---------------------------------------------------------------

def _oodml_rankings(train_means: np.ndarray, test_means: np.ndarray, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
    m_train, m_test = train_means.mean(0), test_means.mean(0)
    score_train = np.linalg.norm(train_means - m_test, axis=1) - np.linalg.norm(train_means - m_train, axis=1)
    score_test = np.linalg.norm(test_means - m_train, axis=1) - np.linalg.norm(test_means - m_test, axis=1)
    rank_train, rank_test = np.argsort(score_train, kind="stable"), np.argsort(score_test, kind="stable")
    return (rank_train[::-1], rank_test[::-1]) if inverse else (rank_train, rank_test)


def _pick(ranking: np.ndarray, offset: int, history: list[int], window: int) -> int:
    recent = set(history[-window:]) if window else set()
    for pos in ranking[offset:]:
        if int(pos) not in recent:
            return int(pos)
    raise OodmlError("the ooDML procedure ran out of swap candidates; use fewer swaps per iteration or a "
                     "shorter history")


def swap_progression(train_names: Sequence[str], train_means: np.ndarray, test_names: Sequence[str],
                     test_means: np.ndarray, *, iterations: int = 25, swaps_per_iteration: int = 2,
                     history: int = 5, inverse: bool = False) -> list[SplitState]:
    """The ooDML split progression, one state per iteration.

    Positions in the two lists are fixed and a swap exchanges the contents of a
    train and a test position.  At each iteration the current state is recorded
    (``swaps = iteration * swaps_per_iteration``, negative when ``inverse``)
    with its class-mean FID; then train positions are ranked by
    ``||x - m_test|| - ||x - m_train||`` and test positions by
    ``||x - m_train|| - ||x - m_test||``, ascending (descending when
    ``inverse``), and for ``k = 0 .. swaps_per_iteration - 1`` each side takes,
    scanning its ranking from offset ``k``, the first position not among its
    last ``history`` swapped positions, and the two positions exchange contents.

    Args:
        train_names, test_names: class names in their initial order (ooDML sorted them).
        train_means, test_means: (n_train, d) and (n_test, d) class-mean features.

    Returns:
        ``iterations`` states, the first being the given split.
    """
    names = [list(train_names), list(test_names)]
    means = [np.array(train_means, dtype=np.float64), np.array(test_means, dtype=np.float64)]
    if len(names[0]) != len(means[0]) or len(names[1]) != len(means[1]):
        raise OodmlError("swap_progression: each name needs exactly one class-mean row")
    sign = -1 if inverse else 1
    hist: tuple[list[int], list[int]] = ([], [])
    states = []
    for it in range(iterations):
        states.append(SplitState(tuple(names[0]), tuple(names[1]), frechet_distance(means[0], means[1]),
                                 sign * it * swaps_per_iteration))
        rank_train, rank_test = _oodml_rankings(means[0], means[1], inverse)
        for k in range(swaps_per_iteration):
            p, q = _pick(rank_train, k, hist[0], history), _pick(rank_test, k, hist[1], history)
            hist[0].append(p)
            hist[1].append(q)
            names[0][p], names[1][q] = names[1][q], names[0][p]
            means[0][p], means[1][q] = means[1][q].copy(), means[0][p].copy()
    return states


def removal_continuation(state: SplitState, means_by_name: dict[str, np.ndarray], *, iterations: int = 3,
                         swaps_per_iteration: int = 2, history: int = 5) -> list[SplitState]:
    """The harder continuation by class removal, from a chosen state of :func:`swap_progression`.

    Each iteration picks swap candidates as the progression does and applies the
    swaps tentatively; if the distance does not increase, it undoes them and
    instead removes those classes (train candidates from train, test candidates
    from test).  Returns one state per iteration after ``state``.
    """
    names = [list(state.train), list(state.test)]
    hist: tuple[list[int], list[int]] = ([], [])
    current, states, removed = state.distance, [], list(state.removed)
    for it in range(1, iterations + 1):
        means = [np.stack([means_by_name[n] for n in side]) for side in names]
        rank_train, rank_test = _oodml_rankings(means[0], means[1], inverse=False)
        trial_hist: tuple[list[int], list[int]] = (list(hist[0]), list(hist[1]))
        picks = []
        for k in range(swaps_per_iteration):
            p, q = _pick(rank_train, k, trial_hist[0], history), _pick(rank_test, k, trial_hist[1], history)
            trial_hist[0].append(p)
            trial_hist[1].append(q)
            picks.append((p, q))
        trial = [list(names[0]), list(names[1])]
        for p, q in picks:
            trial[0][p], trial[1][q] = trial[1][q], trial[0][p]
        value = frechet_distance(np.stack([means_by_name[n] for n in trial[0]]),
                                 np.stack([means_by_name[n] for n in trial[1]]))
        if value > current:
            names, hist, kind = trial, trial_hist, "swap"
        else:
            drop_train, drop_test = {p for p, _ in picks}, {q for _, q in picks}
            removed += [names[0][p] for p in sorted(drop_train)] + [names[1][q] for q in sorted(drop_test)]
            names = [[n for i, n in enumerate(names[0]) if i not in drop_train],
                     [n for i, n in enumerate(names[1]) if i not in drop_test]]
            hist = ([], [])  # positions shifted; the tabu window restarts
            kind = "removal"
            value = frechet_distance(np.stack([means_by_name[n] for n in names[0]]),
                                     np.stack([means_by_name[n] for n in names[1]]))
        current = value
        states.append(SplitState(tuple(names[0]), tuple(names[1]), value,
                                 state.swaps + it * swaps_per_iteration, kind, tuple(removed)))
    return states


# --- greedy search ----------------------------------------------------------------------

def _shortlist(screen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.argsort(-screen.max(1), kind="stable")[:k]
    cols = np.argsort(-screen.max(0), kind="stable")[:k]
    return rows, cols


def _climb(scorer: MeanFID | GenericScorer, start: SplitState, direction: int, shortlist: int,
           max_steps: int) -> list[SplitState]:
    """Steepest ascent (``direction=+1``) or descent (-1) by single swaps, exactly scored on a shortlist."""
    train, test = np.array(start.train), np.array(start.test)
    current, path = start.distance, []
    for step in range(1, max_steps + 1):
        rows, cols = _shortlist(direction * scorer.screen(train, test), shortlist)
        candidates = []
        for p in rows:
            for q in cols:
                tr, te = train.copy(), test.copy()
                tr[p], te[q] = test[q], train[p]
                candidates.append((tr, te))
        values = scorer.distances(candidates)
        best = int(np.argmax(direction * values))
        if direction * (values[best] - current) <= 1e-12 * max(abs(current), 1.0):
            break
        train, test = candidates[best]
        current = float(values[best])
        path.append(SplitState(tuple(train), tuple(test), current, direction * step))
    return path


def _remove(scorer: MeanFID | GenericScorer, start: SplitState, target: float, min_per_side: int,
            shortlist: int) -> list[SplitState]:
    """Remove one class from each side per step while it increases the distance, until ``target``.

    The ``4 * shortlist`` single removals per side ranked first by the centroid screen
    are scored exactly; the best train and the best test removal are then
    applied together (keeping the sides equal) if the pair increases the distance.
    """
    train, test = np.array(start.train), np.array(start.test)
    current, path, removed = start.distance, [], list(start.removed)
    while current < target and min(len(train), len(test)) > min_per_side:
        rows, cols = _shortlist(scorer.screen(train, test), 4 * shortlist)
        drop_train = scorer.distances([(np.delete(train, p), test) for p in rows])
        drop_test = scorer.distances([(train, np.delete(test, q)) for q in cols])
        p, q = int(rows[np.argmax(drop_train)]), int(cols[np.argmax(drop_test)])
        new_train, new_test = np.delete(train, p), np.delete(test, q)
        value = scorer.distance(new_train, new_test)
        if value <= current:
            break
        removed += [int(train[p]), int(test[q])]
        train, test, current = new_train, new_test, value
        path.append(SplitState(tuple(train), tuple(test), current, start.swaps, "removal", tuple(removed)))
    return path


def _nearest_increasing(distances: np.ndarray, targets: np.ndarray) -> list[int]:
    """Indices into sorted ``distances`` nearest each target, strictly increasing (no state used twice)."""
    chosen: list[int] = []
    for target in targets:
        lo = chosen[-1] + 1 if chosen else 0
        if lo >= len(distances):
            break
        idx = lo + int(np.argmin(np.abs(distances[lo:] - target)))
        chosen.append(idx)
    return chosen


@dataclass(frozen=True)
class SearchResult:
    """Output of :func:`greedy_levels`.

    Attributes:
        levels: the chosen states, easiest first.
        default: the seeded random starting split (the usual protocol's split).
        path: every state visited by swaps, in increasing distance.
    """

    levels: list[SplitState]
    default: SplitState
    path: list[SplitState]


def greedy_levels(scorer: MeanFID | GenericScorer, num_classes: int, *, levels: int = 8, removal_levels: int = 2,
                  seed: int = 0, shortlist: int = 4, floor: float = 0.5,
                  start: tuple[Sequence[int], Sequence[int]] | None = None) -> SearchResult:
    """Build ``levels`` splits with distances spread evenly from the easiest reachable to the hardest.

    The start is a seeded random split with equal class counts per side (or
    ``start``).  Steepest descent and ascent by single swaps give a path of
    increasing distance; ``levels - removal_levels`` levels are the path states
    nearest evenly spaced targets between its two ends, and ``removal_levels``
    more continue at the same spacing beyond the hardest swap state by removing
    one class from each side per step, never below ``floor`` times the classes
    per side.  Where removal cannot increase the distance, those levels become
    swap levels instead (check ``kind``).  Every step scores a ``shortlist x shortlist`` grid of candidates
    (ranked by the centroid screen) exactly and takes the best.

    Returns:
        :class:`SearchResult` with class indices in its states.
    """
    if levels < 2 or not 0 <= removal_levels < levels - 1:
        raise OodmlError(f"need at least 2 levels and fewer removal levels than levels - 1 "
                         f"(got {levels} levels, {removal_levels} removal levels)")
    if start is None:
        if num_classes < 2 * max(levels, 4):
            raise OodmlError(f"{num_classes} classes are too few for {levels} levels; need at least "
                             f"{2 * max(levels, 4)}")
        perm = np.random.default_rng(seed).permutation(num_classes)
        half = num_classes // 2
        start = (np.sort(perm[:half]), np.sort(perm[half:2 * half]))
    train, test = np.asarray(start[0]), np.asarray(start[1])
    default = SplitState(tuple(int(c) for c in train), tuple(int(c) for c in test), scorer.distance(train, test))
    max_steps = len(train) * len(test)
    down = _climb(scorer, default, -1, shortlist, max_steps)
    up = [default] + _climb(scorer, default, +1, shortlist, max_steps)
    # Never stop short of the ooDML procedure: if its progression from the same
    # start gets further, continue climbing from its best state.
    reference = _best_oodml_state(scorer, default)
    if reference.distance > up[-1].distance:
        up += [reference] + _climb(scorer, reference, +1, shortlist, max_steps)
    path = down[::-1] + up
    dist = np.array([s.distance for s in path])

    extra: list[SplitState] = []
    if removal_levels:
        step = (dist[-1] - dist[0]) / (levels - removal_levels - 1)
        min_per_side = max(2, int(np.ceil(floor * min(len(train), len(test)))))
        extra = _remove(scorer, path[-1], dist[-1] + step * removal_levels, min_per_side, shortlist)
    # Removal levels only where removal gets further than swaps; the rest are swap levels.
    n_removal = min(removal_levels, len(extra))
    swap_levels = levels - n_removal
    chosen = [path[i] for i in _nearest_increasing(dist, np.linspace(dist[0], dist[-1], swap_levels))]
    if n_removal:
        # Same spacing as the swap levels where reachable, else spread over what removal reaches.
        step = (dist[-1] - dist[0]) / (swap_levels - 1)
        reach = min(extra[-1].distance, dist[-1] + step * n_removal)
        targets = np.linspace(dist[-1], reach, n_removal + 1)[1:]
        chosen += [extra[i] for i in _nearest_increasing(np.array([s.distance for s in extra]), targets)]
    return SearchResult(chosen, default, path)


def _best_oodml_state(scorer: MeanFID | GenericScorer, start: SplitState) -> SplitState:
    """The farthest state (by ``scorer``) of the ooDML progression run from ``start``."""
    means = scorer.means if isinstance(scorer, MeanFID) else scorer.cf.means
    train, test = list(start.train), list(start.test)
    states = swap_progression(train, means[train], test, means[test])
    values = scorer.distances([(np.array(s.train), np.array(s.test)) for s in states])
    best = int(np.argmax(values))
    return SplitState(states[best].train, states[best].test, float(values[best]), states[best].swaps)
