"""Loading any embedding model safely, and saving oodml checkpoints.

``load_model(spec)`` accepts a registered name, a TorchScript file, a
``torch.export`` program (``.pt2``), or a checkpoint written by :func:`save`
(architecture, config, preprocessing, state dict, provenance), read with
``torch.load(weights_only=True)``.  A plain pickled module is refused: loading
it would run whatever code the file carries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._fs import atomic_path
from ..embedding import Preprocessing
from ..errors import OodmlError, first_line
from .base import EmbeddingModel
from .registry import create_model, list_models

CHECKPOINT_FORMAT = "oodml-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class LoadedModel:
    """A model ready to embed: the module, its preprocessing, a content digest, and where it came from.

    Attributes:
        module: maps (B, 3, H, W) to (B, d).
        preprocessing: how images must be prepared.
        digest: sha256 over the weights (names, dtypes, shapes and bytes), the cache key of its embeddings.
        source: the spec it was loaded from.
        provenance: what the checkpoint says about its training (split digest, level, ...), else empty.
    """

    module: torch.nn.Module
    preprocessing: Preprocessing
    digest: str
    source: str
    provenance: dict = field(default_factory=dict)


def model_digest(module: torch.nn.Module) -> str:
    """sha256 over the state dict, in name order: equal for equal weights, whatever the file format."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(model: EmbeddingModel, path: str | Path, *, provenance: dict | None = None) -> Path:
    """Write an oodml checkpoint (atomically) that :func:`load_model` reads with ``weights_only=True``.

    ``provenance`` should say how the model was trained: dataset, split digest,
    level, train classes, loss, hyper-parameters, seed.
    """
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": model.arch, "config": model.config,
        "preprocessing": json.dumps(model.preprocessing.as_dict()), "state_dict": model.state_dict(),
        "provenance": json.dumps(provenance or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _file_kind(path: Path) -> str:
    if path.suffix == ".pt2":
        return "export"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist()):
                return "torchscript"
    return "checkpoint"


def _refuse_pickle(path: Path) -> OodmlError:
    return OodmlError(f"refused to load {path}: it is a pickle of Python objects (e.g. torch.save(model)), not "
                      "weights only, and unpickling it could run arbitrary code. Save models with "
                      "oodml.models.save(model, PATH), torch.jit.script(model).save(PATH) or "
                      "torch.export.save(program, PATH)")


def _read_preprocessing(text: str, path: Path) -> Preprocessing:
    if not text:
        warnings.warn(f"{path} carries no preprocessing.json; assuming ImageNet preprocessing (resize 256, crop 224)",
                      stacklevel=3)
        return Preprocessing()
    try:
        return Preprocessing(**json.loads(text))
    except (TypeError, ValueError) as exc:
        raise OodmlError(f"{path}: preprocessing record is malformed ({exc})") from None


def load_model(spec: str | Path, **kwargs) -> LoadedModel:
    """Load a model from a registered name or a file; see the module docstring.

    ``kwargs`` go to the factory of a registered name (e.g. ``embed_dim=128``).

    Raises:
        OodmlError: unknown name, missing file, full pickle, unreadable file.
    """
    spec_text = str(spec)
    path = Path(spec_text).expanduser()
    if not path.exists():
        if spec_text in list_models() or not any(ch in spec_text for ch in "/\\."):
            model = create_model(spec_text, **kwargs)
            return LoadedModel(model, model.preprocessing, model_digest(model), spec_text)
        raise OodmlError(f"model file {path} does not exist (and {spec_text!r} is not a registered model; "
                         "see `oodml models list`)")
    kind = _file_kind(path)
    if kind == "torchscript":
        extra = {"preprocessing.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:  # a damaged archive can fail in many ways
            raise OodmlError(f"{path}: not a loadable TorchScript file ({first_line(exc)})") from None
        prep = _read_preprocessing(extra["preprocessing.json"], path)
        return LoadedModel(module, prep, model_digest(module), spec_text)
    if kind == "export":
        extra = {"preprocessing.json": ""}
        logger = logging.getLogger("torch.export")
        previous = logger.level
        logger.setLevel(logging.CRITICAL)  # it logs a traceback before raising
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as exc:  # torch.export raises many types for a bad archive
            raise OodmlError(f"{path}: not a loadable torch.export program ({type(exc).__name__}: "
                             f"{first_line(exc)})") from None
        finally:
            logger.setLevel(previous)
        prep = _read_preprocessing(extra["preprocessing.json"], path)
        module = program.module()
        return LoadedModel(module, prep, model_digest(module), spec_text)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # a pickle naming classes or functions: refuse, never run it
            raise _refuse_pickle(path) from None
        raise OodmlError(f"{path}: cannot read it as a checkpoint (malformed or truncated file)") from None
    except Exception as exc:  # torch.load raises anything from EOFError to IndexError on junk input
        raise OodmlError(f"{path}: cannot read it as a checkpoint ({type(exc).__name__}: {first_line(exc)})") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise OodmlError(f"{path}: not an oodml checkpoint (a bare state dict has no architecture; save with "
                         "oodml.models.save, or export TorchScript / torch.export)")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise OodmlError(f"{path}: checkpoint version {payload['version']} is newer than this oodml; upgrade oodml")
    model = create_model(payload["arch"], **payload["config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise OodmlError(f"{path}: weights do not fit {payload['arch']} ({first_line(exc)})") from None
    model.preprocessing = _read_preprocessing(payload["preprocessing"], path)
    return LoadedModel(model, model.preprocessing, model_digest(model), spec_text,
                       json.loads(payload.get("provenance") or "{}"))
