"""Few-shot adaptation of an embedding model to the support sets of a level's episodes.

* ``prototypes``: no training; queries are classified by the nearest class
  prototype (mean of the normalised support embeddings), as in *Adapted Deep
  Embeddings*.
* ``finetune-last``: the ooDML protocol.  A copy of the embedding head is
  trained on each episode's support set with the margin loss (margin 0.2, fixed
  beta 1.2) and distance-weighted negative mining
  (:class:`oodml.miners.DistanceWeightedMiner`: pytorch-metric-learning's
  sampling distribution, all anchors drawn at once), Adam at 1e-4, 1000
  iterations for 2-shot and 1500 for 5-shot (``iterations`` overrides), batches
  of 56 classes x 2 images drawn with replacement.  The backbone is frozen, so
  its features are computed once per image and the heads train on them: all
  episodes of a level (both shot counts) at once, as one batched model
  (:mod:`oodml.adapt_batched`); :func:`finetune_last` is the same training for
  one episode, the reference the batched path is tested against.
* ``finetune-all``: adapted embeddings; the same, with all weights trained on
  augmented support images, one episode after another, on the evaluation device.

Every adaptation returns each episode's embeddings after adaptation
(L2-normalised), and shows its progress (episode-iterations, episodes done)
and, when long, its estimated time (:mod:`oodml.adapt_progress`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .adapt_batched import MEMORY_BYTES, HeadEpisode, batch_rows, finetune_last_batched
from .adapt_progress import AdaptationMeter, metered
from .augmentations import AUGMENTATIONS
from .embedding import EmbedSettings, embed, resolve_device
from .errors import OodmlError
from .miners import DistanceWeightedMiner
from .registry import Registry
from .seeding import derive_seed, rng_for

FINETUNE_ITERATIONS = {2: 1000, 5: 1500}


def _margin_training(params: list[torch.nn.Parameter], forward: Callable[[np.ndarray], torch.Tensor],
                     support_labels: np.ndarray, iterations: int, seed: tuple,
                     meter: AdaptationMeter | None = None) -> None:
    """Train ``params``; ``forward(rows)`` embeds the support rows on the parameters' device.

    Random sources, all derived from ``seed``: a numpy Generator picks the batches (:func:`batch_rows`), a
    torch Generator on the parameters' device draws the mined triplets, and torch's global generator (forked,
    so the caller's state is untouched) serves whatever ``forward`` draws (augmentations).  ``meter`` counts
    the iterations.
    """
    # Margin loss (0.2, beta 1.2 fixed) with distance-weighted mining on 56-class x 2-image batches.
    from pytorch_metric_learning import losses

    loss_fn = losses.MarginLoss(margin=0.2, beta=1.2, learn_beta=False)
    device = params[0].device
    miner = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4,
                                  generator=torch.Generator(device).manual_seed(derive_seed(*seed, "triplets")))
    optimiser = torch.optim.Adam(params, lr=1e-4)
    with torch.random.fork_rng():
        torch.manual_seed(int(rng_for(*seed).integers(2**31)))
        for rows in batch_rows(support_labels, iterations, seed):
            raw = forward(rows)
            labels = torch.as_tensor(support_labels[rows], device=raw.device)
            loss = loss_fn(raw, labels, miner(raw, labels))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if meter is not None:
                meter.update(1)


def iterations_for(shots: int, iterations: int | None) -> int:
    """The fine-tuning steps of a ``shots``-shot episode: ``iterations`` when given, else ooDML's (1000 for
    2-shot, 1500 for 5-shot, 1000 otherwise)."""
    return iterations or FINETUNE_ITERATIONS.get(shots, 1000)


@dataclass(frozen=True)
class EpisodeInput:
    """One few-shot episode as an adaptation sees it.

    Attributes:
        model: the evaluated :class:`~oodml.models.EmbeddingModel` (adaptations train a copy).
        dataset: the dataset the rows index.
        support: (n_s,) dataset rows of the support images; ``support_labels`` (n_s,) their labels.
        targets: (n,) dataset rows to embed after adapting: the support, then the query.
        backbone_features: rows -> (len(rows), f) features of the frozen backbone, computed once per image.
        shots: support images per class.
        seed: the episode's seed parts, ``(split_digest, level, shots, episode)`` in ``evaluate``.
    """

    model: torch.nn.Module
    dataset: object
    support: np.ndarray
    support_labels: np.ndarray
    targets: np.ndarray
    backbone_features: Callable[[np.ndarray], np.ndarray]
    shots: int
    seed: tuple


def finetune_last(model: torch.nn.Module, episode: HeadEpisode, target_features: np.ndarray, *,
                  device: str = "cpu", meter: AdaptationMeter | None = None) -> np.ndarray:
    """Train a copy of ``model.head`` on one episode's backbone features; return the normalised embeddings of
    ``target_features`` (n, F), the backbone features of the images to embed after adapting (in ``evaluate``,
    the support images, then the query images).

    The one-at-a-time reference of :func:`oodml.adapt_batched.finetune_last_batched` (which ``evaluate`` runs),
    from the same :class:`~oodml.adapt_batched.HeadEpisode` (its ``iterations``: see :func:`iterations_for`).

    Returns:
        float32 (n, d), L2-normalised.
    """
    dev = resolve_device(device)
    head = copy.deepcopy(model.head).float().to(dev).train()
    feats = torch.as_tensor(episode.support_features, dtype=torch.float32, device=dev)
    _margin_training(list(head.parameters()), lambda rows: head(feats[rows]), episode.support_labels,
                     episode.iterations, episode.seed, meter)
    with torch.no_grad():
        out = head.eval()(torch.as_tensor(target_features, dtype=torch.float32, device=dev))
    return torch.nn.functional.normalize(out, dim=1).cpu().numpy()


def finetune_all(episode: EpisodeInput, *, iterations: int | None, device: str, batch_size: int,
                 meter: AdaptationMeter | None = None) -> np.ndarray:
    """Train a copy of the whole model on the episode's augmented support images (on ``device``: ``auto`` picks
    a GPU when there is one); return the normalised embeddings of its ``targets`` (the support images, then
    the query images), float32 (n, d).

    ``iterations`` overrides :func:`iterations_for`'s count for the episode's shots; ``batch_size`` is the
    embedding batch of the adapted model.
    """
    dev = resolve_device(device)
    tuned = copy.deepcopy(episode.model).float().to(dev).train()
    augment = AUGMENTATIONS[getattr(tuned, "augmentation", "none")](tuned.preprocessing)
    images = [episode.dataset.load_image(int(i)) for i in episode.support]

    def forward(rows: np.ndarray) -> torch.Tensor:
        return tuned(torch.stack([augment(images[r]) for r in rows]).to(dev), normalize=False)

    _margin_training([p for p in tuned.parameters() if p.requires_grad], forward, episode.support_labels,
                     iterations_for(episode.shots, iterations), episode.seed, meter)
    return embed(episode.dataset, tuned.eval(), tuned.preprocessing, indices=episode.targets,
                 settings=EmbedSettings(device, batch_size=batch_size), desc="embed adapted")


@dataclass(frozen=True)
class Adaptation:
    """A few-shot adaptation.  ``run(episodes, iterations=, device=, batch_size=, desc=)`` adapts a copy of the
    model to each episode's support set and returns, per episode, the (n, d) L2-normalised embeddings of its
    ``targets``, showing its progress and, when long, its estimated time under ``desc``; ``run`` is None for
    adaptations that train nothing (their episodes are scored on the test embeddings, the same for every
    episode); ``uses_backbone`` says whether ``run`` reads ``episode.backbone_features``."""

    description: str
    run: Callable[..., list[np.ndarray]] | None = None
    uses_backbone: bool = False

    @property
    def finetuned(self) -> bool:
        return self.run is not None


def _run_finetune_last(episodes: Sequence[EpisodeInput], *, iterations: int | None, device: str, batch_size: int,
                       desc: str, memory_bytes: int = MEMORY_BYTES) -> list[np.ndarray]:
    """All episodes' heads trained at once (:func:`oodml.adapt_batched.finetune_last_batched`)."""
    if not episodes:
        return []
    heads = [HeadEpisode(np.asarray(e.backbone_features(e.support), dtype=np.float32), e.support_labels,
                         iterations_for(e.shots, iterations), e.seed) for e in episodes]
    with metered(desc, len(heads), sum(h.iterations for h in heads)) as meter:
        return finetune_last_batched(episodes[0].model, heads,
                                     lambda i: episodes[i].backbone_features(episodes[i].targets),
                                     device=device, memory_bytes=memory_bytes, meter=meter)


