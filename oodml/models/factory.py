"""Building the model a name or a model spec names: ``create_model`` (timm's ``create_model``, apart from its
registry as timm keeps it, so the registry stays below the reference resolver that reads its names)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import OodmlError, brief, first_line
from .refs import resolve_model_ref
from .registry import MODELS

if TYPE_CHECKING:
    import torch


def create_model(name: str, **kwargs) -> torch.nn.Module:
    """Build a registered model (``NAME`` or ``NAME?key=value``), or an embedding model on the backbone a model
    spec names (``timm:NAME``, see :mod:`oodml.models.sources`), as
    :func:`~oodml.models.refs.resolve_model_ref` reads ``name``; unknown names get a one-line error listing the
    close matches.

    Raises:
        OodmlError: an unknown name, a file or per-level reference (load those with
            :func:`~oodml.models.load_model`), or arguments the factory rejects (a wrong name, type or value).
    """
    ref = resolve_model_ref(name)
    if ref.kind == "spec":
        from .sources import spec_embedding_model

        return spec_embedding_model(name, **kwargs)
    if ref.kind != "registered":
        raise OodmlError(f"{name!r} names a {ref.describe()}, not an architecture to build; load it with "
                         "oodml.models.load_model")
    factory = MODELS[ref.name]
    try:
        return factory(**ref.options, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # torch rejects impossible sizes with these
        raise OodmlError(f"model {name!r} cannot be built with {brief(kwargs, 200)}: {first_line(exc)}") from None
