"""oodml's distance-weighted miner draws what pytorch-metric-learning's draws, from the same distribution."""

import numpy as np
import pytest
import scipy.stats
import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.miners import distance_weighted_miner as pml_dwm

from oodml.adapt import finetune_last
from oodml.adapt_batched import HeadEpisode
from oodml.miners import DistanceWeightedMiner, distance_weights

ALPHA = 1e-3        # family-wise: a distribution test fails when some anchor's p-value < ALPHA / anchors
DRAWS = 400         # miner calls per distribution test (each draws 2 or 3 triplets per anchor; uniform p ~ 1e-38)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many calls on small batches


def small_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """14 embeddings in 4-d: classes 0-3 with 2 images, class 4 with 3 (random positives), class 5 a
    singleton (a negative, never an anchor), and class 6, two images pointing along +x while every other
    image points to -x, so all its negatives lie beyond the nonzero-loss cutoff and it has no triplet."""
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 6, 6])
    x = torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(7))
    x[:, 0] = -x[:, 0].abs() - 0.1
    x[12:] = torch.tensor([[1.0, 0.1, 0.0, 0.0], [1.0, -0.1, 0.0, 0.0]])
    return x, labels


def library_miner() -> pml_miners.DistanceWeightedMiner:
    return pml_miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)


def pair_counts(mine, x: torch.Tensor, labels: torch.Tensor, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, B) counts of anchor -> negative and of anchor -> positive over ``calls`` calls of ``mine``."""
    negatives, positives = np.zeros((len(labels),) * 2, int), np.zeros((len(labels),) * 2, int)
    for _ in range(calls):
        a, p, n = (t.numpy() for t in mine(x, labels))
        np.add.at(negatives, (a, n), 1)
        np.add.at(positives, (a, p), 1)
    return negatives, positives


def same_distribution_p(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Chi-square p-value that two rows of counts over the same categories share one distribution.
    Categories with fewer than 20 draws in both rows together are pooled (the test's approximation
    needs expected counts of about 5 or more)."""
    total = counts_a + counts_b
    rare = (total > 0) & (total < 20)
    table = np.stack([counts_a[total >= 20], counts_b[total >= 20]], axis=1)
    if rare.any():
        table = np.vstack([table, [[counts_a[rare].sum(), counts_b[rare].sum()]]])
    if len(table) < 2:
        return 1.0
    return float(scipy.stats.chi2_contingency(table.T).pvalue)


def smallest_p_times_tests(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Bonferroni: the smallest per-anchor p-value times the number of anchors tested."""
    rows = np.flatnonzero(counts_a.sum(axis=1) + counts_b.sum(axis=1))
    return min(same_distribution_p(counts_a[r], counts_b[r]) for r in rows) * len(rows)


@pytest.fixture(scope="module")
def library_counts():
    x, labels = small_batch()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return pair_counts(library_miner(), x, labels, DRAWS)


def test_negatives_and_positives_follow_the_librarys_distribution(library_counts):
    x, labels = small_batch()
    ours = pair_counts(DistanceWeightedMiner(generator=torch.Generator().manual_seed(1)), x, labels, DRAWS)
    assert smallest_p_times_tests(library_counts[0], ours[0]) > ALPHA        # negatives, 11 anchors
    assert smallest_p_times_tests(library_counts[1], ours[1]) > ALPHA        # positives (random in class 4)


def test_the_same_test_rejects_uniform_negatives(library_counts):
    # A wrong miner: the right anchors, positives and candidate negatives, but each negative uniform.
    x, labels = small_batch()
    weights = distance_weights(x, labels)
    ours = DistanceWeightedMiner(generator=torch.Generator().manual_seed(1))

    def uniform(x, labels):
        a, p, _ = ours(x, labels)
        return a, p, torch.multinomial((weights[a] > 0).float(), 1).squeeze(1)

    with torch.random.fork_rng():
        torch.manual_seed(2)
        wrong = pair_counts(uniform, x, labels, DRAWS)
    assert smallest_p_times_tests(library_counts[0], wrong[0]) < ALPHA


def test_same_anchors_and_positives_no_classmate_or_zero_weight_negative():
    x, labels = small_batch()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        expected = library_miner()(x, labels)
    anchors, positives, negatives = DistanceWeightedMiner(generator=torch.Generator().manual_seed(0))(x, labels)
    # class 4's three images: three triplets each; the singleton (11) and the isolated class 6 have none
    assert anchors.tolist() == expected[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,
                                                        8, 8, 8, 9, 9, 9, 10, 10, 10]
    two_images = anchors < 8                      # one classmate: the positive is determined
    assert torch.equal(positives[two_images], expected[1][two_images])
    assert (labels[positives] == labels[anchors]).all() and (positives != anchors).all()
    distance = torch.cdist(*(2 * [torch.nn.functional.normalize(x, dim=1)]))
    assert (labels[negatives] != labels[anchors]).all()
    assert (distance[anchors, negatives] < 1.4).all()
    assert anchors.dtype == positives.dtype == negatives.dtype == torch.long


def test_no_triplets_without_a_class_of_two_like_the_library():
    x, labels = small_batch()
    singletons = torch.arange(len(labels))
    ours = DistanceWeightedMiner()(x, singletons)
    assert [t.tolist() for t in ours] == [t.tolist() for t in library_miner()(x, singletons)] == [[], [], []]
    assert all(t.dtype == torch.long for t in ours)


@pytest.mark.parametrize("dim", [4, 128])
def test_weights_are_the_librarys_bit_for_bit(monkeypatch, dim):
    # At 128-d the weights span ~1e-40: the library's one maximum over the whole matrix decides which
    # underflow to 0, and ours must agree on that too.
    x, labels = torch.randn(112, dim, generator=torch.Generator().manual_seed(dim)), torch.arange(56).repeat(2)
    seen = {}

    def record(labels, ref_labels=None, weights=None, **kwargs):
        seen["weights"] = weights.clone()
        return original(labels, ref_labels=ref_labels, weights=weights, **kwargs)

    original = pml_dwm.lmu.get_random_triplet_indices
    monkeypatch.setattr(pml_dwm.lmu, "get_random_triplet_indices", record)
    with torch.random.fork_rng():
        library_miner()(x, labels)
    ours = distance_weights(x, labels)
    assert torch.equal(torch.nan_to_num(ours / ours.sum(dim=1, keepdim=True)), torch.nan_to_num(seen["weights"]))
    assert (ours > 0).any()


def test_seeded_draws_repeat_and_leave_the_global_generator_alone():
    x, labels = small_batch()
    before = torch.get_rng_state()
    draw = [DistanceWeightedMiner(generator=torch.Generator().manual_seed(s))(x, labels)[2] for s in (5, 5, 6)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
    assert torch.equal(torch.get_rng_state(), before)


def test_finetune_last_repeats_under_its_seed():
    rng = np.random.default_rng(0)
    model = torch.nn.Module()
    model.head = torch.nn.Linear(6, 4)
    support, labels, query = rng.normal(size=(8, 6)), np.repeat(np.arange(4), 2), rng.normal(size=(3, 6))

    def tuned(seed):
        return finetune_last(model, HeadEpisode(support, labels, 20, seed), query)

    before = torch.get_rng_state()
    assert np.array_equal(tuned(("a",)), tuned(("a",))) and not np.allclose(tuned(("a",)), tuned(("b",)))
    assert torch.equal(torch.get_rng_state(), before)
