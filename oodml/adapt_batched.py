"""``finetune-last`` for many episodes at once: one copy of the embedding head per episode, all trained as one
batched model.

The one-at-a-time path (:func:`oodml.adapt.finetune_last`) spends most of its time in Python and in launching
small kernels: 1000-1500 steps per episode, each a few tiny matrix products.  Here the E episodes' head
parameters are stacked along a leading episode dimension (``torch.func.stack_module_state``) and the head runs
on all of them in one call (``torch.func.vmap`` over ``torch.func.functional_call``, so any head module works:
the Linear of :class:`oodml.models.EmbeddingModel`, an MLP), and every other step is batched too:

* batches: each episode's rows come from its own numpy stream, the one :func:`oodml.adapt.batch_rows` draws;
* mining: :func:`oodml.miners.distance_weights` on (E, B, d) embeddings and
  :func:`oodml.miners.sample_triplets_batched`, each episode drawing from its own generator what it would draw
  alone;
* loss: :func:`margin_loss_batched`, pytorch-metric-learning's ``MarginLoss`` (margin 0.2, beta 1.2 fixed,
  its divisor reducer) per episode, summed, so each episode's gradient is its own loss's;
* optimiser: :class:`BatchedAdam`, ``torch.optim.Adam``'s update op for op on the stacked parameters (Adam is
  elementwise, so one update of the stack is E independent updates).

Every episode keeps the seeds of the one-at-a-time path (``seed=(split_digest, level, shots, episode)``), so
the two differ only by rounding (a batched matrix product sums in another order), which can flip a rare draw
near a sampling boundary; ``tests/test_adapt_batched.py`` bounds the difference in accuracy per episode.
Episodes with fewer iterations (2-shot: 1000, 5-shot: 1500) leave the batch when done.  Episodes are trained in
chunks whose estimated memory stays under ``memory_bytes`` (:func:`plan_chunks`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .adapt_progress import AdaptationMeter
from .errors import OodmlError
from .miners import distance_weights, sample_triplets_batched
from .seeding import derive_seed, rng_for

#: the default bound on one chunk's estimated memory (bytes), on any device
MEMORY_BYTES = 1 << 30
MARGIN, BETA = 0.2, 1.2
#: every training batch: this many classes (all, when fewer) x this many support images each
BATCH_CLASSES, PER_CLASS = 56, 2


def batch_size(support_labels: np.ndarray) -> int:
    """Images in each of an episode's training batches: ``min(BATCH_CLASSES, classes) * PER_CLASS``."""
    return min(BATCH_CLASSES, len(np.unique(support_labels))) * PER_CLASS


@dataclass(frozen=True)
class HeadEpisode:
    """One episode as the head's training sees it.

    Attributes:
        support_features: (n_s, F) float32 backbone features of the support images.
        support_labels: (n_s,) integer labels.
        iterations: training steps.
        seed: the episode's seed parts (``(split_digest, level, shots, episode)`` in ``evaluate``).
    """

    support_features: np.ndarray
    support_labels: np.ndarray
    iterations: int
    seed: tuple


