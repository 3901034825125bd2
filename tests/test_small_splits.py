"""Split levels from few classes: every balanced split scored, levels chosen exactly; from 4 classes up."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from oodml import OodmlError
from oodml.cli import main
from oodml.shift import frechet_distance
from oodml.splits import SplitConfig, swap_progression
from oodml.splits.build import fit_levels
from oodml.splits.distance import MeanFID, Scorer
from oodml.splits.search import (
    balanced_split_count,
    balanced_splits,
    exhaustive_fits,
    exhaustive_levels,
    greedy_levels,
    oodml_parameters,
    seeded_split,
)


class SideWeightScorer(Scorer):
    """A tiny random scorer: |sum of the train classes' weights - sum of the test classes'|, symmetric in the sides."""

    def __init__(self, num_classes, seed=0):
        self.weights = np.random.default_rng(seed).normal(size=num_classes)
        self.means = self.weights[:, None]

    def distances(self, partitions):
        return np.array([abs(self.weights[tr].sum() - self.weights[te].sum()) for tr, te in partitions])


def random_mean_fid(num_classes):
    return MeanFID(np.random.default_rng(num_classes).normal(size=(num_classes, 5)))


def brute_force(scorer, classes):
    """Distance of every split of ``classes`` into two halves, each split once (as a sorted list)."""
    classes, half = sorted(classes), len(classes) // 2
    values = [scorer.distance(np.array(train), np.array(sorted(set(classes) - set(train))))
              for train in itertools.combinations(classes, half) if classes[0] in train]
    return sorted(values)


def used_classes(result):
    return sorted(result.default.train + result.default.test)


@pytest.mark.parametrize("num_classes, expected", [(4, 3), (5, 3), (6, 10), (10, 126), (20, 92_378), (21, 92_378)])
def test_balanced_split_count(num_classes, expected):
    assert balanced_split_count(num_classes) == expected


def test_balanced_splits_are_every_split_into_halves_once():
    first, second = balanced_splits(np.array([3, 5, 8, 9, 11, 12]))
    assert first.shape == second.shape == (10, 3)
    splits = {frozenset(map(frozenset, (a, b))) for a, b in zip(first.tolist(), second.tolist(), strict=True)}
    assert len(splits) == 10
    assert all(set(a) | set(b) == {3, 5, 8, 9, 11, 12} and 3 in a for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("num_classes", [4, 7, 10, 12])
@pytest.mark.parametrize("make_scorer", [SideWeightScorer, random_mean_fid])
def test_exhaustive_search_finds_the_true_easiest_and_hardest_splits(num_classes, make_scorer):
    scorer = make_scorer(num_classes)
    levels = min(5, balanced_split_count(num_classes))
    result = exhaustive_levels(scorer, num_classes, levels=levels, removal_levels=0, seed=3)
    every = brute_force(scorer, used_classes(result))
    dist = [s.distance for s in result.levels]
    assert len(dist) == levels and np.all(np.diff(dist) > 0)      # strictly increasing
    assert dist[0] == pytest.approx(every[0], abs=1e-9) and dist[-1] == pytest.approx(every[-1], abs=1e-9)
    assert len({frozenset(s.train) for s in result.levels}) == levels                # no split used twice
    assert result.search == {"method": "exhaustive", "partitions": len(every)}
    for s in result.levels:
        assert len(s.train) == len(s.test) == num_classes // 2 and set(s.train).isdisjoint(s.test)
        assert s.distance == pytest.approx(scorer.distance(np.array(s.train), np.array(s.test)), rel=1e-9)


def test_intermediate_levels_are_the_splits_nearest_evenly_spaced_targets():
    scorer = SideWeightScorer(10, seed=1)
    result = exhaustive_levels(scorer, 10, levels=6, removal_levels=0)
    every = np.array(brute_force(scorer, range(10)))
    for level, target in zip(result.levels, np.linspace(every[0], every[-1], 6), strict=True):
        assert level.distance == pytest.approx(every[np.argmin(np.abs(every - target))], abs=1e-12)


def test_odd_class_counts_leave_out_the_class_the_default_split_leaves_out():
    scorer = MeanFID(np.random.default_rng(0).normal(size=(9, 6)))
    result = exhaustive_levels(scorer, 9, levels=6, removal_levels=0, seed=5)
    train, test = seeded_split(9, seed=5)
    (left_out,) = set(range(9)) - set(train) - set(test)
    assert result.default.train == tuple(train) and result.default.test == tuple(test)
    assert all(left_out not in s.train + s.test and len(s.train) == len(s.test) == 4 for s in result.levels)
    assert result.search["partitions"] == balanced_split_count(9) == 35


def test_removal_levels_continue_beyond_the_hardest_split_down_to_half_the_classes():
    means = np.random.default_rng(2).normal(size=(12, 8))
    result = exhaustive_levels(MeanFID(means), 12, levels=8, removal_levels=2)
    swaps = [s for s in result.levels if s.kind == "swap"]
    removals = [s for s in result.levels if s.kind == "removal"]
    assert swaps[-1].distance == pytest.approx(max(brute_force(MeanFID(means), range(12))))
    assert removals and all(s.distance > swaps[-1].distance and 3 <= len(s.train) == len(s.test) < 6
                            for s in removals)


def test_two_classes_per_side_have_no_room_for_removal_so_all_levels_are_swaps():
    result = exhaustive_levels(SideWeightScorer(4), 4, levels=3, removal_levels=1)
    assert [s.kind for s in result.levels] == ["swap"] * 3


def test_every_split_is_scored_only_when_the_scorer_allows():
    assert exhaustive_fits(MeanFID(np.zeros((21, 2))), 21) and not exhaustive_fits(MeanFID(np.zeros((22, 2))), 22)
    assert exhaustive_fits(SideWeightScorer(13), 13) and not exhaustive_fits(SideWeightScorer(14), 14)


@pytest.mark.parametrize("dim", [40, 4])      # sides within the feature width, and wider than it
def test_stacked_distances_score_like_one_at_a_time(dim):
    means = np.random.default_rng(dim).normal(size=(12, dim))
    first, second = balanced_splits(np.arange(12))
    stacked = MeanFID(means).stacked_distances(first, second, chunk=100)
    expected = [frechet_distance(means[a], means[b]) for a, b in zip(first, second, strict=True)]
    np.testing.assert_allclose(stacked, expected, rtol=1e-8)


@pytest.mark.parametrize("side, fitted", [(10, (2, 5)), (7, (2, 5)), (5, (2, 3)), (3, (2, 1)), (2, (1, 1))])
def test_ooDML_parameters_shrink_to_what_a_side_allows(side, fitted):
    assert oodml_parameters(side) == fitted


def test_ooDML_progression_refuses_sides_too_small_for_its_parameters_by_their_names():
    means = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(OodmlError, match="5 classes per side are too few for swaps_per_iteration=2 with history=5"):
        swap_progression(means, range(5), range(5, 10))
    states = swap_progression(means, range(5), range(5, 10), swaps_per_iteration=2, history=3)
    assert len(states) == 25


@pytest.mark.parametrize("num_classes", [4, 5, 10, 13])
def test_greedy_search_runs_from_4_classes(num_classes):
    means = np.random.default_rng(num_classes).normal(size=(num_classes, 16))
    result = greedy_levels(MeanFID(means), num_classes, levels=num_classes // 2, removal_levels=0)
    dist = [s.distance for s in result.levels]
    # its path from the easiest to the hardest split it reaches may be shorter than the levels asked
    assert 2 <= len(dist) <= num_classes // 2 and np.all(np.diff(dist) > 0)


@pytest.mark.parametrize("num_classes, exhaustive, levels, removal_levels, note", [
    (10, True, 8, 2, None),
    (4, True, 3, 1, "4 classes have only 3 balanced splits: making 3 levels, 1 by removal, not 8 (--levels)"),
    (14, False, 7, 2, "14 classes allow at most 7 levels (7 classes per side): making 7 levels, not 8 (--levels)"),
    (4, False, 2, 0,
     "4 classes allow at most 2 levels (2 classes per side): making 2 levels, 0 by removal, not 8 (--levels)"),
])
def test_levels_are_capped_at_what_the_classes_allow(num_classes, exhaustive, levels, removal_levels, note):
    fitted, message = fit_levels(SplitConfig(), num_classes, exhaustive)
    assert (fitted.levels, fitted.removal_levels, message) == (levels, removal_levels, note)


def test_removal_levels_leave_two_swap_levels():
    fitted, message = fit_levels(SplitConfig(levels=3), 330, exhaustive=False)
    assert (fitted.levels, fitted.removal_levels) == (3, 1)
    assert message == "3 levels leave room for at most 1 by class removal, not 2 (--removal-levels)"


@pytest.mark.parametrize("field, value, message", [
    ("levels", 1, "--levels must be at least 2 (got 1)"),
    ("removal_levels", -1, "--removal-levels must be non-negative (got -1)"),
    ("seed", -1, "--seed must be non-negative"),
    ("shots", (0, 5), "--shots must be positive (got 0 5)"),
    ("episodes", -1, "--episodes must be non-negative"),
    ("bootstrap", -1, "--bootstrap must be non-negative"),
    ("val_fraction", 1.0, "SplitConfig.val_fraction must lie strictly between 0 and 1"),
    ("val_fraction", 0.0, "SplitConfig.val_fraction must lie strictly between 0 and 1"),
    ("shortlist", 0, "SplitConfig.shortlist must be at least 1"),
    ("floor", 0.0, "SplitConfig.floor must lie in"),
    ("swaps_per_iteration", 0, "SplitConfig.swaps_per_iteration must be at least 1"),
    ("history", -1, "SplitConfig.history must be non-negative"),
])
def test_nonsense_parameters_are_refused_naming_the_option(field, value, message):
    with pytest.raises(OodmlError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        SplitConfig(**{field: value}).validate(num_classes=100)


def test_fewer_than_4_classes_are_refused():
    with pytest.raises(OodmlError, match=r"^3 classes are too few to split; need at least 4 \(2 per side\)$"):
        SplitConfig().validate(num_classes=3)


def write_image_folder(root, classes, per_class=12):
    """``classes`` folders of ``per_class`` 8x8 PNGs, each class a noisy version of its own colour."""
    rng = np.random.default_rng(classes)
    for k in range(classes):
        colour = rng.integers(0, 256, 3)
        for j in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            (root / f"class{k:02d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"class{k:02d}" / f"{j}.png")
    return root


def test_a_10_class_image_folder_makes_levels_with_the_default_command(tmp_path, capsys):
    root = write_image_folder(tmp_path / "images", 10)
    out = tmp_path / "splits"
    assert main(["-q", "make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "search: exhaustive, all 126 balanced splits scored" in printed
    metadata = json.loads((out / "imagefolder" / "v1" / "metadata.json").read_text())
    assert metadata["search"] == {"method": "exhaustive", "partitions": 126}
    assert metadata["parameters"]["levels"] == 8
    rows = [line.split() for line in printed.splitlines() if line.split() and line.split()[0].isdigit()]
    distances = [float(row[1]) for row in rows]
    assert len(rows) == 8 and distances == sorted(distances) and len(set(distances)) == 8


def test_4_classes_make_3_levels_and_say_why(tmp_path, capsys):
    root = write_image_folder(tmp_path / "images", 4)
    out = tmp_path / "splits"
    assert main(["-q", "make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels", "--shots", "2",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    # 2 classes per side leave nothing to remove: every level is a swap, and the note counts what was made
    note = "oodml: warning: 4 classes have only 3 balanced splits: making 3 levels, 0 by removal, not 8 (--levels)"
    assert note in captured.err.splitlines()
    assert "search: exhaustive, all 3 balanced splits scored" in captured.out
    metadata = json.loads((out / "imagefolder" / "v1" / "metadata.json").read_text())
    assert metadata["parameters"]["levels"] == 3 and metadata["search"]["partitions"] == 3
    again = ["-q", "make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels", "--shots", "2",
             "--out", str(out)]
    assert main(again) == 0                      # the same split set again: a no-op, not "different content"


def test_the_ooDML_algorithm_runs_on_10_classes(tmp_path, capsys):
    root = write_image_folder(tmp_path / "images", 10)
    assert main(["-q", "make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels", "--algorithm",
                 "oodml", "--bootstrap", "0", "--out", str(tmp_path / "splits")]) == 0
    captured = capsys.readouterr()
    assert "search: the ooDML swap procedure" in captured.out and "ran out of swap candidates" not in captured.err
    metadata = json.loads((tmp_path / "splits" / "imagefolder" / "v1" / "metadata.json").read_text())
    assert "search" not in metadata


def test_negative_bootstrap_is_refused_on_the_command_line(tmp_path, capsys):
    root = write_image_folder(tmp_path / "images", 4, per_class=3)
    with pytest.raises(SystemExit) as exit_status:   # an argparse usage error
        main(["-q", "make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels",
              "--bootstrap", "-1", "--out", str(tmp_path / "splits")])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "oodml: error: argument --bootstrap: expected a whole number of at least 0, got '-1' "
        "(see `oodml make-splits --help`)"]
    assert not (tmp_path / "splits").exists()
