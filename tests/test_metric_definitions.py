"""Each metric's definition, pinned on tiny cases worked out by hand, and all of them by a digest.

A definition that changes what it returns fails here; if the change is meant, bump
``oodml.metrics.METRICS_VERSION`` and add the new digest to ``METRICS_DIGESTS``, so results and leaderboard
entries of the two definitions never pass for comparable (their protocol card records the version).
"""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from oodml.clustering import KMEANS_ITERATIONS, kmeans
from oodml.knn import knn
from oodml.metrics import CLUSTERING_SEED, METRICS_DIGESTS, METRICS_VERSION, per_query_metrics, retrieval_metrics
from oodml.protocol import score_episode

# Six images on a line (Euclidean, normalize=False, so distances are read off the positions):
#   row      0    1    2    3    4     5
#   x        0    1    3    5    10    20
#   class    A    B    A    A    B     C
# R (other images of the query's class): A 2, B 1, C 0 (row 5 is no query, only a distractor).
LINE = torch.tensor([[0.0], [1.0], [3.0], [5.0], [10.0], [20.0]])
LINE_LABELS = [0, 1, 0, 0, 1, 2]
# Rankings, nearest first (ties: the lower row first):
#   q0: 1(B) 2(A) 3(A) 4(B) 5       hits 0 1 1 0 0
#   q1: 0(A) 2(A) 3(A) 4(B) 5       hits 0 0 0 1 0
#   q2: 1(B) 3(A) 0(A) 4 5          rows 1 and 3 both at distance 2: row 1 first, so no hit at rank 1
#   q3: 2(A) 1(B) 0(A) 4(B) 5       rows 0 and 4 both at distance 5: row 0 first
#   q4: 3(A) 2(A) 1(B) 0(A) 5(C)    rows 0 and 5 both at distance 10: row 0 first
LINE_RANKING = [[1, 2, 3, 4, 5], [0, 2, 3, 4, 5], [1, 3, 0, 4, 5], [2, 1, 0, 4, 5], [3, 2, 1, 0, 5]]


def test_ties_go_to_the_lower_row_and_the_query_is_never_its_own_neighbour():
    assert knn(LINE, 5, normalize=False)[:5].tolist() == LINE_RANKING


def test_recall_at_k_is_the_hit_rate_at_k():
    per_query = per_query_metrics(LINE, LINE_LABELS, normalize=False)
    assert per_query["query"].tolist() == [0, 1, 2, 3, 4]                # row 5's class has no other image
    # a hit among the first k: q3 alone at k=1; q0, q2, q3 at k=2; every query by k=4
    assert per_query["recall@1"].tolist() == [0, 0, 0, 1, 0]
    assert per_query["recall@2"].tolist() == [1, 0, 1, 1, 0]
    assert per_query["recall@4"].tolist() == [1, 1, 1, 1, 1]
    means = retrieval_metrics(LINE, LINE_LABELS, normalize=False, clustering=False)
    assert means["recall@1"] == pytest.approx(1 / 5, abs=1e-12)
    assert means["recall@2"] == pytest.approx(3 / 5, abs=1e-12)
    assert means["queries"] == 5


def test_map_at_r_as_musgrave_et_al_define_it():
    """MAP@R = (1/R) sum_{i<=R} P(i) rel(i): precision at rank i, counted only where rank i is a hit."""
    per_query = per_query_metrics(LINE, LINE_LABELS, normalize=False)
    # q0 (R=2): hit at 2, P(2)=1/2 -> (1/2)/2 = 1/4     q1 (R=1): no hit at 1 -> 0
    # q2 (R=2): hit at 2 -> 1/4                          q3 (R=2): hit at 1, P(1)=1 -> 1/2
    # q4 (R=1): no hit at 1 -> 0
    assert per_query["map@r"] == pytest.approx([1 / 4, 0, 1 / 4, 1 / 2, 0], abs=1e-12)
    # R-precision: hits among the first R, over R
    assert per_query["r_precision"] == pytest.approx([1 / 2, 0, 1 / 2, 1 / 2, 0], abs=1e-12)
    # map@1000 runs over all 5 neighbours and still divides by R:
    # q0 (1/2 + 2/3)/2 = 7/12, q1 (1/4)/1, q2 7/12, q3 (1 + 2/3)/2 = 5/6, q4 (1/3)/1
    assert per_query["map@1000"] == pytest.approx([7 / 12, 1 / 4, 7 / 12, 5 / 6, 1 / 3], abs=1e-12)
    means = retrieval_metrics(LINE, LINE_LABELS, normalize=False, clustering=False)
    assert means["map@r"] == pytest.approx(1 / 5, abs=1e-12)
    assert means["map@1000"] == pytest.approx(31 / 60, abs=1e-12)


