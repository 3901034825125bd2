"""Bootstrap draws of many-class, wide class-mean FIDs: linearised in the class weights, calibrated exactly."""

import numpy as np
import pytest

from oodml.splits import resampling
from oodml.splits.adjacent import paired_draws
from oodml.splits.distance import GenericScorer, MeanFID
from oodml.splits.levels import bootstrap_interval
from oodml.splits.resampling import CALIBRATION_DRAWS, linearised, resample_distances, weight_gradient


def clustered_means(seed=0, classes=400, dim=12):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(8, dim))[np.arange(classes) % 8] * 2 + rng.normal(size=(classes, dim))


def weighted_fid(means, train, test, w1, w2):
    """The class-mean FID with real class weights, written out directly."""
    def stats(rows, w):
        m = w @ rows / w.sum()
        c = rows - m
        return m, (c.T * w) @ c / (w.sum() - 1)
    (m1, s1), (m2, s2) = stats(means[train], w1), stats(means[test], w2)
    root = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    return (m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * root


def test_the_weight_gradient_is_the_derivative_of_the_distance():
    means = clustered_means(classes=60, dim=6)
    train, test = np.arange(0, 60, 2), np.arange(1, 60, 2)
    value, g1, g2 = weight_gradient(means, train, test)
    ones1, ones2 = np.ones(30), np.ones(30)
    assert value == pytest.approx(weighted_fid(means, train, test, ones1, ones2), rel=1e-10)
    h = 1e-6
    for side, k in ((0, 3), (0, 17), (1, 0), (1, 29)):
        e = np.zeros(30)
        e[k] = h
        plus = weighted_fid(means, train, test, ones1 + e * (side == 0), ones2 + e * (side == 1))
        minus = weighted_fid(means, train, test, ones1 - e * (side == 0), ones2 - e * (side == 1))
        assert (g1, g2)[side][k] == pytest.approx((plus - minus) / (2 * h), rel=1e-5, abs=1e-8)


def test_narrow_features_few_classes_and_other_distances_keep_the_exact_draws():
    wide = np.random.default_rng(0).normal(size=(40, 600))
    scorer = MeanFID(clustered_means(classes=400, dim=12))
    assert resample_distances(scorer, [(np.arange(200), np.arange(200, 400))]) == scorer.distances  # 12-d
    wide_scorer = MeanFID(wide)                                       # 20 classes a side <= 600 dims: Gram form
    assert resample_distances(wide_scorer, [(np.arange(20), np.arange(20, 40))]) == wide_scorer.distances
    generic = GenericScorer.__new__(GenericScorer)
    generic.means = wide
    assert not linearised(generic, (np.arange(20), np.arange(20, 40)))


@pytest.fixture
def narrow_threshold(monkeypatch):
    """Linearise from 8-d features, so that the exact draws stay affordable to compare with."""
    monkeypatch.setattr(resampling, "LINEARISED_MIN_DIM", 8)


@pytest.mark.parametrize("ordered", [False, True])
def test_linearised_intervals_agree_with_the_exact_bootstrap(narrow_threshold, ordered):
    means = clustered_means(classes=900, dim=150)            # 450 classes a side, 3 per dimension, as at SOP scale
    order = np.argsort(means[:, 0]) if ordered else np.random.default_rng(1).permutation(900)
    train, test = order[:450], order[450:]
    scorer = MeanFID(means)
    scored = []
    fast = resample_distances(scorer, [(train, test)])
    assert fast is not scorer.distances

    def recording(batch):
        values = fast(batch)
        scored.append((batch, values))
        return values

    low, high = bootstrap_interval(recording, train, test, draws=200, seed=3, level=2)
    # The reference: 1,000 exact draws of another seed (200 exact draws of one seed move by up to 0.3 half-widths).
    exact_low, exact_high = bootstrap_interval(scorer.distances, train, test, draws=1000, seed=4, level=2)
    batch, values = scored[0]
    # The calibration draws are the exact draws themselves; the estimate is exact.
    np.testing.assert_allclose(values[:CALIBRATION_DRAWS], scorer.distances(batch[:CALIBRATION_DRAWS]), rtol=1e-12)
    assert scored[1][1][0] == pytest.approx(scorer.distance(train, test), rel=1e-12)
    assert np.isfinite(values).all()
    half = (exact_high - exact_low) / 2
    # Endpoints within 0.45 of the reference's half-width (measured: 0.02-0.34 over 4 seeds, 200 exact draws
    # 0.02-0.31; the first-order values alone up to 0.42 on the random split and 0.71 at 16-d).
    assert abs(low - exact_low) < 0.45 * half and abs(high - exact_high) < 0.45 * half
    # The first-order values alone would be too narrow on the random split: the calibration matters.
    model = resampling._Calibrated(scorer, (train, test))
    first_order = np.array([model.linear(part)[0] for part in batch])
    assert np.std(first_order) < np.std(values)


def test_paired_draws_attribute_each_resample_to_its_level(narrow_threshold):
    means = clustered_means(seed=4, classes=700, dim=10)
    rng = np.random.default_rng(5)
    order = rng.permutation(700)
    levels = [(order[:300], order[300:600]), (order[30:330], np.r_[order[300:570], order[:30]])]
    scorer = MeanFID(means)
    fast = resample_distances(scorer, levels)
    estimates, draws = paired_draws(fast, levels, num_classes=700, draws=60, seed=1)
    exact_estimates, exact_draws = paired_draws(scorer.distances, levels, num_classes=700, draws=60, seed=1)
    np.testing.assert_allclose(estimates, exact_estimates, rtol=1e-12)
    np.testing.assert_allclose(draws[:CALIBRATION_DRAWS], exact_draws[:CALIBRATION_DRAWS], rtol=1e-12)
    diff, exact_diff = draws[:, 1] - draws[:, 0], exact_draws[:, 1] - exact_draws[:, 0]
    assert np.corrcoef(diff, exact_diff)[0, 1] > 0.8        # paired: the levels' draws move together
    # A partition that resamples neither level (a class from outside both) is scored exactly.
    other = (np.r_[order[:299], order[650]], order[300:600])
    assert fast([other])[0] == pytest.approx(scorer.distance(*other), rel=1e-12)


def test_singular_scatters_fall_back_to_exact_draws(narrow_threshold):
    rng = np.random.default_rng(6)
    means = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 9))      # rank 4 < 9 dims
    train, test = np.arange(200), np.arange(200, 400)
    scorer = MeanFID(means)
    fast = resample_distances(scorer, [(train, test)])
    batch = [(rng.choice(train, 200), rng.choice(test, 200)) for _ in range(CALIBRATION_DRAWS + 5)]
    np.testing.assert_allclose(fast(batch), scorer.distances(batch), rtol=1e-12)


