"""finetune-last over all episodes at once gives what it gives one episode at a time."""

import dataclasses

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses

from oodml import adapt_progress
from oodml.adapt import batch_rows, finetune_last
from oodml.adapt_batched import (
    BatchedAdam,
    HeadEpisode,
    _normalize_backward,
    finetune_last_batched,
    pair_margin_loss,
    plan_chunks,
)
from oodml.errors import OodmlError
from oodml.miners import distance_weights, sample_triplets, sample_triplets_batched
from oodml.protocol import nearest_accuracy
from oodml.seeding import rng_for

# Per episode, the batched and one-at-a-time paths agree to this in every embedding coordinate (they differ by
# the summation order of a batched matrix product, ~1e-7, which Adam carries along) and to this in accuracy.
EMBEDDING_TOLERANCE, ACCURACY_TOLERANCE = 1e-4, 0.02


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many calls on small batches


class Model(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head


def episodes(features: int, classes: int = 12, per_shot: int = 2, scale: int = 30, seed: int = 0):
    """``per_shot`` synthetic episodes at 2 and 5 shots: HeadEpisodes (2 * scale and 3 * scale iterations),
    their targets (support then 10 queries per class) and query labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, features)) * 1.5
    query_labels = np.repeat(np.arange(classes), 10)
    heads, targets = [], []
    for shots, iterations in ((2, 2 * scale), (5, 3 * scale)):
        for e in range(per_shot):
            labels = np.repeat(np.arange(classes), shots)
            support = (centres[labels] + rng.normal(size=(len(labels), features))).astype(np.float32)
            query = (centres[query_labels] + rng.normal(size=(len(query_labels), features))).astype(np.float32)
            heads.append(HeadEpisode(support, labels, iterations, ("test", shots, e)))
            targets.append(np.concatenate([support, query]))
    return heads, targets, query_labels


def accuracy(adapted: np.ndarray, head: HeadEpisode, query_labels: np.ndarray) -> float:
    n = len(head.support_labels)
    return nearest_accuracy(adapted[n:], query_labels, adapted[:n], head.support_labels, prototypes=True)


MLP = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8))


@pytest.mark.parametrize("head", [torch.nn.Linear(16, 8), MLP], ids=["linear", "mlp"])
def test_batched_episodes_match_one_at_a_time(head):
    torch.manual_seed(0)
    model = Model(head)
    heads, targets, query_labels = episodes(16)
    batched = finetune_last_batched(model, heads, lambda i: targets[i])
    for i, h in enumerate(heads):
        alone = finetune_last(model, h, targets[i])
        assert batched[i].shape == alone.shape == (len(targets[i]), 8)
        assert np.abs(batched[i] - alone).max() < EMBEDDING_TOLERANCE
        assert abs(accuracy(batched[i], h, query_labels) - accuracy(alone, h, query_labels)) <= ACCURACY_TOLERANCE
    untrained = finetune_last(model, dataclasses.replace(heads[0], iterations=1), targets[0])
    assert np.abs(batched[0] - untrained).max() > 1e-3          # it did train


def test_chunks_change_nothing_and_the_model_is_left_alone():
    model = Model(torch.nn.Linear(16, 8))
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    rng_state = torch.get_rng_state()
    heads, targets, _ = episodes(16, per_shot=2, scale=10)
    together = finetune_last_batched(model, heads, lambda i: targets[i])
    one_per_chunk = finetune_last_batched(model, heads, lambda i: targets[i], memory_bytes=1)
    for a, b in zip(together, one_per_chunk, strict=True):
        assert np.abs(a - b).max() < 1e-5
    again = finetune_last_batched(model, heads, lambda i: targets[i])
    assert all(np.array_equal(a, b) for a, b in zip(together, again, strict=True))   # seeded: repeats exactly
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_episodes_of_different_class_counts_train_in_chunks_of_their_own():
    narrow, narrow_targets, _ = episodes(16, classes=6, per_shot=1, scale=5)
    wide, wide_targets, _ = episodes(16, classes=9, per_shot=1, scale=5, seed=1)
    model = Model(torch.nn.Linear(16, 4))
    targets = narrow_targets + wide_targets
    out = finetune_last_batched(model, narrow + wide, lambda i: targets[i])
    assert [o.shape for o in out] == [(len(t), 4) for t in targets]
    assert plan_chunks([1, 1, 1, 1], [6, 6, 9, 9], memory_bytes=10) == [[0, 1], [2, 3]]
    assert plan_chunks([4, 4, 4, 20], ["a"] * 4, memory_bytes=8) == [[0, 1], [2], [3]]   # too big: alone
    assert finetune_last_batched(model, [], lambda i: targets[i]) == []


def test_an_episode_without_triplets_keeps_its_head_and_bad_iterations_are_refused():
    rng = np.random.default_rng(1)
    one_class = HeadEpisode(rng.normal(size=(4, 16)).astype(np.float32), np.zeros(4, int), 5, ("one class",))
    model = Model(torch.nn.Linear(16, 8))
    targets = one_class.support_features
    adapted = finetune_last_batched(model, [one_class], lambda i: targets)[0]
    with torch.no_grad():
        untrained = torch.nn.functional.normalize(model.head(torch.from_numpy(targets)), dim=1).numpy()
    # no negative, no triplet, zero gradient: Adam's first moments stay 0, so the head does not move
    assert np.allclose(adapted, untrained, atol=1e-6)
    for bad in (0, -3, 2.5, True):
        episode = HeadEpisode(one_class.support_features, one_class.support_labels, bad, ("bad",))
        with pytest.raises(OodmlError, match="iterations must be a positive integer"):
            finetune_last_batched(model, [episode], lambda i: targets)


@pytest.mark.parametrize("shots", [1, 2, 5])
def test_batch_rows_are_the_per_class_draws(shots):
    labels = np.repeat(np.arange(70), shots)[np.random.default_rng(shots).permutation(70 * shots)]
    rows = batch_rows(labels, 40, ("rows", shots))
    rng = rng_for("rows", shots, "finetune")          # the draws written out, one bound per class
    _, count = np.unique(labels, return_counts=True)
    by_class, start = np.argsort(labels, kind="stable"), np.cumsum(count) - count
    for drawn in rows:
        chosen = rng.choice(70, size=56, replace=False)
        picks = rng.integers(0, count[chosen, None], size=(56, 2))
        assert np.array_equal(drawn, by_class[start[chosen, None] + picks].ravel())
    uneven = np.concatenate([labels, [0, 0, 3]])       # classes of different sizes: per-class bounds
    assert batch_rows(uneven, 3, ("rows",)).shape == (3, 112)


def library_margin_loss(embeddings: torch.Tensor, triplets) -> torch.Tensor:
    return losses.MarginLoss(margin=0.2, beta=1.2, learn_beta=False)(embeddings, None, triplets)


def pair_triplets(negatives: torch.Tensor, usable: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """pair_margin_loss's triplets written out: (batch, anchor, partner, negative) per usable anchor and draw."""
    batch, anchor, draw = torch.nonzero(usable.unsqueeze(-1).expand(-1, -1, 2), as_tuple=True)
    return batch, anchor, anchor ^ 1, negatives[batch, anchor, draw]


def test_pair_margin_loss_is_the_librarys_per_episode_value_and_gradient():
    gen = torch.Generator().manual_seed(3)
    raw = torch.randn(3, 14, 5, generator=gen)
    raw[0, 5] = raw[0, 4]                          # a pair of copies: distance 0, no gradient from it
    unit = torch.nn.functional.normalize(raw, dim=-1)
    negatives = torch.randint(0, 14, (3, 14, 2), generator=gen)
    negatives = torch.where(negatives // 2 == torch.arange(14).view(1, -1, 1) // 2, (negatives + 2) % 14, negatives)
    usable = torch.rand(3, 14, generator=gen) > 0.2
    usable[2] = False                              # episode 2: no triplet, loss 0
    loss, gradient = pair_margin_loss(unit, negatives, usable)
    # the library normalises the raw embeddings itself
    gradient = _normalize_backward(torch.linalg.vector_norm(raw, dim=-1, keepdim=True), unit, gradient)
    batch, *triplets = pair_triplets(negatives, usable)
    for e in range(3):
        x = raw[e].clone().requires_grad_()
        theirs = library_margin_loss(x, tuple(t[batch == e] for t in triplets))
        theirs.backward()
        assert loss[e].item() == pytest.approx(theirs.item(), abs=1e-6)
        assert torch.allclose(gradient[e], x.grad, rtol=0, atol=1e-6)
    assert loss[2].item() == 0.0 and (gradient[2] == 0).all() and loss[0].item() > 0 and (gradient[0, 4] != 0).any()


def test_pair_margin_loss_without_any_triplet_is_zero_with_a_zero_gradient():
    unit = torch.nn.functional.normalize(torch.randn(2, 4, 3), dim=-1)
    nowhere = torch.zeros(2, 4, dtype=torch.bool)
    loss, gradient = pair_margin_loss(unit, torch.full((2, 4, 2), 2), nowhere)
    assert loss.tolist() == [0.0, 0.0] and (gradient == 0).all()


def test_batched_adam_is_torch_adam_per_episode_and_drops_episodes():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(3, 4, 5, generator=gen)
    grads = [torch.randn(3, 4, 5, generator=gen) for _ in range(6)]
    stacked = {"w": start.clone()}
    ours = BatchedAdam(stacked, lr=1e-2)
    singles = [start[e].clone().requires_grad_() for e in range(3)]
    theirs = [torch.optim.Adam([p], lr=1e-2) for p in singles]
    for step, grad in enumerate(grads):
        if step == 3:              # episode 1 leaves the batch
            kept = {"w": stacked["w"][torch.tensor([0, 2])].clone()}
            ours.keep(torch.tensor([0, 2]), kept)
            stacked, singles, theirs, grad = kept, [singles[0], singles[2]], [theirs[0], theirs[2]], grad[[0, 2]]
        elif step > 3:
            grad = grad[[0, 2]]
        ours.step({"w": grad})
        for e, (p, opt) in enumerate(zip(singles, theirs, strict=True)):
            p.grad = grad[e].clone()
            opt.step()
    assert all(torch.equal(stacked["w"][e], p.detach()) for e, p in enumerate(singles))


def multinomial_reference(weights: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
    """The miner's draws as torch.multinomial makes them (oodml's sampler before it drew by inverse CDF)."""
    classmates = labels.unsqueeze(1) == labels.unsqueeze(0)
    class_size = classmates.sum(dim=1)
    classmates.fill_diagonal_(False)
    usable = (class_size >= 2) & (weights.sum(dim=1) > 0)
    by_label = torch.argsort(labels, stable=True)
    anchors = by_label[usable[by_label]]
    if len(anchors) == 0:
        return [], [], []
    draws = class_size[anchors]
    most = int(draws.max())
    keep = torch.arange(most) < draws.unsqueeze(1)
    positives = torch.multinomial(classmates[anchors].float(), most, replacement=True, generator=generator)
    negatives = torch.multinomial(weights[anchors], most, replacement=True, generator=generator)
    triplets = torch.stack([anchors.unsqueeze(1).expand(-1, most), positives, negatives])[:, keep]
    return [t.tolist() for t in triplets]


def test_sampler_draws_what_torch_multinomial_draws_on_the_cpu():
    for seed in range(60):
        gen = torch.Generator().manual_seed(seed)
        size = [112, 40, 9][seed % 3]
        x = torch.randn(size, [4, 32][seed % 2], generator=gen)
        labels = torch.randint(0, max(2, size // [2, 3, 4][seed % 3]), (size,), generator=gen)
        weights = distance_weights(x, labels)
        ours = sample_triplets(weights, labels, torch.Generator().manual_seed(seed))
        assert [t.tolist() for t in ours] == multinomial_reference(weights, labels,
                                                                   torch.Generator().manual_seed(seed))


def test_each_batch_draws_what_it_draws_alone():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 30, 8, generator=gen)
    labels = torch.randint(0, 9, (4, 30), generator=gen)
    labels[3] = torch.arange(30)                              # a batch without anchors draws nothing
    weights = distance_weights(x, labels)
    batch, *triplets = sample_triplets_batched(weights, labels, [torch.Generator().manual_seed(e) for e in range(4)])
    for e in range(4):
        alone = sample_triplets(weights[e], labels[e], torch.Generator().manual_seed(e))
        assert all(torch.equal(t[batch == e], a) for t, a in zip(triplets, alone, strict=True))
    assert (batch == 3).sum() == 0 and len(batch) > 0


def test_the_meter_counts_and_announces_a_long_adaptation(monkeypatch, capsys):
    monkeypatch.setattr(adapt_progress, "LONG_S", 0.0)
    monkeypatch.setattr(adapt_progress, "WARMUP_UPDATES", 2)
    monkeypatch.setattr(adapt_progress, "is_quiet", lambda: False)
    heads, targets, _ = episodes(16, per_shot=1, scale=3)
    with adapt_progress.metered("finetune-last level 1", len(heads), sum(h.iterations for h in heads)) as meter:
        finetune_last_batched(Model(torch.nn.Linear(16, 8)), heads, lambda i: targets[i], meter=meter)
    assert meter.stage.n == 6 + 9 and meter.done_episodes == 2 and meter.estimate is not None
    err = capsys.readouterr().err
    assert "finetune-last level 1: about" in err and "for 2 episodes (15 iterations; timed over the first 2)" in err


def test_a_short_or_quiet_adaptation_says_nothing_of_its_cost(monkeypatch, capsys):
    monkeypatch.setattr(adapt_progress, "WARMUP_UPDATES", 1)
    with adapt_progress.metered("finetune-all level 2", 1, 5) as meter:     # estimate far under LONG_S
        for _ in range(5):
            meter.update(1)
    assert meter.estimate is not None and "about" not in capsys.readouterr().err
    monkeypatch.setattr(adapt_progress, "LONG_S", 0.0)
    monkeypatch.setattr(adapt_progress, "is_quiet", lambda: True)
    with adapt_progress.metered("finetune-all level 2", 1, 5) as meter:
        for _ in range(5):
            meter.update(1)
    assert capsys.readouterr().err == ""


def test_durations_read_as_people_say_them():
    assert [adapt_progress.duration(s) for s in (45, 150, 7200)] == ["45 s", "2.5 min", "2.0 h"]
    assert adapt_progress.estimate_line("x", 1, 1000, 10, 30) == ("x: about 30 s for 1 episode (1,000 iterations; "
                                                                  "timed over the first 10)")


def test_evaluate_trains_every_episode_of_a_level_in_one_batched_call(glyphs, monkeypatch):
    import oodml.adapt
    from oodml.evaluation import evaluate
    from oodml.models import load_model

    calls = []
    original = oodml.adapt.finetune_last_batched

    def recording(model, heads, targets, **options):
        calls.append([(h.seed, h.iterations, len(h.support_labels)) for h in heads])
        return original(model, heads, targets, **options)

    monkeypatch.setattr(oodml.adapt, "finetune_last_batched", recording)
    results = evaluate(load_model("glyph-cnn", embed_dim=8, seed=1), glyphs, "v1", levels=[2], fewshot=(2, 5),
                       episodes=2, adapt="finetune-last", adapt_iterations=3, clustering=False, device="cpu")
    digest = results.meta["split_digest"]
    assert len(calls) == 1                     # one call for the level: both shot counts, all episodes
    assert [seed for seed, _, _ in calls[0]] == [(digest, 2, shots, e) for shots in (2, 5) for e in (0, 1)]
    assert {iterations for _, iterations, _ in calls[0]} == {3}
    classes = calls[0][0][2] // 2
    assert [n for _, _, n in calls[0]] == [2 * classes] * 2 + [5 * classes] * 2
    scored = {(r["shots"], r["episode"]) for r in results.rows if r["adaptation"] == "finetune-last"}
    assert scored == {(2, 0), (2, 1), (5, 0), (5, 1)}