def margin_loss_batched(embeddings: torch.Tensor, batches: torch.Tensor, anchors: torch.Tensor,
                        positives: torch.Tensor, negatives: torch.Tensor, *, margin: float = MARGIN,
                        beta: float = BETA) -> torch.Tensor:
    """pytorch-metric-learning's ``MarginLoss(margin, beta=beta, learn_beta=False)`` of E batches at once.

    Per batch: distances between the L2-normalised embeddings, ``relu(d_ap - beta + margin) +
    relu(beta - d_an + margin)`` per triplet, summed and divided by the number of non-zero terms (0 when none).
    Distances come from each batch's Gram matrix as ``sqrt(max(|x|^2 + |y|^2 - 2 x.y, 1e-30))``, the form
    ``torch.cdist`` (the library's distance) takes on batches over 25 rows: a pair of identical rows has
    distance ~0 and gradient 0, as there.

    Args:
        embeddings: (E, B, d) raw embeddings.
        batches, anchors, positives, negatives: (T,) int64 triplets, as
            :func:`oodml.miners.sample_triplets_batched` returns them.

    Returns:
        (E,) losses, each differentiable with respect to its own batch's embeddings only.
    """
    if len(anchors) == 0:
        return embeddings.sum(dim=(1, 2)) * 0.0       # the library's zero loss: zero gradients, still a graph
    size = embeddings.size(1)
    unit = torch.nn.functional.normalize(embeddings, p=2, dim=-1)
    square = unit.pow(2).sum(dim=-1).flatten()                         # (E * B,)
    gram = torch.bmm(unit, unit.transpose(1, 2)).flatten()              # (E * B * B,)
    anchor = batches * size + anchors                                   # rows of the flattened batches
    anchor_square = square.index_select(0, anchor)

    def distance(others: torch.Tensor) -> torch.Tensor:
        pair = (anchor_square + square.index_select(0, batches * size + others)
                - 2.0 * gram.index_select(0, anchor * size + others))
        return pair.clamp_min(1e-30).sqrt()

    pos = torch.relu((distance(positives) - beta) + margin)
    neg = torch.relu((beta - distance(negatives)) + margin)
    zeros = embeddings.new_zeros(len(embeddings))
    total = zeros.index_add(0, batches, pos + neg)
    divisor = zeros.index_add(0, batches, ((pos > 0).to(zeros.dtype) + (neg > 0).to(zeros.dtype)))
    return total / divisor.clamp(min=1.0)         # a batch without a non-zero term sums to 0: loss 0


class BatchedAdam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) on stacked per-episode parameters whose rows (episodes)
    can be dropped between steps: the same update as ``torch.optim.Adam``'s single-tensor path, op for op.

    Args:
        params: name -> (E, ...) leaf tensors, updated in place.
        lr, betas, eps: as ``torch.optim.Adam``'s.
    """

    def __init__(self, params: dict[str, torch.Tensor], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor]) -> None:
        """One update of every parameter by its gradient ``grads[name]`` (same shape)."""
        beta1, beta2 = self.betas
        self.steps += 1
        step = float(self.steps)
        bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
        step_size, bias_correction2_sqrt = self.lr / bias_correction1, bias_correction2**0.5
        for name, param in self.params.items():
            grad, exp_avg, exp_avg_sq = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    def keep(self, rows: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """Keep only episodes ``rows`` of the state; ``params`` are the new (kept) parameter tensors."""
        self.params = params
        self.exp_avg = {k: v[rows] for k, v in self.exp_avg.items()}
        self.exp_avg_sq = {k: v[rows] for k, v in self.exp_avg_sq.items()}


def batch_rows_table(episode: HeadEpisode) -> np.ndarray:
    """(iterations, B) the episode's training batches, drawn as the one-at-a-time path draws them."""
    from .adapt import batch_rows

    return batch_rows(episode.support_labels, episode.iterations, episode.seed)


def episode_bytes(head: torch.nn.Module, episode: HeadEpisode, out_dim: int) -> int:
    """Estimated memory (bytes) of one episode in a chunk: parameters with gradients and two Adam moments,
    its support features, batch table, and one step's activations (inputs, embeddings, distance matrices)."""
    n_params = sum(p.numel() for p in head.parameters()) + sum(b.numel() for b in head.buffers())
    n_support, features = episode.support_features.shape
    batch = batch_size(episode.support_labels)
    floats = 4 * n_params + n_support * features + 2 * batch * features + 8 * batch * out_dim + 12 * batch * batch
    return 4 * floats + 16 * episode.iterations * batch


