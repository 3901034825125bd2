"""The same split set on every machine: what another BLAS kernel, thread count or device changes
(the last bits of the features and distances) must not change a split set's identity or verdict.

We cannot run on another machine here, so we stand in for one: features perturbed by 1e-12 relative
noise, and the search under 1 and 2 BLAS threads.  Each rebuild must reproduce the published glyphs@v1.
"""

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from oodml.cli import main
from oodml.features import extract_features, get_extractor
from oodml.shift import ClassFeatures, split_distance
from oodml.splits import FeatureConfig, compare, make_splits, read_split_set

PUBLISHED = Path(__file__).resolve().parents[1] / "splits" / "glyphs" / "v1"


@pytest.fixture(scope="module")
def pixel_features(glyphs):
    return extract_features(glyphs, get_extractor("pixels"), device="cpu")


def rebuild(features, out, threads=None):
    """``make_splits("glyphs")`` with its default parameters, on the given features, under ``threads`` BLAS
    threads (the library's default when None)."""
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(limits=threads, user_api="blas"):
        patch.setattr("oodml.splits.make.extract_features", lambda *args, **kwargs: features)
        # v1 would keep the published files
        return make_splits("glyphs", out=out, features=FeatureConfig(device="cpu"), version="rebuilt")


@pytest.fixture(scope="module")
def one_thread(pixel_features, tmp_path_factory):
    """glyphs@v1 rebuilt from the exact features under one BLAS thread."""
    return rebuild(pixel_features, tmp_path_factory.mktemp("one-thread"), threads=1)


@pytest.mark.slow
def test_features_perturbed_by_1e_12_rebuild_the_published_split_set(glyphs, pixel_features, one_thread, tmp_path):
    noisy = pixel_features.astype(np.float64) * (1 + 1e-12 * np.random.default_rng(0).standard_normal(
        pixel_features.shape))
    level = read_split_set(PUBLISHED).level(8)
    # The noise reaches the distances (their last bits differ) ...
    train, test = (np.array([glyphs.class_index[c] for c in names])
                   for names in (level.train_classes, level.test_classes))
    clean_value = split_distance(ClassFeatures(pixel_features, glyphs.labels), train, test)
    noisy_value = split_distance(ClassFeatures(noisy, glyphs.labels), train, test)
    assert clean_value != noisy_value and abs(clean_value - noisy_value) < 1e-9 * clean_value
    # ... but not the split set: same classes and episodes, same digest, same stored bytes.
    ours = rebuild(noisy, tmp_path)
    diff = compare(ours, PUBLISHED)
    assert diff.reproduces, diff.format()
    assert ours.digest == one_thread.digest
    assert (ours.path / "levels.parquet").read_bytes() == (one_thread.path / "levels.parquet").read_bytes()


@pytest.mark.slow
def test_the_search_under_one_and_two_blas_threads_gives_the_same_split_set(pixel_features, one_thread, tmp_path):
    two = rebuild(pixel_features, tmp_path, threads=2)
    for split_set in (one_thread, two):
        diff = compare(split_set, PUBLISHED)
        assert diff.reproduces, diff.format()
    assert one_thread.digest == two.digest


def test_splits_diff_names_the_levels_and_classes_that_differ(tmp_path, capsys):
    from oodml.splits import Level, write_split_set

    published = read_split_set(PUBLISHED)
    levels = list(published.levels)
    lv = levels[2]
    # Swap one train and one test class of level 3, as a greedy step tipped the other way would.
    a, b = lv.tuning_train_classes[0], lv.test_classes[0]
    train = tuple(sorted({*lv.train_classes} - {a} | {b}))
    test = tuple(sorted({*lv.test_classes} - {b} | {a}))
    levels[2] = Level(lv.index, lv.distance * 1.05, lv.ci_low, lv.ci_high, lv.kind, train, test,
                      lv.val_classes, lv.n_train_images, lv.n_test_images, {})
    meta = {k: v for k, v in published.metadata.items() if k not in ("schema_version", "dataset", "version")}
    other = write_split_set(tmp_path, "glyphs", "tipped", tuple(levels), meta)   # glyphs@v1 is taken

    assert main(["splits", "diff", str(other.path), str(PUBLISHED)]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS from" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("3 "))
    assert "2 moved" in row and "30 differ" in row and "beyond tolerance" in row
    assert f"{a}: test in A, train in B" in out and f"{b}: train in A, test in B" in out
    assert all(line.split()[1] == "same" for line in out.splitlines() if line.strip()[:2] in ("1 ", "2 ", "4 "))
    assert main(["splits", "diff", "glyphs@v1", str(PUBLISHED)]) == 0
    assert "reproduces" in capsys.readouterr().out


def test_measured_values_within_the_tolerance_reproduce_and_beyond_it_differ(tmp_path):
    from oodml.splits import Level, write_split_set

    published = read_split_set(PUBLISHED)
    meta = {k: v for k, v in published.metadata.items() if k not in ("schema_version", "dataset", "version")}

    def shifted(rel):
        return tuple(Level(lv.index, lv.distance * (1 + rel), lv.ci_low, lv.ci_high, lv.kind, lv.train_classes,
                           lv.test_classes, lv.val_classes, lv.n_train_images, lv.n_test_images, lv.episode_table)
                     for lv in published.levels)

    # glyphs@v1 is taken; another version, the same in both
    near = write_split_set(tmp_path / "near", "glyphs", "shifted", shifted(2e-3), meta)   # as GPU features do
    far = write_split_set(tmp_path / "far", "glyphs", "shifted", shifted(5e-2), meta)
    assert near.digest == far.digest          # measured values are not part of the identity ...
    assert compare(near, published).reproduces
    assert not compare(far, published).reproduces   # ... but are checked against the tolerance
