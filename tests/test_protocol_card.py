"""The protocol card: what a result measures, recorded beside the numbers (summary.json meta, leaderboard)."""

import dataclasses
import json
from pathlib import Path

import pytest

from oodml.evaluation import evaluate
from oodml.metrics import METRICS_VERSION
from oodml.preprocessing import IMAGENET, Preprocessing
from oodml.protocol import protocol_card
from oodml.splits import read_split_set

SPLITS = Path(__file__).resolve().parents[1] / "splits" / "glyphs" / "v1"


@pytest.fixture(scope="module")
def split_set():
    return read_split_set(SPLITS)


def card_of(split_set, levels, preprocessing=IMAGENET, **options):
    options = {"protocol": "zero-shot", "ks": (1, 2, 4, 8), "clustering": True} | options
    return protocol_card(split_set, levels, {lv.index: preprocessing for lv in levels}, **options)


def test_the_card_states_the_split_the_rule_and_the_preprocessing(split_set):
    card = card_of(split_set, split_set.levels[:2])
    assert card["metrics_version"] == METRICS_VERSION and card["splits"] == "glyphs@v1"
    assert card["class_disjoint"] is True
    assert "every test image of the level" in card["gallery"]
    assert card["query_in_gallery"].startswith("excluded by index")
    assert "lower row" in card["ties"]
    assert card["preprocessing"] == {"resize": 256, "resize_mode": "shorter-side", "interpolation": "bilinear",
                                     "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    first = split_set.levels[0]
    assert card["classes"]["1"] == {"train": len(first.train_classes), "test": len(first.test_classes),
                                    "train_images": first.n_train_images, "test_images": first.n_test_images}
    assert card["clustering"]["seed"] == 0 and card["clustering"]["iterations"] == 20
    assert card["matched"] is None and "no matched draws" in card["matched_note"]   # --match-classes off
    matched = card_of(split_set, split_set.levels[:2], matched={"n_classes": 132, "draws": 20})
    assert matched["matched"]["n_classes"] == 132 and matched["matched"]["draws"] == 20
    assert "seeded by sha256" in matched["matched"]["rule"] and "matched_note" not in matched
    assert json.loads(json.dumps(card)) == card                                      # JSON as it is


def test_a_level_sharing_a_class_between_train_and_test_is_not_class_disjoint(split_set):
    level = split_set.levels[0]
    leaky = dataclasses.replace(level, train_classes=level.train_classes + level.test_classes[:1])
    assert card_of(split_set, [leaky])["class_disjoint"] is False


def test_per_level_models_with_different_preprocessing_are_listed_per_level(split_set):
    one, two = split_set.levels[:2]
    small = Preprocessing(resize=32, crop=32, interpolation="bicubic")
    card = protocol_card(split_set, [one, two], {1: IMAGENET, 2: small}, protocol="per-level", ks=(1,),
                         clustering=False)
    assert card["preprocessing"]["levels"]["2"]["interpolation"] == "bicubic"
    assert card["preprocessing"]["levels"]["1"]["crop"] == 224
    assert card["clustering"] is None and card["ks"] == [1]


def test_summary_json_carries_the_card(glyphs, split_set, tmp_path):
    results = evaluate("glyph-cnn", glyphs, split_set, levels=[8], clustering=False, device="cpu")
    results.save(tmp_path)
    card = json.loads((tmp_path / "summary.json").read_text())["meta"]["protocol_card"]
    assert card["protocol"] == "zero-shot" and card["split_digest"] == split_set.digest
    assert card["preprocessing"]["resize"] == 32 and card["preprocessing"]["interpolation"] == "bilinear"
    assert list(card["classes"]) == ["8"] and card["clustering"] is None
    assert card["metrics_version"] == METRICS_VERSION


def test_per_level_checkpoints_record_each_ones_preprocessing(glyphs, split_set, tmp_path):
    from oodml.models import create_model, save

    for level, interpolation in ((1, "bilinear"), (2, "bicubic")):
        model = create_model("glyph-cnn", embed_dim=8, seed=level)
        model.preprocessing = Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3,
                                            interpolation=interpolation)
        save(model, tmp_path / f"level{level}.pt")
    results = evaluate(str(tmp_path / "level{level}.pt"), glyphs, split_set, levels=[1, 2], clustering=False,
                       device="cpu")
    card = results.meta["protocol_card"]
    assert card["protocol"] == "per-level"
    assert {k: r["interpolation"] for k, r in card["preprocessing"]["levels"].items()} == {"1": "bilinear",
                                                                                        "2": "bicubic"}
