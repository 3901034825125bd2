"""Every split set committed under splits/ verifies, and the published ones say what they should."""

from pathlib import Path

import pytest

from oodml.splits import read_split_set

SPLITS = Path(__file__).resolve().parents[1] / "splits"
PUBLISHED = sorted(p.parent for p in SPLITS.glob("*/*/checksums.json"))


def test_the_two_reference_split_sets_are_published():
    names = {f"{p.parent.name}@{p.name}" for p in PUBLISHED}
    assert {"glyphs@v1", "cars196@oodml-v1"} <= names


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: f"{p.parent.name}@{p.name}")
def test_published_split_set_verifies(path):
    split_set = read_split_set(path)
    distances = [lv.distance for lv in split_set.levels]
    assert distances == sorted(distances) and len(distances) == 8


def test_glyphs_v1_matches_the_current_glyphs_dataset(glyphs):
    split_set = read_split_set(SPLITS / "glyphs" / "v1")
    assert split_set.metadata["dataset_fingerprint"] == glyphs.fingerprint
    names = set(glyphs.classes)
    for lv in split_set.levels:
        assert set(lv.train_classes) | set(lv.test_classes) <= names
        ids = {sid for ep in lv.episodes(10) for v in ep.support.values() for sid in v}
        assert ids <= set(glyphs.sample_ids)


def test_cars196_oodml_v1_keeps_the_published_fids():
    split_set = read_split_set(SPLITS / "cars196" / "oodml-v1")
    assert [round(lv.distance, 2) for lv in split_set.levels] == [8.59, 14.33, 32.18, 43.58, 63.29, 86.12,
                                                                   101.17, 123.03]
    assert split_set.metadata["distance_source"] == "published"