def test_paired_draws_calibrate_the_levels_and_their_intervals_reuse_it(narrow_threshold, monkeypatch):
    """As make-splits does: the adjacent-level comparison first, then each level's interval, with no exact draw."""
    means = clustered_means(seed=7, classes=900, dim=150)
    order = np.random.default_rng(8).permutation(900)
    levels = [(order[:450], order[450:]), (np.r_[order[:400], order[450:500]], np.r_[order[400:450], order[500:]])]
    scorer = MeanFID(means)
    exact_draws = []
    counting = resampling.resample_distance

    def resample_distance(means, part, device=None):
        exact_draws.append(part)
        return counting(means, part, device)

    monkeypatch.setattr(resampling, "resample_distance", resample_distance)
    estimates, _ = paired_draws(resample_distances(scorer, levels), levels, num_classes=900, draws=60, seed=2)
    assert len(exact_draws) == CALIBRATION_DRAWS * len(levels)       # each level's calibration, paired
    train, test = levels[1]
    exact_calls = []

    def distances(parts):
        exact_calls.append(parts)
        return MeanFID.distances(scorer, parts)

    monkeypatch.setattr(scorer, "distances", distances)
    low, high = bootstrap_interval(resample_distances(scorer, [levels[1]]), train, test, draws=200, seed=3, level=2)
    assert len(exact_draws) == CALIBRATION_DRAWS * len(levels) and not exact_calls   # nothing scored exactly again
    assert estimates[1] == pytest.approx(MeanFID(means).distance(train, test), rel=1e-10)
    assert low < estimates[1] < high
    # Against 1,000 exact draws of another seed, as the interval's own calibration is held above (measured with
    # paired calibration: 0.01-0.29 of the half-width over 4 seeds).
    exact_low, exact_high = bootstrap_interval(MeanFID(means).distances, train, test, draws=1000, seed=4, level=2)
    half = (exact_high - exact_low) / 2
    assert abs(low - exact_low) < 0.45 * half and abs(high - exact_high) < 0.45 * half


