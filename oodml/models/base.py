"""The embedding model every oodml model is: a backbone, a linear embedding head, L2 normalisation.

Its preprocessing travels with it, its head is reachable for adaptation
(``model.head``), and it can return the embedding before normalisation
(``model(x, normalize=False)``) for losses such as the spherical-embedding
constraint that regularise embedding norms.
"""

from __future__ import annotations

import torch

from ..errors import OodmlError, brief
from ..preprocessing import Preprocessing


class EmbeddingModel(torch.nn.Module):
    """``backbone`` (B, 3, H, W) -> (B, F); ``head`` Linear F -> embed_dim; L2-normalised output.

    Raises OodmlError for an ``embed_dim`` that is not a positive integer.

    Attributes:
        arch: registry name of the architecture.
        config: the keyword arguments that rebuild it with ``create_model(arch, **config)``.
        preprocessing: how images must be prepared for it at test time.
        augmentation: name of its training augmentation (a key of ``oodml.augmentations.AUGMENTATIONS``).
        pretraining: the data the backbone's weights were pretrained on (``imagenet-1k``), or None: none (a
            freshly built model then has random weights, which :func:`oodml.models.load_model` warns about).
            Checkpoints keep it; ``load_model`` records it in the model's identity (:mod:`oodml.models.identity`).
    """

    def __init__(self, backbone: torch.nn.Module, features: int, embed_dim: int, *, arch: str, config: dict,
                 preprocessing: Preprocessing, augmentation: str = "none", pretraining: str | None = None):
        super().__init__()
        if not isinstance(embed_dim, int) or isinstance(embed_dim, bool) or embed_dim < 1:
            raise OodmlError(f"{arch}: embed_dim must be a positive integer, got {brief(embed_dim)}")
        self.backbone = backbone
        self.head = torch.nn.Linear(features, embed_dim)
        self.arch, self.config, self.preprocessing = arch, dict(config), preprocessing
        self.augmentation = augmentation
        self.pretraining = pretraining

    @property
    def embed_dim(self) -> int:
        return self.head.out_features

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.head(self.backbone(x))
        return torch.nn.functional.normalize(z, dim=1) if normalize else z
