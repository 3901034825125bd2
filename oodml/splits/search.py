"""Searching for train/test class splits of graded shift.

Three algorithms:

* :func:`swap_progression`: a faithful reimplementation of the ooDML procedure
  (centroid-ranked swaps with a short tabu history), and
  :func:`removal_continuation`, its harder continuation by class removal.
* :func:`greedy_levels` (the default): steepest-ascent and steepest-descent
  swaps from a seeded random split, every candidate on a shortlist scored
  exactly (several swaps per step when there are many classes), then levels
  picked at evenly spaced distances along the path, with class removal only
  beyond what swaps reach.
* :func:`exhaustive_levels`: where every balanced split can be scored (up to
  the scorer's ``exhaustive_limit``: 100,000 splits, i.e. up to 21 classes, for
  class-mean FID), all of them are, and the levels are chosen among them
  exactly; removal levels continue from the true hardest split as in the
  greedy search.

Sides are balanced: ``floor(n / 2)`` classes each.  With an odd number of
classes the seeded random permutation that makes the default split leaves its
last class out, and no level of either search ever uses it (swaps exchange
classes between the sides and removal only removes), so the exhaustive search
enumerates the splits of the other ``n - 1``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import OodmlError
from ..progress import counter
from ..seeding import rng_for
from ..shift import frechet_distance
from .distance import Move, Partition, Scorer, centroid_scores


@dataclass(frozen=True)
class SplitState:
    """One train/test split along a search path.

    Attributes:
        train, test: class indices (rows of the class-mean matrix the search was given), in the
            search's own order: positions matter to the ooDML procedure, whose swaps exchange them.
        distance: train-to-test distance of this split.
        swaps: swaps applied from the start (negative along a path of decreasing distance; 0 for
            the splits of ``exhaustive_levels``, which are enumerated, not reached).
        kind: ``"swap"`` or ``"removal"`` (some classes were removed from both sides).
        removed: class indices removed so far (removal states only).
    """

    train: tuple[int, ...]
    test: tuple[int, ...]
    distance: float
    swaps: int = 0
    kind: str = "swap"
    removed: tuple[int, ...] = field(default=())


# --- the ooDML procedure ---------------------------------------------------------------

def _oodml_rankings(train_means: np.ndarray, test_means: np.ndarray, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
    score_train, score_test = centroid_scores(train_means, test_means)
    rank_train, rank_test = np.argsort(score_train, kind="stable"), np.argsort(score_test, kind="stable")
    return (rank_train[::-1], rank_test[::-1]) if inverse else (rank_train, rank_test)


def _pick(ranking: np.ndarray, offset: int, history: list[int], window: int) -> int:
    recent = set(history[-window:]) if window else set()
    for pos in ranking[offset:]:
        if int(pos) not in recent:
            return int(pos)
    raise OodmlError(f"the ooDML procedure ran out of swap candidates among {len(ranking)} classes per side")


def oodml_parameters(side: int, swaps_per_iteration: int = 2, history: int = 5) -> tuple[int, int]:
    """``(swaps_per_iteration, history)`` shrunk to what ``side`` classes per side allow.

    The k-th swap of an iteration scans a ranking from offset k and skips the
    ``history`` positions swapped last, so it always finds a candidate when
    ``side >= swaps_per_iteration + history``.  ooDML's (2, 5) fit from 7
    classes per side and are returned unchanged there; smaller sides keep as
    many swaps per iteration as they can (at least 1) and shorten the history.
    """
    swaps = max(1, min(swaps_per_iteration, side - 1))
    return swaps, max(0, min(history, side - swaps))


def swap_progression(means: np.ndarray, train: Sequence[int], test: Sequence[int], *, iterations: int = 25,
                     swaps_per_iteration: int = 2, history: int = 5, inverse: bool = False,
                     distances: Callable[[list[Partition]], np.ndarray] | None = None) -> list[SplitState]:
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
        means: (C, d) class-mean features, one row per class index.
        train, test: class indices in their initial order (ooDML sorted the class names;
            the caller orders the indices that way).
        distances: scores the states' (train, test) class-index arrays, all in one call, (iterations,);
            by default the class-mean FID of each (:func:`oodml.shift.frechet_distance`).  The swaps
            never depend on it (they follow the centroid rankings), only the recorded distances do: the
            greedy search passes its scorer's cheaper :meth:`~oodml.splits.distance.Scorer.path_distances`.

    Returns:
        ``iterations`` states, the first being the given split.

    Raises:
        OodmlError: when a side has fewer than ``swaps_per_iteration + history``
            classes, where the scan could run out of candidates
            (:func:`oodml_parameters` gives values that fit).
    """
    all_means = np.asarray(means, dtype=np.float64)
    sides = [[int(c) for c in train], [int(c) for c in test]]
    if any(not 0 <= c < len(all_means) for c in sides[0] + sides[1]):
        raise OodmlError(f"swap_progression: class indices must lie in [0, {len(all_means)}), one per class-mean row")
    side_means = [all_means[sides[0]].copy(), all_means[sides[1]].copy()]
    side = min(len(sides[0]), len(sides[1]))
    if side < swaps_per_iteration + history:
        raise OodmlError(f"swap_progression: {side} classes per side are too few for swaps_per_iteration="
                         f"{swaps_per_iteration} with history={history}; need swaps_per_iteration + history")
    sign = -1 if inverse else 1
    hist: tuple[list[int], list[int]] = ([], [])
    visited: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for _ in range(iterations):
        visited.append((tuple(sides[0]), tuple(sides[1])))
        rank_train, rank_test = _oodml_rankings(side_means[0], side_means[1], inverse)
        for k in range(swaps_per_iteration):
            p, q = _pick(rank_train, k, hist[0], history), _pick(rank_test, k, hist[1], history)
            hist[0].append(p)
            hist[1].append(q)
            sides[0][p], sides[1][q] = sides[1][q], sides[0][p]
            side_means[0][p], side_means[1][q] = side_means[1][q].copy(), side_means[0][p].copy()
    if distances is None:
        values = [frechet_distance(all_means[list(tr)], all_means[list(te)]) for tr, te in visited]
    else:
        values = np.asarray(distances([(np.array(tr), np.array(te)) for tr, te in visited]), np.float64).tolist()
    return [SplitState(tr, te, float(v), sign * it * swaps_per_iteration)
            for it, ((tr, te), v) in enumerate(zip(visited, values, strict=True))]


