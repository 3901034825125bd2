"""Split search: the ooDML procedure as specified, and the greedy levels' guarantees."""

import numpy as np
import pytest

from oodml import OodmlError
from oodml.shift import ClassFeatures, frechet_distance
from oodml.splits import greedy_levels, removal_continuation, swap_progression
from oodml.splits.distance import GenericScorer, MeanFID, Move
from oodml.splits.search import _shortlist


def clustered_means(seed=0, classes=60, dim=40, clusters=6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 2
    return centres[np.arange(classes) % clusters] + rng.normal(size=(classes, dim))


def literal_oodml(train, test, means, iterations, swaps, history, inverse=False):
    """The procedure exactly as the issue words it, written plainly as an oracle."""
    train, test = list(train), list(test)
    hist_t, hist_s, out = [], [], []
    for _ in range(iterations):
        x_t = np.array([means[c] for c in train])
        x_s = np.array([means[c] for c in test])
        out.append((list(train), list(test), frechet_distance(x_t, x_s)))
        m_t, m_s = x_t.mean(0), x_s.mean(0)
        r_t = sorted(range(len(train)), key=lambda p: (np.linalg.norm(x_t[p] - m_s) - np.linalg.norm(x_t[p] - m_t), p))
        r_s = sorted(range(len(test)), key=lambda q: (np.linalg.norm(x_s[q] - m_t) - np.linalg.norm(x_s[q] - m_s), q))
        if inverse:
            r_t, r_s = r_t[::-1], r_s[::-1]
        for k in range(swaps):
            p = next(p for p in r_t[k:] if p not in hist_t[-history:])
            q = next(q for q in r_s[k:] if q not in hist_s[-history:])
            hist_t.append(p)
            hist_s.append(q)
            train[p], test[q] = test[q], train[p]
    return out


@pytest.mark.parametrize("inverse", [False, True])
def test_swap_progression_follows_the_ooDML_procedure(inverse):
    means = clustered_means()
    train, test = list(range(30)), list(range(30, 60))
    states = swap_progression(means, train, test, iterations=12, swaps_per_iteration=2, history=5, inverse=inverse)
    expected = literal_oodml(train, test, means, 12, 2, 5, inverse)
    assert len(states) == 12
    for it, (state, (tr, te, dist)) in enumerate(zip(states, expected, strict=True)):
        assert list(state.train) == tr and list(state.test) == te
        assert state.distance == pytest.approx(dist, rel=1e-12)
        assert state.swaps == (-1 if inverse else 1) * 2 * it


def test_swap_progression_scored_by_another_distance_makes_the_same_swaps():
    means = clustered_means(seed=5)
    scored = []

    def distances(partitions):
        scored.append(partitions)
        return MeanFID(means).distances(partitions)

    plain = swap_progression(means, range(30), range(30, 60), iterations=10)
    by_scorer = swap_progression(means, range(30), range(30, 60), iterations=10, distances=distances)
    assert len(scored) == 1 and len(scored[0]) == 10                 # every state in one call
    assert [(s.train, s.test, s.swaps) for s in by_scorer] == [(s.train, s.test, s.swaps) for s in plain]
    np.testing.assert_allclose([s.distance for s in by_scorer], [s.distance for s in plain], rtol=1e-10)


def test_swap_progression_is_deterministic_on_identical_features():
    means = clustered_means(seed=3)
    run = lambda: swap_progression(means, range(30), range(30, 60))  # noqa: E731
    assert [(s.train, s.test) for s in run()] == [(s.train, s.test) for s in run()]


def test_first_swap_moves_the_most_test_like_train_class():
    # 1-D: train {0, 1, 9}, test {10, 11, 2}; 9 is the train class nearest the test side, 2 the converse.
    values = np.c_[[0.0, 1.0, 9.0, 10.0, 11.0, 2.0]]
    states = swap_progression(values, [0, 1, 2], [3, 4, 5], iterations=2, swaps_per_iteration=1, history=1)
    assert states[1].train == (0, 1, 5) and states[1].test == (3, 4, 2)
    assert states[1].distance > states[0].distance


def test_removal_continuation_removes_when_swaps_stop_helping():
    means = clustered_means(seed=1)
    states = swap_progression(means, range(30), range(30, 60), iterations=25)
    more = removal_continuation(max(states, key=lambda s: s.distance), means, iterations=4)
    assert len(more) == 4
    removals = [s for s in more if s.kind == "removal"]
    assert removals, "after the ooDML maximum, swaps stop increasing the distance"
    assert all(len(s.train) < 30 and len(s.train) == len(s.test) for s in removals)
    assert set(removals[-1].removed).isdisjoint(removals[-1].train + removals[-1].test)


def test_greedy_levels_are_graded_balanced_and_deterministic():
    means = clustered_means(seed=2)
    scorer = MeanFID(means)
    result = greedy_levels(scorer, 60, levels=6, removal_levels=1, seed=7)
    dist = [s.distance for s in result.levels]
    assert len(dist) == 6 and dist == sorted(dist)
    assert dist[0] <= result.default.distance <= dist[-2]          # easier than the default split, and harder
    assert all(len(s.train) == len(s.test) for s in result.levels)
    assert [s.kind for s in result.levels] == ["swap"] * 5 + ["removal"]
    assert len(result.levels[-1].train) >= 15                       # never below the floor of half
    for s in result.levels:
        assert s.distance == pytest.approx(frechet_distance(means[list(s.train)], means[list(s.test)]), rel=1e-8)
        assert set(s.train).isdisjoint(s.test)
    again = greedy_levels(scorer, 60, levels=6, removal_levels=1, seed=7)
    assert [(s.train, s.test) for s in again.levels] == [(s.train, s.test) for s in result.levels]
    other = greedy_levels(scorer, 60, levels=6, removal_levels=1, seed=8)
    assert other.default.train != result.default.train


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hardest_swap_level_reaches_at_least_the_ooDML_procedure(seed):
    means = clustered_means(seed=seed, classes=80)
    result = greedy_levels(MeanFID(means), 80, levels=8, removal_levels=0, seed=seed)
    reference = swap_progression(means, result.default.train, result.default.test, iterations=25)
    assert result.levels[-1].distance >= max(s.distance for s in reference) - 1e-9


def test_mean_fid_scorer_matches_direct_computation_in_batches():
    means = clustered_means(seed=4)
    scorer = MeanFID(means)
    rng = np.random.default_rng(0)
    parts = [(rng.choice(60, 20, replace=False), rng.choice(60, n, replace=False)) for n in (20, 25, 20)]
    batch = scorer.distances(parts)
    for (tr, te), value in zip(parts, batch, strict=True):
        assert value == pytest.approx(frechet_distance(means[tr], means[te]), rel=1e-8)


@pytest.mark.parametrize("classes, dim", [(60, 40), (120, 8)])   # Gram form (<= d per side), moment form (> d)
def test_moves_are_scored_as_the_partitions_they_make(classes, dim):
    means = clustered_means(seed=6, classes=classes, dim=dim)
    scorer = MeanFID(means)
    rng = np.random.default_rng(1)
    order = rng.permutation(classes)
    train, test = order[: classes // 2], order[classes // 2:]
    moves = [Move(np.array([3]), np.array([5])), Move(np.array([0, 7, 9]), np.array([2, 4, 1])),
             Move(np.array([6]), np.array([], dtype=int), swap=False),
             Move(np.array([1, 2]), np.array([8, 3]), swap=False)]
    values = scorer.move_distances(train, test, moves)
    for move, value in zip(moves, values, strict=True):
        tr, te = move.apply(train, test)
        assert value == pytest.approx(frechet_distance(means[tr], means[te]), rel=1e-8)
        assert len(tr) + len(te) == classes - (0 if move.swap else len(move.train_out) + len(move.test_out))
    # duplicated classes (bootstrap draws) are scored too
    draw = (rng.choice(train, len(train)), rng.choice(test, len(test)))
    assert scorer.distances([draw])[0] == pytest.approx(frechet_distance(means[draw[0]], means[draw[1]]), rel=1e-8)


@pytest.mark.parametrize("rank", [3, 7])
def test_moment_form_on_rank_deficient_class_means_agrees_with_the_symmetric_form(rank):
    rng = np.random.default_rng(rank)
    means = rng.normal(size=(120, rank)) @ rng.normal(size=(rank, 8)) * 1e3 + 5   # 60 per side > 8 dims, rank < 8
    train, test = np.arange(0, 120, 2), np.arange(1, 120, 2)
    expected = frechet_distance(means[train], means[test])
    assert MeanFID(means).distances([(train, test)])[0] == pytest.approx(expected, rel=1e-6)


def test_shortlist_ranks_like_the_maxima_of_the_full_swap_grid():
    rng = np.random.default_rng(2)
    gains = (rng.integers(0, 5, 40) / 3.0, rng.integers(0, 5, 30) / 7.0)   # many ties
    for direction in (1, -1):
        grid = direction * (-(-gains[0][:, None] + -gains[1][None, :]))    # the grid the screen stands for
        rows, cols = _shortlist(gains, 6, direction)
        assert list(rows) == list(np.argsort(-grid.max(1), kind="stable")[:6])
        assert list(cols) == list(np.argsort(-grid.max(0), kind="stable")[:6])


class CountingMeanFID(MeanFID):
    evaluated = 0

    def move_distances(self, train, test, moves):
        self.evaluated += len(moves)
        return super().move_distances(train, test, moves)


def test_several_swaps_per_step_reach_the_same_range_with_far_fewer_evaluations():
    means = clustered_means(seed=7, classes=400, dim=16, clusters=8)   # 200 classes per side > 16 dims: moment form
    single, several = CountingMeanFID(means), CountingMeanFID(means)
    one = greedy_levels(single, 400, levels=6, removal_levels=1, batch=1)
    many = greedy_levels(several, 400, levels=6, removal_levels=1, batch=16)
    assert several.evaluated < single.evaluated / 2
    span = one.path[-1].distance - one.path[0].distance
    assert many.path[-1].distance == pytest.approx(one.path[-1].distance, abs=0.02 * span)
    assert many.path[0].distance == pytest.approx(one.path[0].distance, abs=0.02 * span)
    swap_levels = [s.distance for s in many.levels if s.kind == "swap"]
    targets = np.linspace(many.path[0].distance, many.path[-1].distance, len(swap_levels))
    assert np.abs(np.array(swap_levels) - targets).max() < 0.02 * span   # partial steps keep levels on target
    assert many.levels[-1].kind == "removal" and many.levels[-1].distance > swap_levels[-1]
    assert all(len(s.train) == len(s.test) >= 100 for s in many.levels)
    for s in many.levels:
        assert s.distance == pytest.approx(frechet_distance(means[list(s.train)], means[list(s.test)]), rel=1e-8)
        assert set(s.train).isdisjoint(s.test)


def test_several_swaps_per_step_start_past_256_classes_per_side():
    small = clustered_means(seed=8, classes=510, dim=16, clusters=8)          # 255 per side: single swaps
    default, single = greedy_levels(MeanFID(small), 510), greedy_levels(MeanFID(small), 510, batch=1)
    assert [(s.train, s.test) for s in default.levels] == [(s.train, s.test) for s in single.levels]
    large = clustered_means(seed=8, classes=600, dim=16, clusters=8)          # 300 per side: up to 2 per step
    default_scorer, single_scorer = CountingMeanFID(large), CountingMeanFID(large)
    greedy_levels(default_scorer, 600)
    greedy_levels(single_scorer, 600, batch=1)
    assert default_scorer.evaluated != single_scorer.evaluated


def test_generic_scorer_runs_the_same_search_for_w2():
    means = clustered_means(seed=5, classes=32, dim=8)
    cf = ClassFeatures(means, np.arange(32))
    result = greedy_levels(GenericScorer(cf, "w2", "class-mean"), 32, levels=4, removal_levels=0, shortlist=3)
    dist = [s.distance for s in result.levels]
    assert dist == sorted(dist) and dist[-1] > dist[0]


def test_too_few_classes_for_the_levels():
    with pytest.raises(OodmlError, match="too few for 8 levels"):
        greedy_levels(MeanFID(clustered_means(classes=12)), 12, levels=8)