def plan_chunks(sizes: Sequence[int], keys: Sequence[object], memory_bytes: int) -> list[list[int]]:
    """Episodes grouped into chunks: episodes with the same key (batch shape) together, in order, each chunk's
    estimated bytes (``sizes``) at most ``memory_bytes`` (a single episode over it gets a chunk of its own).

    Returns:
        lists of episode indices, covering every index once.
    """
    chunks: list[list[int]] = []
    for key in dict.fromkeys(keys):
        current, used = [], 0
        for i in (i for i, k in enumerate(keys) if k == key):
            if current and used + sizes[i] > memory_bytes:
                chunks.append(current)
                current, used = [], 0
            current.append(i)
            used += sizes[i]
        chunks.append(current)
    return chunks


def _linear(params: dict[str, torch.Tensor], buffers: dict, x: torch.Tensor) -> torch.Tensor:
    """A stack of ``torch.nn.Linear`` heads on (E, B, F) inputs: one batched matrix product (what vmap over
    ``functional_call`` computes for them, without its per-call cost)."""
    weight, bias = params["weight"], params.get("bias")
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class _Chunk:
    """The training state of one chunk of episodes: stacked parameters, optimiser, batches, generators."""

    def __init__(self, head: torch.nn.Module, episodes: Sequence[HeadEpisode], device: torch.device) -> None:
        self.head, self.episodes = head, list(episodes)
        self.active = list(range(len(episodes)))
        params, self.buffers = torch.func.stack_module_state([head] * len(episodes))
        self.params = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self.adam = BatchedAdam(self.params)
        longest = max(e.iterations for e in episodes)
        most = max(len(e.support_features) for e in episodes)
        feats = np.zeros((len(episodes), most, episodes[0].support_features.shape[1]), np.float32)
        rows = np.zeros((len(episodes), longest, batch_size(episodes[0].support_labels)), np.int64)
        labels = np.zeros_like(rows)
        for i, e in enumerate(episodes):
            feats[i, :len(e.support_features)] = e.support_features
            rows[i, :e.iterations] = batch_rows_table(e)
            labels[i, :e.iterations] = e.support_labels[rows[i, :e.iterations]]
        self.feats, self.rows, self.labels = (torch.from_numpy(a).to(device) for a in (feats, rows, labels))
        self.generators = [torch.Generator(device).manual_seed(derive_seed(*e.seed, "triplets")) for e in episodes]
        self.forward = (_linear if type(head) is torch.nn.Linear else
                        torch.func.vmap(lambda p, b, x: torch.func.functional_call(head, (p, b), (x,)),
                                        randomness="different"))

    def step(self, iteration: int) -> None:
        """One training step of every active episode."""
        rows, labels = self.rows[:, iteration], self.labels[:, iteration]
        x = self.feats[torch.arange(len(rows), device=rows.device).unsqueeze(1), rows]
        raw = self.forward(self.params, self.buffers, x)
        with torch.no_grad():
            triplets = sample_triplets_batched(distance_weights(raw.detach(), labels, cutoff=0.5,
                                                                nonzero_loss_cutoff=1.4), labels, self.generators)
        loss = margin_loss_batched(raw, *triplets).sum()
        grads = torch.autograd.grad(loss, tuple(self.params.values()))
        self.adam.step(dict(zip(self.params, grads, strict=True)))

    def finish(self, iteration: int) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """The episodes whose last step was ``iteration`` (0-based) with their trained parameters and buffers;
        they leave the chunk."""
        ends = [self.episodes[i].iterations == iteration + 1 for i in self.active]
        if not any(ends):
            return []
        done = [(i, {k: v[j].detach() for k, v in {**self.params, **self.buffers}.items()})
                for j, (i, end) in enumerate(zip(self.active, ends, strict=True)) if end]
        keep = torch.tensor([j for j, end in enumerate(ends) if not end], dtype=torch.long)
        self.active = [i for i, end in zip(self.active, ends, strict=True) if not end]
        if self.active:
            on = keep.to(self.feats.device)
            self.params = {k: v.detach()[on].requires_grad_() for k, v in self.params.items()}
            self.buffers = {k: v[on] for k, v in self.buffers.items()}
            self.adam.keep(on, self.params)
            self.feats, self.rows, self.labels = self.feats[on], self.rows[on], self.labels[on]
            self.generators = [self.generators[j] for j in keep.tolist()]
        return done


