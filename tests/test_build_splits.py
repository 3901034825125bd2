"""Building levels from features: glyphs' hard end separates scripts; every level is complete; bad input."""

import collections

import numpy as np
import pytest

from oodml import OodmlError
from oodml.features import extract_features, get_extractor
from oodml.splits import SplitConfig, build_levels

FAST = dict(bootstrap=20, episodes=2)


@pytest.fixture(scope="module")
def glyph_features(glyphs):
    return extract_features(glyphs, get_extractor("pixels"), device="cpu")


@pytest.fixture(scope="module")
def glyph_levels(glyphs, glyph_features):
    return build_levels(glyphs, glyph_features, SplitConfig(**FAST))


def script_separation(glyphs, level):
    """Total variation distance between the script-group mix of the train and the test classes."""
    group = dict(zip((glyphs.classes[k] for k in glyphs.labels), glyphs.metadata["group"], strict=True))
    train = collections.Counter(group[c] for c in level.train_classes)
    test = collections.Counter(group[c] for c in level.test_classes)
    names = set(train) | set(test)
    n_tr, n_te = sum(train.values()), sum(test.values())
    return 0.5 * sum(abs(train[g] / n_tr - test[g] / n_te) for g in names)


def test_glyph_levels_separate_the_scripts_at_the_hard_end(glyphs, glyph_levels):
    levels, info = glyph_levels
    separation = [script_separation(glyphs, lv) for lv in levels]
    assert separation[0] < 0.15                      # easiest: both sides mix all scripts
    assert max(separation[-3:]) > 0.35               # hardest: scripts pulled apart
    assert separation[-1] > 2 * separation[0]
    hardest = levels[-1]
    group = dict(zip((glyphs.classes[k] for k in glyphs.labels), glyphs.metadata["group"], strict=True))
    box = [c for c in hardest.train_classes + hardest.test_classes if group[c] == "box-drawing"]
    on_test = sum(group[c] == "box-drawing" for c in hardest.test_classes)
    assert on_test / len(box) > 0.9                  # box drawing ends up almost entirely on one side


def test_every_level_is_complete(glyphs, glyph_levels):
    levels, info = glyph_levels
    assert [lv.index for lv in levels] == list(range(1, 9))
    assert [lv.distance for lv in levels] == sorted(lv.distance for lv in levels)
    assert levels[0].distance <= info["default_distance"] <= levels[-1].distance
    for lv in levels:
        assert len(lv.train_classes) == len(lv.test_classes)
        assert set(lv.val_classes) < set(lv.train_classes)
        assert abs(len(lv.val_classes) / len(lv.train_classes) - 0.25) < 0.01
        assert lv.ci_low <= lv.distance <= lv.ci_high
        assert lv.n_train_images == 32 * len(lv.train_classes)
        for shots in (2, 5, 10):
            episodes = lv.episodes(shots)
            assert len(episodes) == 2
            support = episodes[0].support
            assert set(support) == set(lv.test_classes)
            assert all(len(ids) == shots for ids in support.values())
            first = lv.test_classes[0]
            assert all(sid.startswith(first.split()[0] + "/") for sid in support[first])
        assert lv.episodes(2)[0].support != lv.episodes(2)[1].support


def test_features_with_nan_are_refused(glyphs, glyph_features):
    broken = glyph_features.copy()
    broken[7, 3] = np.nan
    with pytest.raises(OodmlError, match="NaN or inf .*row 7"):
        build_levels(glyphs, broken, SplitConfig(**FAST))


def test_samples_mode_with_a_single_image_class_is_refused(tmp_path):
    from fixtures import write_jpeg

    from oodml.datasets import load_dataset

    for k in range(8):
        for j in range(3):
            write_jpeg(tmp_path / f"class{k}" / f"{j}.jpg", seed=10 * k + j)
    write_jpeg(tmp_path / "lonely" / "only.jpg", seed=1)
    ds = load_dataset("imagefolder", root=tmp_path)
    feats = np.random.default_rng(0).normal(size=(len(ds), 4))
    with pytest.raises(OodmlError, match="at least 2 images per class"):
        build_levels(ds, feats, SplitConfig(mode="samples", levels=2, **FAST))


def test_fewer_classes_than_levels_need(tmp_path):
    from fixtures import build_imagefolder

    from oodml.datasets import load_dataset

    build_imagefolder(tmp_path)
    ds = load_dataset("imagefolder", root=tmp_path)
    with pytest.raises(OodmlError, match="3 classes are too few to split"):
        build_levels(ds, np.zeros((len(ds), 4)), SplitConfig())


def test_oodml_algorithm_builds_levels_too(glyphs, glyph_features):
    levels, _ = build_levels(glyphs, glyph_features, SplitConfig(algorithm="oodml", **FAST))
    assert len(levels) == 8
    assert [lv.distance for lv in levels] == sorted(lv.distance for lv in levels)
    assert levels[-1].distance > levels[0].distance
