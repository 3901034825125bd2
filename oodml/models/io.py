"""Loading any embedding model safely, and saving oodml checkpoints.

``load_model(spec)`` accepts, in the order :func:`oodml.models.refs.resolve_model_ref` tries them, a model
spec of another library (``timm:NAME``, ``open_clip:ARCH/TAG``, ``hf:ORG/NAME[@REVISION]``,
``torchhub:REPO:ENTRY``; see :mod:`oodml.models.sources`), a registered name (``NAME?key=value``), or a
file: TorchScript, a ``torch.export`` program (``.pt2``), or a checkpoint written by :func:`save`
(architecture, config, preprocessing, state dict, provenance, declared pretraining data), read with
``torch.load(weights_only=True)``.  A plain pickled module is refused: loading
it would run whatever code the file carries.
"""

from __future__ import annotations

import json
import logging
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._fs import atomic_path
from ..errors import OodmlError, brief, first_line
from ..preprocessing import Preprocessing
from .base import EmbeddingModel
from .digest import model_digest
from .factory import create_model
from .identity import checkpoint_identity, foreign_file_identity, registered_identity, warn_random_weights
from .refs import resolve_model_ref
from .registry import list_models, untrained_config
from .sources import checkpoint_spec_problem, is_spec, load_spec, parse_spec

CHECKPOINT_FORMAT = "oodml-checkpoint"
CHECKPOINT_VERSION = 1
_RESAVE = "re-save the model with oodml.models.save(model, PATH)"


@dataclass
class LoadedModel:
    """A model ready to embed: the module, its preprocessing, a content digest, and where it came from.

    Attributes:
        module: maps (B, 3, H, W) to (B, d).
        preprocessing: how images must be prepared.
        digest: :func:`~oodml.models.digest.model_digest` of module and preprocessing (code, attributes,
            tensors, preprocessing), the cache key of its embeddings.
        source: the spec it was loaded from.
        provenance: what the checkpoint says about its training (split digest, level, ...), else empty.
        identity: what ran, for every route (:mod:`oodml.models.identity`): spec, architecture, library,
            weights sha256 (of the file they came from, else of the state dict), declared pretraining data,
            and whether the weights are random.
    """

    module: torch.nn.Module
    preprocessing: Preprocessing
    digest: str
    source: str
    provenance: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointRecord:
    """The validated fields of an oodml checkpoint file.

    Attributes:
        arch: registered architecture name.
        config: keyword arguments of ``create_model(arch, **config)``.
        state_dict: parameter and buffer names -> dense tensors.
        preprocessing: the saved preprocessing, or None to use the architecture's.
        provenance: how the model was trained (free-form), else empty.
        pretraining: the data the weights were pretrained on before training (``imagenet-1k``), or None.
        pretraining_declared: False when the checkpoint does not say (written before oodml recorded it, or
            trained on a pretrained spec's backbone by an oodml that did not store its pretraining): then a
            None ``pretraining`` means unknown, not none.
    """

    arch: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing | None
    provenance: dict
    pretraining: str | None = None
    pretraining_declared: bool = True


def save(model: EmbeddingModel, path: str | Path, *, provenance: dict | None = None) -> Path:
    """Write an oodml checkpoint (atomically) that :func:`load_model` reads with ``weights_only=True``.

    ``provenance`` should say how the model was trained: dataset, split digest,
    level, train classes, loss, hyper-parameters, seed.  The model's declared
    pretraining data (``model.pretraining``: a resnet50 trained from ImageNet
    weights declares ``imagenet-1k``) is kept, so that evaluating the file counts
    the test classes its weights saw.
    """
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": model.arch, "config": model.config,
        "preprocessing": json.dumps(model.preprocessing.as_dict()), "state_dict": model.state_dict(),
        "provenance": json.dumps(provenance or {}), "pretraining": getattr(model, "pretraining", None),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(spec: str | Path, **kwargs) -> LoadedModel:
    """Load a model from a registered name, a model spec or a file, read by
    :func:`~oodml.models.refs.resolve_model_ref` (its order decides a text that could be several); see the
    module docstring.

    ``kwargs`` go to the factory of a registered name (e.g. ``embed_dim=128``).

    Raises:
        OodmlError: unknown name, missing file, a per-level template or directory (one checkpoint per level),
            full pickle, unreadable or malformed file (weights that do not fit the architecture, an invalid
            preprocessing record, a TorchScript file without forward).
    """
    ref = resolve_model_ref(spec)
    ref.refuse_per_level("loading a model")
    if ref.kind == "spec":
        if kwargs:
            raise OodmlError(f"{ref.text}: a model spec takes its options in the spec (?key=value), not "
                             f"{', '.join(kwargs)}")
        built = load_spec(ref.text)
        digest = model_digest(built.module, built.preprocessing, built.identity)
        return LoadedModel(built.module, built.preprocessing, digest, built.spec.text(), identity=built.identity)
    if ref.kind == "registered":
        return _load_registered(ref.text, ref.name, ref.options, kwargs)
    return _load_file(ref.path, ref.text)