def train_heads(head: torch.nn.Module, episodes: Sequence[HeadEpisode], *, device: torch.device,
                memory_bytes: int = MEMORY_BYTES, meter: AdaptationMeter | None = None,
                ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Train one copy of ``head`` (float32, train mode) per episode, chunk by chunk, episodes batched.

    Yields ``(episode index, trained state)`` as each episode finishes, the state a name -> tensor mapping of
    the head's parameters and buffers for ``torch.func.functional_call``.  ``meter`` counts the work.
    """
    if not episodes:
        return
    template = copy.deepcopy(head).float().to(device).eval()
    with torch.no_grad():     # the embedding width, from one row in eval mode (a batch norm takes one row there)
        out_dim = template(torch.zeros(1, episodes[0].support_features.shape[1], device=device)).shape[-1]
    template.train()
    sizes = [episode_bytes(template, e, out_dim) for e in episodes]
    keys = [(batch_size(e.support_labels), e.support_features.shape[1]) for e in episodes]
    # Whatever the head draws (dropout) comes from torch's global generator, forked so the caller's is untouched.
    with torch.random.fork_rng():
        torch.manual_seed(int(rng_for(*episodes[0].seed).integers(2**31)))
        for chunk_indices in plan_chunks(sizes, keys, memory_bytes):
            chunk = _Chunk(template, [episodes[i] for i in chunk_indices], device)
            for iteration in range(max(episodes[i].iterations for i in chunk_indices)):
                chunk.step(iteration)
                if meter is not None:
                    meter.update(len(chunk.active))
                for j, state in chunk.finish(iteration):
                    if meter is not None:
                        meter.episode_done()
                    yield chunk_indices[j], state


def finetune_last_batched(model: torch.nn.Module, episodes: Sequence[HeadEpisode],
                          targets: Callable[[int], np.ndarray], *, device: str = "cpu",
                          memory_bytes: int = MEMORY_BYTES, meter: AdaptationMeter | None = None,
                          ) -> list[np.ndarray]:
    """Train a copy of ``model.head`` per episode (all at once) and embed each episode's targets with its own.

    Args:
        model: a model with a ``head`` module (the backbone is not used: the features are given).
        episodes: the episodes' support features, labels, iterations and seeds.
        targets: episode index -> (n, F) backbone features of the images to embed after adapting (called
            once per episode, after its training, so only one episode's targets are held at a time).
        device: where the heads train.
        memory_bytes: bound on one chunk's estimated memory (:func:`plan_chunks`).

    Returns:
        per episode, (n, d) float32 L2-normalised embeddings of its targets.

    Raises:
        OodmlError: for an episode whose ``iterations`` is not a positive integer.
    """
    from .embedding import resolve_device

    for e in episodes:
        if isinstance(e.iterations, bool) or not isinstance(e.iterations, int) or e.iterations < 1:
            raise OodmlError(f"fine-tuning iterations must be a positive integer, got {e.iterations!r} "
                             f"(episode {e.seed})")
    dev = resolve_device(device)
    head = copy.deepcopy(model.head).float().to(dev).eval()
    out: list[np.ndarray | None] = [None] * len(episodes)
    for i, state in train_heads(model.head, episodes, device=dev, memory_bytes=memory_bytes, meter=meter):
        with torch.no_grad():
            x = torch.as_tensor(targets(i), dtype=torch.float32, device=dev)
            embedded = torch.func.functional_call(head, state, (x,))
        out[i] = torch.nn.functional.normalize(embedded, dim=1).cpu().numpy()
    return out  # type: ignore[return-value]
