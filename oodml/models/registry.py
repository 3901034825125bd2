"""Model registry in the style of timm: ``@register_model`` factories, ``create_model(name)``.

Other packages add models through the entry-point group ``oodml.models``
(``name = "package.module:factory"``); they are loaded on first lookup
(:class:`oodml.registry.Registry`, the one registry of every named thing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import OodmlError, brief, first_line
from ..registry import Registry
from .sources import is_spec

Factory = Callable[..., torch.nn.Module]

#: model name -> factory ``fn(**kwargs) -> EmbeddingModel``; plugins use the entry-point group ``oodml.models``.
MODELS: Registry[Factory] = Registry("model", entry_points="oodml.models")


def register_model(name: str | Factory | None = None) -> Callable[[Factory], Factory] | Factory:
    """Register a factory ``fn(**kwargs) -> EmbeddingModel`` under ``name`` (default: the function's name).

    Usable bare (``@register_model``) or with a name (``@register_model("glyph-cnn")``).
    Registering a name twice replaces the earlier factory with a warning.
    """
    if callable(name):
        return MODELS.register(name.__name__, name)
    return lambda fn: MODELS.register(name or fn.__name__, fn)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return MODELS.names(pattern)


def create_model(name: str, **kwargs) -> torch.nn.Module:
    """Build a registered model, or an embedding model on the backbone a model spec names (``timm:NAME``, see
    :mod:`oodml.models.sources`); unknown names get a one-line error listing the close matches.

    Raises:
        OodmlError: an unknown name, or arguments the factory rejects (a wrong name, type or value).
    """
    if name not in MODELS and is_spec(name):
        from .sources import spec_embedding_model

        return spec_embedding_model(name, **kwargs)
    factory = MODELS[name]
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # torch rejects impossible sizes with these
        raise OodmlError(f"model {name!r} cannot be built with {brief(kwargs, 200)}: {first_line(exc)}") from None
