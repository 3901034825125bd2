"""Searching for train/test class splits of graded shift.

Two algorithms:

* :func:`swap_progression`: a faithful reimplementation of the ooDML procedure
  (centroid-ranked swaps with a short tabu history), and
  :func:`removal_continuation`, its harder continuation by class removal.
* :func:`greedy_levels` (the default): steepest-ascent and steepest-descent
  swaps from a seeded random split, every candidate on a shortlist scored
  exactly (several swaps per step when there are many classes), then levels
  picked at evenly spaced distances along the path, with class removal only
  beyond what swaps reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import OodmlError
from ..progress import counter
from ..shift import frechet_distance
from .scoring import Move, Scorer


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

def _shortlist(gains: tuple[np.ndarray, np.ndarray], k: int, direction: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` train and ``k`` test positions whose best swap the screen ranks highest in ``direction``.

    A position's key is its best grid entry, ``gain + best gain of the other side``
    (sign-flipped for descent): the same floats as the row and column maxima of the
    full ``n_train x n_test`` grid, without building it.
    """
    train_gain, test_gain = gains
    best_test = test_gain.max() if direction > 0 else test_gain.min()
    best_train = train_gain.max() if direction > 0 else train_gain.min()
    rows = np.argsort(-(direction * (train_gain + best_test)), kind="stable")[:k]
    cols = np.argsort(-(direction * (test_gain + best_train)), kind="stable")[:k]
    return rows, cols


def _batch_sizes(batch: int) -> list[int]:
    """Sizes of the several-class moves tried beside single ones: powers of two from 2 up to ``batch``."""
    return [2**i for i in range(1, int(np.log2(batch)) + 1)] if batch > 1 else []


def _after(before: SplitState, move: Move, distance: float, direction: int = 1) -> SplitState:
    """The state that ``move`` makes from ``before``, with its exact ``distance``."""
    train, test = move.apply(np.array(before.train), np.array(before.test))
    if move.swap:
        return SplitState(tuple(train), tuple(test), distance, before.swaps + direction * len(move.train_out),
                          before.kind, before.removed)
    gone = [before.train[p] for p in move.train_out] + [before.test[q] for q in move.test_out]
    return SplitState(tuple(train), tuple(test), distance, before.swaps, "removal",
                      before.removed + tuple(int(c) for c in gone))


#: How a path state was reached: (state, (previous state, move, direction)).
Step = tuple[SplitState, tuple[SplitState, Move, int]]


def _climb(scorer: Scorer, start: SplitState, direction: int, shortlist: int, max_steps: int,
           batch: int = 1) -> list[Step]:
    """Steepest ascent (``direction=+1``) or descent (-1), exactly scored on a shortlist of moves.

    Candidates: every single swap of the ``shortlist`` train and test positions
    the screen ranks first, and (``batch > 1``) swapping the first k of each
    ranking at once for k = 2, 4, ... up to ``batch``.  The best one is taken
    while it improves.
    """
    state, path = start, []
    bar = counter("search: easier splits" if direction < 0 else "search: harder splits")
    for _ in range(max_steps):
        bar.set_postfix_str(f"distance {state.distance:.4g}", refresh=False)
        bar.update()
        train, test = np.array(state.train), np.array(state.test)
        rows, cols = _shortlist(scorer.screen(train, test), max(shortlist, batch), direction)
        moves = [Move(np.array([p]), np.array([q])) for p in rows[:shortlist] for q in cols[:shortlist]]
        moves += [Move(rows[:k], cols[:k]) for k in _batch_sizes(batch)]
        values = scorer.move_distances(train, test, moves)
        best = int(np.argmax(direction * values))
        if direction * (values[best] - state.distance) <= 1e-12 * max(abs(state.distance), 1.0):
            break
        after = _after(state, moves[best], float(values[best]), direction)
        path.append((after, (state, moves[best], direction)))
        state = after
    bar.close()
    return path


