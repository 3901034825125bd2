"""What ran: the identity every model route records (evaluate, extractors, training, references).

An identity is a JSON-able dict that results, summaries and leaderboard
entries carry as ``model_identity``.  Every route fills at least:

``spec``
    what was asked for: a registered name with its options (``resnet50``, ``resnet50?pretrained=false``),
    a model spec, a file, a per-level template.
``arch``
    the architecture: a registered name, a canonical model spec, ``torchscript`` or ``torch.export``.
``library``
    who built it and its version (``oodml 0.9.0``, ``timm 1.0.31``, ``torch 2.5.1``).
``weights_sha256``
    sha256 of the weights that ran: of the file named by ``weights_file`` when they were loaded from one
    (torchvision's ImageNet file, a checkpoint, a TorchScript file, timm's ``checkpoint_path``), else of the
    state dict (:func:`~oodml.models.digest.weights_sha256`).
``weights_file``
    the name of that file, or None.
``pretraining``
    the data the weights were pretrained on before any training by oodml (``imagenet-1k``, ``a1_in1k``),
    or None for none.
``pretraining_declared``
    whether ``pretraining`` is stated by the weights' source.  False for a foreign file, a checkpoint written
    before oodml recorded it, or a library that does not record it: then a None ``pretraining`` means unknown.
``random_weights``
    True when the weights that ran are an untrained random initialisation (always warned about).  A trained
    checkpoint is never random, whatever it was initialised from: its ``pretraining`` says that.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from .. import __version__
from .digest import file_sha256, weights_sha256

#: the keys every identity holds
IDENTITY_KEYS = ("spec", "arch", "library", "weights_sha256", "weights_file", "pretraining", "pretraining_declared",
                 "random_weights")
#: what an entry's ``pretraining`` holds for weights pretrained on nothing (see :func:`entry_pretraining`)
NO_PRETRAINING = "none"


class RandomWeightsWarning(UserWarning):
    """A model with random (untrained) weights is about to be evaluated or trained."""


def warn_random_weights(what: str, how: str, stacklevel: int = 3) -> None:
    """Warn that ``what`` runs with RANDOM weights, chosen by ``how``: its results measure the architecture only."""
    warnings.warn(f"{what}: RANDOM weights ({how}): not a pretrained model; its results measure the architecture "
                  "only", RandomWeightsWarning, stacklevel=stacklevel)


def weights_record(module: torch.nn.Module, weights_file: str | Path | None = None) -> dict:
    """``{"weights_sha256", "weights_file"}``: the file's sha256 and name when the weights came from
    ``weights_file``, else the sha256 of ``module``'s state dict and None."""
    if weights_file is not None:
        return {"weights_sha256": file_sha256(weights_file), "weights_file": Path(weights_file).name}
    return {"weights_sha256": weights_sha256(module), "weights_file": None}


def registered_identity(model: torch.nn.Module, spec: str) -> dict:
    """The identity of a model freshly built by a registered factory (``create_model``).

    An :class:`~oodml.models.base.EmbeddingModel` declares its pretraining (``model.pretraining``; None: its
    weights are a random initialisation) and, when its weights came from a file, names it
    (``model.weights_file = {"name", "sha256"}``).  A plugin's other module declares nothing.
    """
    from .base import EmbeddingModel

    declared = isinstance(model, EmbeddingModel)
    pretraining = getattr(model, "pretraining", None) if declared else None
    source = getattr(model, "weights_file", None)
    weights = ({"weights_sha256": source["sha256"], "weights_file": source["name"]} if isinstance(source, dict)
               else weights_record(model))
    return {"spec": spec, "arch": getattr(model, "arch", spec.split("?", 1)[0]), "library": f"oodml {__version__}",
            **weights, "pretraining": pretraining,
            "pretraining_declared": declared, "random_weights": declared and pretraining is None,
            "config": getattr(model, "config", {})}


def checkpoint_identity(module: torch.nn.Module, path: Path, spec: str, pretraining: str | None,
                        pretraining_declared: bool) -> dict:
    """The identity of an oodml checkpoint: its file's sha256, its architecture, and the pretraining its weights
    started from (``pretraining_declared`` False when the checkpoint does not record it).  Never random: it
    was trained."""
    return {"spec": spec, "arch": getattr(module, "arch", None), "library": f"oodml {__version__}",
            **weights_record(module, path), "pretraining": pretraining, "pretraining_declared": pretraining_declared,
            "random_weights": False, "config": getattr(module, "config", {})}


def foreign_file_identity(module: torch.nn.Module, path: Path, spec: str, kind: str) -> dict:
    """The identity of a TorchScript or ``torch.export`` file: its sha256; its pretraining is not declared."""
    return {"spec": spec, "arch": kind, "library": f"torch {torch.__version__}", **weights_record(module, path),
            "pretraining": None, "pretraining_declared": False, "random_weights": False}


def levels_identity(spec: str, identities: Mapping[int, dict]) -> dict:
    """The identity of a per-level evaluation: what every level's checkpoint shares, and each one's own under
    ``levels`` (level -> identity).  Levels that disagree on their pretraining leave it undeclared."""
    if not identities:
        return {}
    first = next(iter(identities.values()))
    shared = {k: v for k, v in first.items() if all(other.get(k) == v for other in identities.values())}
    shared = {k: v for k, v in shared.items() if k not in ("spec", "weights_sha256", "weights_file", "config")}
    if "pretraining" not in shared or "pretraining_declared" not in shared:
        shared.update(pretraining=None, pretraining_declared=False)
    return {"spec": spec, "arch": shared.pop("arch", None), "library": shared.pop("library", None),
            "weights_sha256": None, "weights_file": None, **shared,
            "random_weights": any(i.get("random_weights") for i in identities.values()),
            "levels": {str(k): identities[k] for k in sorted(identities)}}


def entry_pretraining(identity: Mapping | None) -> str | None:
    """What a leaderboard entry of these weights must declare as ``pretraining``: ``none`` for random weights or
    weights declared to be pretrained on nothing, the declared data, or None when the identity does not say."""
    if not identity:
        return None
    if identity.get("random_weights"):
        return NO_PRETRAINING
    if identity.get("pretraining"):
        return str(identity["pretraining"])
    return NO_PRETRAINING if identity.get("pretraining_declared") else None
