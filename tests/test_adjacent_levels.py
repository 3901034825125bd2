"""Distinct levels: the paired class bootstrap of adjacent levels, --levels auto, --keep-classes, the search
recorded as what ran, and the interval helpers of oodml.stats."""

import json
import math

import numpy as np
import pytest
from cli_run import one_line_error, run
from test_small_splits import write_image_folder

from oodml import OodmlError
from oodml._fs import file_digest
from oodml.cli import main
from oodml.splits import SplitConfig, load, make_splits, read_split_set, write_split_set
from oodml.splits.adjacent import AdjacentPair, adjacent_pairs, not_distinct_note, paired_draws, pairs_from_metadata
from oodml.splits.levels import bootstrap_interval
from oodml.splits.manifest import SCHEMA_VERSION
from oodml.stats import percentile_interval, resample_counts, shifted_interval, with_counts

# --- oodml.stats -----------------------------------------------------------------------------------------


def test_shifted_interval_is_the_percentile_interval_moved_onto_the_estimate():
    draws = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, np.nan])    # the NaN is ignored
    lo, mid, hi = np.quantile(draws[:-1], [0.025, 0.5, 0.975])
    low, high = shifted_interval(3.0, draws)
    assert (low, high) == pytest.approx((3.0 - (mid - lo), 3.0 + (hi - mid)), abs=1e-12)
    assert shifted_interval(3.0, draws, bounds=(2.5, 4.0)) == pytest.approx((2.5, 4.0))
    assert all(math.isnan(x) for x in shifted_interval(1.0, np.array([np.nan])))
    assert percentile_interval(draws[:-1]) == pytest.approx((lo, hi), abs=1e-12)


def test_a_level_interval_keeps_its_numbers():
    """bootstrap_interval now calls oodml.stats: the same draws give the same interval as its own arithmetic."""
    means = np.random.default_rng(0).normal(size=(12, 3))

    def distances(partitions):
        return np.array([np.linalg.norm(means[tr].mean(0) - means[te].mean(0)) ** 2 for tr, te in partitions])

    train, test = np.arange(6), np.arange(6, 12)
    from oodml.seeding import rng_for

    rng = rng_for(7, "bootstrap", 2)
    values = distances([(rng.choice(train, size=6), rng.choice(test, size=6)) for _ in range(50)])
    estimate = distances([(train, test)])[0]
    lo, mid, hi = np.quantile(values, [0.025, 0.5, 0.975])
    expected = (max(estimate - (mid - lo), 0.0), estimate + (hi - mid))
    assert bootstrap_interval(distances, train, test, draws=50, seed=7, level=2) == expected   # bit for bit


def test_resample_counts_and_one_resample_applied_to_two_sets():
    counts = resample_counts(10, 4, np.random.default_rng(1))
    assert counts.shape == (4, 10) and (counts.sum(1) == 10).all() and (counts >= 0).all()
    row = counts[0]
    a, b = with_counts(np.array([0, 1, 2]), row), with_counts(np.array([2, 3]), row)
    assert len(a) == row[[0, 1, 2]].sum() and len(b) == row[[2, 3]].sum()
    assert (a == 2).sum() == (b == 2).sum() == row[2]                  # a shared class weighs alike in both


# --- the paired comparison -------------------------------------------------------------------------------

def mean_gap(means):
    def distances(partitions):
        return np.array([float(np.sum((means[tr].mean(0) - means[te].mean(0)) ** 2)) for tr, te in partitions])
    return distances


def test_a_level_compared_with_itself_is_not_distinct_and_pairs_are_deterministic():
    means = np.random.default_rng(2).normal(size=(10, 2))
    same = (np.arange(5), np.arange(5, 10))
    estimates, draws = paired_draws(mean_gap(means), [same, same], num_classes=10, draws=60, seed=0)
    assert draws.shape == (60, 2) and np.array_equal(draws[:, 0], draws[:, 1])    # paired: identical draws
    (pair,) = adjacent_pairs(estimates, draws)
    assert pair.difference == pair.ci_low == pair.ci_high == 0.0 and not pair.distinct
    again = paired_draws(mean_gap(means), [same, same], num_classes=10, draws=60, seed=0)[1]
    other = paired_draws(mean_gap(means), [same, same], num_classes=10, draws=60, seed=1)[1]
    assert np.array_equal(again, draws) and not np.array_equal(other, draws)


