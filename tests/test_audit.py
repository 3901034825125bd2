"""``oodml splits audit``: levels re-measured under other extractors, and pretraining overlap (issue 15)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from fixtures import build_cub

from oodml.cli import main
from oodml.errors import OodmlError
from oodml.shift import ClassFeatures, split_distance
from oodml.splits import Level, load, read_split_set, write_split_set
from oodml.splits.audit import audit, audit_features, audit_slug, rank_agreement, store_audit
from oodml.splits.manifest import split_set_of
from oodml.splits.overlap import imagenet_classes, model_overlap, overlap_map, parse_pretraining, pretraining_overlap

# sha256 of CUB_200_2011/classes.txt's 200 names, one per line ("001.Black_footed_Albatross\n" ...), from the
# official archive's listing (see classes_source in oodml/splits/data/cub200-imagenet-1k.json).
CUB_NAMES_SHA256 = "11997b8d4bf6ffb89f9b36124377e62f0296aa718654cc3d97049f2afc61dc44"


#: train classes of five levels over eight classes at 0, 3, 6, ... on one axis: the sides separate step by step
TRAIN_SIDES = ((0, 2, 4, 6), (0, 1, 4, 6), (0, 1, 2, 6), (0, 1, 2, 5), (0, 1, 2, 3))


def _synthetic(reverse: bool = False):
    """Five levels of eight classes whose distance grows with the level.  Returns (split set whose published
    distances are the true ones, reversed when asked; class names; features (40, 6); labels; true distances)."""
    n, dim = 8, 6
    classes = [f"c{i}" for i in range(n)]
    centres = np.zeros((n, dim))
    centres[:, 0] = np.arange(n) * 3.0
    labels = np.repeat(np.arange(n), 5)
    features = centres[labels] + np.random.default_rng(0).normal(scale=0.3, size=(len(labels), dim))
    cf = ClassFeatures(features, labels)
    parts = [(np.array(train), np.setdiff1d(np.arange(n), train)) for train in TRAIN_SIDES]
    true = [split_distance(cf, tr, te) for tr, te in parts]
    published = true[::-1] if reverse else true
    built = tuple(Level(k + 1, d, d, d, "swap", tuple(classes[i] for i in tr), tuple(classes[i] for i in te),
                        (classes[tr[0]],), 5 * len(tr), 5 * len(te))
                  for k, (d, (tr, te)) in enumerate(zip(published, parts, strict=True)))
    split_set = split_set_of("synthetic", "v1", built, {"distance": "fid", "mode": "class-mean", "seed": 0,
                                                         "extractor": "synthetic"})
    return split_set, classes, features, labels, true


def test_the_split_sets_own_features_give_its_distances_and_rank_agreement_one():
    split_set, classes, features, labels, true = _synthetic()
    assert np.all(np.diff(true) > 0)  # the construction really grades the levels
    result = audit_features(split_set, classes, features, labels, extractor="same", draws=50)
    assert [lv.distance for lv in result.levels] == pytest.approx(true, rel=1e-9)
    assert result.spearman.value == pytest.approx(1.0) and result.kendall.value == pytest.approx(1.0)
    for lv in result.levels:
        assert lv.ci_low <= lv.distance <= lv.ci_high and lv.ci_high > lv.ci_low
    for estimate in (result.spearman, result.kendall):
        assert -1 <= estimate.ci_low <= estimate.value <= estimate.ci_high <= 1


def test_a_reversed_order_gives_rank_agreement_minus_one():
    split_set, classes, features, labels, _ = _synthetic(reverse=True)
    result = audit_features(split_set, classes, features, labels, extractor="same", draws=50)
    assert result.spearman.value == pytest.approx(-1.0) and result.kendall.value == pytest.approx(-1.0)
    assert result.kendall.ci_low <= -1 + 1e-12 <= result.kendall.ci_high


def test_rank_agreement_is_scipys_and_its_interval_contains_it():
    from scipy import stats

    published = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    measured = np.array([1.0, 3.0, 2.0, 4.0, 6.0, 5.0])
    draws = measured + np.random.default_rng(1).normal(scale=0.8, size=(300, 6))
    rho, tau = rank_agreement(published, measured, draws)
    assert rho.value == pytest.approx(stats.spearmanr(published, measured).statistic)
    assert tau.value == pytest.approx(stats.kendalltau(published, measured).statistic)  # 0.733..
    assert rho.ci_low <= rho.value <= rho.ci_high and tau.ci_low <= tau.value <= tau.ci_high
    assert tau.ci_high - tau.ci_low > 0.1  # noisy draws give a real interval
    with pytest.raises(OodmlError, match="equally long"):
        rank_agreement(published, measured[:3])


# --- pretraining overlap ---------------------------------------------------------------------------------

def test_the_cub_map_uses_official_class_names_and_imagenet_wnids():
    cub = overlap_map("cub200")
    official = cub["classes"]
    assert hashlib.sha256("".join(f"{c}\n" for c in official).encode()).hexdigest() == CUB_NAMES_SHA256
    assert [c.split(".")[0] for c in official] == [f"{i:03d}" for i in range(1, 201)]
    imagenet = imagenet_classes()
    assert len(imagenet) == 1000
    assert set(cub["matches"]) <= set(official) and set(cub["rejected"]) <= set(official)
    assert not set(cub["matches"]) & set(cub["rejected"])
    for name, targets in cub["matches"].items():
        for t in targets:
            assert re.fullmatch(r"n\d{8}", t["wnid"]) and imagenet[t["wnid"]] == t["imagenet_class"]
            if t["rule"] in ("species", "lemma"):  # the rule, restated: a lemma of the synset names the species
                assert t["matched"] in t["lemmas"]
                assert t["matched"].replace("-", " ") in name.split(".")[1].replace("_", " ").lower()
    assert len(cub["matches"]) == 16
    assert "047.American_Goldfinch" in cub["rejected"]  # 'goldfinch' is the European one


def test_the_shipped_imagenet_list_agrees_with_torchvisions_category_names():
    weights = pytest.importorskip("torchvision.models").ResNet50_Weights.IMAGENET1K_V1
    ours = list(imagenet_classes().values())
    theirs = weights.meta["categories"]
    differ = [(a, b) for a, b in zip(ours, theirs, strict=True) if a.replace("_", " ").lower() != b.lower()]
    # torchvision renames ImageNet's two duplicated names; everything else is the same list in the same order
    assert differ == [("crane", "crane bird"), ("maillot", "maillot tank suit")]


def test_every_cars196_class_has_a_category_counterpart():
    cars = overlap_map("cars196")
    assert cars["overlap"] == "category"
    split_set = load("cars196", "oodml-v1")
    names = {c for lv in split_set.levels for c in (*lv.train_classes, *lv.test_classes)}
    assert set(cars["matches"]) == names and len(names) == 196
    imagenet = imagenet_classes()
    assert all(w in imagenet for entry in cars["matches"].values() for w in entry["wnids"])
    assert cars["matches"]["Rolls-Royce Phantom Drophead Coupe Convertible 2012"]["body_type"] == "Convertible"
    result = audit(split_set, pretraining="imagenet-1k")
    assert result.pretraining.status == "known" and result.pretraining.overlap == "category"
    assert all(lv.test_classes_with_counterpart == lv.test_classes for lv in result.pretraining.levels)
    assert all(lv.test_images is None for lv in result.pretraining.levels)  # no cars196 data here


@pytest.mark.parametrize(("declaration", "expected"), [
    ("imagenet-1k", ("imagenet-1k", True)), ("a1_in1k", ("imagenet-1k", True)),
    ("imagenet-1k (self-supervised)", ("imagenet-1k", True)), ("in21k_ft_in1k", ("imagenet-1k", False)),
    ("lvd142m", (None, False)), ("laion2b_s34b_b79k", (None, False)), ("in21k", (None, False)),
])
def test_pretraining_declarations(declaration, expected):
    assert parse_pretraining(declaration) == expected


def _cub_split_set():
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "013.Bobolink", "014.Indigo_Bunting",
               "017.Cardinal", "047.American_Goldfinch"]
    levels = (Level(1, 0.1, 0.1, 0.1, "swap", tuple(classes[:3]), tuple(classes[3:]), (classes[0],), 6, 6),
              Level(2, 0.2, 0.2, 0.2, "swap", tuple(classes[2:5]), (classes[0], classes[1], classes[5]),
                    (classes[2],), 6, 6))
    return split_set_of("cub200", "test", levels, {"distance": "fid", "mode": "class-mean"}), classes


def test_cub_overlap_per_level_counts_classes_and_images():
    split_set, classes = _cub_split_set()
    counts = dict.fromkeys(classes, 2)
    overlap = pretraining_overlap(split_set, "imagenet-1k", counts)
    assert overlap.status == "known" and overlap.overlap == "class"
    one, two = overlap.levels
    assert (one.test_classes_with_counterpart, one.classes_with_counterpart) == (1, ("014.Indigo_Bunting",))
    assert (two.test_classes_with_counterpart, two.test_images, two.test_images_with_counterpart) == (2, 6, 4)
    partial = pretraining_overlap(split_set, "in21k_ft_in1k")
    assert partial.status == "lower bound" and partial.levels[1].test_images is None


def test_the_board_cell_of_a_partial_class_overlap():
    from oodml.leaderboard.board import overlap_cell

    split_set, _ = _cub_split_set()
    assert overlap_cell({"pretraining": "a1_in1k"}, split_set) == ("1-2 of 3 per level (class overlap with "
                                                                   "imagenet-1k)", 0.5)
    assert overlap_cell({"pretraining": "in21k_ft_in1k"}, split_set)[0].startswith("at least 1-2 of 3 per level")


def test_pretraining_without_a_class_list_is_unknown_never_none(capsys):
    split_set, _ = _cub_split_set()
    overlap = pretraining_overlap(split_set, "lvd142m")
    assert overlap.status == "unknown" and "no class list" in overlap.reason
    assert all(lv.test_classes_with_counterpart is None for lv in overlap.levels)
    assert model_overlap({"pretraining": "lvd142m"}, split_set, [2])["levels"][0]["test_classes_with_counterpart"] \
        is None
    assert model_overlap({"pretraining": None, "random_weights": True}, split_set, [1, 2]) is None
    assert pretraining_overlap(load("glyphs", "v1"), "imagenet-1k").status == "unknown"  # no glyphs map


def test_evaluate_records_the_overlap_of_a_model_that_declares_imagenet(tmp_path):
    from oodml.datasets import load_dataset
    from oodml.evaluation import evaluate
    from oodml.models import create_model
    from oodml.models.io import LoadedModel

    split_set, classes = _cub_split_set()
    build_cub(tmp_path, per_class=2, classes=list(classes))
    ds = load_dataset("cub200", root=tmp_path)
    net = create_model("glyph-cnn", embed_dim=4)
    model = LoadedModel(net, net.preprocessing, "0" * 64, "tiny-in1k", identity={"pretraining": "a1_in1k"})
    results = evaluate(model, ds, split_set, levels=[2], clustering=False, device="cpu")
    overlap = results.summary()["meta"]["pretraining_overlap"]
    assert overlap["status"] == "known" and overlap["class_list"] == "imagenet-1k"
    assert [lv["level"] for lv in overlap["levels"]] == [2]
    assert overlap["levels"][0]["test_classes_with_counterpart"] == 2
    assert overlap["levels"][0]["test_images_with_counterpart"] == 4


# --- the command, and audits stored beside a published split set ---------------------------------------

def test_stored_audits_change_neither_the_digest_nor_verification(tmp_path, capsys):
    """The whole command on a copy of glyphs@v1, re-measured with its own pixels features."""
    published = tmp_path / "glyphs" / "v1"
    shutil.copytree(load("glyphs", "v1").path, published, ignore=shutil.ignore_patterns("audits"))
    before = read_split_set(published).digest
    assert main(["splits", "audit", str(published), "--extractor", "pixels", "--pretraining", "lvd142m",
                 "--bootstrap", "3", "--out", str(tmp_path / "out"), "--store"]) == 0
    shown = capsys.readouterr().out
    assert "Kendall tau 1.000" in shown and "pretraining lvd142m: unknown" in shown
    stored = sorted(p.name for p in (published / "audits").iterdir())
    assert stored == ["pixels.json", "pretraining-lvd142m.json"]
    record = json.loads((published / "audits" / "pixels.json").read_text())
    assert record["split_digest"] == before and record["extractors"][0]["kendall"]["value"] == pytest.approx(1.0)
    levels = record["extractors"][0]["levels"]  # its own features give glyphs@v1 its published distances
    assert [lv["distance"] for lv in levels] == pytest.approx([lv["published"] for lv in levels], rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["audit.json", "audit.png", "audit.svg"]
    assert read_split_set(published).digest == before
    assert main(["splits", "verify", str(published)]) == 0
    (published / "notes.txt").write_text("not an audit")  # other foreign files are still refused
    with pytest.raises(OodmlError, match="foreign file 'notes.txt'"):
        read_split_set(published)


def test_a_stored_audit_must_be_of_the_same_split_set(tmp_path):
    split_set, classes, features, labels, _ = _synthetic()
    published = write_split_set(tmp_path, "synthetic", "v1", split_set.levels, split_set.metadata)
    other = load("glyphs", "v1")
    result = audit(other, pretraining="lvd142m")
    with pytest.raises(OodmlError, match="not of synthetic@v1"):
        store_audit(result, published)


@pytest.mark.parametrize(("argv", "message"), [
    (["splits", "audit", "glyphs@v1"], "nothing to audit"),
    (["splits", "audit", "glyphs@v1", "--extractor", "no-such-extractor"], "unknown extractor 'no-such-extractor'"),
    (["splits", "audit", "glyphs@v9", "--pretraining", "imagenet-1k"], "no published split set glyphs@v9"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_audit_file_names_are_short_safe_and_distinct():
    assert audit_slug("pixels") == "pixels" and audit_slug("lvd142m") == "lvd142m"
    names = ["runs/a-b", "runs/a/b", "RUNS/a/b", "x" * 300 + ".pt", "//", "timm:resnet18?pretrained=false"]
    slugs = [audit_slug(name) for name in names]
    assert len(set(slugs)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug) and len(slug) <= 73 for slug in slugs)

