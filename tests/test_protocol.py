"""The few-shot protocol: one episode split and one scoring rule, shared by evaluate and the board's verifier."""

import importlib

import numpy as np
import pytest

import oodml.adapt
import oodml.evaluation
import oodml.leaderboard.submission
import oodml.protocol
from oodml.errors import OodmlError
from oodml.evaluation import evaluate
from oodml.leaderboard import verify
from oodml.models import load_model
from oodml.protocol import EPISODE_METRICS, episode_split, score_episode
from oodml.splits import load

# Two classes, two support images each.  Class 0's images point along x and along y, so its prototype
# points along the diagonal; class 1's images lie either side of the x axis, so its prototype is x.
SUPPORT = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [1.0, -0.2]], dtype=np.float32)
SUPPORT_LABELS = np.array([0, 0, 1, 1])
# The first query sits beside class 0's x image but nearer class 1's prototype than class 0's diagonal one.
QUERY = np.array([[0.95, 0.05], [0.1, 1.0], [1.0, 0.3], [1.0, -0.3]], dtype=np.float32)
QUERY_LABELS = np.array([0, 0, 1, 1])


def test_nearest_support_image_and_nearest_prototype_on_a_hand_made_episode():
    unadapted = score_episode(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS, "none")
    assert list(unadapted) == ["accuracy", "recall@1", "map@r"]
    assert unadapted["accuracy"] == 1.0      # every query's nearest support image has its class
    # among the queries themselves, each one's nearest neighbour is of the other class
    assert unadapted["recall@1"] == 0.0
    assert score_episode(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS, "prototypes") == {"accuracy": 0.75}
    tuned = score_episode(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS, "finetune-last")
    assert list(tuned) == list(EPISODE_METRICS["finetune-last"]) and tuned["accuracy"] == 0.75


def test_score_episode_computes_only_what_is_asked_and_refuses_what_it_does_not_report():
    assert score_episode(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS, metrics=("accuracy",)) == {"accuracy": 1.0}
    with pytest.raises(OodmlError, match="prototypes episodes report accuracy, not 'map@r'"):
        score_episode(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS, "prototypes", metrics=("map@r",))
    with pytest.raises(OodmlError, match="unknown adaptation 'nearest'"):
        score_episode(SUPPORT, SUPPORT_LABELS, QUERY, QUERY_LABELS, "nearest")


def test_an_episode_splits_into_its_support_and_every_other_image_of_its_classes(glyphs):
    episode = load("glyphs", "v1").levels[0].episodes(2)[0]
    support, support_labels, query, query_labels = episode_split(glyphs, episode)
    classes = sorted(episode.support)
    assert [glyphs.sample_ids[i] for i in support] == [sid for c in classes for sid in episode.support[c]]
    assert support_labels.tolist() == [k for k in range(len(classes)) for _ in range(2)]
    of_classes = np.flatnonzero(np.isin(glyphs.labels, [glyphs.class_index[c] for c in classes]))
    assert sorted([*support, *query]) == of_classes.tolist() and not set(support) & set(query)
    assert [classes[k] for k in query_labels] == [glyphs.classes[glyphs.labels[i]] for i in query]


def test_evaluate_and_the_verifier_share_one_rule_and_one_list_of_names():
    for module in (oodml.evaluation, importlib.import_module("oodml.leaderboard.verify")):
        assert module.score_episode is oodml.protocol.score_episode
        assert module.episode_split is oodml.protocol.episode_split
    submission = oodml.leaderboard.submission
    assert submission.ADAPTATIONS is oodml.adapt.ADAPTATIONS and submission.FINETUNED is oodml.adapt.FINETUNED
    assert submission.PROTOCOLS is oodml.protocol.PROTOCOLS


def test_changing_the_rule_changes_evaluate_and_the_verifier_alike(leaderboard_entry, glyphs, monkeypatch):
    monkeypatch.setattr(oodml.protocol, "nearest_accuracy", lambda *args, **kwargs: 0.125)
    results = evaluate(load_model("glyph-cnn", embed_dim=8, seed=1), glyphs, "v1", levels=[1], fewshot=(2,),
                       episodes=1, clustering=False, device="cpu")
    assert {r["value"] for r in results.rows if r["metric"] == "accuracy"} == {0.125}
    scores = verify(leaderboard_entry).scores
    assert {v for by in scores.fewshot["2-shot"].values() for v in by.values()} == {0.125}
