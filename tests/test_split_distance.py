"""Class-mean FID scoring of many-class partitions through low-rank updates of one eigendecomposition."""

import numpy as np
import pytest

from oodml.shift import frechet_distance
from oodml.splits import distance, greedy_levels
from oodml.splits.distance import LOWRANK_MIN_DIM, REBASE_AFTER, MeanFID, Move


def clustered_means(seed=0, classes=300, dim=24, clusters=6, scales=None):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 2
    means = centres[np.arange(classes) % clusters] + rng.normal(size=(classes, dim))
    return means if scales is None else means * scales


MOVES = [Move(np.array([3]), np.array([5])),                                  # one swap
         Move(np.arange(10), np.arange(10, 20)),                              # ten at once
         Move(np.array([6]), np.array([], dtype=int), swap=False),            # one class removed from train
         Move(np.array([1, 2]), np.array([8, 3]), swap=False),                # two from each side
         Move(np.arange(40), np.arange(40, 80))]                              # beyond the rebase distance


def exact(means, partitions):
    return np.array([frechet_distance(means[tr], means[te]) for tr, te in partitions])


@pytest.mark.parametrize("scales, rtol", [(None, 1e-9), (np.logspace(-1, 1, 24), 1e-8)])  # spectra 1e2, 1e7 wide
def test_moves_scored_through_the_update_equal_the_exact_distances(scales, rtol):
    means = clustered_means(scales=scales)                 # 150 classes per side > 24 dims: moment form
    order = np.random.default_rng(1).permutation(300)
    train, test = order[:150], order[150:]
    scorer = MeanFID(means, lowrank=True)
    values = scorer.move_distances(train, test, MOVES)
    expected = exact(means, [m.apply(train, test) for m in MOVES])
    np.testing.assert_allclose(values, expected, rtol=rtol)
    assert scorer._spectrum is not None and scorer._spectrum.changed(train, test) == 0   # scored by the update
    # From a partition 8 classes away the same base serves; from one 80 away it is rebuilt there.
    assert scorer.rebase_after == 8
    for k, rebuilt in ((2, False), (20, True)):
        base = scorer._spectrum
        moved = Move(np.arange(80, 80 + k), np.arange(70, 70 + k)).apply(train, test)
        values = scorer.move_distances(*moved, MOVES)
        np.testing.assert_allclose(values, exact(means, [m.apply(*moved) for m in MOVES]), rtol=rtol)
        assert (scorer._spectrum is not base) == rebuilt == (4 * k > scorer.rebase_after)


def test_path_distances_score_search_states_like_distances():
    means = clustered_means(seed=2)
    rng = np.random.default_rng(3)
    train, test = np.arange(150), np.arange(150, 300)
    states = [Move(rng.choice(150, k, replace=False), rng.choice(150, k, replace=False)).apply(train, test)
              for k in (0, 1, 3, 12, 60)]
    np.testing.assert_allclose(MeanFID(means, lowrank=True).path_distances(states), exact(means, states), rtol=1e-9)


def test_rank_deficient_class_means_fall_back_to_the_exact_form():
    rng = np.random.default_rng(4)
    means = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 12)) + 3          # rank 5 < 12: scatters singular
    train, test = np.arange(0, 200, 2), np.arange(1, 200, 2)
    scorer = MeanFID(means, lowrank=True)
    values = scorer.move_distances(train, test, MOVES[:4])
    assert scorer._spectrum is None and not scorer.lowrank                     # no base: every move exact
    np.testing.assert_allclose(values, MeanFID(means, lowrank=False).move_distances(train, test, MOVES[:4]),
                               rtol=1e-12)


def test_the_update_is_only_the_default_for_wide_features():
    assert not MeanFID(np.random.default_rng(0).normal(size=(8, LOWRANK_MIN_DIM - 1))).lowrank   # published sets
    assert MeanFID(np.random.default_rng(0).normal(size=(8, LOWRANK_MIN_DIM))).lowrank
    assert MeanFID(np.zeros((8, 4)), lowrank=False).rounding == 0.0
    assert MeanFID(np.zeros((8, 4096)), lowrank=True).rebase_after == REBASE_AFTER


def test_search_through_the_update_picks_the_levels_of_the_exact_search():
    means = clustered_means(seed=7, classes=400, dim=16, clusters=8)         # 200 per side > 16 dims
    old = greedy_levels(MeanFID(means, lowrank=False), 400, levels=6, removal_levels=1, batch=4)
    new = greedy_levels(MeanFID(means, lowrank=True), 400, levels=6, removal_levels=1, batch=4)
    old_d, new_d = np.array([s.distance for s in old.levels]), np.array([s.distance for s in new.levels])
    np.testing.assert_allclose(new_d, old_d, rtol=1e-2)                        # the 1% the issue allows
    np.testing.assert_allclose(new_d, exact(means, [(np.array(s.train), np.array(s.test)) for s in new.levels]),
                               rtol=1e-9)


def test_decomposition_on_a_torch_device_matches_numpy():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(60, 12)), rng.normal(size=(70, 12))
    k1, k2 = a.T @ a, b.T @ b
    factor, lam, vec = distance._decompose(k1, k2)
    t_factor, t_lam, t_vec = distance._decompose(k1, k2, "cpu")                # the CUDA path's code, on the CPU
    np.testing.assert_allclose(t_lam, lam, rtol=1e-10)
    np.testing.assert_allclose(t_factor, factor, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.abs(t_vec.T @ vec), np.eye(12), atol=1e-8)  # same eigenvectors up to sign
    assert sorted(np.linalg.eigvals(k1 @ k2).real) == pytest.approx(list(lam), rel=1e-9)
    with pytest.raises(np.linalg.LinAlgError):
        distance._decompose(k1, np.zeros_like(k2), "cpu")


def test_the_screen_of_many_class_sides_agrees_with_the_centroid_heuristic():
    """Past d classes a side the screen is two matrix-vector products; the Gram form keeps the plain arithmetic."""
    from oodml.splits.distance import centroid_screen

    means = np.random.default_rng(3).normal(size=(700, 24)) * np.linspace(0.5, 3, 24)
    scorer = MeanFID(means)
    order = np.random.default_rng(4).permutation(700)
    train, test = order[:340], order[340:690]                         # more classes than dimensions
    for fast, plain in zip(scorer.screen(train, test), centroid_screen(scorer.means, train, test), strict=True):
        np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-12 * np.abs(plain).max())
        assert (np.argsort(-fast)[:16] == np.argsort(-plain)[:16]).all()
    few = order[:20], order[20:40]                                     # Gram form: the same bits
    for fast, plain in zip(scorer.screen(*few), centroid_screen(scorer.means, *few), strict=True):
        assert np.array_equal(fast, plain)
