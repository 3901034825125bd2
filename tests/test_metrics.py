"""Retrieval metrics: hand-checked cases, the pitfalls, and agreement with pytorch-metric-learning.

The exact search (oodml.knn) is checked against a brute-force ranking on embeddings whose
dot products are exact in float32 (small integers, or +-1/8 entries), so every summation
order gives the same scores and ties are real; the clustering (oodml.clustering) against a
plain Lloyd's loop and, for quality, faiss's k-means.
"""

import numpy as np
import pytest
import torch

import oodml.clustering
import oodml.knn
from oodml import OodmlError
from oodml.clustering import _split_empty, adjusted_mutual_info, expected_mutual_information, kmeans
from oodml.knn import knn
from oodml.metrics import retrieval_metrics


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


def brute_force_knn(x: np.ndarray, k: int, normalize: bool) -> np.ndarray:
    """Every row's k nearest other rows from the full float64 score matrix, ties to the lower index."""
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sq = (x * x).sum(1)
    scores = x @ x.T if normalize else 2 * x @ x.T - sq[None, :] - sq[:, None]
    out = []
    for i, row in enumerate(scores):
        others = np.delete(np.arange(len(x)), i)
        out.append(others[np.lexsort((others, -row[others]))][:k])
    return np.array(out)


def exact_embeddings(kind: str, n: int, seed: int) -> np.ndarray:
    """Embeddings whose scores float32 computes exactly, in any order: real ties, no rounding."""
    rng = np.random.default_rng(seed)
    if kind == "signs":       # +-1 in 64 dimensions: unit rows of +-1/8, cosines in steps of 1/64
        return rng.choice([-1.0, 1.0], size=(n, 64)).astype(np.float32)
    if kind == "integers":    # Euclidean on small integers: squared distances are exact integers
        return rng.integers(-3, 4, size=(n, 5)).astype(np.float32)
    rows = np.zeros((n, 8), dtype=np.float32)  # "sparse": 4 of 8 coordinates +-1, cosines in steps of 1/4
    for row in rows:
        row[rng.choice(8, 4, replace=False)] = rng.choice([-1.0, 1.0], size=4)
    return rows


@pytest.mark.parametrize("search", ["blocks", "rows"])
@pytest.mark.parametrize("kind, normalize", [("signs", True), ("integers", False), ("sparse", True)])
def test_search_equals_brute_force_for_every_block_size(kind, normalize, search, monkeypatch):
    monkeypatch.setattr(oodml.knn, "TILE", 4)  # small blocks then have whole tiles and a ragged end
    if search == "rows":                        # the search for large k, here for every k
        monkeypatch.setattr(oodml.knn, "MAX_PRUNED_K", 0)
    x = exact_embeddings(kind, 41, seed=4)
    for k in (1, 6, 40):
        expected = brute_force_knn(x.astype(np.float64), k, normalize)
        for block in (1, 6, None):  # None: one block of 41; 6: a ragged last block
            found = knn(torch.from_numpy(x), k, normalize=normalize, chunk=block).numpy()
            assert np.array_equal(found, expected), (k, block)


def test_search_does_not_depend_on_the_thread_count():
    x = torch.from_numpy(exact_embeddings("sparse", 300, seed=5))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = knn(x, 25, chunk=64)
        torch.set_num_threads(2)
        two = knn(x, 25, chunk=64)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.equal(one, torch.from_numpy(brute_force_knn(x.double().numpy(), 25, True)))


def test_search_computes_each_block_once(monkeypatch):
    computed = []
    scores = oodml.knn._block_scores
    monkeypatch.setattr(oodml.knn, "_block_scores", lambda a, b: computed.append(len(a) * len(b)) or scores(a, b))
    knn(torch.randn(100, 8), 5, chunk=10)
    # The blocks on and above the diagonal (B = 10): N(N + B)/2 scores instead of N^2.
    assert sum(computed) == 100 * (100 + 10) // 2


def test_clustering_scores_perfect_clusters():
    centres = np.eye(4) * 10
    x = np.repeat(centres, 5, 0) + np.random.default_rng(2).normal(size=(20, 4)) * 0.01
    m = retrieval_metrics(x, np.repeat(np.arange(4), 5))
    assert m["nmi"] == pytest.approx(1.0) and m["ami"] == pytest.approx(1.0)


