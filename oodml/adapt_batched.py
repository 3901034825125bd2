"""``finetune-last`` for many episodes at once: one copy of the embedding head per episode, all trained as one
batched model.

The one-at-a-time path (:func:`oodml.adapt.finetune_last`) spends most of its time in Python and in launching
small kernels: 1000-1500 steps per episode, each a few tiny matrix products.  Here the E episodes' head
parameters are stacked along a leading episode dimension (``torch.func.stack_module_state``) and the head runs
on all of them in one call (one batched matrix product for the ``torch.nn.Linear`` of
:class:`oodml.models.EmbeddingModel`; ``torch.func.vmap`` over ``torch.func.functional_call`` for any other
head, an MLP), and every other step is batched too, with as few operations as possible (each costs more to
dispatch than to compute at these sizes):

* batches: each episode's rows come from its own numpy stream, the one :func:`batch_rows` draws (for the
  one-at-a-time path of :mod:`oodml.adapt` too); every batch is 56 (or all)
  classes x 2 rows, rows 2k and 2k + 1 one class;
* mining: :func:`oodml.miners.pair_distance_weights` (the distance-weighted miner's weights, for batches of
  class pairs) and :func:`oodml.miners.sample_pair_negatives`, each episode drawing from its own generator the
  uniforms it would draw alone;
* loss: :func:`pair_margin_loss`, pytorch-metric-learning's ``MarginLoss`` (margin 0.2, beta 1.2 fixed, its
  divisor reducer) per episode and its gradient in closed form, then back through the L2 normalisation and,
  for a Linear head, the head (:func:`_linear_gradients`) without autograd;
* optimiser: :class:`BatchedAdam`, ``torch.optim.Adam``'s update op for op on the stacked parameters (Adam is
  elementwise, so one update of the stack is E independent updates).

Every episode keeps the seeds of the one-at-a-time path (``seed=(split_digest, level, shots, episode)``), so
the two differ only by rounding (batched products sum in another order, the weights are computed in another
form), which can flip a rare draw near a sampling boundary; ``tests/test_adapt_batched.py`` bounds the
difference per episode.  Episodes with fewer iterations (2-shot: 1000, 5-shot: 1500) leave the batch when
done.  Episodes are trained in chunks whose estimated memory stays under ``memory_bytes``
(:func:`plan_chunks`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .adapt_progress import AdaptationMeter
from .errors import OodmlError
from .miners import pair_distance_weights, sample_pair_negatives
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


def pair_margin_loss(unit: torch.Tensor, negatives: torch.Tensor, usable: torch.Tensor, *, margin: float = MARGIN,
                     beta: float = BETA) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-metric-learning's ``MarginLoss(margin, beta=beta, learn_beta=False)`` of E batches of class pairs
    at once, and its gradient, in closed form (no autograd graph: a step's few hundred small operations cost
    more in dispatch than in arithmetic).

    The triplets are :func:`oodml.miners.sample_pair_negatives`': each usable anchor i twice, with its partner
    (row ``i ^ 1``) as the positive and each of its two negatives.  Per batch: ``relu(d_ap - beta + margin) +
    relu(beta - d_an + margin)`` per triplet over distances between the L2-normalised embeddings, summed and
    divided by the number of non-zero terms (0 when none).  A term's gradient with respect to ``unit[i]`` is
    ``+-(unit[i] - unit[j]) / d_ij`` over that divisor; a pair at distance 0 (two copies of one image) has
    gradient 0, as ``torch.cdist``'s clamped form gives.

    Args:
        unit: (E, B, d) L2-normalised embeddings, B even.
        negatives: (E, B, 2) int64 and ``usable``: (E, B) bool, as :func:`oodml.miners.sample_pair_negatives`
            returns them.

    Returns:
        ``(loss, gradient)``: (E,) losses and the (E, B, d) gradient of their sum with respect to ``unit``.
    """
    batches, size, dim = unit.shape
    pairs = unit.view(batches, size // 2, 2, dim)
    between = pairs[:, :, 0] - pairs[:, :, 1]                              # (E, B/2, d): row 2k - row 2k + 1
    rows = (negatives.view(batches, -1) + (torch.arange(batches, device=unit.device) * size).unsqueeze(-1)).view(-1)
    to_negative = unit.unsqueeze(2) - unit.reshape(-1, dim).index_select(0, rows).view(batches, size, 2, dim)
    positive_distance = torch.linalg.vector_norm(between, dim=-1)          # (E, B/2), both anchors of a pair
    negative_distance = torch.linalg.vector_norm(to_negative, dim=-1)      # (E, B, 2)
    positive_term = (positive_distance - beta).add_(margin).relu_()
    negative_term = (beta - negative_distance).add_(margin).relu_()
    # a pair's positive term counts once per draw of each of its usable anchors
    positive_count = usable.view(batches, -1, 2).sum(dim=-1).mul_(2).mul_(positive_term > 0).to(unit.dtype)
    negative_count = (negative_term > 0).mul_(usable.unsqueeze(-1)).to(unit.dtype)
    divisor = (positive_count.sum(dim=1) + negative_count.sum(dim=(1, 2))).clamp_(min=1.0)
    loss = ((positive_term * positive_count).sum(dim=1) + (negative_term * negative_count).sum(dim=(1, 2))) / divisor
    # d term / d unit[i] = sign * (unit[i] - unit[j]) / d_ij over the divisor; sign -1 for negatives
    per = divisor.reciprocal_().unsqueeze(-1)
    positive_push = between.mul_(positive_count.mul_(per).div_(positive_distance.clamp_(min=1e-15)).unsqueeze(-1))
    negative_push = to_negative.mul_(negative_count.mul_(per.unsqueeze(-1)).div_(negative_distance.clamp_(min=1e-15))
                                     .neg_().unsqueeze(-1))
    gradient = negative_push[:, :, 0] + negative_push[:, :, 1]
    gradient.view(batches, -1, 2, dim)[:, :, 0] += positive_push
    gradient.view(batches, -1, 2, dim)[:, :, 1] -= positive_push
    gradient.view(-1, dim).index_add_(0, rows, negative_push.view(-1, dim).neg_())
    return loss, gradient


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


def batch_rows(support_labels: np.ndarray, iterations: int, seed: tuple) -> np.ndarray:
    """The support rows of every training batch of an episode: ``min(56, classes)`` classes drawn without
    replacement, then 2 of each class's rows with replacement, from the numpy stream ``rng_for(*seed,
    "finetune")``.

    Returns:
        (iterations, min(56, classes) * 2) int64 rows of ``support_labels``, class by class.
    """
    rng = rng_for(*seed, "finetune")
    # rows grouped by class: class c's rows are by_class[start[c]:start[c] + count[c]]
    _, count = np.unique(support_labels, return_counts=True)
    by_class = np.argsort(support_labels, kind="stable")
    start = np.cumsum(count) - count
    out = np.empty((iterations, min(BATCH_CLASSES, len(count)) * PER_CLASS), dtype=np.int64)
    # every class the same size (an episode's k shots): one scalar bound, which numpy draws twice as fast and
    # from the same stream as the per-class bounds (tests/test_adapt_batched.py checks)
    bound = int(count[0]) if (count == count[0]).all() else None
    for i in range(iterations):
        chosen = rng.choice(len(count), size=min(BATCH_CLASSES, len(count)), replace=False)
        picks = rng.integers(0, bound or count[chosen, None], size=(len(chosen), PER_CLASS))   # with replacement
        out[i] = by_class[start[chosen, None] + picks].ravel()
    return out


def batch_rows_table(episode: HeadEpisode) -> np.ndarray:
    """(iterations, B) the episode's training batches, drawn as the one-at-a-time path draws them."""
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


def _linear_gradients(params: dict[str, torch.Tensor], x: torch.Tensor, grad_out: torch.Tensor,
                      ) -> dict[str, torch.Tensor]:
    """The gradients of :func:`_linear`'s parameters, given its (E, B, F) input and the (E, B, d) gradient
    of its output."""
    grads = {"weight": torch.bmm(grad_out.transpose(1, 2), x)}
    if "bias" in params:
        grads["bias"] = grad_out.sum(dim=1)
    return grads


def _normalized(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(torch.nn.functional.normalize(raw, dim=-1), the norms)``: the same division, the norms kept for
    :func:`_normalize_backward`."""
    norm = torch.linalg.vector_norm(raw, dim=-1, keepdim=True)
    return raw / norm.clamp_min(1e-12), norm


def _normalize_backward(norm: torch.Tensor, unit: torch.Tensor, grad_unit: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to ``raw`` of ``unit = normalize(raw)`` (norms ``norm`` clamped below at 1e-12,
    as ``torch.nn.functional.normalize``): ``(g - unit (unit . g)) / |raw|`` (0 where the norm is clamped).
    Overwrites ``grad_unit``."""
    radial = (unit * grad_unit).sum(dim=-1, keepdim=True)
    return grad_unit.sub_(unit * radial).div_(norm).mul_(norm >= 1e-12)


def label_ranks(labels: np.ndarray) -> np.ndarray:
    """(..., B) each row's place when its batch of class pairs (rows 2k, 2k + 1 one class) is ordered by
    label, then by row: the order in which :func:`oodml.miners.sample_pair_triplets` assigns uniforms."""
    pairs = labels[..., ::2]
    rank = np.empty(pairs.shape, np.int64)
    np.put_along_axis(rank, np.argsort(pairs, axis=-1, kind="stable"), np.arange(pairs.shape[-1]), axis=-1)
    return (2 * rank[..., None] + np.arange(2)).reshape(labels.shape)


class _Chunk:
    """The training state of one chunk of episodes: stacked parameters, optimiser, batches, generators.

    A step: each episode's batch of support features gathered by one index, the heads' forward pass, the
    miner's weights and draws for all episodes (:func:`oodml.miners.pair_distance_weights`,
    :func:`oodml.miners.sample_pair_triplets`), the loss's gradient in closed form
    (:func:`margin_loss_gradient`), back through the normalisation and the heads (in closed form for a
    ``torch.nn.Linear`` head, by autograd for any other), and one Adam update of the stack.
    """

    def __init__(self, head: torch.nn.Module, episodes: Sequence[HeadEpisode], device: torch.device) -> None:
        self.head, self.episodes = head, list(episodes)
        self.active = list(range(len(episodes)))
        self.linear = type(head) is torch.nn.Linear
        params, self.buffers = torch.func.stack_module_state([head] * len(episodes))
        self.params = {k: v.detach().to(device).requires_grad_(not self.linear) for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self.adam = BatchedAdam(self.params)
        longest = max(e.iterations for e in episodes)
        most = max(len(e.support_features) for e in episodes)
        feats = np.zeros((len(episodes), most, episodes[0].support_features.shape[1]), np.float32)
        rows = np.zeros((len(episodes), longest, batch_size(episodes[0].support_labels)), np.int64)
        ranks = np.zeros_like(rows)
        for i, e in enumerate(episodes):
            feats[i, :len(e.support_features)] = e.support_features
            rows[i, :e.iterations] = batch_rows_table(e)
            ranks[i, :e.iterations] = label_ranks(e.support_labels[rows[i, :e.iterations]])
        rows += most * np.arange(len(episodes))[:, None, None]           # rows of the flattened features
        self.feats = torch.from_numpy(feats).to(device).flatten(0, 1)
        # per-step matrices of a megabyte or more cost more to allocate than to fill: computed in these
        self.inputs = self.feats.new_empty(rows.shape[0] * rows.shape[2], feats.shape[2])
        self.scratch = self.feats.new_empty((3, rows.shape[0], rows.shape[2], rows.shape[2]))
        self.rows, self.ranks = torch.from_numpy(rows).to(device), torch.from_numpy(ranks).to(device)
        self.generators = [torch.Generator(device).manual_seed(derive_seed(*e.seed, "triplets")) for e in episodes]
        self.forward = (_linear if self.linear else
                        torch.func.vmap(lambda p, b, x: torch.func.functional_call(head, (p, b), (x,)),
                                        randomness="different"))

    def step(self, iteration: int) -> None:
        """One training step of every active episode."""
        rows = self.rows[:, iteration]
        active = len(rows)
        x = torch.index_select(self.feats, 0, rows.flatten(), out=self.inputs[:rows.numel()]).view(*rows.shape, -1)
        with torch.set_grad_enabled(not self.linear):
            raw = self.forward(self.params, self.buffers, x)
        with torch.no_grad():
            unit, norm = _normalized(raw.detach())
            negatives, usable = sample_pair_negatives(pair_distance_weights(unit, cutoff=0.5, nonzero_loss_cutoff=1.4,
                                                                            out=self.scratch[:, :active]),
                                                      self.ranks[:, iteration], self.generators)
            _, grad_unit = pair_margin_loss(unit, negatives, usable)
            grad_raw = _normalize_backward(norm, unit, grad_unit)
            if self.linear:
                grads = _linear_gradients(self.params, x, grad_raw)
        if not self.linear:
            grads = dict(zip(self.params, torch.autograd.grad(raw, tuple(self.params.values()), grad_raw), strict=True))
        self.adam.step(grads)

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
            on = keep.to(self.rows.device)
            self.params = {k: v.detach()[on].requires_grad_(not self.linear) for k, v in self.params.items()}
            self.buffers = {k: v[on] for k, v in self.buffers.items()}
            self.adam.keep(on, self.params)
            self.rows, self.ranks = self.rows[on], self.ranks[on]      # the features stay, indexed by row
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
