"""Leaderboard boards and ranking: what a built board shows, the matched-curve ranking and rescoring, and cards
that ask for other matching (split from test_leaderboard.py so pytest-xdist's loadfile can balance the cost)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import edit_json
from test_leaderboard import copy_of

from oodml.cli import main
from oodml.evaluation import EvalConfig, evaluate
from oodml.leaderboard import EntryInfo, build, iter_entries, rank_entries, submit, verify
from oodml.models import load_model
from oodml.models.io import LoadedModel


@pytest.fixture(scope="module")
def entry(leaderboard_entry):
    return leaderboard_entry


def test_the_board_shows_what_each_entry_saw_in_pretraining(entry, tmp_path):
    declared = {"scratch": "none", "in1k": "imagenet-1k", "silent": ""}
    for name, pretraining in declared.items():
        edit_json(copy_of(entry, tmp_path, name), pretraining=pretraining)
    root = tmp_path / "leaderboard"
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    rows = {line.split(" | ")[1]: line for line in (root / "README.md").read_text().splitlines()
            if line.startswith("| ") and " | " in line and line.split(" | ")[1] in declared}
    assert rows["scratch"].endswith("| none (no pretraining) |")
    assert rows["in1k"].endswith("| unknown (imagenet-1k) |")        # glyphs has no map into ImageNet classes
    assert rows["silent"].endswith("| not declared |")
    assert "pretraining: imagenet-1k (unknown: no map from glyphs classes" in (root / "index.html").read_text()


@pytest.mark.parametrize("pretraining, cell, share", [
    # every car model has an ImageNet-1k class of its body type (sports car, convertible, ...)
    ("a1_in1k", "all test classes (category overlap with imagenet-1k)", 1.0),
    ("in21k_ft_in1k", "all test classes (category overlap with imagenet-1k)", 1.0),
    ("laion2b_s34b_b79k", "unknown (laion2b_s34b_b79k)", "unknown"),
    ("none", "none (no pretraining)", 0.0), ("", "not declared", "not declared"),
])
def test_overlap_cell_counts_the_published_cars196_levels(pretraining, cell, share):
    from oodml.leaderboard.board import overlap_cell
    from oodml.splits import load

    assert overlap_cell({"pretraining": pretraining}, load("cars196", "oodml-v1")) == (cell, share)


def test_build_renders_only_verified_entries(entry, tmp_path, capsys):
    good = copy_of(entry, tmp_path, "good")
    bad = copy_of(entry, tmp_path, "bad")
    edit_json(bad, claimed={"levels": {"1": {"recall@1": 1.0}}})
    root = tmp_path / "leaderboard"
    assert [p.name for p in iter_entries(root)] == ["bad", "good"]
    assert main(["leaderboard", "build", "--root", str(root)]) == 2
    readme = (root / "README.md").read_text()
    assert "| 1 | good |" in readme and "| bad |" not in readme
    assert "- bad: claims levels/1/recall@1 = 1.0" in readme
    assert "not shown: " in capsys.readouterr().err
    assert good.exists()
    assert main(["leaderboard", "verify", "--root", str(root)]) == 2
    out = capsys.readouterr().out
    assert "ok      " in out and "FAILED  " in out and "claims levels/1/recall@1 = 1.0" in out


def test_identical_entries_tie_and_a_clearly_better_one_ranks_alone(entry, tmp_path, glyphs):
    a, b = verify(copy_of(entry, tmp_path, "a")), verify(copy_of(entry, tmp_path, "b"))
    better = verify(copy_of(entry, tmp_path, "c"))
    matched = better.scores.matched
    for level, queries in matched.queries.items():
        matched.sums["recall@1"][level][:] = queries      # every query of every draw right: far above the others
    ranked = rank_entries([a, b, better])
    assert [r.meta["entry"] for r in ranked] == ["c", "a", "b"]
    assert [r.rank for r in ranked] == [1, 2, 2]         # a and b are the same model: a tie
    assert ranked[0].mean == 1.0 and ranked[1].gap_ci[0] > 0 and ranked[2].gap_ci == (0.0, 0.0)
    assert ranked[1].mean == pytest.approx(np.mean(a.scores.per_level("recall@1", "matched")), abs=1e-12)
    # the ranking is on the matched curve: better full-set numbers alone do not move an entry
    for level in a.scores.levels:
        level["recall@1"] = 1.0
    assert [r.meta["entry"] for r in rank_entries([a, b])] == ["a", "b"]
    assert rank_entries([a, b])[1].rank == 1


class Float16Exact(torch.nn.Module):
    """Rounds its input to float16: a model whose float32 embeddings an entry's float16 files hold exactly."""

    def forward(self, x):
        return x.half().float()


@pytest.fixture(scope="module")
def exact(glyphs, tmp_path_factory):
    """An evaluation of 4x4 average-pooled pixels (48-d, float16-exact) on every level, one 2-shot episode,
    saved with embeddings, and the entry submitted from it (verified)."""
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), Float16Exact())
    model = LoadedModel(net, load_model("glyph-cnn", embed_dim=8, seed=1).preprocessing, "e1" * 32, "pixels-4x4")
    base = tmp_path_factory.mktemp("exact")
    evaluate(model, glyphs, "v1", EvalConfig.of(clustering=False, fewshot=(2,), episodes=1, device="cpu",
                                                save_embeddings=True)).save(base / "run")
    path = submit([base / "run"], EntryInfo("pixels", training_data="none"), root=base / "leaderboard")
    return json.loads((base / "run" / "summary.json").read_text()), verify(path, dataset=glyphs)