def blobs(n: int, clusters: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, size=n)
    x = rng.normal(size=(clusters, dim))[labels] + spread * rng.normal(size=(n, dim))
    return torch.tensor(x, dtype=torch.float32), labels


def plain_lloyd(x: torch.Tensor, clusters: int, iterations: int, seed: int) -> np.ndarray:
    """The textbook loop: every iteration compares every row with every centroid."""
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=generator)[:clusters]].clone()
    for _ in range(iterations):
        labels = torch.cdist(x.double(), centroids.double()).argmin(1)
        counts = torch.bincount(labels, minlength=clusters)
        centroids = torch.zeros_like(centroids).index_add_(0, labels, x) / counts.clamp(min=1)[:, None]
        _split_empty(centroids, counts, generator)
    return torch.cdist(x.double(), centroids.double()).argmin(1).numpy()


def test_kmeans_equals_plain_lloyd_with_less_work():
    x, _ = blobs(600, 30, 6, spread=0.6, seed=6)
    result = kmeans(x, 30, iterations=20, seed=3)
    assert np.array_equal(result.labels, plain_lloyd(x, 30, 20, seed=3))
    # It stopped at a fixed point and, between, compared most rows with the moved centroids only.
    full_passes = result.multiply_adds / (600 * 30 * 6)
    assert result.iterations < 20 and full_passes < result.iterations


def test_kmeans_refills_empty_clusters():
    x = torch.tensor([[0.0, 0.0]] * 6 + [[10.0, 0.0]] * 2)  # duplicates: several initial centroids coincide
    result = kmeans(x, 4, seed=0)
    assert len(np.unique(result.labels)) >= 2 and result.labels.shape == (8,)


def test_kmeans_is_as_good_as_faiss():
    faiss = pytest.importorskip("faiss")
    from sklearn.metrics import normalized_mutual_info_score

    x, labels = blobs(3000, 60, 32, spread=0.35, seed=7)
    ours = normalized_mutual_info_score(labels, kmeans(x, 60, seed=0).labels)
    reference = faiss.Kmeans(32, 60, niter=20, seed=1234)  # as pytorch-metric-learning calls it
    reference.train(x.numpy())
    theirs = normalized_mutual_info_score(labels, reference.index.search(x.numpy(), 1)[1][:, 0])
    assert ours == pytest.approx(theirs, abs=0.02)


def labellings(seed: int):
    """Random pairs of labellings: independent, equal, nearly equal, with one class, with lone members."""
    rng = np.random.default_rng(seed)
    for trial in range(200):
        n = int(rng.integers(2, 300))
        truth = rng.integers(0, int(rng.integers(1, 30)), n)
        assigned = [rng.integers(0, int(rng.integers(1, 30)), n), truth.copy(), (truth + (rng.random(n) < 0.2)) % 7,
                    np.zeros(n, dtype=int), np.arange(n)][trial % 5]
        yield truth, assigned


def test_adjusted_mutual_info_equals_scikit_learns():
    from sklearn.metrics import adjusted_mutual_info_score

    for truth, assigned in labellings(seed=4):
        assert adjusted_mutual_info(truth, assigned) == pytest.approx(adjusted_mutual_info_score(truth, assigned),
                                                                     abs=1e-10)


def test_expected_mutual_information_groups_equal_sizes_exactly(monkeypatch):
    # Many classes of few sizes (SOP's shape, scaled down): the grouped sum equals scikit-learn's pair-by-pair one.
    from sklearn.metrics.cluster import contingency_matrix
    from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information as theirs

    rng = np.random.default_rng(5)
    truth = np.repeat(np.arange(400), rng.integers(2, 9, 400))
    assigned = rng.permutation(truth.copy() % 350)
    expected = theirs(contingency_matrix(truth, assigned, sparse=True), len(truth))
    ours = expected_mutual_information(np.bincount(truth), np.bincount(assigned))
    assert ours == pytest.approx(expected, rel=1e-10)
    monkeypatch.setattr(oodml.clustering, "TERMS_PER_CHUNK", 5)     # one cluster size at a time: the same sum
    assert expected_mutual_information(np.bincount(truth), np.bincount(assigned)) == pytest.approx(ours, rel=1e-12)
    assert expected_mutual_information(np.array([5]), np.array([2, 3])) == 0.0   # one class: no information


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
