"""Model registry in the style of timm: ``@register_model`` factories (built by name with
:func:`oodml.models.factory.create_model`).

Other packages add models through the entry-point group ``oodml.models``
(``name = "package.module:factory"``); they are loaded on first lookup
(:class:`oodml.registry.Registry`, the one registry of every named thing).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import OodmlError
from ..registry import Registry

if TYPE_CHECKING:
    import torch

Factory = Callable[..., "torch.nn.Module"]

#: model name -> factory ``fn(**kwargs) -> EmbeddingModel``; plugins use the entry-point group ``oodml.models``.
MODELS: Registry[Factory] = Registry("model", entry_points="oodml.models")
# The built-ins (oodml.models.zoo) import torch on first lookup, so `oodml models list` needs none; the
# descriptions are the factories' first docstring lines (tests/test_cli_startup.py holds them equal).
MODELS.defer("glyph-cnn", "oodml.models.zoo:glyph_cnn", description="A 6-layer CNN for 32x32 inputs (about 0.1 M "
             "parameters), small enough to train on glyphs on a CPU.")
MODELS.defer("resnet50", "oodml.models.zoo:resnet50", description="ooDML's: ImageNet ResNet-50 (frozen batch "
             "norm, average pooling), a linear layer, L2 normalisation.")


def register_model(name: str | Factory | None = None) -> Callable[[Factory], Factory] | Factory:
    """Register a factory ``fn(**kwargs) -> EmbeddingModel`` under ``name`` (default: the function's name).

    Usable bare (``@register_model``) or with a name (``@register_model("glyph-cnn")``).
    Registering a name twice replaces the earlier factory with a warning.

    Raises:
        OodmlError: a name written like a model spec (``timm:x``) or holding ``?``, which
            :func:`~oodml.models.refs.resolve_model_ref` would never read as this name.
    """
    if callable(name):
        return MODELS.register(_checked_name(name.__name__), name)
    return lambda fn: MODELS.register(_checked_name(name or fn.__name__), fn)


def _checked_name(name: str) -> str:
    from .sources import is_spec

    if is_spec(name) or "?" in name or "{level}" in name:
        raise OodmlError(f"model name {name!r} would be read as a model spec, options or a per-level template "
                         "(oodml.models.refs); register it under a name without 'SOURCE:', '?' or '{level}'")
    return name


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return MODELS.names(pattern)


def split_options(text: str) -> tuple[str, dict]:
    """``NAME?key=value,...`` -> ``(NAME, {key: value})``, values read as in model specs (``true``/``false``,
    numbers, else text): how a command line passes a registered factory its arguments
    (``resnet50?pretrained=false,embed_dim=128``).  A text without ``?`` has no options.

    Raises:
        OodmlError: an option not written ``key=value``, or one given twice.
    """
    from .sources import option_value

    name, sep, raw = text.partition("?")
    options: dict = {}
    for item in raw.split(",") if sep else ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise OodmlError(f"model {text!r}: option {item!r} must be written key=value "
                             "(e.g. resnet50?pretrained=false)")
        if key.strip() in options:
            raise OodmlError(f"model {text!r}: option {key.strip()!r} is given twice; give it once")
        options[key.strip()] = option_value(value.strip())
    return name, options


def untrained_config(name: str, config: dict) -> dict:
    """``config`` for building the registered ``name`` only to load a checkpoint's weights into it: a factory
    that can load pretrained weights (a ``pretrained`` argument) is told not to, and never given a weights
    file, so loading a checkpoint downloads and reads nothing else, and warns of no random weights."""
    try:
        parameters = inspect.signature(MODELS[name]).parameters
    except (TypeError, ValueError):  # a callable without a signature: it takes what it takes
        return config
    if "pretrained" not in parameters:
        return config
    return {**{k: v for k, v in config.items() if k not in ("pretrained", "weights")}, "pretrained": False}