def test_two_levels_far_apart_are_distinct_and_a_small_step_is_not():
    # 20 classes on a line; the sides' mean gap grows with how many far classes sit on the test side
    means = np.linspace(0, 1, 20)[:, None]
    near = (np.arange(0, 20, 2), np.arange(1, 20, 2))                   # interleaved: small distance
    step = (np.r_[np.arange(0, 18, 2), 19], np.r_[np.arange(1, 19, 2), 18])   # one swap further
    far = (np.arange(10), np.arange(10, 20))                            # halves: large distance
    estimates, draws = paired_draws(mean_gap(means), [near, step, far], num_classes=20, draws=200, seed=0)
    small, large = adjacent_pairs(estimates, draws)
    assert large.distinct and large.ci_low > 0 and large.difference > 0
    assert small.levels == (1, 2) and small.ci_low <= small.difference <= small.ci_high
    assert "levels 1-2 are not distinct" in not_distinct_note([AdjacentPair((1, 2), 0.1, -0.1, 0.3), large])
    assert not_distinct_note([large]) is None


GOOD = {"levels": [1, 2], "difference": 1.5, "ci_low": 0.5, "ci_high": 2.5, "distinct": True}


@pytest.mark.parametrize("value, problem", [
    ({"1-2": GOOD}, "not a list"),
    ([GOOD, GOOD], "2 entries for 2 levels, expected 1"),
    ([{**GOOD, "levels": [2, 3]}], "compares levels [2, 3], expected [1, 2]"),
    ([{**GOOD, "ci_low": float("nan")}], "not a finite number"),
    ([{**GOOD, "ci_low": "0.5"}], "not a finite number"),
    ([{**GOOD, "difference": True}], "not a finite number"),
    ([{**GOOD, "ci_high": 1.0}], "difference outside its interval"),
    ([{**GOOD, "distinct": False}], "says distinct False for an interval from 0.5"),
    ([{**GOOD, "distinct": "yes"}], "says distinct 'yes'"),
    ([{**GOOD, "extra": 1}], "expected an object with keys"),
    (["1-2"], "expected an object with keys"),
])
def test_a_malformed_record_is_named_in_one_line(value, problem):
    with pytest.raises(OodmlError) as error:
        pairs_from_metadata(value, 2, "split set X")
    assert problem in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("split set X: metadata.json has malformed adjacent_levels (")


def test_a_well_formed_record_reads_back():
    assert pairs_from_metadata([GOOD], 2, "x") == (AdjacentPair((1, 2), 1.5, 0.5, 2.5),)


# --- the manifest: outside the digest, checked on load --------------------------------------------------

def two_levels():
    from oodml.splits import Episode, Level

    train, test = tuple(f"c{i}" for i in range(4)), tuple(f"c{i}" for i in range(4, 8))
    support = {c: (f"{c}/0.png",) for c in test}
    return tuple(Level(k, float(k), k - 0.5, k + 0.5, "swap", train, test, ("c1",), 8, 8,
                       {1: (Episode(1, 0, support),)}) for k in (1, 2))


def test_adjacent_levels_are_outside_the_digest_and_stored_rounded(tmp_path):
    plain = write_split_set(tmp_path / "a", "toy", "v1", two_levels(), {})
    record = [{**GOOD, "difference": 1.0 / 3.0}]
    record[0]["ci_low"], record[0]["ci_high"] = 0.1, 2.0
    noted = write_split_set(tmp_path / "b", "toy", "v1", two_levels(), {"adjacent_levels": record})
    assert plain.digest == noted.digest and noted.schema_version == SCHEMA_VERSION == 3
    assert noted.metadata["adjacent_levels"][0]["difference"] == 0.333333
    assert "adjacent_levels" in noted.metadata["canonical_form"]["digest_excludes"]


def tamper_metadata(folder, change):
    """Edit metadata.json and update its sha256 (the digest leaves adjacent_levels out, so it still matches)."""
    metadata = json.loads((folder / "metadata.json").read_text())
    change(metadata)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    sums = json.loads((folder / "checksums.json").read_text())
    sums["files"]["metadata.json"] = file_digest(folder / "metadata.json")
    (folder / "checksums.json").write_text(json.dumps(sums))


@pytest.mark.parametrize("corrupt, problem", [
    (lambda m: m["adjacent_levels"][0].update(distinct=False), "says distinct False"),
    (lambda m: m.update(adjacent_levels="distinct"), "not a list"),
    (lambda m: m["adjacent_levels"].append(GOOD), "2 entries for 2 levels"),
    (lambda m: m["adjacent_levels"][0].update(ci_low=None), "not a finite number"),
])
def test_corrupt_adjacent_levels_in_a_local_set_are_refused_in_one_line(tmp_path, corrupt, problem):
    write_split_set(tmp_path, "toy", "v1", two_levels(), {"adjacent_levels": [GOOD]})
    folder = tmp_path / "toy" / "v1"
    tamper_metadata(folder, corrupt)
    with pytest.raises(OodmlError, match="malformed adjacent_levels"):
        read_split_set(folder)
    line = one_line_error(*run("splits", "show", str(folder)))
    assert problem in line and "restore the split set" in line


