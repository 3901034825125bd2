"""Manifests: round trip, content digest, immutability, and every kind of tampering caught."""

import json

import numpy as np
import pytest

from oodml import OodmlError
from oodml.splits import Episode, Level, load, read_split_set, write_split_set


def make_levels(shift=0.0):
    levels = []
    for k in (1, 2):
        train, test = tuple(f"c{i}" for i in range(4)), tuple(f"c{i}" for i in range(4, 8))
        support = {c: (f"{c}/img0.png", f"{c}/img1.png") for c in test}
        levels.append(Level(k, k + shift, k - 0.1, k + 0.1, "swap", train, test, ("c1",), 40, 40,
                            {2: (Episode(2, 0, support), Episode(2, 1, support))}))
    return tuple(levels)


@pytest.fixture
def published(tmp_path):
    write_split_set(tmp_path, "toy", "v1", make_levels(), {"created_at": "2026-01-01T00:00:00+00:00"})
    return tmp_path / "toy" / "v1"


def test_round_trip_keeps_every_field(published):
    split_set = read_split_set(published)
    assert [lv.index for lv in split_set.levels] == [1, 2]
    lv = split_set.level(2)
    assert lv.distance == 2.0 and (lv.ci_low, lv.ci_high) == (1.9, 2.1)
    assert lv.test_classes == ("c4", "c5", "c6", "c7") and lv.val_classes == ("c1",)
    assert lv.tuning_train_classes == ("c0", "c2", "c3")
    assert lv.episodes(2)[1].support["c5"] == ("c5/img0.png", "c5/img1.png")
    assert split_set.metadata["schema_version"] == 3
    with pytest.raises(OodmlError, match="no 5-shot episodes; available: 2"):
        lv.episodes(5)


def test_republishing_identical_content_is_a_no_op(published, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in published.iterdir()}
    again = write_split_set(tmp_path, "toy", "v1", make_levels(), {"created_at": "2027-05-05T00:00:00+00:00"})
    assert again.digest == read_split_set(published).digest
    assert {p.name: p.stat().st_mtime_ns for p in published.iterdir()} == before


def test_different_content_under_a_published_version_is_refused(published, tmp_path):
    with pytest.raises(OodmlError, match="already published .* immutable"):
        write_split_set(tmp_path, "toy", "v1", make_levels(shift=0.5), {})


