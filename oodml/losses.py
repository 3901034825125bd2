"""Deep-metric-learning losses for training, from pytorch-metric-learning, and the norm regularisers.

Each entry of :data:`LOSSES` builds ``(loss, miner)`` for a number of training
classes and an embedding width; the loss takes the *unnormalised* embedding
(pytorch-metric-learning normalises inside its distances), so the
spherical-embedding constraint can act on the norms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pytorch_metric_learning import losses, miners

from .registry import Registry


@dataclass(frozen=True)
class LossSpec:
    """How to build a loss: ``build(num_classes, embed_dim) -> (loss, miner or None)``; ``has_params``
    says whether the loss has trainable parameters (proxies, class margins) to optimise."""

    build: Callable[[int, int], tuple[torch.nn.Module, torch.nn.Module | None]]
    has_params: bool
    description: str


#: name -> :class:`LossSpec`.
LOSSES: Registry[LossSpec] = Registry("loss")
for _name, _spec in {
    "margin": LossSpec(
        lambda c, d: (losses.MarginLoss(margin=0.2, beta=1.2, learn_beta=True, num_classes=c),
                      miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)),
        True, "margin loss, learnable per-class beta, distance-weighted sampling (Wu et al. 2017)"),
    "multi-similarity": LossSpec(
        lambda c, d: (losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(0.1)),
        False, "multi-similarity loss with its miner (Wang et al. 2019)"),
    "proxy-anchor": LossSpec(
        lambda c, d: (losses.ProxyAnchorLoss(c, d, margin=0.1, alpha=32), None),
        True, "proxy-anchor loss (Kim et al. 2020)"),
    "arcface": LossSpec(
        lambda c, d: (losses.ArcFaceLoss(c, d, margin=28.6, scale=64), None),
        True, "additive angular margin (Deng et al. 2019)"),
    "triplet": LossSpec(
        lambda c, d: (losses.TripletMarginLoss(margin=0.2),
                      miners.TripletMarginMiner(0.2, type_of_triplets="semihard")),
        False, "triplet margin loss with semi-hard mining"),
    "contrastive": LossSpec(
        lambda c, d: (losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5), None),
        False, "contrastive loss (Hadsell et al. 2006)"),
}.items():
    LOSSES.register(_name, _spec)


def get_loss(name: str) -> LossSpec:
    """The registered loss ``name``; an unknown name raises a one-line :class:`OodmlError`."""
    return LOSSES[name]


def sec_loss(raw: torch.Tensor) -> torch.Tensor:
    """Spherical-embedding constraint: mean over the batch of (||f_i|| - mu)^2, mu the detached mean norm.

    ``raw``: (B, d) embeddings *before* L2 normalisation.
    """
    norms = raw.norm(dim=1)
    return ((norms - norms.mean().detach()) ** 2).mean()


def l2_reg_loss(raw: torch.Tensor) -> torch.Tensor:
    """The L2-regularisation baseline the SEC paper compares against: mean ||f_i||^2."""
    return (raw ** 2).sum(1).mean()


#: name -> regulariser on the (B, d) unnormalised embeddings, added to the loss with a weight.
REGULARISERS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("regulariser")
REGULARISERS.register("sec", sec_loss)
REGULARISERS.register("l2", l2_reg_loss)
