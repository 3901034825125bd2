"""oodml's distance-weighted miner draws what pytorch-metric-learning's draws, from the same distribution."""

import numpy as np
import pytest
import scipy.stats
import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.miners import distance_weighted_miner as pml_dwm

from oodml.adapt import finetune_last
from oodml.adapt_batched import HeadEpisode
from oodml.miners import (
    DistanceWeightedMiner,
    distance_weights,
    pair_distance_weights,
    sample_pair_negatives,
    sample_triplets_batched,
)

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


# The batched fine-tuning path's miner, for batches of class pairs (rows 2k, 2k + 1 one class).
PAIR_WEIGHT_RTOL = 1e-4     # relative, per weight of a row normalised to sum 1; float32 rounding grows with d


def pair_batches(batches: int, size: int, dim: int, seed: int, spread: float = 0.3):
    """(E, B, dim) unit embeddings of class pairs (partners near each other), their labels (E, B), and each
    row's place in label order (E, B)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batches, size, dim, generator=gen)
    x[:, 1::2] = x[:, 0::2] + spread * torch.randn(batches, size // 2, dim, generator=gen)
    labels = torch.stack([torch.randperm(4 * size, generator=gen)[:size // 2].repeat_interleave(2)
                          for _ in range(batches)])
    rank = torch.argsort(torch.argsort(labels, dim=-1, stable=True), dim=-1)
    return torch.nn.functional.normalize(x, dim=-1), labels, rank


@pytest.mark.parametrize("dim", [2, 8, 32, 128])
def test_pair_weights_are_the_librarys_distribution(dim):
    unit, labels, _ = pair_batches(4, 112, dim, seed=dim)
    unit[0, 4:6] = unit[0, 2]                       # duplicate rows: distance 0 to a classmate and a negative
    unit[1, 0], unit[1, 1] = -unit[1, 2], -unit[1, 2]      # a pair antipodal to another: beyond the cutoff
    theirs, ours = distance_weights(unit, labels), pair_distance_weights(unit)
    assert torch.equal(theirs > 0, ours > 0)        # the same candidates: other class, nearer than 1.4
    if dim == 128:       # there the antipodal pair's log weight is the scale: every weight underflows to 0
        assert (ours[1] == 0).all() and (ours[[0, 2, 3]] > 0).any()
    rows = theirs.sum(dim=-1, keepdim=True) > 0
    theirs, ours = theirs / theirs.sum(dim=-1, keepdim=True), ours / ours.sum(dim=-1, keepdim=True)
    assert torch.allclose(ours[rows.expand_as(ours)], theirs[rows.expand_as(theirs)], rtol=PAIR_WEIGHT_RTOL, atol=0)
    assert ours.shape == (4, 112, 112) and ours.dtype == torch.float32


def test_pair_weights_in_a_given_buffer_and_a_row_without_candidates():
    unit, labels, _ = pair_batches(2, 8, 4, seed=1)
    # batch 1: rows 0, 1 point one way, every other row the other way (distance ~2): no candidate negative
    sides = torch.tensor([1.0, 1.0, -1, -1, -1, -1, -1, -1]).view(-1, 1) * torch.tensor([1.0, 0, 0, 0])
    noise = 0.01 * torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    unit[1] = torch.nn.functional.normalize(sides + noise, dim=-1)
    scratch = torch.full((3, 2, 8, 8), float("nan"))
    ours = pair_distance_weights(unit, out=scratch)
    assert ours.data_ptr() == scratch[2].data_ptr() and torch.equal(ours, pair_distance_weights(unit))
    assert (ours[1, :2] == 0).all() and (ours[1, 2:, 2:] > 0).any()
    assert torch.equal(ours > 0, distance_weights(unit, labels) > 0)


def drawn_by_row(batches, anchors, positives, negatives, size):
    """sample_triplets_batched's triplets (label order) as (E, B, 2) negatives, -1 where no anchor."""
    out = torch.full((int(batches.max()) + 1 if len(batches) else 0, size, 2), -1)
    for b, a, p, n in zip(*(t.view(-1, 2) for t in (batches, anchors, positives, negatives)), strict=True):
        assert b[0] == b[1] and a[0] == a[1] and (p == a[0] ^ 1).all()     # partner as positive, twice
        out[b[0], a[0]] = n
    return out


def test_pair_negatives_are_sample_triplets_batched_draws():
    unit, labels, rank = pair_batches(5, 112, 32, seed=3)
    weights = pair_distance_weights(unit)
    weights[1, 7] = 0                              # anchors without a candidate: skipped, later uniforms shift
    weights[1, 40] = 0
    weights[3] = 0                                 # a batch without any anchor draws nothing
    alone = sample_triplets_batched(weights, labels, [torch.Generator().manual_seed(e) for e in range(5)])
    expected = drawn_by_row(*alone, 112)
    generators = [torch.Generator().manual_seed(e) for e in range(5)]
    negatives, usable = sample_pair_negatives(weights.clone(), rank, generators)
    assert usable.tolist() == (weights.sum(dim=-1) > 0).tolist() and usable.sum() == 4 * 112 - 2
    assert torch.equal(negatives[usable], expected[torch.arange(5) != 3][usable[torch.arange(5) != 3]])
    assert torch.equal(generators[3].get_state(), torch.Generator().manual_seed(3).get_state())
    assert (labels.gather(1, negatives.flatten(1)).view(5, 112, 2) != labels.unsqueeze(-1))[usable].all()
