"""Model specs: one grammar for the models of other libraries, wherever oodml names a model.

A spec is ``SOURCE:REFERENCE`` with optional ``?key=value,key=value`` options:

==========================  ============================================================================
``timm:NAME``               ``timm.create_model(NAME, pretrained=True, num_classes=0)``: pooled features;
                            preprocessing from ``timm.data.resolve_model_data_config``.
``open_clip:ARCH/TAG``      the image tower of ``open_clip.create_model_and_transforms(ARCH, TAG)``;
                            preprocessing from the model's own preprocessing config.
``hf:ORG/NAME[@REVISION]``  transformers ``AutoModel`` + ``AutoImageProcessor`` (a hub id, or a local
                            folder written by ``save_pretrained``, ``hf:./FOLDER``); CLIP-like models give
                            their image embedding, others the CLS token (``pool=cls``) or the mean of the
                            patch tokens (``pool=mean``).
``torchhub:REPO:ENTRY``     ``torch.hub.load(REPO, ENTRY)``; ``REPO`` is ``owner/name[@ref]`` on GitHub or a
                            local folder holding a ``hubconf.py`` (``torchhub:./FOLDER:ENTRY``).
==========================  ============================================================================

The sources are a :class:`~oodml.registry.Registry`, :data:`SOURCES`, one module per library in this package
(``timm.py``, ``open_clip.py``, ``hf.py``, ``torchhub.py``), registered lazily (:mod:`.base`) so that
``is_spec`` and ``oodml models list`` import no torch; the grammar is :mod:`.spec`, building a spec's model
:mod:`.loading`.  A source family's training recipe (``oodml train --arch timm:...``) is in
:mod:`oodml.models.recipes`.  Where a text is a spec rather than a registered name or a file is decided once,
by :func:`oodml.models.refs.resolve_model_ref`.

A reference is a local folder only when it is written as a path: it starts with
``./``, ``../``, ``/`` or ``~`` (:func:`is_local_reference`; there ``@`` is part of
the folder's name, not a revision).  Any other reference is a hub id, whatever
folders the current directory holds; ``hf:ORG/NAME`` is refused while a folder
``./ORG/NAME`` exists, because transformers would read it in place of the hub model.

Code runs only when the user asked for it.  A GitHub repository's ``hubconf.py`` is
run after agreement given beforehand (``oodml --trust-repo`` or
``OODML_TRUST_REPO=1``: torch's trusted list is left as it is) or given to torch's
own y/N question on a terminal (``trust_repo="check"``); otherwise the spec is
refused and nothing is downloaded.  torch's fork validation stays on.  A local
torch hub folder named by a path is the user's own code.  A checkpoint never names a
torch hub repository or a local folder (:func:`checkpoint_spec_problem`).

Options every source takes: ``pretrained=false`` (random weights, initialised
from ``seed=N``, default 0; a warning says so every time) and, for timm,
``size=N`` (input side in pixels).  Other timm options go to ``create_model``;
``checkpoint_path=FILE`` loads that file's weights (read weights-only) in place
of timm's, with or without ``pretrained=false``: the identity then names the
file and its sha256, and declares no pretraining, since the file does not say.
Write the spec in quotes on a shell command line: ``'timm:resnet18?pretrained=false'``.

Weights come through each library's own cache and download code (Hugging Face
hub cache for timm, OpenCLIP and transformers; the torch hub folder for torch
hub).  A spec's identity (:attr:`SourceModel.identity`) names the source, the
reference, the revision, the options, the library version, the sha256 of the
weights actually loaded and the declared pretraining data; it is part of the
model's digest, so it keys the embedding cache and is recorded with results.
"""

from typing import TYPE_CHECKING

from ..._lazy import lazy_attributes
from .base import SOURCES, Source, SourceModel, register_source
from .forms import SPEC_FORMS, SpecForm, describe_sources
from .spec import (
    COMMON_OPTIONS,
    ModelSpec,
    checkpoint_spec_problem,
    declared_training_on,
    is_local_reference,
    is_spec,
    option_value,
    parse_spec,
)

if TYPE_CHECKING:  # the names below import torch, so they load on first use; these imports are for type checkers
    from .hf import HF_PRETRAINING, POOLINGS, HFImageEmbedding
    from .loading import load_spec, spec_embedding_model
    from .torchhub import HUB_PREPROCESSING, HUB_PRETRAINING, TRUST_REPO_ENV, trust_repo_given

_LAZY = {"load_spec": "loading", "spec_embedding_model": "loading", "HFImageEmbedding": "hf", "POOLINGS": "hf",
         "HF_PRETRAINING": "hf", "HUB_PRETRAINING": "torchhub", "HUB_PREPROCESSING": "torchhub",
         "TRUST_REPO_ENV": "torchhub", "trust_repo_given": "torchhub"}

__all__ = ["COMMON_OPTIONS", "HFImageEmbedding", "HF_PRETRAINING", "HUB_PREPROCESSING", "HUB_PRETRAINING", "POOLINGS",
           "SOURCES", "SPEC_FORMS", "TRUST_REPO_ENV", "ModelSpec", "Source", "SourceModel", "SpecForm",
           "checkpoint_spec_problem", "declared_training_on", "describe_sources", "is_local_reference", "is_spec",
           "load_spec", "option_value", "parse_spec", "register_source", "spec_embedding_model",
           "trust_repo_given"]

__getattr__ = lazy_attributes(__name__, _LAZY, globals())
