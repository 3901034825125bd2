"""Distance-weighted negative mining (Wu et al. 2017, *Sampling matters in deep embedding learning*).

:class:`DistanceWeightedMiner` returns the same anchors, in the same order, as
pytorch-metric-learning's ``DistanceWeightedMiner`` (its defaults: cutoff 0.5,
nonzero-loss cutoff 1.4), with positives and negatives drawn from the same
distribution, but all anchors' negatives in one ``torch.multinomial`` call
instead of a Python loop over the classes of the batch, and from a
``torch.Generator`` of its own, so a seeded miner neither reads nor advances
torch's global random state.  The random stream is not the library's: the
same seed draws different triplets.

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

import torch


def distance_weights(embeddings: torch.Tensor, labels: torch.Tensor, *, cutoff: float = 0.5,
                     nonzero_loss_cutoff: float = 1.4) -> torch.Tensor:
    """The negative-sampling weights of every anchor (the formula in the module docstring), unnormalised.

    Divided by their row sums they equal, bit for bit, the weights pytorch-metric-learning's miner
    samples from; :func:`sample_triplets` (``torch.multinomial``) needs no normalisation.

    Args:
        embeddings: (B, d) float embeddings, not necessarily normalised.
        labels: (B,) integer class labels.
        cutoff: distances below it count as ``cutoff`` (it bounds the weights of near pairs).
        nonzero_loss_cutoff: pairs at this distance or further get weight 0.

    Returns:
        (B, B) non-negative weights in ``embeddings.dtype``, at most 1; row i is all 0 when anchor i has
        no candidate negative.
    """
    # Written op for op as the library computes it (same operands, same order), so the floats agree
    # exactly; each operation on this small matrix costs more in dispatch than in arithmetic.
    d = float(embeddings.size(1))
    unit = torch.nn.functional.normalize(embeddings, p=2, dim=1)
    dist = torch.cdist(unit, unit, p=2).clamp_(min=cutoff)
    log_w = (2.0 - d) * torch.log(dist) - ((d - 3) / 2) * torch.log(1.0 - 0.25 * dist**2.0)
    valid = torch.isfinite(log_w)                        # antipodal pairs: log(0) or log of a rounding < 0
    negative = labels.unsqueeze(1) != labels.unsqueeze(0)
    # Same-class entries count as log weight 0 in the maximum, as in the library, so the same tiny
    # weights underflow to 0 in both.
    masked = log_w * negative
    weights = torch.exp(masked - torch.where(valid, masked, -torch.inf).max())
    return torch.where(negative & valid & (dist < nonzero_loss_cutoff), weights, 0.0)


def sample_triplets(weights: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw every anchor's triplets at once (the rule in the module docstring).

    Args:
        weights: (B, B) non-negative negative-sampling weights, 0 for same-class pairs (rows need not be
            normalised); an all-0 row means the anchor is skipped.
        labels: (B,) integer class labels.
        generator: the random source (on ``weights``' device); ``None`` uses torch's global one.

    Returns:
        ``(anchors, positives, negatives)``, three (T,) int64 tensors of batch indices on ``labels``' device.
    """
    classmates = labels.unsqueeze(1) == labels.unsqueeze(0)
    class_size = classmates.sum(dim=1)
    classmates.fill_diagonal_(False)
    # a non-zero row of weights implies a negative in the batch
    usable = (class_size >= 2) & (weights.sum(dim=1) > 0)
    by_label = torch.argsort(labels, stable=True)
    anchors = by_label[usable[by_label]]
    if len(anchors) == 0:
        empty = torch.empty(0, dtype=torch.long, device=labels.device)
        return empty, empty.clone(), empty.clone()
    # Each anchor needs as many draws as its class has members (at least 2): draw the largest number for
    # every anchor and keep each one's first k.  Two or more draws per row also put torch.multinomial on
    # its inverse-CDF path, several times faster than its one-draw path (an exponential per weight).
    draws = class_size[anchors]
    most = int(draws.max())
    keep = torch.arange(most, device=labels.device) < draws.unsqueeze(1)
    positives = torch.multinomial(classmates[anchors].float(), most, replacement=True, generator=generator)
    rows = weights[anchors]
    if rows.dtype not in (torch.float32, torch.float64):      # multinomial: half is unsupported on some devices
        rows = rows.float()
    negatives = torch.multinomial(rows, most, replacement=True, generator=generator)
    triplets = torch.stack([anchors.unsqueeze(1).expand(-1, most), positives, negatives])[:, keep]
    return triplets[0], triplets[1], triplets[2]


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
