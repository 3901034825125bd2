"""Retrieval metrics: hand-checked cases, the pitfalls, and agreement with pytorch-metric-learning."""

import numpy as np
import pytest
import torch

from oodml import OodmlError
from oodml.metrics import knn, retrieval_metrics


def test_hand_checked_example():
    # 1-D points; class a at 0, 1, 10; class b at 2, 11.  Unnormalised (Euclidean) retrieval.
    x = np.array([[0.0], [1.0], [10.0], [2.0], [11.0]])
    y = np.array([0, 0, 0, 1, 1])
    m = retrieval_metrics(x, y, normalize=False, ks=(1, 2), clustering=False)
    # nearest neighbours: 0->1 (hit), 1->0 (hit), 10->11 (miss), 2->1 (miss), 11->10 (miss)
    assert m["recall@1"] == pytest.approx(2 / 5)
    # R: 2, 2, 2, 1, 1.  Query 0 ranks 1, 3, 10, 11 -> hits at 1, 3: r_precision 1/2, map@r (1/1)/2.
    # Query 1: 0, 2, 10, 11 -> hits at 1, 3: 1/2 and 1/2.  Query 10: 11, 2, 1, 0 -> hits at 3, 4: 0 and 0.
    # Query 2: 1, 0, 10, 11 -> hit at 4: 0 and 0.  Query 11: 10, 2, 1, 0 -> hit at 2: 0 and 0.
    assert m["r_precision"] == pytest.approx((0.5 + 0.5) / 5)
    assert m["map@r"] == pytest.approx((0.5 + 0.5) / 5)
    # map@1000 over all 4 neighbours: q0 (1 + 2/3)/2, q1 (1 + 2/3)/2, q10 (1/3 + 2/4)/2, q2 (1/4)/1, q11 (1/2)/1
    expected = ((1 + 2 / 3) / 2 * 2 + (1 / 3 + 2 / 4) / 2 + 1 / 4 + 1 / 2) / 5
    assert m["map@1000"] == pytest.approx(expected)
    assert m["queries"] == 5


def test_duplicates_do_not_break_query_exclusion():
    # Identical embeddings: dropping "the first column" would drop a true neighbour instead of the query.
    x = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    y = np.array([0, 0, 1, 1])
    m = retrieval_metrics(x, y, clustering=False)
    assert m["recall@1"] == 1.0 and m["map@r"] == 1.0


def test_ties_go_to_the_lower_index():
    x = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]])
    assert knn(x, 3).tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    assert knn(x, 1, chunk=1).tolist() == [[1], [0], [0], [0]]


def test_lone_classes_are_distractors_not_queries():
    x = np.array([[0.0, 1], [0.1, 1], [0.05, 1]])  # the lone sample sits between the pair
    y = np.array([0, 0, 1])
    m = retrieval_metrics(x, y, clustering=False)
    assert m["queries"] == 2
    assert m["recall@1"] == 0.0  # each query's nearest is the lone distractor


def test_never_counts_padding_when_fewer_neighbours_than_the_depth():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), np.repeat(np.arange(3), 4)
    m = retrieval_metrics(x, y, clustering=False)
    assert 0 <= m["map@1000"] <= 1 and m["map@r"] <= m["map@1000"] + 1e-12
    perfect = retrieval_metrics(np.repeat(np.eye(3), 4, 0) + 1e-3 * rng.normal(size=(12, 3)), y, clustering=False)
    assert perfect["map@1000"] == pytest.approx(1.0) and perfect["recall@8"] == 1.0


def test_chunking_does_not_change_the_result():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(50, 6)), dtype=torch.float32)
    assert torch.equal(knn(x, 7, chunk=7), knn(x, 7))


def test_clustering_scores_perfect_clusters():
    centres = np.eye(4) * 10
    x = np.repeat(centres, 5, 0) + np.random.default_rng(2).normal(size=(20, 4)) * 0.01
    m = retrieval_metrics(x, np.repeat(np.arange(4), 5))
    assert m["nmi"] == pytest.approx(1.0) and m["ami"] == pytest.approx(1.0)


@pytest.mark.parametrize("normalize", [True, False])
def test_agrees_with_pytorch_metric_learning(normalize):
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 40, size=600)
    labels[:3] = 99                                    # one class of 3
    labels[3] = 100                                    # a lone sample
    x = (rng.normal(size=(600, 16)) + 0.6 * rng.normal(size=(101, 16))[labels]).astype(np.float32)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    distance = CosineSimilarity() if normalize else LpDistance(normalize_embeddings=False)
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"), knn_func=CustomKNN(distance))
    ref = calc.get_accuracy(torch.tensor(x), torch.tensor(labels))
    ours = retrieval_metrics(x, labels, normalize=normalize, clustering=False)
    assert ours["recall@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.parametrize("x, y, message", [
    (np.array([[0.0, np.nan], [1, 1], [np.inf, 0]]), [0, 0, 1], "NaN or inf in 2 of 3 rows"),
    (np.zeros((3, 2, 2)), [0, 0, 1], "2-D float array"),
    (np.zeros((3, 2)), [0, 1], "2 labels for 3 embeddings"),
    (np.eye(3), [0, 1, 2], "no class has two or more samples"),
])
def test_bad_embeddings(x, y, message):
    with pytest.raises(OodmlError, match=message):
        retrieval_metrics(x, np.array(y), clustering=False)