def removal_continuation(state: SplitState, means: np.ndarray, *, iterations: int = 3,
                         swaps_per_iteration: int = 2, history: int = 5, min_per_side: int = 2) -> list[SplitState]:
    """The harder continuation by class removal, from a chosen state of :func:`swap_progression`.

    Each iteration picks swap candidates as the progression does and applies the
    swaps tentatively; if the distance does not increase, it undoes them and
    instead removes those classes (train candidates from train, test candidates
    from test).  Returns one state per iteration after ``state``, fewer when the
    sides get too small to pick candidates (``swaps_per_iteration + history``
    classes) or a removal would leave a side with fewer than ``min_per_side``.  ``means`` is the
    (C, d) class-mean matrix that ``state``'s class indices refer to.
    """
    means_of = np.asarray(means, dtype=np.float64)
    sides = [list(state.train), list(state.test)]
    hist: tuple[list[int], list[int]] = ([], [])
    current, states, removed = state.distance, [], list(state.removed)
    for it in range(1, iterations + 1):
        if min(len(sides[0]), len(sides[1])) < swaps_per_iteration + history:
            break
        rank_train, rank_test = _oodml_rankings(means_of[sides[0]], means_of[sides[1]], inverse=False)
        trial_hist: tuple[list[int], list[int]] = (list(hist[0]), list(hist[1]))
        picks = []
        for k in range(swaps_per_iteration):
            p, q = _pick(rank_train, k, trial_hist[0], history), _pick(rank_test, k, trial_hist[1], history)
            trial_hist[0].append(p)
            trial_hist[1].append(q)
            picks.append((p, q))
        trial = [list(sides[0]), list(sides[1])]
        for p, q in picks:
            trial[0][p], trial[1][q] = trial[1][q], trial[0][p]
        value = frechet_distance(means_of[trial[0]], means_of[trial[1]])
        if value > current:
            sides, hist, kind = trial, trial_hist, "swap"
        else:
            drop_train, drop_test = {p for p, _ in picks}, {q for _, q in picks}
            if min(len(sides[0]) - len(drop_train), len(sides[1]) - len(drop_test)) < min_per_side:
                break
            removed += [sides[0][p] for p in sorted(drop_train)] + [sides[1][q] for q in sorted(drop_test)]
            sides = [[n for i, n in enumerate(sides[0]) if i not in drop_train],
                     [n for i, n in enumerate(sides[1]) if i not in drop_test]]
            hist = ([], [])  # positions shifted; the tabu window restarts
            kind = "removal"
            value = frechet_distance(means_of[sides[0]], means_of[sides[1]])
        current = value
        states.append(SplitState(tuple(sides[0]), tuple(sides[1]), value,
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
        if direction * (values[best] - state.distance) <= max(1e-12, scorer.rounding) * max(abs(state.distance), 1.0):
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
        better = np.flatnonzero(values > state.distance + scorer.rounding * max(abs(state.distance), 1.0))
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
    """Indices into sorted ``distances`` nearest each target, strictly increasing (no state used twice).

    Each pick leaves at least one state for every later target where there are
    that many, so with ``len(distances) >= len(targets)`` every target gets one
    (and targets at the two ends of ``distances`` get the ends).  Where the
    plain nearest picks already give every target one, these are those picks.
    """
    chosen: list[int] = []
    for i, target in enumerate(targets):
        lo = chosen[-1] + 1 if chosen else 0
        if lo >= len(distances):
            break
        hi = max(lo, len(distances) - (len(targets) - i))
        chosen.append(lo + int(np.argmin(np.abs(distances[lo:hi + 1] - target))))
    return chosen


def _choose_levels(scorer: Scorer, path: list[SplitState], reached_by: dict, *, levels: int, removal_levels: int,
                   floor: float, shortlist: int, batch: int) -> tuple[list[SplitState], list[SplitState]]:
    """Levels along ``path`` (states of increasing distance, all with the same side sizes).

    ``levels - removal_levels`` swap levels are the states nearest evenly spaced
    targets between the path's two ends; ``removal_levels`` more continue at the
    same spacing by removing classes from the hardest state (never below
    ``floor`` times the classes per side), and those that removal cannot reach
    become swap levels.  ``reached_by`` maps a state to ``(previous state, move,
    direction)`` for :func:`_refine`.

    Returns:
        ``(levels, path)``: the chosen states, easiest first, and the path with
        the partial steps scored near the targets added.
    """
    dist = np.array([s.distance for s in path])
    extra: list[SplitState] = []
    if removal_levels:
        step = (dist[-1] - dist[0]) / (levels - removal_levels - 1)
        min_per_side = max(2, int(np.ceil(floor * min(len(path[-1].train), len(path[-1].test)))))
        removal = _remove(scorer, path[-1], dist[-1] + step * removal_levels, min_per_side, shortlist, batch)
        reached_by = {**reached_by, **dict(removal)}
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
    return chosen, path


@dataclass(frozen=True)
class SearchResult:
    """Output of :func:`greedy_levels` and :func:`exhaustive_levels`.

    Attributes:
        levels: the chosen states, easiest first.
        default: the seeded random starting split (the usual protocol's split).
        path: every state visited by swaps (and the partial steps scored near the
            level targets), in increasing distance; for the exhaustive search,
            one balanced split per distinct distance.
        search: how the levels were found: ``{"method": "greedy"}`` or
            ``{"method": "exhaustive", "partitions": P}`` (P balanced splits scored).
    """

    levels: list[SplitState]
    default: SplitState
    path: list[SplitState]
    search: Mapping[str, object] = field(default_factory=lambda: {"method": "greedy"})


#: Fewest classes that make a split: two per side, so that each side has a covariance.
MIN_CLASSES = 4


def _check_levels(num_classes: int, levels: int, removal_levels: int) -> None:
    if num_classes < MIN_CLASSES:
        raise OodmlError(f"{num_classes} classes are too few to split; need at least {MIN_CLASSES} (2 per side)")
    if levels < 2 or not 0 <= removal_levels < levels - 1:
        raise OodmlError(f"need at least 2 levels and fewer removal levels than levels - 1 "
                         f"(got {levels} levels, {removal_levels} removal levels)")


def seeded_split(num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The default split: ``(train, test)`` sorted int arrays of ``num_classes // 2`` class indices each.

    The first and second ``n // 2`` entries of a seeded random permutation; with
    an odd ``n`` its last entry is left out.
    """
    perm = np.random.default_rng(seed).permutation(num_classes)
    half = num_classes // 2
    return np.sort(perm[:half]), np.sort(perm[half:2 * half])


def balanced_split_count(num_classes: int) -> int:
    """How many balanced splits ``num_classes`` make, each counted once whichever side is train.

    ``C(m, m/2) / 2`` with ``m`` the class count rounded down to even (an odd
    count leaves one class out): 3 for 4 classes, 126 for 10, 92,378 for 20.
    """
    half = num_classes // 2
    return math.comb(2 * half, half) // 2


def balanced_splits(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every split of ``classes`` (m,), m even and at least 4, into two halves, once each.

    Returns:
        ``(first, second)``: (P, m/2) int arrays, P = :func:`balanced_split_count`
        (m); row i of the two is one split, each row in the order of
        ``classes``, and ``first`` always holds ``classes[0]``.
    """
    classes = np.asarray(classes, dtype=np.int64)
    m = len(classes)
    if m % 2 or m < MIN_CLASSES:
        raise OodmlError(f"balanced_splits needs an even number of at least {MIN_CLASSES} classes, got {m}")
    half = m // 2
    others = itertools.combinations(range(1, m), half - 1)
    picked = np.fromiter(itertools.chain.from_iterable(others), dtype=np.int64).reshape(-1, half - 1)
    in_first = np.zeros((len(picked), m), dtype=bool)
    in_first[:, 0] = True
    np.put_along_axis(in_first, picked, True, axis=1)
    order = np.argsort(~in_first, axis=1, kind="stable")   # the first side's positions, then the second's
    return classes[order[:, :half]], classes[order[:, half:]]


def exhaustive_fits(scorer: Scorer, num_classes: int) -> bool:
    """Whether every balanced split of ``num_classes`` may be scored (``scorer.exhaustive_limit``)."""
    return balanced_split_count(num_classes) <= scorer.exhaustive_limit


def level_capacity(num_classes: int, exhaustive: bool) -> int:
    """The most levels a search makes of ``num_classes``.

    One per balanced split when exhaustive; otherwise as many as classes per
    side, the rule the greedy search and the ooDML procedure have always kept.
    """
    return balanced_split_count(num_classes) if exhaustive else num_classes // 2


def _distinct(sorted_values: np.ndarray) -> np.ndarray:
    """Mask of the first of each run of equal values (relative tolerance 1e-12) in ``sorted_values``."""
    scale = max(float(np.abs(sorted_values).max()), 1.0)
    return np.r_[True, np.diff(sorted_values) > 1e-12 * scale]


def exhaustive_levels(scorer: Scorer, num_classes: int, *, levels: int = 8, removal_levels: int = 2,
                      seed: int = 0, shortlist: int = 4, floor: float = 0.5) -> SearchResult:
    """Levels chosen exactly among every balanced split (for few classes).

    Scores all :func:`balanced_split_count` splits of the classes the default
    split uses (:meth:`Scorer.stacked_distances`) and keeps one split per
    distinct distance, by increasing distance.  The ``levels - removal_levels``
    swap levels are the splits nearest evenly spaced targets between the
    smallest and the largest distance: the easiest and hardest swap levels are
    the true extremes, and no split is used twice.  Removal levels continue from
    the hardest split as in :func:`greedy_levels` (by the same steps, so not
    exhaustively), and become swap levels where removal cannot get further: at
    2 classes per side, always.  The distances are symmetric, so a seeded coin
    per split decides which side is train, and every class can be a test class.

    Returns:
        :class:`SearchResult` with class indices in its states, ``path`` the
        distinct splits and ``search`` ``{"method": "exhaustive", "partitions": P}``.
        Fewer levels than asked only when fewer distinct distances exist.
    """
    _check_levels(num_classes, levels, removal_levels)
    if levels > level_capacity(num_classes, exhaustive=True):
        raise OodmlError(f"{num_classes} classes have only {balanced_split_count(num_classes)} balanced splits, "
                         f"too few for {levels} levels")
    train, test = seeded_split(num_classes, seed)
    default = SplitState(tuple(train.tolist()), tuple(test.tolist()), scorer.distance(train, test))
    first, second = balanced_splits(np.sort(np.concatenate([train, test])))
    values = scorer.stacked_distances(first, second)
    flip = rng_for(seed, "exhaustive", "sides").integers(0, 2, len(values)).astype(bool)[:, None]
    first, second = np.where(flip, second, first), np.where(flip, first, second)
    order = np.argsort(values, kind="stable")
    keep = order[_distinct(values[order])]
    path = [SplitState(tuple(a), tuple(b), v)
            for a, b, v in zip(first[keep].tolist(), second[keep].tolist(), values[keep].tolist(), strict=True)]
    chosen, path = _choose_levels(scorer, path, {}, levels=levels, removal_levels=removal_levels, floor=floor,
                                  shortlist=shortlist, batch=1)
    return SearchResult(chosen, default, path, {"method": "exhaustive", "partitions": len(values)})


def greedy_levels(scorer: Scorer, num_classes: int, *, levels: int = 8, removal_levels: int = 2,
                  seed: int = 0, shortlist: int = 4, floor: float = 0.5, batch: int | None = None) -> SearchResult:
    """Build ``levels`` splits with distances spread evenly from the easiest reachable to the hardest.

    The start is :func:`seeded_split`.  Steepest descent and
    ascent by swaps give a path of increasing distance; ``levels -
    removal_levels`` levels are the path states nearest evenly spaced targets
    between its two ends, and ``removal_levels`` more continue at the same
    spacing beyond the hardest swap state by removing classes from both sides,
    never below ``floor`` times the classes per side.  Where removal cannot
    increase the distance, those levels become swap levels instead (check
    ``kind``).  Every step scores a ``shortlist x shortlist`` grid of single
    swaps (ranked by the centroid screen) exactly and takes the best.  The
    ascent never stops short of the ooDML procedure run from the same start
    (with :func:`oodml_parameters` for small sides).

    With many classes a step may also move several classes per side at once
    (``batch``: up to that many, tried in powers of two; by default one per 128
    classes per side, so 1 below 256 classes per side and every published
    CUB/Cars-sized split set is searched by single swaps).  The partial steps
    around each level's target are then scored too, so levels stay as close to
    their targets as with single steps.  At 2,000 classes this scores 3.4x
    fewer partitions than single swaps for the same range of distances, and a
    10,000-class search takes about 3 minutes on 2 cores
    (``tools/bench_scaling.py``, docs/scaling.md).  From 512-d features
    :class:`~oodml.splits.distance.MeanFID` scores the many-class candidates as
    low-rank updates of one eigendecomposition (to about 1e-9), and a move must
    gain more than the scorer's ``rounding`` to count.

    Returns:
        :class:`SearchResult` with class indices in its states.
    """
    _check_levels(num_classes, levels, removal_levels)
    if levels > level_capacity(num_classes, exhaustive=False):
        raise OodmlError(f"{num_classes} classes are too few for {levels} levels by greedy search; at most "
                         f"{level_capacity(num_classes, exhaustive=False)}")
    train, test = seeded_split(num_classes, seed)
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
    path = [state for state, _ in down[::-1]] + up
    chosen, path = _choose_levels(scorer, path, dict(down + steps), levels=levels, removal_levels=removal_levels,
                                  floor=floor, shortlist=shortlist, batch=batch)
    return SearchResult(chosen, default, path, {"method": "greedy"})


def _best_oodml_state(scorer: Scorer, start: SplitState) -> SplitState:
    """The farthest state (by ``scorer``) of the ooDML progression run from ``start``."""
    swaps, history = oodml_parameters(min(len(start.train), len(start.test)))
    states = swap_progression(scorer.means, start.train, start.test, swaps_per_iteration=swaps, history=history,
                              distances=scorer.path_distances)
    return max(states, key=lambda s: s.distance)
