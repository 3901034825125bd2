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
:func:`sample_triplets_batched` draws for many batches in one go, each from its
own generator, exactly what each would draw alone.  For the batches that
fine-tuning draws (classes in pairs of rows), :func:`pair_distance_weights` and
:func:`sample_pair_negatives` do the same for many few-shot episodes at once in
fewer operations: the same distribution and the same uniforms, the weights
equal up to float32 rounding.

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

import math
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


def pair_distance_weights(unit: torch.Tensor, *, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                          out: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`distance_weights` of E batches of class pairs, in fewer and cheaper passes (for training many
    few-shot heads at once, where this matrix is most of a step's arithmetic).

    A batch of class pairs: rows 2k and 2k + 1 share a class and no other two rows do (a fine-tuning batch,
    :func:`oodml.adapt_batched.batch_rows`).  Per batch, each row of the result is proportional to the same row of
    :func:`distance_weights` (the same distribution), computed another way:

    * squared distances from one batched product (the form ``torch.cdist`` takes), never their square roots;
    * ``exp(log w - M) = 2 ** (-c log2(s (4 - s)) + 2 c - M / ln 2) / sqrt(s)`` for squared distance ``s``
      and ``c = (d - 3) / 2``: one logarithm and one power of 2 per pair instead of two logarithms and an
      exponential;
    * pairs of one class and pairs at ``nonzero_loss_cutoff`` or further (the non-candidates) get weight 0
      through arithmetic, not boolean masks;
    * ``M``, the scale, is the library's: the largest finite log weight of a pair of different classes (or
      0), taken at the batch's nearest and farthest such pairs (for ``d >= 2``, ``log w`` falls and then
      rises with the distance), not over the whole matrix.  The scale cancels in the sampling except where
      it drives weights to underflow to 0: a nearly antipodal pair raises it so far that every weight of
      the batch underflows and the batch draws nothing, here as in the library.

    The results differ from :func:`distance_weights`' by rounding (a few float32 units in the last place,
    relative), so a draw falling within that of a boundary between two negatives can differ.

    Args:
        unit: (E, B, d) L2-normalised embeddings, B even, float32 or float64.
        cutoff: distances below it count as ``cutoff``.
        nonzero_loss_cutoff: pairs at this distance or further get weight 0; below 2.
        out: a (3, E, B, B) tensor like ``unit`` to compute in, or None (allocated).  Reusing one saves
            allocating three matrices per call, which costs more than computing them where each is a
            megabyte or more (the C library maps and unmaps the memory every time).

    Returns:
        (E, B, B) non-negative weights in ``unit.dtype`` (``out[2]`` when given), at most 1 (up to rounding);
        row i is all 0 when anchor i has no candidate negative.
    """
    batches, size, d = unit.shape
    squared, candidate, weights = out if out is not None else unit.new_empty((3, batches, size, size))
    squared_norms = unit.pow(2).sum(dim=-1, keepdim=True)
    ones = torch.ones_like(squared_norms)
    # |x|^2 + |y|^2 - 2 x.y in one product, as torch.cdist computes it
    torch.bmm(torch.cat([unit * -2.0, squared_norms, ones], dim=-1),
              torch.cat([unit, ones, squared_norms], dim=-1).transpose(1, 2), out=squared)
    far = nonzero_loss_cutoff**2
    log_max = _largest_log_weight(squared, d, cutoff=cutoff, far=far)
    torch.neg(squared, out=candidate).add_(far).clamp_(min=0.0).sign_()          # 1 below the cutoff, else 0
    squared.clamp_(min=cutoff**2, max=far)
    c = (d - 3) / 2
    torch.neg(squared, out=weights).add_(4.0).mul_(squared).log2_().mul_(-c).add_(2 * c - log_max / math.log(2.0))
    return weights.exp2_().mul_(squared.rsqrt_()).mul_(candidate)


def _largest_log_weight(squared: torch.Tensor, d: int, *, cutoff: float, far: float) -> torch.Tensor:
    """(E, 1, 1) the largest finite log weight of a pair of different classes in each batch of class pairs, or
    0 (the library's scale), from the batch's nearest and farthest such pairs.

    ``squared``: (E, B, B) squared distances.  Each pair's 2 x 2 block of same-class entries (the diagonal
    blocks) is set to 4 on the way out: beyond every cutoff, so they are never candidates.
    """
    batches, size, _ = squared.shape
    same_class = squared.view(batches, size // 2, 2, size // 2, 2).diagonal(dim1=1, dim2=3)
    same_class.fill_(0.0)
    farthest = squared.amax(dim=(1, 2), keepdim=True)
    same_class.fill_(4.0)
    if bool((farthest >= 4.0).any()):        # antipodal within rounding: no finite log weight, left out
        farthest = torch.where(squared < 4.0, squared, 0.0).amax(dim=(1, 2), keepdim=True)
    nearest = squared.amin(dim=(1, 2), keepdim=True)
    c = (d - 3) / 2
    ends = torch.cat([nearest.clamp(min=cutoff**2, max=far), farthest.clamp(min=cutoff**2)], dim=-1)
    log_max = (torch.log(ends * (4.0 - ends)) * -c - 0.5 * torch.log(ends) + c * math.log(4.0)).amax(dim=-1)
    return log_max.clamp_(min=0.0).unsqueeze(-1)


def sample_pair_negatives(weights: torch.Tensor, label_rank: torch.Tensor,
                          generators: Sequence[torch.Generator | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_triplets_batched` for E batches of class pairs (rows 2k, 2k + 1 share a class, no other
    two rows do), with no search among labels: the same negatives from the same uniforms.

    Every usable anchor's class has 2 members, so it draws 2 triplets, each with its partner as the positive
    and a negative from its row of ``weights``.  Batch e with n usable anchors takes ``torch.rand(4 n)`` from
    ``generators[e]``, as :func:`sample_triplets_batched` does: the positives' uniforms (unused here: a
    uniform of exactly 0, probability 2**-53, would draw the anchor itself there when it comes first in label
    order), then the negatives', 2 per anchor, anchors in label order.

    Args:
        weights: (E, B, B) non-negative weights, 0 within a pair; anchor i's row is row i.  Overwritten (by
            each row's cumulative shares).
        label_rank: (E, B) int64, each row's place in its batch ordered by label, then by row (a stable sort).
        generators: E random sources (on ``weights``' device; ``None``: torch's global one).

    Returns:
        ``(negatives, usable)``: (E, B, 2) int64 each anchor's two negatives (meaningless where not usable)
        and (E, B) bool, the anchors with a candidate negative.
    """
    batches, size, _ = weights.shape
    device = weights.device
    cumulative = weights.cumsum_(dim=-1)
    total = cumulative[..., -1:].clone()                                       # (E, B, 1)
    usable = total.squeeze(-1) > 0
    counts = usable.sum(dim=-1)
    every = counts.tolist()
    if all(n == size for n in every):
        rank = label_rank
    else:            # an anchor's uniforms follow from its place among the usable anchors, in label order
        order = torch.empty_like(label_rank).scatter_(-1, label_rank,
                                                      torch.arange(size, device=device).expand_as(label_rank))
        rank = (usable.gather(-1, order).cumsum(dim=-1) - 1).gather(-1, label_rank).clamp_(min=0)
    precise = torch.float32 if device.type == "mps" else torch.float64     # MPS has no float64
    uniforms = torch.zeros(batches, 4 * size, dtype=precise, device=device)
    for row, generator, n in zip(uniforms, generators, every, strict=True):
        if n:
            torch.rand(4 * n, dtype=precise, generator=generator, device=device, out=row[:4 * n])
    place = (rank * 2 + (counts * 2).unsqueeze(-1)).unsqueeze(-1) + torch.arange(2, device=device)   # (E, B, 2)
    share = cumulative.div_(total)
    share[..., -1] = 1.0
    negatives = torch.searchsorted(share.view(-1, size), _float32_ceiling(uniforms.gather(1, place.view(batches, -1)))
                                   .view(-1, 2), right=False)
    return negatives.view(batches, size, 2).clamp_(max=size - 1), usable


def _float32_ceiling(uniforms: torch.Tensor) -> torch.Tensor:
    """The smallest float32 at least each uniform: ``share >= u`` and ``share >= ceiling(u)`` agree for every
    float32 ``share``, so the search runs in float32 instead of on a float64 copy of the shares."""
    if uniforms.dtype == torch.float32:
        return uniforms.contiguous()
    rounded = uniforms.float()
    return torch.where(rounded.double() < uniforms, torch.nextafter(rounded, torch.full_like(rounded, 2.0)), rounded)


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