def test_a_calibration_belongs_to_its_partition_whatever_the_order_of_its_classes(narrow_threshold):
    means = clustered_means(seed=9, classes=400, dim=20)
    train, test = np.arange(0, 400, 2), np.arange(1, 400, 2)
    scorer = MeanFID(means)
    first = resampling.calibrated(scorer, (train, test))
    assert resampling.calibrated(scorer, (train[::-1], test[::-1])) is first
    assert resampling.calibrated(scorer, (test, train)) is not first          # sides swapped: another partition
    assert resampling.calibrated(MeanFID(means), (train, test)) is not first  # kept per scorer, never shared


def test_an_exact_draw_on_a_torch_device_matches_numpy():
    """The calibration's exact draws run on CUDA when torch sees a GPU: the same code, here on the CPU."""
    means = clustered_means(seed=10, classes=300, dim=16)
    rng = np.random.default_rng(11)
    part = (rng.choice(150, 150), 150 + rng.choice(150, 150))           # classes repeated, some left out
    on_numpy = resampling.resample_distance(means, part)
    assert resampling.resample_distance(means, part, "cpu") == pytest.approx(on_numpy, rel=1e-10)
    assert on_numpy == pytest.approx(MeanFID(means).distance(*part), rel=1e-10)   # = the repeated classes' FID
    flat = np.c_[means[:, :3], np.zeros((300, 13))]                       # singular scatter: the CPU fallback
    assert resampling.resample_distance(flat, part, "cpu") == pytest.approx(
        resampling.resample_distance(flat, part), rel=1e-10)


def test_the_audit_and_show_adjacent_draw_as_make_splits_does(narrow_threshold, monkeypatch):
    """Re-measured levels (splits audit) and adjacent comparisons (splits show --adjacent) of many wide classes
    take the calibrated draws too: an exact draw only for each level's calibration."""
    from oodml.shift import ClassFeatures
    from oodml.splits.adjacent import compare_adjacent
    from oodml.splits.audit import remeasure_levels

    means = clustered_means(seed=12, classes=700, dim=40)
    cf = ClassFeatures(np.repeat(means, 2, axis=0), np.repeat(np.arange(700), 2))
    order = np.random.default_rng(13).permutation(700)
    levels = [(order[:300], order[300:600]), (order[50:350], np.r_[order[350:600], order[:50]])]
    exact_draws = []
    counting = resampling.resample_distance
    monkeypatch.setattr(resampling, "resample_distance",
                        lambda means, part, device=None: exact_draws.append(part) or counting(means, part, device))
    values, intervals, draws = remeasure_levels(cf, levels, distance="fid", mode="class-mean", draws=60, seed=0)
    assert len(exact_draws) == CALIBRATION_DRAWS * len(levels) and draws.shape == (60, 2)
    assert (intervals[:, 0] <= values).all() and (values <= intervals[:, 1]).all()
    pairs = compare_adjacent(MeanFID(cf.means), levels, num_classes=700, draws=60, seed=1)
    assert len(exact_draws) == 2 * CALIBRATION_DRAWS * len(levels) and len(pairs) == 1
