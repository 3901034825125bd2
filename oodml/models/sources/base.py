"""The registry of model sources (:data:`SOURCES`): one entry per library whose models a spec can name.

Each library's loader lives in its own module of this package (``timm.py``, ``open_clip.py``, ``hf.py``,
``torchhub.py``) and is registered here as a deferred entry, so that asking whether ``timm`` is a source
(:func:`~oodml.models.sources.spec.is_spec`) or listing the sources imports neither torch nor the library.
A new source is a module defining a :class:`Source` and one line, ``SOURCES.register(name, source)`` (or
``SOURCES.defer`` as below); its training recipe goes in :mod:`oodml.models.recipes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...registry import Registry
from .forms import SPEC_FORMS

if TYPE_CHECKING:
    import torch

    from ...preprocessing import Preprocessing
    from .spec import ModelSpec


@dataclass
class SourceModel:
    """A model built from a spec.

    Attributes:
        module: (B, 3, H, W) float images -> (B, d) embeddings, in eval mode.
        preprocessing: how images must be prepared for it.
        spec: what it was built from.
        identity: JSON-able (:mod:`oodml.models.identity`): spec, source, name, revision, options, library and
            version, ``weights_sha256`` (of the ``checkpoint_path`` file, else of the state dict actually
            loaded) and ``weights_file``, ``pretraining`` (the declared pretraining data, or None),
            ``pretraining_declared`` (False when the library does not know it) and ``random_weights``.
    """

    module: torch.nn.Module
    preprocessing: Preprocessing
    spec: ModelSpec
    identity: dict


@dataclass(frozen=True)
class Source:
    """One library models come from.

    Attributes:
        name: the spec prefix.
        grammar: the reference's form, for messages and ``oodml models list``.
        library: the module to import; ``extra``: the oodml extra that installs it.
        options: options besides :data:`COMMON_OPTIONS` (None: any, passed to the library).
        build: ``build(spec, library module) -> (module, preprocessing, declared pretraining data)``.
    """

    name: str
    grammar: str
    library: str
    extra: str
    description: str
    options: tuple[str, ...] | None
    build: Callable[[ModelSpec, object], tuple[torch.nn.Module, Preprocessing, str | None]]


#: source name (the spec prefix) -> :class:`Source`; the built-in ones load their module on first lookup.
SOURCES: Registry[Source] = Registry("model source")
for _form in SPEC_FORMS.values():
    SOURCES.defer(_form.name, f"oodml.models.sources.{_form.name}:SOURCE", description=_form.description)


def register_source(source: Source) -> Source:
    """Register ``source`` under its name (a second registration of a name replaces it, with a warning)."""
    return SOURCES.register(source.name, source)