def test_published_split_sets_keep_their_digests_and_show_how_to_compare_levels(capsys):
    glyphs = load("glyphs", "v1")
    assert glyphs.digest == "0579614cfe49f21da33814429363bb15ef6addd582498fd1ef2c8a51eec518b9"
    assert "adjacent_levels" not in glyphs.metadata and glyphs.metadata["algorithm"] == "greedy"
    assert main(["-q", "splits", "show", "cars196@oodml-v1"]) == 0
    assert "adjacent levels: not recorded; `oodml splits show" in capsys.readouterr().out


# --- make-splits on small folders -----------------------------------------------------------------------

def make(tmp_path, *options, classes=10):
    root = tmp_path / f"images{classes}"
    if not root.exists():
        write_image_folder(root, classes)
    out = tmp_path / "splits"
    code = main(["-q", "make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels", "--shots", "2",
                 "--episodes", "2", "--bootstrap", "100", "--out", str(out), *options])
    return code, root, out / "imagefolder"


def test_ten_classes_overlap_make_splits_says_so_and_show_recomputes_the_same(tmp_path, capsys):
    code, root, splits = make(tmp_path)
    assert code == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "are not distinct" in line]
    assert len(warning) == 1 and warning[0].startswith("oodml: warning: levels 1-2, ")
    assert "NOT distinct" in captured.out and "adjacent levels: distance difference" in captured.out
    metadata = json.loads((splits / "v1" / "metadata.json").read_text())
    recorded = pairs_from_metadata(metadata["adjacent_levels"], 8, "x")
    assert [p.levels for p in recorded] == [(k, k + 1) for k in range(1, 8)]
    assert not all(p.distinct for p in recorded)
    # the search recorded is the one that ran; the option given stays in parameters
    assert metadata["algorithm"] == "exhaustive" and metadata["parameters"]["algorithm"] == "greedy"
    assert "algorithm exhaustive" in captured.out
    # splits show: the recorded pairs, then the same pairs recomputed on the data
    assert main(["-q", "splits", "show", str(splits / "v1"), "--adjacent", "--root", str(root),
                 "--extractor", "pixels"]) == 0
    shown = capsys.readouterr()
    assert "(computed now in pixels-16 features)" in shown.out and "are not distinct" in shown.err
    rows = [line.split() for line in shown.out.splitlines() if line.startswith("  levels ")]
    again = [float(row[2]) for row in rows]
    assert again == pytest.approx([p.difference for p in recorded], rel=1e-3)
    # the same command again is a no-op (the algorithm option is compared with what was asked, not what ran)
    assert make(tmp_path)[0] == 0


def test_levels_auto_makes_fewer_levels_that_are_all_distinct(tmp_path, capsys):
    code, _, splits = make(tmp_path, "--levels", "auto")
    assert code == 0
    metadata = json.loads((splits / "v1" / "metadata.json").read_text())
    pairs = pairs_from_metadata(metadata["adjacent_levels"], metadata["parameters"]["levels"], "x")
    assert 2 <= len(pairs) + 1 < 8 and all(p.distinct for p in pairs)
    assert metadata["levels_auto"]["most"] == 8 and metadata["levels_auto"]["tried"][0] == 8
    assert metadata["levels_auto"]["tried"][-1] == len(pairs) + 1
    out = capsys.readouterr()
    assert "levels: auto, the most (at most 8)" in out.out and "are not distinct" not in out.err


def synthetic(num_classes, per_class=2, dim=3, noise=0.01):
    """A dataset without images: ``num_classes`` random class centres in ``dim`` features, tight classes."""
    from pathlib import Path

    from oodml.datasets.base import ImageDataset

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(num_classes), per_class)
    features = rng.normal(size=(num_classes, dim))[labels] + noise * rng.normal(size=(len(labels), dim))
    ds = ImageDataset("synthetic", Path("."), "synthetic", [f"c{k}/{i}" for i, k in enumerate(labels)], labels,
                      [f"c{k:03d}" for k in range(num_classes)])
    return ds, features


def test_levels_auto_keeps_all_8_levels_when_they_are_distinct():
    """120 classes spread in 3 dimensions: the 8 default levels are all distinct, so auto keeps 8 (one search)."""
    from oodml.splits.build import build_levels

    ds, features = synthetic(120)
    levels, info = build_levels(ds, features, SplitConfig(levels="auto", bootstrap=100, shots=(1,), episodes=1))
    assert len(levels) == 8 and info["levels_tried"] == [8] and info["config"].levels == 8
    assert all(pair.distinct for pair in info["adjacent_levels"]) and info["algorithm"] == "greedy"
    # the same levels as asking for 8: auto only chose the count
    fixed, _ = build_levels(ds, features, SplitConfig(levels=8, bootstrap=100, shots=(1,), episodes=1))
    assert [lv.test_classes for lv in fixed] == [lv.test_classes for lv in levels]