def _remove(scorer: Scorer, start: SplitState, target: float, min_per_side: int, shortlist: int,
            batch: int = 1) -> list[Step]:
    """Remove classes from both sides while it increases the distance, until ``target``.

    The ``4 * shortlist`` single removals per side ranked first by the centroid
    screen are scored exactly.  Removing the best train and the best test class
    together is the first candidate; with ``batch > 1``, removing the k best of
    each side (by those exact single scores) for k = 2, 4, ... up to ``batch``
    are candidates too, and the largest k that increases the distance is
    applied.  The sides stay equal and never go below ``min_per_side``.
    """
    state, path = start, []
    none = np.array([], dtype=np.int64)
    bar = counter("search: removal levels")
    while state.distance < target and min(len(state.train), len(state.test)) > min_per_side:
        bar.set_postfix_str(f"distance {state.distance:.4g} of {target:.4g}, {len(state.train)} classes per side",
                            refresh=False)
        bar.update()
        train, test = np.array(state.train), np.array(state.test)
        rows, cols = _shortlist(scorer.screen(train, test), 4 * shortlist)
        singles = ([Move(np.array([p]), none, swap=False) for p in rows]
                   + [Move(none, np.array([q]), swap=False) for q in cols])
        values = scorer.move_distances(train, test, singles)
        rows = rows[np.argsort(-values[:len(rows)], kind="stable")]
        cols = cols[np.argsort(-values[len(rows):], kind="stable")]
        room = min(len(train), len(test)) - min_per_side
        sizes = [1] + [k for k in _batch_sizes(min(batch, len(rows), len(cols))) if k <= room]
        moves = [Move(rows[:k], cols[:k], swap=False) for k in sizes]
        values = scorer.move_distances(train, test, moves)
        better = np.flatnonzero(values > state.distance)
        if not len(better):
            break
        after = _after(state, moves[better[-1]], float(values[better[-1]]))
        path.append((after, (state, moves[better[-1]], 1)))
        state = after
    bar.close()
    return path


