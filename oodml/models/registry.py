"""Model registry in the style of timm: ``@register_model`` factories, ``create_model(name)``.

Other packages add models through the entry-point group ``oodml.models``
(``name = "package.module:factory"``); they are loaded on first lookup.
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points

import torch

from ..errors import OodmlError, brief, first_line
from .sources import is_spec

Factory = Callable[..., torch.nn.Module]
_MODELS: dict[str, Factory] = {}
_entry_points_loaded = False


def register_model(name: str | Factory | None = None) -> Callable[[Factory], Factory] | Factory:
    """Register a factory ``fn(**kwargs) -> EmbeddingModel`` under ``name`` (default: the function's name).

    Usable bare (``@register_model``) or with a name (``@register_model("glyph-cnn")``).
    Registering a name twice replaces the earlier factory with a warning.
    """

    def wrap(fn: Factory, key: str | None = None) -> Factory:
        key = key or fn.__name__
        if key in _MODELS and _MODELS[key] is not fn:
            warnings.warn(f"model {key!r} was already registered; replacing it", stacklevel=3)
        _MODELS[key] = fn
        return fn

    if callable(name):
        return wrap(name)
    return lambda fn: wrap(fn, name)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group="oodml.models"):
        try:
            _MODELS.setdefault(ep.name, ep.load())
        except Exception as exc:  # a broken plugin must not break oodml
            warnings.warn(f"could not load model entry point {ep.name!r}: {exc}", stacklevel=2)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _load_entry_points()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs) -> torch.nn.Module:
    """Build a registered model, or an embedding model on the backbone a model spec names (``timm:NAME``, see
    :mod:`oodml.models.sources`); unknown names get a one-line error listing the close matches.

    Raises:
        OodmlError: an unknown name, or arguments the factory rejects (a wrong name, type or value).
    """
    _load_entry_points()
    if name not in _MODELS and is_spec(name):
        from .sources import spec_embedding_model

        return spec_embedding_model(name, **kwargs)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(list_models())}"
        raise OodmlError(f"unknown model {name!r}{hint}")
    try:
        return _MODELS[name](**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # torch rejects impossible sizes with these
        raise OodmlError(f"model {name!r} cannot be built with {brief(kwargs, 200)}: {first_line(exc)}") from None
