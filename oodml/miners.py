"""Distance-weighted negative mining (Wu et al. 2017, *Sampling matters in deep embedding learning*).

:class:`DistanceWeightedMiner` returns the same anchors, in the same order, as
pytorch-metric-learning's ``DistanceWeightedMiner`` (its defaults: cutoff 0.5,
nonzero-loss cutoff 1.4), with positives and negatives drawn from the same
distribution, but all anchors' positives and negatives drawn at once (by
inverse CDF from one ``torch.rand`` call: on the CPU exactly the draws
``torch.multinomial`` makes from the same generator) instead of a Python loop
over the classes of the batch, and from a ``torch.Generator`` of its own, so a
seeded miner neither reads nor advances torch's global random state.  The
random stream is not the library's: the same seed draws different triplets.
:func:`sample_triplets_batched` draws for many batches (few-shot episodes) in
one go, each from its own generator, exactly what each would draw alone.

The distribution, for a batch of B embeddings in d dimensions:

* ``D[i, j]``: the Euclidean distance between the L2-normalised embeddings i
  and j, clamped below at ``cutoff``.
* ``log w[i, j] = (2 - d) log D[i, j] - (d - 3) / 2 * log(1 - D[i, j]**2 / 4)``:
  the inverse of the density of pairwise distances on the unit sphere in d
  dimensions, so negatives are drawn roughly uniformly in distance.
* Same-class pairs get weight 0; so do pairs at distance ``>= nonzero_loss_cutoff``
  (they would contribute no loss) and pairs whose log weight is infinite or NaN
  (antipodal points).  For numerical range the weights are
  ``exp(log w - max log w)``, the maximum taken over the whole (masked) matrix
  as the library does, so the same weights underflow to 0 in both.
* Anchors: every index whose class has at least 2 members in the batch, when
  the batch holds another class, and whose row of weights is not all 0.  An
  anchor of a class with k members in the batch gets k triplets, each with a
  positive drawn uniformly from its k - 1 classmates and a negative drawn from
  its row of weights (with replacement).  Anchors are ordered by label, then by
  index, each repeated k times, as in the library.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def distance_weights(embeddings: torch.Tensor, labels: torch.Tensor, *, cutoff: float = 0.5,
                     nonzero_loss_cutoff: float = 1.4) -> torch.Tensor:
    """The negative-sampling weights of every anchor (the formula in the module docstring), unnormalised.

    Divided by their row sums they equal, bit for bit, the weights pytorch-metric-learning's miner
    samples from; :func:`sample_triplets` needs no normalisation.

    Args:
        embeddings: (B, d) float embeddings, not necessarily normalised, or (E, B, d): E batches (episodes)
            at once, each weighed on its own (its own maximum).
        labels: (B,) integer class labels, or (E, B).
        cutoff: distances below it count as ``cutoff`` (it bounds the weights of near pairs).
        nonzero_loss_cutoff: pairs at this distance or further get weight 0.

    Returns:
        (B, B) (or (E, B, B)) non-negative weights in ``embeddings.dtype``, at most 1; row i is all 0 when
        anchor i has no candidate negative.
    """
    # Written op for op as the library computes it (same operands, same order), so the floats agree
    # exactly; each operation on this small matrix costs more in dispatch than in arithmetic.
    d = float(embeddings.size(-1))
    unit = torch.nn.functional.normalize(embeddings, p=2, dim=-1)
    dist = torch.cdist(unit, unit, p=2).clamp_(min=cutoff)
    # (2 - d) log D - (d - 3) / 2 log(1 - D**2 / 4), in place, each operation with the library's operands
    log_w = torch.log(dist).mul_(2.0 - d).sub_(dist.pow(2.0).mul_(0.25).neg_().add_(1.0).log_().mul_((d - 3) / 2))
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    # Same-class entries count as log weight 0 in the maximum, as in the library, so the same tiny
    # weights underflow to 0 in both.  Pairs whose log weight is not finite (antipodal: log(0), or the log
    # of a rounding below 0) count as -inf, in the maximum and in the weights (exp(-inf) = 0); the diagonal
    # (distance clamped to ``cutoff``, same class, log weight 0) keeps the maximum finite.  (Fewer and
    # cheaper passes over the matrix than isfinite, where and multiplying by a boolean mask; the same values.)
    masked = torch.nan_to_num_(log_w, nan=-torch.inf, posinf=-torch.inf).masked_fill_(same, 0.0)
    weights = torch.exp_(masked.sub_(masked.amax(dim=(-2, -1), keepdim=True)))
    return weights.masked_fill_(same | (dist >= nonzero_loss_cutoff), 0.0)


def inverse_cdf(cumulative: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Categories drawn from each row of weights, given by their cumulative sums, by the uniforms in the same
    row of ``uniforms``.

    The rule of ``torch.multinomial(weights, k, replacement=True)`` on the CPU (k >= 2): cumulative sums of
    the row divided by its total, the last set to 1, and the first category whose cumulative share is not
    below the uniform.  Fed the float64 uniforms the CPU generator would give that call, it draws the same
    categories (tested); on other devices it is this rule with that device's uniforms.

    Args:
        cumulative: (R, C) ``torch.cumsum(weights, dim=-1)`` of non-negative float weights; rows whose total
            is 0 draw meaningless categories (the caller drops them).
        uniforms: (R, k) float64 values in [0, 1) (float32 on Apple MPS, which has no float64).

    Returns:
        (R, k) int64 category indices.
    """
    share = cumulative / cumulative[:, -1:]
    share[:, -1] = 1.0
    return torch.searchsorted(share.to(uniforms.dtype), uniforms.contiguous(), right=False)


