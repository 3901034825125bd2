"""Distances agree with the textbook formulas and with POT, and reject bad input."""

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from oodml import OodmlError
from oodml.shift import (
    ClassFeatures,
    Gaussian,
    frechet_distance,
    frechet_distance_from_stats,
    frechet_from_terms,
    split_distance,
    trace_sqrt_of_product,
    trace_sqrt_product,
    wasserstein_distance,
)


def textbook_fid(a, b):
    """The formula as usually written (pytorch-fid): scipy sqrtm of the product, real part."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def correlated(rng, n, d, shift=0.0):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


@pytest.mark.parametrize("n1, n2, d", [(400, 300, 20), (60, 80, 50)])
def test_full_rank_agrees_with_textbook_to_1e9(n1, n2, d):
    rng = np.random.default_rng(0)
    a, b = correlated(rng, n1, d), correlated(rng, n2, d, shift=0.3)
    ours, ref = frechet_distance(a, b), textbook_fid(a, b)
    assert ours == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("n1, n2, d", [(30, 40, 64), (12, 50, 128), (100, 100, 256)])
def test_rank_deficient_agrees_with_textbook_to_1e6(n1, n2, d):
    rng = np.random.default_rng(1)
    a, b = correlated(rng, n1, d), correlated(rng, n2, d, shift=0.5)
    assert frechet_distance(a, b) == pytest.approx(textbook_fid(a, b), rel=1e-6)


def test_nuclear_and_symmetric_forms_agree():
    rng = np.random.default_rng(2)
    a, b = correlated(rng, 30, 20), correlated(rng, 25, 20, shift=1.0)
    fast = frechet_distance(a, b)  # both sets have more rows than dimensions: symmetric form
    wide_a, wide_b = np.hstack([a, np.zeros((30, 20))]), np.hstack([b, np.zeros((25, 20))])  # 40 dims
    assert frechet_distance(wide_a, wide_b) == pytest.approx(fast, rel=1e-10)  # fewer rows: nuclear form


def test_the_formula_is_assembled_once_from_its_four_terms():
    rng = np.random.default_rng(5)
    a, b = correlated(rng, 300, 12), correlated(rng, 200, 12, shift=0.4)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    terms = (diff @ diff, np.trace(s1), np.trace(s2), np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
    assert frechet_from_terms(*terms) == pytest.approx(textbook_fid(a, b), rel=1e-12)
    assert frechet_from_terms(*terms) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    assert isinstance(frechet_from_terms(*terms), float)


def test_the_formula_clamps_rounding_below_zero_at_zero_per_partition():
    assert frechet_from_terms(0.0, 1.0, 1.0, 1.0 + 1e-15) == 0.0        # identical sets, rounded a hair under
    values = frechet_from_terms(np.array([0.0, 2.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]),
                                np.array([1.0 + 1e-15, 1.0]))
    assert values.dtype == np.float64 and values.tolist() == [0.0, 2.0]
    assert np.isnan(frechet_from_terms(np.nan, 1.0, 1.0, 1.0))          # NaN is not hidden as a distance of 0


def test_from_stats_reuses_the_cached_square_root():
    rng = np.random.default_rng(3)
    a, b, c = (correlated(rng, 200, 10, shift=s) for s in (0, 1, 2))
    g = Gaussian(a.mean(0), np.cov(a, rowvar=False))
    for other in (b, c):
        direct = frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), other.mean(0),
                                             np.cov(other, rowvar=False))
        assert frechet_distance_from_stats(g, None, other.mean(0), np.cov(other, rowvar=False)) == direct
    assert "sqrt_cov" in g.__dict__


def test_cholesky_trace_term_matches_the_symmetric_square_root_and_survives_a_singular_side():
    rng = np.random.default_rng(4)
    a, b = correlated(rng, 300, 12), correlated(rng, 300, 12, shift=1.0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    symmetric = trace_sqrt_product(Gaussian(a.mean(0), s1), s2)
    assert trace_sqrt_of_product(s1, s2) == pytest.approx(symmetric, rel=1e-10)
    singular = np.cov(a[:, :6] @ rng.normal(size=(6, 12)), rowvar=False)  # rank 6 of 12: no Cholesky factor
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(singular)
    expected = np.trace(scipy.linalg.sqrtm(singular @ s2).real)  # the textbook oracle
    assert trace_sqrt_of_product(singular, s2) == pytest.approx(expected, rel=1e-6)


def test_identical_sets_are_at_distance_zero_never_negative():
    x = np.random.default_rng(4).normal(size=(50, 300))
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(x, x) >= 0


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 12), st.integers(3, 12), st.integers(1, 16), st.integers(0, 2**31))
def test_fid_is_symmetric_and_nonnegative(n1, n2, d, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) + 0.1
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab >= 0 and ab == pytest.approx(ba, rel=1e-7, abs=1e-9)


def test_w2_matches_pot_and_a_hand_computed_case():
    a = np.array([[0.0, 0.0], [2.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 1.0]])
    assert wasserstein_distance(a, b) == pytest.approx(1.0)  # each point moves by 1
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) + 1
    exact, approx = wasserstein_distance(x, y, "emd"), wasserstein_distance(x, y, "sinkhorn", reg=0.01)
    assert approx == pytest.approx(exact, rel=0.1)


def test_gaussians_w2_equals_fid_for_point_masses():
    # For two equal-size shifted copies of one set, W2^2 = FID = squared shift.
    x = np.random.default_rng(6).normal(size=(20, 3))
    shift = np.array([1.0, -2.0, 0.5])
    assert wasserstein_distance(x, x + shift) == pytest.approx(shift @ shift)
    assert frechet_distance(x, x + shift) == pytest.approx(shift @ shift)


def test_samples_mode_union_matches_direct_computation():
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(6), 15)
    feats = rng.normal(size=(90, 4)) + labels[:, None] * 0.3
    cf = ClassFeatures(feats, labels)
    n, mean, cov = cf.union([0, 2, 5])
    rows = feats[np.isin(labels, [0, 2, 5])]
    assert n == 45
    np.testing.assert_allclose(mean, rows.mean(0))
    np.testing.assert_allclose(cov, np.cov(rows, rowvar=False))
    expected = frechet_distance(rows, feats[np.isin(labels, [1, 3, 4])])
    assert split_distance(cf, [0, 2, 5], [1, 3, 4], mode="samples") == pytest.approx(expected, rel=1e-9)
    assert split_distance(cf, [0, 2, 5], [1, 3, 4]) == pytest.approx(
        frechet_distance(cf.means[[0, 2, 5]], cf.means[[1, 3, 4]]))


@pytest.mark.parametrize("bad, message", [
    (np.array([[0.0, np.nan], [1, 1]]), "NaN or inf"),
    (np.zeros((1, 3)), "at least 2 samples"),
    (np.zeros(3), "2-D array"),
])
def test_bad_sets_are_refused(bad, message):
    with pytest.raises(OodmlError, match=message):
        frechet_distance(bad, np.zeros((3, bad.shape[-1] if bad.ndim else 3)))


def test_samples_mode_refuses_single_image_classes():
    cf = ClassFeatures(np.arange(10.0).reshape(5, 2), np.array([0, 0, 1, 2, 2]))
    with pytest.raises(OodmlError, match="class index 1 has 1"):
        split_distance(cf, [0], [1, 2], mode="samples")


def test_samples_mode_says_when_the_scatter_matrices_would_not_fit(monkeypatch):
    monkeypatch.setattr("oodml.shift.physical_memory", lambda: 2**30)
    rng = np.random.default_rng(0)
    cf = ClassFeatures(rng.normal(size=(600, 1024)), np.arange(600) % 300)   # 300 x 1024 x 1024 x 8 B = 2.3 GiB
    with pytest.raises(OodmlError, match="need 2.3 GiB, more than half of this machine's 1 GiB; use --mode class-mean"):
        split_distance(cf, range(150), range(150, 300), mode="samples")


def test_unknown_distance_and_mode():
    cf = ClassFeatures(np.random.default_rng(0).normal(size=(8, 2)), np.repeat(np.arange(4), 2))
    with pytest.raises(OodmlError, match="unknown distance 'kl'"):
        split_distance(cf, [0, 1], [2, 3], distance="kl")
    with pytest.raises(OodmlError, match="unknown feature mode"):
        split_distance(cf, [0, 1], [2, 3], mode="pixels")