def test_an_entry_rescores_the_matched_curve_of_the_run_it_came_from(exact, entry, glyphs):
    """The verifier's matched section is evaluate's: per level, value and interval, and the N-way episodes."""
    summary, verified = exact
    assert verified.ok, verified.problems
    matched, scores = summary["matched"], verified.scores
    assert (scores.matched.n_classes, scores.matched.draws) == (matched["n_classes"], matched["draws"]) == (132, 20)
    for metric in ("recall@1", "map@r"):
        ours = [scores.matched.interval(metric, lv["level"]) for lv in scores.levels]   # levels by distance here
        for i, key in enumerate(("per_level", "ci_low", "ci_high")):
            # embeddings identical (float16-exact), so only the order of float sums differs
            assert [o[i] for o in ours] == pytest.approx(matched["metrics"][metric][key], abs=1e-9), (metric, key)
        assert scores.per_level(metric, "matched") == pytest.approx(matched["metrics"][metric]["per_level"],
                                                                    abs=1e-9)
    n_way = {r["level"]: r["mean"] for r in matched["fewshot"]["2-shot"]["none"]["accuracy"]}
    assert scores.matched_fewshot["2-shot"]["none"] == pytest.approx(n_way, abs=1e-9)
    full = {r["level"]: r["mean"] for r in summary["fewshot"]["2-shot"]["none"]["accuracy"]}
    assert scores.fewshot["2-shot"]["none"] == pytest.approx(full, abs=1e-9)
    assert scores.matched_fewshot != scores.fewshot                  # N ways are not all of an episode's ways
    # the per-class sums of every compared metric add up to the levels' values
    for lv in scores.levels:
        queries, sums = scores.class_sums[lv["level"]]
        assert {m: sums[m].sum() / queries.sum() for m in ("recall@1", "map@r")} == pytest.approx(
            {m: lv[m] for m in ("recall@1", "map@r")}, abs=1e-12)


def test_float16_entries_match_their_float32_run_within_the_rounding(entry):
    """The shared tiny entry holds float16 copies of an untrained 8-d CNN's float32 embeddings: rounding moves
    near-tied neighbours, so its matched values differ from the run's summary by up to a few thousandths (a
    random 8-d model has many near ties; trained models far fewer); 0.01 bounds it here."""
    summary = json.loads((entry.parents[4] / "results" / "summary.json").read_text())["matched"]
    scores = verify(entry).scores
    got = scores.per_level("recall@1", "matched")
    assert got == pytest.approx(summary["metrics"]["recall@1"]["per_level"], abs=0.01)


def _matched_card(path: Path, **matched) -> None:
    card = json.loads((path / "submission.json").read_text())["protocol_card"]
    edit_json(path, protocol_card={**card, "matched": {**card["matched"], **matched}})


@pytest.mark.parametrize(("matched", "message"), [
    ({"n_classes": 133}, "matched n_classes 133 is not a class count every level of glyphs@v1 has .2 to 132."),
    ({"n_classes": 1}, "matched n_classes 1 is not a class count"),
    ({"draws": 100_000}, "matched draws 100000: the verifier scores at most 200"),
])
def test_a_card_asking_for_impossible_or_costly_matching_is_refused_in_one_line(entry, tmp_path, matched, message):
    path = copy_of(entry, tmp_path)
    _matched_card(path, **matched)
    result = verify(path)
    assert not result.ok and any(__import__("re").search(message, p) for p in result.problems), result.problems
    assert all("\n" not in p for p in result.problems)


def test_an_entry_matched_otherwise_is_rescored_so_and_ranked_on_its_own_board(entry, exact, tmp_path):
    """The card's N and D are the entry's matched curve; entries are ranked only against entries matched alike
    (``default``: the exact entry, matched at evaluate's default N and draws; the shared entry is not)."""
    _matched_card(copy_of(entry, tmp_path, "fifty"), n_classes=50, draws=3)
    root = tmp_path / "leaderboard"
    fifty, default = verify(root / "submissions" / "glyphs" / "v1" / "fifty"), exact[1]
    assert fifty.ok and (fifty.scores.matched.n_classes, fifty.scores.matched.draws) == (50, 3)
    assert fifty.scores.matched.subsets[1].shape == (3, 50)
    build(root, verifications=[default, fifty])
    readme = (root / "README.md").read_text()
    assert "## glyphs @ v1, zero-shot protocol\n" in readme
    assert "## glyphs @ v1, zero-shot protocol, matched at 50 classes in 3 draws" in readme
    assert readme.count("| 1 | fifty |") == 1 and readme.count("| 1 | pixels |") == 1   # one board each
    assert "mean R@1 N=50 [95% CI]" in readme and "mean R@1 N=132 [95% CI]" in readme
    from oodml import OodmlError
    with pytest.raises(OodmlError, match="matched at different class counts or draws .132 x 20, 50 x 3."):
        rank_entries([default, fifty])
