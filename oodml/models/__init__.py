"""Embedding models: a timm-style registry, built-in architectures, safe loading and checkpoints.

>>> from oodml.models import create_model, load_model, resolve_model_ref, save
>>> model = create_model("glyph-cnn", embed_dim=64)
>>> save(model, "model.pt", provenance={"split_digest": "...", "level": 3})
>>> loaded = load_model("model.pt")            # weights_only; a full pickle is refused
>>> loaded.module, loaded.preprocessing, loaded.digest, loaded.provenance
>>> resolve_model_ref("model.pt").kind        # "file": what a reference names, in one order for every command
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:  # the names below load on first use (see __getattr__); these imports are for type checkers
    from .base import EmbeddingModel
    from .digest import model_digest
    from .factory import create_model
    from .io import LoadedModel, load_model, save
    from .refs import ModelRef, resolve_model_ref
    from .registry import list_models, register_model

#: public name -> the submodule defining it, imported on first use: all but the registry import torch, which
#: `oodml models list` does without (the built-in architectures register lazily, see registry.MODELS).
_LAZY = {"EmbeddingModel": "base", "model_digest": "digest", "LoadedModel": "io", "load_model": "io", "save": "io",
         "create_model": "factory", "list_models": "registry", "register_model": "registry", "ModelRef": "refs",
         "resolve_model_ref": "refs"}

__all__ = ["EmbeddingModel", "LoadedModel", "ModelRef", "create_model", "list_models", "load_model", "model_digest",
           "register_model", "resolve_model_ref", "save"]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())  # each name looked up once