@pytest.mark.parametrize("options, message", [
    (["--levels", "auto", "--bootstrap", "0"], "--levels auto tells levels apart by bootstrap draws"),
    (["--levels", "Auto"], "argument --levels: expected 'auto' or a whole number of levels"),
    (["--levels", "auto8"], "argument --levels: expected 'auto' or a whole number of levels"),
    (["--levels", "0"], "argument --levels: expected 'auto' or a whole number of levels"),
    (["--levels", "1"], "--levels must be at least 2 (got 1)"),
    (["--keep-classes", "--removal-levels", "2"], "--keep-classes builds swap levels only"),
    (["--keep-classes", "--removal-levels", "-1"], "argument --removal-levels"),
])
def test_bad_level_options_are_one_line_and_write_nothing(tmp_path, options, message):
    root = write_image_folder(tmp_path / "images", 4, per_class=3)
    out = tmp_path / "splits"
    line = one_line_error(*run("make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels",
                               "--out", str(out), *options))
    assert message in line
    assert not out.exists() or not any(out.rglob("*"))


def test_bad_levels_in_the_python_api_are_named():
    for levels in ("Auto", 2.5, True, None):
        with pytest.raises(OodmlError, match=r"--levels must be a whole number of at least 2 or 'auto'"):
            SplitConfig(levels=levels).validate(10)
    with pytest.raises(OodmlError, match="builds swap levels only"):
        make_splits("glyphs", config=SplitConfig(removal_levels=1), keep_classes=True)


def test_keep_classes_makes_swap_levels_at_one_class_count(tmp_path, capsys):
    code, _, splits = make(tmp_path, "--keep-classes", "--bootstrap", "0")
    assert code == 0
    split_set = read_split_set(splits / "v1")
    assert {lv.kind for lv in split_set.levels} == {"swap"}
    assert {(len(lv.train_classes), len(lv.test_classes)) for lv in split_set.levels} == {(5, 5)}
    assert split_set.metadata["keep_classes"] is True and split_set.metadata["parameters"]["removal_levels"] == 0
    printed = capsys.readouterr().out
    assert "class counts: kept (--keep-classes)" in printed and "adjacent levels: not compared" in printed
    # given explicitly, 0 removal levels agree with --keep-classes
    assert make(tmp_path, "--keep-classes", "--removal-levels", "0", "--bootstrap", "0", "--version", "v2")[0] == 0


def test_show_adjacent_refuses_data_it_cannot_use_in_one_line(tmp_path):
    code, root, splits = make(tmp_path, "--bootstrap", "0")
    assert code == 0
    folder = str(splits / "v1")
    # other data than the split set was made from: named by its fingerprint
    other = write_image_folder(tmp_path / "other", 10, per_class=5)
    line = one_line_error(*run("splits", "show", folder, "--adjacent", "--root", str(other), "--extractor", "pixels"))
    assert "were made from data with fingerprint" in line
    # no data at all
    line = one_line_error(*run("splits", "show", folder, "--adjacent", "--root", str(tmp_path / "missing"),
                               "--extractor", "pixels"))
    assert str(tmp_path / "missing") in line
    # draws must be at least 1
    line = one_line_error(*run("splits", "show", folder, "--adjacent", "--bootstrap", "0"))
    assert "argument --bootstrap" in line
    # a split set made with --bootstrap 0 records no comparison and says so; --adjacent still compares
    assert "adjacent_levels" not in read_split_set(splits / "v1").metadata
    code, lines = run("splits", "show", folder, "--adjacent", "--root", str(root), "--extractor", "pixels",
                      "--bootstrap", "30")
    assert code == 0 and any("are not distinct" in line for line in lines)


def test_levels_auto_that_finds_no_distinct_count_makes_2_levels_and_says_so():
    from oodml.splits.build import build_levels

    ds, features = synthetic(30)
    config = SplitConfig(levels="auto", algorithm="oodml", bootstrap=50, shots=(1,), episodes=1)
    with pytest.warns(UserWarning, match=r"--levels auto found no level count with every adjacent pair distinct "
                                         r"and made the fewest, 2"):
        levels, info = build_levels(ds, features, config)
    assert len(levels) == 2 and info["levels_tried"][-1] == 2 and not info["adjacent_levels"][0].distinct