def _load_file(path: Path, spec_text: str) -> LoadedModel:
    """A model file (oodml checkpoint, TorchScript, ``torch.export``) with its digest and identity."""
    kind = _file_kind(path)
    module, preprocessing, provenance, declaration = _LOADERS[kind](path)
    try:
        digest = model_digest(module, preprocessing)
    except (RuntimeError, TypeError, ValueError) as exc:  # a foreign module can hold anything
        raise OodmlError(f"{path}: cannot fingerprint the model for its embedding cache ({first_line(exc)}); "
                         "save it with torch.jit.script(model).save(PATH) or oodml.models.save") from None
    return LoadedModel(module, preprocessing, digest, spec_text, provenance,
                       identity=_file_identity(module, path, spec_text, kind, declaration))


def _load_registered(spec_text: str, name: str, options: dict, kwargs: dict) -> LoadedModel:
    """A registered model built with ``options`` (``NAME?key=value``) and ``kwargs``; random weights warned."""
    both = sorted(set(options) & set(kwargs))
    if both:
        raise OodmlError(f"model {spec_text!r}: {both[0]} is given in the name and as an argument; give it once")
    model = create_model(name, **options, **kwargs)
    preprocessing = _architecture_preprocessing(model, spec_text)
    identity = registered_identity(model, spec_text)
    if identity["random_weights"]:
        chosen = options.get("pretrained") is False or kwargs.get("pretrained") is False
        how = "pretrained=false" if chosen else f"{name} has no pretrained weights"
        warn_random_weights(f"{spec_text} (seed {getattr(model, 'config', {}).get('seed', 0)})", how, stacklevel=4)
    return LoadedModel(model, preprocessing, model_digest(model, preprocessing), spec_text, identity=identity)


def _file_identity(module: torch.nn.Module, path: Path, spec_text: str, kind: str, declaration: dict) -> dict:
    """What a model file ran: an oodml checkpoint with its ``declaration`` (``pretraining``,
    ``pretraining_declared``, as the file records them), or a TorchScript / ``torch.export`` file, whose
    pretraining is undeclared."""
    if kind == "checkpoint":
        return checkpoint_identity(module, path, spec_text, **declaration)
    return foreign_file_identity(module, path, spec_text, "torch.export" if kind == "export" else kind)


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


def _load_torchscript(path: Path) -> tuple[torch.nn.Module, Preprocessing, dict, dict]:
    """A TorchScript archive and its extra file ``preprocessing.json``; no provenance, no declaration."""
    extra = {"preprocessing.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # a damaged archive can fail in many ways
        raise OodmlError(f"{path}: not a loadable TorchScript file ({first_line(exc)})") from None
    if not module._c._has_method("forward"):
        raise OodmlError(f"{path}: the TorchScript module has no forward method to embed images with; script a "
                         "module whose forward maps (B, 3, H, W) images to (B, d) embeddings")
    return module, _read_preprocessing(extra["preprocessing.json"], path), {}, {}


def _load_export(path: Path) -> tuple[torch.nn.Module, Preprocessing, dict, dict]:
    """A ``torch.export`` program (as the module it runs) and its extra file ``preprocessing.json``."""
    extra = {"preprocessing.json": ""}
    logger = logging.getLogger("torch.export")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)  # it logs a traceback before raising
    try:
        program = torch.export.load(str(path), extra_files=extra)
        module = program.module()
    except Exception as exc:  # torch.export raises many types for a bad archive
        raise OodmlError(f"{path}: not a loadable torch.export program ({type(exc).__name__}: "
                         f"{first_line(exc)})") from None
    finally:
        logger.setLevel(previous)
    return module, _read_preprocessing(extra["preprocessing.json"], path), {}, {}


def _load_checkpoint(path: Path) -> tuple[torch.nn.Module, Preprocessing, dict, dict]:
    """An oodml checkpoint: the architecture rebuilt with its weights, its preprocessing, provenance and
    pretraining declaration (``{"pretraining", "pretraining_declared"}``)."""
    record = checkpoint_record(_read_checkpoint(path), path)
    module = _build_checkpoint_model(record, path)
    module.preprocessing = record.preprocessing or _architecture_preprocessing(module, record.arch)
    module.pretraining = record.pretraining
    declaration = {"pretraining": record.pretraining, "pretraining_declared": record.pretraining_declared}
    return module, module.preprocessing, record.provenance, declaration