def test_an_identical_copy_of_the_query_is_a_neighbour_the_query_is_not():
    # cosine: rows 0 and 1 are the same image (A), row 2 (B) is orthogonal to them, row 3 (B) at 45 degrees
    # to all three (one float value, so an exact three-way tie).
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert knn(x, 3).tolist() == [[1, 3, 2], [0, 3, 2], [3, 0, 1], [0, 1, 2]]
    per_query = per_query_metrics(x, [0, 0, 1, 1])
    # q0, q1: the copy at similarity 1 is the first neighbour, a hit; q2: row 3 first, a hit;
    # q3: the three-way tie puts rows 0, 1 first and its classmate 2 third: recall@1 0, map@r 0, map@1000 1/3
    assert per_query["recall@1"].tolist() == [1, 1, 1, 0]
    assert per_query["map@r"].tolist() == [1, 1, 1, 0]
    assert per_query["map@1000"] == pytest.approx([1, 1, 1, 1 / 3], abs=1e-12)


def test_nmi_and_ami_cluster_as_the_protocol_card_says():
    # Four unit vectors at 0, 10, 20 and 180 degrees, classes A A B B.  k-means with as many clusters as
    # classes (2) puts the three close ones together: clusters {0, 1, 2} {3} from any starting pair.
    angles = np.radians([0, 10, 20, 180])
    x = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    truth = [0, 0, 1, 1]
    clusters = kmeans(x, 2, iterations=KMEANS_ITERATIONS, seed=CLUSTERING_SEED).labels
    assert len(set(clusters[:3].tolist())) == 1 and clusters[3] != clusters[0]
    # MI (nats) of A A B B against 3+1: contingency (2 0 / 1 1) over 4 images
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_truth, h_clusters = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    scores = retrieval_metrics(x, truth)
    # NMI with the arithmetic mean of the entropies (scikit-learn's default), not the geometric one
    assert scores["nmi"] == pytest.approx(mi / ((h_truth + h_clusters) / 2), abs=1e-9)
    assert abs(scores["nmi"] - mi / math.sqrt(h_truth * h_clusters)) > 1e-3
    # AMI: every 3+1 split of A A B B has this same MI, so chance expects exactly it: AMI = 0
    assert scores["ami"] == pytest.approx(0, abs=1e-9)
    # and the clustering is on the L2-normalised embeddings: scaling one row changes nothing
    scaled = x.clone()
    scaled[3] *= 100
    assert retrieval_metrics(scaled, truth)["nmi"] == pytest.approx(scores["nmi"], abs=1e-12)
    assert normalized_mutual_info_score(truth, clusters) == pytest.approx(scores["nmi"], abs=1e-12)


def test_nmi_uses_as_many_clusters_as_classes():
    # Three tight classes: with 3 clusters k-means recovers them (NMI 1); 2 clusters could not.
    x = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0], [0.01, 0.99], [-1.0, 0.0], [-0.99, -0.01]])
    assert retrieval_metrics(x, [0, 0, 1, 1, 2, 2])["nmi"] == pytest.approx(1, abs=1e-9)


def definitions_digest() -> str:
    """sha256 of every definition's output on a fixed seeded case, floats rounded to 6 decimals (BLAS and
    thread counts move only the last bits)."""
    generator = np.random.default_rng(26)
    sizes = [1, 3, 5, 7, 9, 11, 14]          # a class of one image: a distractor, never a query
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = generator.normal(size=(len(sizes), 12))
    x = (centres[labels] + 0.9 * generator.normal(size=(len(labels), 12))).astype(np.float32)
    out = {}
    for normalize in (True, False):
        per_query = per_query_metrics(x, labels, normalize=normalize)
        out[f"per_query normalize={normalize}"] = {k: np.round(v, 6).tolist() for k, v in per_query.items()}
        out[f"knn normalize={normalize}"] = knn(torch.from_numpy(x), 10, normalize=normalize).tolist()
    out["retrieval"] = {k: round(v, 6) for k, v in retrieval_metrics(x, labels).items()}
    support = np.array([i for c in range(1, len(sizes)) for i in np.flatnonzero(labels == c)[:1]])
    query = np.setdiff1d(np.flatnonzero(labels > 0), support)
    for adaptation in ("none", "prototypes"):
        scores = score_episode(x[support], labels[support], x[query], labels[query], adaptation)
        out[f"episode {adaptation}"] = {k: round(v, 6) for k, v in scores.items()}
    return hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("threads", [1, 2])
def test_changing_a_definition_needs_a_new_metrics_version(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):                 # numpy's (and scikit-learn's) BLAS too
            digest = definitions_digest()
    finally:
        torch.set_num_threads(before)
    assert digest == METRICS_DIGESTS[METRICS_VERSION], (
        f"the metrics' outputs changed (digest {digest}); if the change is meant, bump METRICS_VERSION in "
        "oodml/metrics.py and add this digest for it")


def test_each_metrics_version_has_its_own_digest():
    assert max(METRICS_DIGESTS) == METRICS_VERSION
    assert len(set(METRICS_DIGESTS.values())) == len(METRICS_DIGESTS)
