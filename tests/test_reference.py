"""In-distribution references (issue 15 part 3): the halves, the gap rule, train and evaluate --reference."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from oodml.cli import main
from oodml.errors import OodmlError
from oodml.evaluation import evaluate
from oodml.metrics import retrieval_metrics
from oodml.models import create_model, load_model, save
from oodml.reference import fold_split, half_recall, level_gap, level_halves
from oodml.splits import resolve

LEVEL = 8   # glyphs@v1's smallest level: 132 test classes x 32 images


def _brute_force_half_recall(emb: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> float:
    """Recall@1 with each image's nearest neighbour (cosine) searched among the other images of its own half."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    hits = []
    for i in range(len(x)):
        gallery = [j for j in range(len(x)) if j != i and folds[j] == folds[i]]
        if any(labels[j] == labels[i] for j in gallery):
            nearest = gallery[int(np.argmax(x[gallery] @ x[i]))]
            hits.append(labels[nearest] == labels[i])
    return float(np.mean(hits))


def test_fold_split_is_deterministic_balanced_and_keyed_by_sample_id():
    ids = [f"img{i:03d}" for i in range(31)]
    classes = ["a"] * 10 + ["b"] * 11 + ["c"] * 9 + ["d"]
    folds = fold_split(ids, classes, key="digest")
    for name, size in (("a", 10), ("b", 11), ("c", 9), ("d", 1)):
        in_class = folds[[c == name for c in classes]]
        assert sorted(np.bincount(in_class, minlength=2)) == sorted([(size + 1) // 2, size // 2])
    order = np.random.default_rng(0).permutation(len(ids))          # any input order: the same half per image
    shuffled = fold_split([ids[i] for i in order], [classes[i] for i in order], key="digest")
    assert dict(zip(ids, folds.tolist(), strict=True)) == \
        dict(zip([ids[i] for i in order], shuffled.tolist(), strict=True))
    assert not np.array_equal(fold_split(ids, classes, key="another digest"), folds)


def test_a_levels_halves_split_every_test_class_in_two(glyphs):
    split_set = resolve("glyphs", "v1")
    level = split_set.level(LEVEL)
    half0, half1 = level_halves(glyphs, level, split_set.digest)
    assert np.array_equal(np.sort(np.concatenate([half0, half1])), glyphs.indices_of_classes(level.test_classes))
    assert set(np.bincount(glyphs.labels[half0])[np.unique(glyphs.labels[half0])]) == {16}
    assert set(np.bincount(glyphs.labels[half1])[np.unique(glyphs.labels[half1])]) == {16}


def test_a_perfect_reference_against_a_random_model_has_a_positive_gap_whose_interval_excludes_zero():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(30), 8)
    folds = fold_split([f"i{k}" for k in range(len(labels))], [str(y) for y in labels], key=0)
    perfect = np.eye(30)[labels] + 0.01 * rng.standard_normal((len(labels), 30))
    random_model = rng.standard_normal((len(labels), 16))
    gap = level_gap(random_model, perfect, labels, folds, seed=3)
    assert gap.reference == 1.0 and gap.model < 0.2
    assert gap.gap == pytest.approx(gap.reference - gap.model, abs=1e-12)
    assert 0 < gap.ci_low < gap.gap < gap.ci_high
    same = level_gap(random_model, random_model, labels, folds)
    assert (same.gap, same.ci_low, same.ci_high) == (0, 0, 0)


def test_the_model_is_scored_on_the_same_halves_not_on_the_full_set():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(12), 6)
    folds = fold_split([f"i{k}" for k in range(len(labels))], [str(y) for y in labels], key=0)
    model = rng.standard_normal((len(labels), 4)) + 0.8 * np.eye(12)[labels][:, :4]
    gap = level_gap(model, rng.standard_normal((len(labels), 4)), labels, folds)
    assert gap.model == pytest.approx(_brute_force_half_recall(model, labels, folds), abs=1e-12)
    assert gap.queries == len(labels)
    assert abs(gap.model - retrieval_metrics(model, labels, ks=(1,), clustering=False)["recall@1"]) > 0.01
    assert np.isnan(half_recall(model[:3], np.array([0, 0, 1]), np.array([0, 1, 1]))).all()


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Both halves' references of level 8, trained for 2 iterations through the CLI."""
    out = tmp_path_factory.mktemp("references")
    assert main(["-q", "train", "--dataset", "glyphs", "--splits", "v1", "--level", str(LEVEL), "--reference",
                 "--iterations", "2", "--eval-every", "2", "--batch-size", "32", "--embed-dim", "8",
                 "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_train_reference_writes_both_halves_trained_on_the_test_classes(references, glyphs):
    split_set = resolve("glyphs", "v1")
    level = split_set.level(LEVEL)
    for fold in (0, 1):
        prov = load_model(references / f"level{LEVEL}-fold{fold}.pt").provenance
        assert prov["reference"]["fold"] == fold and prov["train_classes"] == list(level.test_classes)
        assert prov["val_classes"] == list(level.val_classes) and prov["config"]["iterations"] == 2
    # a reference is never accepted as the level's own model: it saw the test classes
    with pytest.raises(OodmlError, match=f"trained on 132 of level {LEVEL}'s test classes"):
        evaluate(str(references / "level{level}-fold0.pt"), glyphs, "v1", levels=[LEVEL], device="cpu",
                 clustering=False)


def test_evaluate_with_references_reports_the_gap_on_the_same_halves(references, glyphs, tmp_path, capsys):
    save(create_model("glyph-cnn", embed_dim=8, seed=1), tmp_path / "model.pt")
    results = evaluate(str(tmp_path / "model.pt"), glyphs, "v1", levels=[LEVEL], device="cpu", clustering=False,
                       reference=references, save_embeddings=True)
    row, = results.meta["reference"]["levels"]
    assert row["level"] == LEVEL and row["queries"] == 132 * 32
    assert row["gap"] == pytest.approx(row["reference_recall@1"] - row["model_recall@1"], abs=1e-12)
    assert row["ci_low"] <= row["gap"] <= row["ci_high"]
    # the model's Recall@1 is its own on the halves, not the full-set recall@1 of the results
    ids, emb = results.embeddings[("test", LEVEL)]
    labels = glyphs.labels[[glyphs.sample_ids.index(s) for s in ids]]
    folds = fold_split(ids, [glyphs.classes[y] for y in labels], key=resolve("glyphs", "v1").digest)
    assert row["model_recall@1"] == pytest.approx(np.nanmean(half_recall(emb, labels, folds)), abs=1e-9)
    capsys.readouterr()
    assert main(["-q", "evaluate", str(tmp_path / "model.pt"), "--dataset", "glyphs", "--splits", "v1",
                 "--levels", str(LEVEL), "--device", "cpu", "--no-clustering", "--reference", str(references),
                 "--out", str(tmp_path / "run")]) == 0    # the embeddings come from the cache of the run above
    printed = capsys.readouterr().out
    assert "reference R@1" in printed and f"{row['gap']:+.4f}" in printed
    assert '"reference_recall@1"' in (tmp_path / "run" / "summary.json").read_text()
    assert not (tmp_path / "run" / "embeddings").exists()       # kept for the comparison only, never written


def test_reference_errors_are_one_line(references, tmp_path, capsys):
    common = ["evaluate", "glyph-cnn", "--dataset", "glyphs", "--splits", "v1", "--device", "cpu",
              "--out", str(tmp_path / "run")]
    assert main([*common, "--levels", "7", "--reference", str(references)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no level7-fold0.pt for level 7" in err and "oodml train --reference" in err
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    shutil.copy(references / f"level{LEVEL}-fold1.pt", wrong / f"level{LEVEL}-fold0.pt")
    shutil.copy(references / f"level{LEVEL}-fold1.pt", wrong / f"level{LEVEL}-fold1.pt")
    assert main([*common, "--levels", str(LEVEL), "--reference", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is not the half-0 reference of level {LEVEL}" in err
    assert not (tmp_path / "run").exists()