def _read_preprocessing(text: str | bytes, path: Path, name: str = "preprocessing.json") -> Preprocessing:
    """The preprocessing record ``name`` stored in a model file; ImageNet's, with a warning, when it is empty."""
    if not text:
        warnings.warn(f"{path} carries no preprocessing.json; assuming ImageNet preprocessing (resize 256, crop 224)",
                      stacklevel=4)
        return Preprocessing()
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise OodmlError(f"{path}: {name} is not JSON ({first_line(exc)}); {_PREPROCESSING_HINT}") from None
    try:
        return Preprocessing.from_dict(record)
    except OodmlError as exc:
        raise OodmlError(f"{path}: {name} is invalid: {exc}; {_PREPROCESSING_HINT}") from None


_PREPROCESSING_HINT = f"write it like {json.dumps(Preprocessing().as_dict())}"


def _read_checkpoint(path: Path) -> object:
    """``torch.load(path, weights_only=True)``: tensors and plain Python values only, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # a pickle naming classes or functions: refuse, never run it
            raise _refuse_pickle(path) from None
        raise OodmlError(f"{path}: cannot read it as a checkpoint (malformed or truncated file)") from None
    except Exception as exc:  # torch.load raises anything from EOFError to IndexError on junk input
        raise OodmlError(f"{path}: cannot read it as a checkpoint ({type(exc).__name__}: {first_line(exc)})") \
            from None


def checkpoint_record(payload: object, path: str | Path) -> CheckpointRecord:
    """Check what ``torch.load`` read from an oodml checkpoint, field by field.

    Args:
        payload: the loaded object (untrusted: any mix of dicts, lists, scalars and tensors).
        path: the file, for messages.

    Raises:
        OodmlError: naming the first missing or malformed field.
    """
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise OodmlError(f"{path}: not an oodml checkpoint (a bare state dict has no architecture; save with "
                         "oodml.models.save, or export TorchScript / torch.export)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise OodmlError(f"{path}: checkpoint version must be an integer, got {brief(version)}; {_RESAVE}")
    if version > CHECKPOINT_VERSION:
        raise OodmlError(f"{path}: checkpoint version {version} is newer than this oodml; upgrade oodml")
    arch, config = payload.get("arch"), payload.get("config", {})
    if not isinstance(arch, str):
        raise OodmlError(f"{path}: checkpoint 'arch' must name a registered architecture (see `oodml models "
                         f"list`), got {brief(arch)}; {_RESAVE}")
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise OodmlError(f"{path}: checkpoint 'config' must map {arch}'s argument names to values, got "
                         f"{brief(config)}; {_RESAVE}")
    state = payload.get("state_dict")
    if state is None:
        raise OodmlError(f"{path}: checkpoint has no state dict (the 'state_dict' entry with the weights); {_RESAVE}")
    problem = _state_dict_problem(state)
    if problem:
        raise OodmlError(f"{path}: checkpoint 'state_dict' {problem}; {_RESAVE}")
    return CheckpointRecord(arch, config, state, _checkpoint_preprocessing(payload.get("preprocessing"), path),
                            _checkpoint_provenance(payload.get("provenance"), path),
                            _checkpoint_pretraining(payload.get("pretraining"), path),
                            _pretraining_declared(payload, arch))


def _state_dict_problem(state: object) -> str | None:
    """Why ``state`` is not a dict of names to dense tensors holding data, else None."""
    if not isinstance(state, dict):
        return f"must map parameter names to tensors, got {type(state).__name__}"
    for key, value in state.items():
        if not isinstance(key, str):
            return f"has a non-string key {brief(key)}"
        if not isinstance(value, torch.Tensor):
            return f"entry {brief(key)} is {type(value).__name__}, not a tensor"
        if value.layout != torch.strided or value.is_quantized or value.is_meta:
            return f"entry {brief(key)} is not a dense tensor with data ({value.layout}, {value.dtype})"
    return None


def _checkpoint_preprocessing(value: object, path: str | Path) -> Preprocessing | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise OodmlError(f"{path}: checkpoint 'preprocessing' must be a JSON string, got {type(value).__name__}; "
                         f"{_RESAVE}")
    return _read_preprocessing(value, Path(path), "checkpoint 'preprocessing'")


def _checkpoint_provenance(value: object, path: str | Path) -> dict:
    if value is None or value == "":
        return {}
    try:
        provenance = json.loads(value) if isinstance(value, str) else None
    except (ValueError, RecursionError):
        provenance = None
    if not isinstance(provenance, dict):
        raise OodmlError(f"{path}: checkpoint 'provenance' must be a JSON object in a string, got "
                         f"{brief(value)}; re-save the model with oodml.models.save(model, PATH, provenance=...)")
    return provenance


def _checkpoint_pretraining(value: object, path: str | Path) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 100 or not value.isprintable():
        raise OodmlError(f"{path}: checkpoint 'pretraining' must name the pretraining data in one line of at most "
                         f"100 characters (e.g. imagenet-1k), got {brief(value)}; {_RESAVE}")
    return value


def _pretraining_declared(payload: dict, arch: str) -> bool:
    """Whether a checkpoint states its pretraining: it holds the field (oodml writes it since it recorded
    pretraining), and, for a model spec's backbone loaded with pretrained weights, names some data (an
    older oodml stored none for those)."""
    if "pretraining" not in payload:
        return False
    if payload.get("pretraining") or not is_spec(arch):
        return True
    try:
        spec = parse_spec(arch)
    except OodmlError:
        return False
    return not spec.pretrained and "checkpoint_path" not in spec.options


def _build_checkpoint_model(record: CheckpointRecord, path: Path) -> torch.nn.Module:
    """The architecture built from the record's config, with its weights.

    It is first built on the meta device, which allocates nothing, so a config
    that does not fit the weights (or asks for a huge model) fails before any memory is used.
    """
    if is_spec(record.arch):
        _check_checkpoint_spec(record.arch, path)
        return _build_spec_checkpoint_model(record, path)
    if record.arch not in list_models():
        raise OodmlError(f"{path}: checkpoint architecture {brief(record.arch)} is not registered in this oodml "
                         f"(known: {', '.join(list_models())}); install the package that registers it")
    config = f"{record.arch} with config {brief(record.config, 200)}"
    untrained = untrained_config(record.arch, record.config)
    try:
        with torch.device("meta"):
            skeleton = create_model(record.arch, **untrained)
    except OodmlError as exc:
        raise OodmlError(f"{path}: checkpoint architecture cannot be built: {exc}; {_RESAVE}") from None
    problem = _weights_mismatch(skeleton.state_dict(), record.state_dict)
    if problem:
        raise OodmlError(f"{path}: weights do not fit {config} ({problem}); {_RESAVE}")
    model = create_model(record.arch, **untrained)
    try:
        model.load_state_dict(record.state_dict)
    except (RuntimeError, NotImplementedError) as exc:
        raise OodmlError(f"{path}: weights do not fit {config} ({first_line(exc)})") from None
    return model


def _check_checkpoint_spec(arch: str, path: Path) -> None:
    """Refuse, before anything is imported or run, a checkpoint architecture that names code (``torchhub:``) or
    a local folder: the file is untrusted input, and loading weights must run nothing."""
    try:
        problem = checkpoint_spec_problem(parse_spec(arch))
    except OodmlError as exc:
        raise OodmlError(f"{path}: checkpoint architecture is not a valid model spec: {exc}; {_RESAVE}") from None
    if problem:
        raise OodmlError(f"{path}: refused checkpoint architecture {brief(arch)}: {problem}; a checkpoint may name "
                         "a registered architecture or a timm:, open_clip: or hf: hub model")


def _build_spec_checkpoint_model(record: CheckpointRecord, path: Path) -> torch.nn.Module:
    """A model trained on a spec's backbone (``oodml train --arch timm:...``): the backbone built with random
    weights (nothing is downloaded; the checkpoint holds every weight), then the checkpoint's weights."""
    from .sources import spec_embedding_model

    try:
        model = spec_embedding_model(record.arch, **record.config, load_weights=False)
    except TypeError as exc:
        raise OodmlError(f"{path}: checkpoint config {brief(record.config, 200)} does not fit {record.arch} "
                         f"({first_line(exc)}); {_RESAVE}") from None
    problem = _weights_mismatch(model.state_dict(), record.state_dict)
    if problem:
        raise OodmlError(f"{path}: weights do not fit {record.arch} ({problem}); {_RESAVE}")
    model.load_state_dict(record.state_dict)
    return model


def _weights_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """The first difference in names or shapes between an architecture's state dict and a checkpoint's, else None."""
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing:
        return f"{len(missing)} missing, e.g. {missing[0]!r}"
    if unexpected:
        return f"{len(unexpected)} unexpected, e.g. {brief(unexpected[0])}"
    for name in sorted(expected):
        if given[name].shape != expected[name].shape:
            return f"{name!r} has shape {tuple(given[name].shape)}, the architecture {tuple(expected[name].shape)}"
    return None


def _architecture_preprocessing(model: torch.nn.Module, name: str) -> Preprocessing:
    preprocessing = getattr(model, "preprocessing", None)
    if not isinstance(preprocessing, Preprocessing):
        raise OodmlError(f"model {name!r} carries no preprocessing; its factory must set model.preprocessing to an "
                         "oodml.preprocessing.Preprocessing")
    return preprocessing


_LOADERS = {"torchscript": _load_torchscript, "export": _load_export, "checkpoint": _load_checkpoint}
