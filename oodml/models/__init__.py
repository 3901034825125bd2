"""Embedding models: a timm-style registry, built-in architectures, safe loading and checkpoints.

>>> from oodml.models import create_model, load_model, save
>>> model = create_model("glyph-cnn", embed_dim=64)
>>> save(model, "model.pt", provenance={"split_digest": "...", "level": 3})
>>> loaded = load_model("model.pt")            # weights_only; a full pickle is refused
>>> loaded.module, loaded.preprocessing, loaded.digest, loaded.provenance
"""

from . import zoo  # noqa: F401  (registration)
from .base import EmbeddingModel
from .digest import model_digest
from .io import LoadedModel, load_model, save
from .registry import create_model, list_models, register_model

__all__ = ["EmbeddingModel", "LoadedModel", "create_model", "list_models", "load_model", "model_digest",
           "register_model", "save"]