def _run_finetune_all(episodes: Sequence[EpisodeInput], *, iterations: int | None, device: str, batch_size: int,
                      desc: str) -> list[np.ndarray]:
    """One episode after another (every weight trains: no two episodes share a forward pass)."""
    out = []
    with metered(desc, len(episodes), sum(iterations_for(e.shots, iterations) for e in episodes)) as meter:
        for e in episodes:
            out.append(finetune_all(e, iterations=iterations, device=device, batch_size=batch_size, meter=meter))
            meter.episode_done()
    return out


#: every few-shot adaptation :func:`oodml.evaluate` offers, by name
ADAPTATIONS: Registry[Adaptation] = Registry("adaptation")
ADAPTATIONS.register("prototypes", Adaptation("nearest class prototype of the unadapted support embeddings"))
ADAPTATIONS.register("finetune-last", Adaptation("the embedding head trained on the support set (ooDML's protocol)",
                                                 _run_finetune_last, uses_backbone=True))
ADAPTATIONS.register("finetune-all", Adaptation("every weight trained on augmented support images",
                                                _run_finetune_all))
#: the adaptations that train the model on the support set (their adapted embeddings differ per episode)
FINETUNED = tuple(name for name in ADAPTATIONS if ADAPTATIONS[name].finetuned)


def check_adaptable(module: torch.nn.Module, adapt: str) -> None:
    """Fine-tuning needs an :class:`~oodml.models.EmbeddingModel` (backbone, head, raw embeddings)."""
    from .models import EmbeddingModel

    if adapt != "prototypes" and not isinstance(module, EmbeddingModel):
        raise OodmlError(f"{adapt} needs a model with a backbone and an embedding head (an oodml checkpoint or "
                         "registered model); TorchScript and torch.export programs support only prototypes")