def sample_triplets(weights: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw every anchor's triplets at once (the rule in the module docstring).

    On the CPU the draws are those of ``torch.multinomial`` with the same generator (positives, then
    negatives); :func:`sample_triplets_batched` with one batch.

    Args:
        weights: (B, B) non-negative negative-sampling weights, 0 for same-class pairs (rows need not be
            normalised); an all-0 row means the anchor is skipped.
        labels: (B,) integer class labels.
        generator: the random source (on ``weights``' device); ``None`` uses torch's global one.

    Returns:
        ``(anchors, positives, negatives)``, three (T,) int64 tensors of batch indices on ``labels``' device.
    """
    _, anchors, positives, negatives = sample_triplets_batched(weights.unsqueeze(0), labels.unsqueeze(0),
                                                               [generator])
    return anchors, positives, negatives


def sample_triplets_batched(weights: torch.Tensor, labels: torch.Tensor,
                            generators: Sequence[torch.Generator | None],
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every anchor's triplets in E batches (episodes) at once, each batch drawing from its own generator.

    Batch e draws exactly what :func:`sample_triplets` draws for it alone from ``generators[e]``: the
    uniforms come from one ``torch.rand`` call per batch (its positives' then its negatives'), and the
    categories from :func:`inverse_cdf`, for all batches together.

    Args:
        weights: (E, B, B) non-negative weights as :func:`distance_weights` gives them.
        labels: (E, B) integer class labels.
        generators: E random sources (on ``weights``' device; ``None``: torch's global one).

    Returns:
        ``(batches, anchors, positives, negatives)``: four (T,) int64 tensors, the batch of each triplet
        and its indices within that batch, batch by batch, each batch's triplets in :func:`sample_triplets`'
        order.
    """
    device = labels.device
    if weights.dtype not in (torch.float32, torch.float64):      # half: as torch.multinomial, in float
        weights = weights.float()
    cumulative = torch.cumsum(weights, dim=-1)                    # (E, B, B); the last column: row sums
    by_label = torch.argsort(labels, dim=-1, stable=True)
    ordered = labels.gather(-1, by_label)
    class_size = torch.empty_like(by_label).scatter_(
        -1, by_label, torch.searchsorted(ordered, ordered, right=True) - torch.searchsorted(ordered, ordered))
    # a non-zero row of weights implies a negative in the batch
    usable = (class_size >= 2) & (cumulative[..., -1] > 0)
    batch, position = usable.gather(-1, by_label).nonzero(as_tuple=True)     # batch-major, by label
    anchors = by_label[batch, position]
    if len(anchors) == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty.clone(), empty.clone(), empty.clone()
    # Each anchor needs as many draws as its class has members (at least 2): a batch draws its largest
    # number for each of its anchors and keeps each one's first k, as torch.multinomial would.
    draws = class_size[batch, anchors]
    count = torch.bincount(batch, minlength=len(generators))
    most = torch.zeros_like(count).scatter_reduce_(0, batch, draws, "amax")
    widest = int(most.max())
    uniforms = _uniforms(generators, batch, count, most, widest, device=weights.device)
    positives = _classmates_drawn(ordered, by_label, batch, position, draws, widest, uniforms[0])
    # negatives: every row of the batch searched (no copy of the anchors' rows), the anchors' results kept
    row = batch * labels.size(-1) + anchors
    every = uniforms.new_full((cumulative.size(0) * cumulative.size(1), widest), 0.5).index_copy_(0, row, uniforms[1])
    negatives = inverse_cdf(cumulative.flatten(0, 1), every)[row]
    keep = torch.arange(widest, device=device) < draws.unsqueeze(1)
    triplets = torch.stack([batch.unsqueeze(1).expand(-1, widest), anchors.unsqueeze(1).expand(-1, widest),
                            positives, negatives])[:, keep]
    return triplets[0], triplets[1], triplets[2], triplets[3]


def _uniforms(generators: Sequence[torch.Generator | None], batch: torch.Tensor, count: torch.Tensor,
              most: torch.Tensor, widest: int, device: torch.device) -> torch.Tensor:
    """(2, T, widest) uniforms for the positives and the negatives of every anchor.

    Batch e with n anchors drawing k each takes ``torch.rand(2 * n * k)`` from ``generators[e]`` (one call,
    as ``torch.multinomial`` would consume them: its positives, then its negatives, anchor by anchor); places
    past an anchor's k repeat its last uniform (the caller keeps only the first k draws).

    Args:
        batch: (T,) each anchor's batch, batch-major; ``count``, ``most``: (E,) each batch's anchors and draws.
    """
    precise = torch.float32 if device.type == "mps" else torch.float64     # MPS has no float64
    sizes = [2 * n * k for n, k in zip(count.tolist(), most.tolist(), strict=True)]
    drawn = torch.cat([torch.rand(size, dtype=precise, generator=generator, device=device)
                       for generator, size in zip(generators, sizes, strict=True) if size])
    start = torch.tensor(sizes, device=device).cumsum(0).sub_(torch.tensor(sizes, device=device))[batch]
    first = (count.cumsum(0) - count)[batch]                        # each batch's first anchor
    local = torch.arange(len(batch), device=device) - first          # an anchor's place in its batch
    k = most[batch].unsqueeze(1)
    place = torch.minimum(torch.arange(widest, device=device).unsqueeze(0), k - 1)
    positives = (start + local * most[batch]).unsqueeze(1) + place
    return torch.stack([drawn[positives], drawn[positives + (count[batch] * most[batch]).unsqueeze(1)]])


def _classmates_drawn(ordered: torch.Tensor, by_label: torch.Tensor, batch: torch.Tensor, position: torch.Tensor,
                      draws: torch.Tensor, widest: int, uniforms: torch.Tensor) -> torch.Tensor:
    """Positives: for each anchor, a classmate drawn uniformly (weight 1 each) by :func:`inverse_cdf`.

    A class's members lie side by side in label order (index order within the class), so the draw only looks
    at a window of ``widest`` places from the class's first member instead of a whole row of the batch: the
    cumulative shares at the classmates are those of the whole row, so the same uniform picks the same one.

    Args:
        ordered: (E, B) labels sorted; ``by_label``: (E, B) the batch indices in that order (stable).
        batch, position: (T,) each anchor's batch and place in ``by_label``; ``draws``: (T,) its class size.
        uniforms: (T, widest) float64 uniforms.

    Returns:
        (T, widest) batch indices of the positives.
    """
    first = torch.searchsorted(ordered, ordered)[batch, position]                  # (T,) the class's first place
    window = first.unsqueeze(1) + torch.arange(widest, device=ordered.device)      # (T, widest) places
    classmate = ((window - first.unsqueeze(1)) < draws.unsqueeze(1)) & (window != position.unsqueeze(1))
    places = window.clamp(max=ordered.size(-1) - 1)
    chosen = inverse_cdf(torch.cumsum(classmate.float(), dim=-1), uniforms)
    return by_label[batch.unsqueeze(1), places.gather(1, chosen.clamp(max=widest - 1))]


class DistanceWeightedMiner(torch.nn.Module):
    """``miner(embeddings, labels) -> (anchors, positives, negatives)``, a drop-in for
    ``pytorch_metric_learning.miners.DistanceWeightedMiner`` (same arguments, same distribution, triplet
    indices for a loss's ``indices_tuple``), drawing from ``generator`` (``None``: torch's global one).

    Embeddings are (B, d) floats, labels (B,) integers; the result is three (T,) int64 index tensors.
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cutoff, self.nonzero_loss_cutoff, self.generator = float(cutoff), float(nonzero_loss_cutoff), generator

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            labels = labels.to(embeddings.device)
            weights = distance_weights(embeddings.detach(), labels, cutoff=self.cutoff,
                                       nonzero_loss_cutoff=self.nonzero_loss_cutoff)
            return sample_triplets(weights, labels, self.generator)