@pytest.mark.parametrize("tamper, message", [
    (lambda d: (d / "levels.parquet").write_bytes((d / "levels.parquet").read_bytes()[:-9] + b"123456789"),
     "levels.parquet does not match its sha256"),
    (lambda d: (d / "episodes.parquet").unlink(), "missing file episodes.parquet"),
    (lambda d: (d / "notes.txt").write_text("hi"), "foreign file 'notes.txt'"),
    (lambda d: (d / "checksums.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "metadata.json").write_text("{}"), "metadata.json does not match its sha256"),
])
def test_tampering_is_caught_on_load(published, tamper, message):
    tamper(published)
    with pytest.raises(OodmlError, match=message):
        read_split_set(published)


def test_consistent_rehash_of_tampered_content_still_fails_the_digest(published):
    import hashlib

    meta = json.loads((published / "metadata.json").read_text())
    meta["seed"] = 12345
    (published / "metadata.json").write_text(json.dumps(meta))
    sums = json.loads((published / "checksums.json").read_text())
    sums["files"]["metadata.json"] = hashlib.sha256((published / "metadata.json").read_bytes()).hexdigest()
    (published / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(OodmlError, match="content digest .* does not match"):
        read_split_set(published)


def test_schema_from_the_future_is_refused(published):
    sums = json.loads((published / "checksums.json").read_text())
    sums["schema_version"] = 99
    (published / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(OodmlError, match="schema version 99 is newer"):
        read_split_set(published)


def test_load_finds_versions_on_the_search_path(published, tmp_path, monkeypatch):
    write_split_set(tmp_path, "toy", "v2", make_levels(shift=1.0), {"created_at": "2026-02-01T00:00:00+00:00"})
    monkeypatch.setenv("OODML_SPLITS", str(tmp_path))
    assert load("toy").version == "v2"                      # latest by creation time
    assert load("toy", "v1").level(1).distance == 1.0
    with pytest.raises(OodmlError, match="no published split set toy@v9; published versions: v1, v2"):
        load("toy", "v9")


def test_bad_version_names_and_no_partial_directory(tmp_path):
    with pytest.raises(OodmlError, match="version name '../evil'"):
        write_split_set(tmp_path, "toy", "../evil", make_levels(), {})
    assert not any(tmp_path.rglob("*.parquet"))


def test_nan_intervals_survive_the_round_trip(tmp_path):
    levels = tuple(Level(lv.index, lv.distance, np.nan, np.nan, lv.kind, lv.train_classes, lv.test_classes,
                         lv.val_classes, -1, -1, {}) for lv in make_levels())
    split_set = write_split_set(tmp_path, "toy", "nan", levels, {})
    assert np.isnan(split_set.level(1).ci_low) and split_set.level(1).n_train_images == -1


def test_a_level_without_test_classes_is_refused_before_anything_is_written(tmp_path):
    lv = make_levels()[0]
    empty = Level(lv.index, lv.distance, lv.ci_low, lv.ci_high, lv.kind, lv.train_classes, (), lv.val_classes,
                  40, 0, {})
    with pytest.raises(OodmlError, match="level 1 has 0 test classes"):
        write_split_set(tmp_path, "toy", "v1", (empty, make_levels()[1]), {})
    assert not (tmp_path / "toy").exists()


def test_a_consistently_rehashed_malformed_split_set_fails_verify(published, capsys):
    import pyarrow.parquet as pq

    from oodml._fs import file_digest
    from oodml.cli import main
    from oodml.splits.manifest import content_digest, levels_to_tables

    lv = make_levels()[1]
    overlap = Level(lv.index, lv.distance, lv.ci_low, lv.ci_high, lv.kind, lv.train_classes,
                    lv.test_classes + ("c0",), lv.val_classes, 40, 40, {})
    tables = levels_to_tables((make_levels()[0], overlap))
    pq.write_table(tables["classes"], published / "classes.parquet")
    pq.write_table(tables["episodes"], published / "episodes.parquet")
    sums = json.loads((published / "checksums.json").read_text())
    sums["files"] = {name: file_digest(published / name) for name in sums["files"]}
    sums["digest"] = content_digest({**tables, "levels": pq.read_table(published / "levels.parquet")},
                                    json.loads((published / "metadata.json").read_text()))
    (published / "checksums.json").write_text(json.dumps(sums))
    assert main(["splits", "verify", str(published)]) == 2
    assert "level 2 has class 'c0' on both sides" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1", 1.0, True, None, [1], -1, 0])
def test_checksums_with_a_malformed_schema_version_give_one_line(published, value):
    sums = json.loads((published / "checksums.json").read_text())
    sums["schema_version"] = value
    (published / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(OodmlError, match="expected a positive integer") as info:
        read_split_set(published)
    assert "\n" not in str(info.value)


def test_measured_values_are_stored_to_six_significant_digits_and_left_out_of_the_digest(tmp_path):
    a = write_split_set(tmp_path / "a", "toy", "v1", make_levels(shift=1e-9), {"default_distance": 0.1 + 1e-12})
    b = write_split_set(tmp_path / "b", "toy", "v1", make_levels(), {"default_distance": 0.1})
    assert a.level(1).distance == 1.0 and a.metadata["default_distance"] == 0.1
    assert a.digest == b.digest
    assert a.metadata["canonical_form"]["measured_values_significant_digits"] == 6
    moved = tuple(Level(lv.index, lv.distance, lv.ci_low, lv.ci_high, lv.kind, lv.test_classes, lv.train_classes,
                        (), 40, 40, {}) for lv in make_levels())
    c = write_split_set(tmp_path / "c", "toy", "v1", moved, {"default_distance": 0.1})
    assert c.digest != b.digest                       # classes are the identity