def _refine(scorer: Scorer, states: list[SplitState], reached_by: dict, targets: np.ndarray) -> list[SplitState]:
    """``states`` (increasing distance) with the partial steps around each target added.

    A step that moved k > 1 classes per side passes k - 1 partitions of its
    own (after its first 1 .. k-1 pairs); those whose exact distance lies
    between the step's two ends are added, so that a level can land as near its
    target as single steps would let it.  ``reached_by`` maps a state to
    ``(previous state, move, direction)``.
    """
    dist = np.array([s.distance for s in states])
    added: list[SplitState] = []
    done: set[int] = set()
    for target in targets:
        i = int(np.clip(np.searchsorted(dist, target), 1, len(states) - 1))
        lo, hi = states[i - 1], states[i]
        for before, after in ((lo, hi), (hi, lo)):
            previous, move, direction = reached_by.get(after, (None, None, 0))
            if previous != before or len(move.train_out) < 2 or i in done:
                continue
            done.add(i)
            partial = [move.first(k) for k in range(1, len(move.train_out))]
            values = scorer.move_distances(np.array(before.train), np.array(before.test), partial)
            added += [_after(before, m, float(v), direction) for m, v in zip(partial, values, strict=True)
                      if lo.distance < v < hi.distance]
    return sorted(states + added, key=lambda s: s.distance) if added else states


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
        path: every state visited by swaps (and the partial steps scored near the
            level targets), in increasing distance.
    """

    levels: list[SplitState]
    default: SplitState
    path: list[SplitState]


def greedy_levels(scorer: Scorer, num_classes: int, *, levels: int = 8, removal_levels: int = 2,
                  seed: int = 0, shortlist: int = 4, floor: float = 0.5,
                  start: tuple[Sequence[int], Sequence[int]] | None = None, batch: int | None = None) -> SearchResult:
    """Build ``levels`` splits with distances spread evenly from the easiest reachable to the hardest.

    The start is a seeded random split with equal class counts per side (or
    ``start``).  Steepest descent and ascent by swaps give a path of
    increasing distance; ``levels - removal_levels`` levels are the path states
    nearest evenly spaced targets between its two ends, and ``removal_levels``
    more continue at the same spacing beyond the hardest swap state by removing
    classes from both sides, never below ``floor`` times the classes per side.
    Where removal cannot increase the distance, those levels become swap levels
    instead (check ``kind``).  Every step scores a ``shortlist x shortlist``
    grid of single swaps (ranked by the centroid screen) exactly and takes the
    best.

    With many classes a step may also move several classes per side at once
    (``batch``: up to that many, tried in powers of two; by default one per 128
    classes per side, so 1 below 256 classes per side and every published
    CUB/Cars-sized split set is searched by single swaps).  The partial steps
    around each level's target are then scored too, so levels stay as close to
    their targets as with single steps.  At 2,000 classes this scores 3.4x
    fewer partitions than single swaps for the same range of distances, and a
    10,000-class search takes about 3 minutes on 2 cores
    (``tools/bench_scaling.py``, docs/scaling.md).

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
    if batch is None:
        batch = max(1, min(len(train), len(test)) // 128)
    down = _climb(scorer, default, -1, shortlist, max_steps, batch)
    steps = _climb(scorer, default, +1, shortlist, max_steps, batch)
    up = [default] + [state for state, _ in steps]
    # Never stop short of the ooDML procedure: if its progression from the same
    # start gets further, continue climbing from its best state.
    reference = _best_oodml_state(scorer, default)
    if reference.distance > up[-1].distance:
        more = _climb(scorer, reference, +1, shortlist, max_steps, batch)
        up += [reference] + [state for state, _ in more]
        steps += more
    reached_by = dict(down + steps)
    path = [state for state, _ in down[::-1]] + up
    dist = np.array([s.distance for s in path])

    extra: list[SplitState] = []
    if removal_levels:
        step = (dist[-1] - dist[0]) / (levels - removal_levels - 1)
        min_per_side = max(2, int(np.ceil(floor * min(len(train), len(test)))))
        removal = _remove(scorer, path[-1], dist[-1] + step * removal_levels, min_per_side, shortlist, batch)
        reached_by.update(removal)
        extra = [state for state, _ in removal]
    # Removal levels only where removal gets further than swaps; the rest are swap levels.
    n_removal = min(removal_levels, len(extra))
    swap_levels = levels - n_removal
    targets = np.linspace(dist[0], dist[-1], swap_levels)
    path = _refine(scorer, path, reached_by, targets)
    dist = np.array([s.distance for s in path])
    chosen = [path[i] for i in _nearest_increasing(dist, targets)]
    if n_removal:
        # Same spacing as the swap levels where reachable, else spread over what removal reaches.
        step = (dist[-1] - dist[0]) / (swap_levels - 1)
        reach = min(extra[-1].distance, dist[-1] + step * n_removal)
        targets = np.linspace(dist[-1], reach, n_removal + 1)[1:]
        extra = _refine(scorer, [path[-1]] + extra, reached_by, targets)[1:]
        chosen += [extra[i] for i in _nearest_increasing(np.array([s.distance for s in extra]), targets)]
    return SearchResult(chosen, default, path)


def _best_oodml_state(scorer: Scorer, start: SplitState) -> SplitState:
    """The farthest state (by ``scorer``) of the ooDML progression run from ``start``."""
    means = scorer.means
    train, test = list(start.train), list(start.test)
    states = swap_progression(train, means[train], test, means[test])
    values = scorer.distances([(np.array(s.train), np.array(s.test)) for s in states])
    best = int(np.argmax(values))
    return SplitState(states[best].train, states[best].test, float(values[best]), states[best].swaps)
