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

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..embedding import IMAGENET, Preprocessing
from ..errors import OodmlError, brief, first_line
from .identity import warn_random_weights, weights_record
from .spec_forms import SPEC_FORMS

COMMON_OPTIONS = ("pretrained", "seed")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec.

    Attributes:
        source: a key of :data:`SOURCES` (``timm``, ``open_clip``, ``hf``, ``torchhub``).
        name: what the library calls the model (``resnet18``, ``ViT-B-32``, ``facebook/dinov2-small``,
            ``facebookresearch/dinov2:dinov2_vits14``).
        revision: the open_clip pretrained tag, the hub revision or the torch hub ref; None for the default.
        options: ``key -> value`` (bool, int, float or str), in the order given.
    """

    source: str
    name: str
    revision: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def pretrained(self) -> bool:
        return self.options.get("pretrained", True)

    @property
    def seed(self) -> int:
        return self.options.get("seed", 0)

    def text(self) -> str:
        """The canonical spec text: what results, manifests and leaderboard entries record."""
        separator = {"open_clip": "/", "hf": "@"}.get(self.source, "@")
        ref = self.name
        if self.revision is not None:
            if self.source == "torchhub":
                repo, entry = self.name.rsplit(":", 1)
                ref = f"{repo}@{self.revision}:{entry}"
            else:
                ref = f"{self.name}{separator}{self.revision}"
        options = ",".join(f"{k}={_option_text(v)}" for k, v in self.options.items())
        return f"{self.source}:{ref}" + (f"?{options}" if options else "")


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


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    SOURCES[source.name] = source
    return source


_SPEC = re.compile(r"(?P<source>[a-z_]+):(?P<ref>[^?]*)(?:\?(?P<options>.*))?", re.S)
#: a GitHub repository (torch hub) or a Hugging Face hub id: ``owner/name`` (hf also takes a bare ``name``)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def is_local_reference(ref: str) -> bool:
    """Whether a spec's reference names a local folder: it starts with ``./``, ``../``, ``/`` or ``~`` (or is
    ``.`` or ``..``).  Any other reference is a hub id, even when a folder of that name exists in the current
    directory: oodml reads a folder, or runs the code in it, only when the spec says so."""
    return ref in (".", "..") or ref.startswith(_LOCAL_PREFIXES)


def is_spec(text: str | Path) -> bool:
    """Whether ``text`` is written as a spec (``SOURCE:...`` with a known source), not a name or a file; an empty
    reference (``timm:``) counts, so that :func:`parse_spec` says what is missing."""
    m = _SPEC.fullmatch(str(text))
    return m is not None and m.group("source") in SOURCES


def parse_spec(text: str) -> ModelSpec:
    """Read ``SOURCE:REFERENCE[?key=value,...]``.

    Raises:
        OodmlError: unknown source, empty or malformed reference, or an option the source does not take.
    """
    m = _SPEC.fullmatch(text.strip())
    if m is None or m.group("source") not in SOURCES:
        prefix = text.split(":", 1)[0] if ":" in text else text
        raise OodmlError(f"model spec {text!r}: unknown source {prefix!r}; write one of "
                         f"{', '.join(s.grammar for s in SOURCES.values())}")
    source = SOURCES[m.group("source")]
    options = _parse_options(text, m.group("options"), source)
    ref, revision = m.group("ref").strip(), None
    if source.name == "open_clip":
        ref, _, tag = ref.partition("/")
        revision = tag or None
        if revision is None and options.get("pretrained", True):
            raise OodmlError(f"model spec {text!r}: name the pretrained weights, {source.grammar} (see "
                             "open_clip.list_pretrained()), or add ?pretrained=false for random weights")
    elif source.name == "hf":
        if "@" in ref and not is_local_reference(ref):
            ref, revision = ref.rsplit("@", 1)
        _check_hub_id(text, ref, "hf:./FOLDER", bare_name=True)
    elif source.name == "torchhub":
        repo, sep, entry = ref.rpartition(":")
        if not sep or not repo or not entry:
            raise OodmlError(f"model spec {text!r}: write {source.grammar}, e.g. "
                             "torchhub:facebookresearch/dinov2:dinov2_vits14")
        if "@" in repo and not is_local_reference(repo):
            repo, revision = repo.rsplit("@", 1)
        _check_hub_id(text, repo, f"torchhub:./FOLDER:{entry}", bare_name=False)
        ref = f"{repo}:{entry}"
    if not ref or revision == "":
        raise OodmlError(f"model spec {text!r}: empty name; write {source.grammar}")
    return ModelSpec(source.name, ref, revision, options)


def _check_hub_id(text: str, ref: str, local_form: str, *, bare_name: bool) -> None:
    """Refuse a reference that is neither a local path (:func:`is_local_reference`) nor a hub id."""
    if not ref or is_local_reference(ref) or _HUB_ID.fullmatch(ref):
        return
    if bare_name and "/" not in ref and _HUB_ID.fullmatch(f"x/{ref}"):
        return
    raise OodmlError(f"model spec {text!r}: {ref!r} is not a hub id (OWNER/NAME); for a local folder start the "
                     f"path with ./, ../, / or ~, as in {local_form}")


def _parse_options(text: str, raw: str | None, source: Source) -> dict:
    options: dict = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OodmlError(f"model spec {text!r}: option {item!r} must be written key=value "
                             "(e.g. ?pretrained=false,seed=1)")
        allowed = (*COMMON_OPTIONS, *(source.options or ()))
        if source.options is not None and key not in allowed:
            raise OodmlError(f"model spec {text!r}: {source.name} takes no option {key!r}; its options are "
                             f"{', '.join(allowed)}")
        options[key] = _option_value(value.strip())
    if not isinstance(options.get("pretrained", True), bool):
        raise OodmlError(f"model spec {text!r}: pretrained must be true or false")
    seed = options.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise OodmlError(f"model spec {text!r}: seed must be a whole number from 0 to 2**63 - 1")
    if "size" in options and not (isinstance(options["size"], int) and 1 <= options["size"] <= 4096):
        raise OodmlError(f"model spec {text!r}: size must be a whole number of pixels from 1 to 4096")
    return options


def _option_value(text: str) -> bool | int | float | str:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _option_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# --- loading -----------------------------------------------------------------------------------------

def load_spec(text: str | ModelSpec) -> SourceModel:
    """Build the model a spec names, with its preprocessing and identity.

    Random weights (``pretrained=false``) are drawn from the spec's seed without touching the global
    random state, and always warned about.

    Raises:
        OodmlError: a malformed spec, the source's library missing (naming the extra that installs it),
            weights that cannot be fetched (naming what to fetch), or a model the library cannot build.
    """
    spec = parse_spec(text) if isinstance(text, str) else text
    source = SOURCES[spec.source]
    library = _import_library(source, spec)
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.manual_seed(spec.seed)
        try:
            module, preprocessing, pretraining = source.build(spec, library)
        except SystemExit as exc:  # a hub entry's sys.exit() must not end oodml as if it had succeeded
            raise OodmlError(f"{spec.text()}: the model's code called exit({brief(exc.code, 60)}) while building "
                             "it; fix that entry or name another model") from None
    module = module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return SourceModel(module, preprocessing, spec, _spec_identity(spec, source, library, module, pretraining))


def _spec_identity(spec: ModelSpec, source: Source, library: object, module: torch.nn.Module,
                   pretraining: str | None) -> dict:
    """What a spec ran (:mod:`oodml.models.identity`): the weights file it names (timm's ``checkpoint_path``,
    whose pretraining is unknown) or the library's weights, with the pretraining the library declares;
    random weights (``pretrained=false`` and no file) are warned about."""
    weights_file = spec.options.get("checkpoint_path")
    random = not spec.pretrained and weights_file is None
    if not spec.pretrained or weights_file is not None:
        pretraining = None
    if random:
        warn_random_weights(spec.text(), f"pretrained=false, seed {spec.seed}", stacklevel=4)
    return {
        "spec": spec.text(), "arch": spec.text(), "source": spec.source, "name": spec.name,
        "revision": spec.revision, "options": spec.options,
        "library": f"{source.library} {getattr(library, '__version__', 'unknown')}",
        **weights_record(module, Path(str(weights_file)).expanduser() if weights_file is not None else None),
        "pretraining": pretraining, "pretraining_declared": random or pretraining is not None,
        "random_weights": random,
    }


def spec_embedding_model(text: str, embed_dim: int = 512, seed: int = 0, *, load_weights: bool = True):
    """An :class:`~oodml.models.base.EmbeddingModel` for training: the spec's model as the backbone (trainable),
    a linear head from its output width to ``embed_dim`` initialised from ``seed``, L2 normalisation.

    ``load_weights=False`` builds the backbone with random weights and no warning, to receive a checkpoint's.
    """
    from .base import EmbeddingModel

    spec = parse_spec(text)
    problem = checkpoint_spec_problem(spec)
    if problem:
        raise OodmlError(f"{spec.text()} cannot be a training backbone: {problem}; train on a hub model of timm:, "
                         "open_clip: or hf:, or on a registered architecture")
    if not load_weights:  # nothing fetched or read: not the library's weights, nor a checkpoint_path file
        options = {k: v for k, v in spec.options.items() if k != "checkpoint_path"}
        spec = ModelSpec(spec.source, spec.name, spec.revision, {**options, "pretrained": False})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = load_spec(spec)
    else:
        built = load_spec(spec)
    backbone = built.module
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    side = built.preprocessing.crop or built.preprocessing.resize or 224
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, side, side)).shape[-1]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return EmbeddingModel(backbone, features, embed_dim, arch=parse_spec(text).text(),
                              config={"embed_dim": embed_dim, "seed": seed}, preprocessing=built.preprocessing,
                              augmentation="imagenet-crop-flip", pretraining=built.identity["pretraining"])


def checkpoint_spec_problem(spec: ModelSpec) -> str | None:
    """Why a checkpoint may not name ``spec`` as its architecture, else None.

    Loading a checkpoint must run no code and read nothing but the file and library caches, so it names a torch
    hub repository (code: its hubconf.py) or a local folder (whatever lies at that path wherever it is loaded)
    never; training on them is refused too, since it would write such checkpoints.
    """
    if spec.source == "torchhub":
        return "a torch hub repository is code (its hubconf.py) that loading a checkpoint naming it would run"
    if is_local_reference(spec.name) or spec.name.startswith("local-dir:"):  # timm's and open_clip's folder form
        return f"{spec.name} is a local folder, read wherever a checkpoint naming it is loaded"
    return None


def _import_library(source: Source, spec: ModelSpec) -> object:
    try:
        return importlib.import_module(source.library)
    except ImportError:
        raise OodmlError(f"{spec.text()} needs the {source.library} package; install it with "
                         f"pip install 'oodml[{source.extra}]'") from None


def _fetch_error(spec: ModelSpec, exc: BaseException, what: str, how: str) -> OodmlError:
    """The one-line error for weights or code that could not be fetched (offline, or a wrong name)."""
    return OodmlError(f"{spec.text()}: cannot load {what} ({type(exc).__name__}: {first_line(exc)[:200]}); if this "
                      f"machine is offline, fetch it on one that is online with {how} and copy the cache over, "
                      "or add ?pretrained=false for random weights")


def _offline(exc: BaseException) -> bool:
    """Whether a library's exception means that something could not be downloaded."""
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc)).lower()
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "URLError",
                         "HTTPError", "ConnectError", "MaxRetryError", "gaierror", "RepositoryNotFoundError",
                         "EntryNotFoundError", "HfHubHTTPError"}) or any(
        phrase in text for phrase in ("offline", "connect", "internet", "cannot find the requested files",
                                      "couldn't connect", "name or service not known", "not found in cache"))


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _build_error(spec: ModelSpec, exc: BaseException) -> OodmlError:
    return OodmlError(f"{spec.text()}: the library cannot build it ({type(exc).__name__}: {first_line(exc)[:300]})")


# --- timm ----------------------------------------------------------------------------------------------

def _timm_preprocessing(config: dict) -> Preprocessing:
    """oodml preprocessing from timm's data config (``input_size``, ``crop_pct``, ``crop_mode``, ...)."""
    side = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    mode = config.get("crop_mode", "center")
    interpolation = config.get("interpolation", "bilinear")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bicubic"  # timm's 'random' / 'lanczos' fall back to bicubic at test time
    if mode == "squash":
        return Preprocessing(resize=int(side / crop_pct), crop=side, mean=tuple(config["mean"]),
                             std=tuple(config["std"]), interpolation=interpolation, resize_mode="squash")
    if mode == "border":
        warnings.warn("timm crop_mode 'border' is approximated by a centre crop", stacklevel=3)
    return Preprocessing(resize=int(side / crop_pct), crop=side, mean=tuple(config["mean"]), std=tuple(config["std"]),
                         interpolation=interpolation)


def _build_timm(spec: ModelSpec, timm) -> tuple[torch.nn.Module, Preprocessing, str | None]:
    kwargs = {k: v for k, v in spec.options.items() if k not in (*COMMON_OPTIONS, "size")}
    size = spec.options.get("size")
    if not timm.is_model(spec.name):
        raise OodmlError(f"{spec.text()}: timm has no model {spec.name.split('.')[0]!r}; see timm.list_models()")
    if size is not None and getattr(timm.models.get_pretrained_cfg(spec.name), "fixed_input_size", False):
        kwargs.setdefault("img_size", size)  # a ViT's position embeddings are built for one size
    if "checkpoint_path" in kwargs:  # these weights replace the library's: never download those first
        checkpoint = Path(str(kwargs["checkpoint_path"])).expanduser()
        if not checkpoint.is_file():
            raise OodmlError(f"{spec.text()}: checkpoint_path {checkpoint} is not a file; name a timm weights file")
        kwargs["checkpoint_path"] = str(checkpoint)
    try:
        model = timm.create_model(spec.name, pretrained=spec.pretrained and "checkpoint_path" not in kwargs,
                                  num_classes=0, **kwargs)
    except OodmlError:
        raise
    except Exception as exc:
        if spec.pretrained and _offline(exc):
            cfg = timm.models.get_pretrained_cfg(spec.name)
            hub = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or spec.name
            raise _fetch_error(spec, exc, f"its pretrained weights ({hub})",
                               f"python -c \"import timm; timm.create_model('{spec.name}', pretrained=True)\"") \
                from None
        raise _build_error(spec, exc) from None
    config = timm.data.resolve_model_data_config(model)
    if size is not None:
        config = {**config, "input_size": (3, size, size)}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    pretraining = cfg.get("tag") or None
    return model, _timm_preprocessing(config), pretraining


register_source(Source(*SPEC_FORMS["timm"], None, _build_timm))


# --- OpenCLIP -----------------------------------------------------------------------------------------

def _open_clip_preprocessing(cfg: dict) -> Preprocessing:
    """oodml preprocessing from open_clip's ``get_model_preprocess_cfg`` (size, mean, std, interpolation,
    resize_mode): resize to ``size``, centre-crop ``size``, as its test transform does."""
    size = cfg.get("size", 224)
    side = int(size if isinstance(size, int) else max(size))
    interpolation = cfg.get("interpolation", "bicubic")
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        warnings.warn(f"open_clip resize_mode {mode!r} is approximated by resizing the shorter side", stacklevel=3)
    return Preprocessing(resize=side, crop=side, mean=tuple(cfg.get("mean", IMAGENET.mean)),
                         std=tuple(cfg.get("std", IMAGENET.std)),
                         interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bicubic",
                         resize_mode="squash" if mode == "squash" else "shorter-side")


def _build_open_clip(spec: ModelSpec, open_clip) -> tuple[torch.nn.Module, Preprocessing, str | None]:
    if spec.name not in open_clip.list_models():
        raise OodmlError(f"{spec.text()}: open_clip has no architecture {spec.name!r}; see open_clip.list_models()")
    tag = spec.revision if spec.pretrained else None
    try:
        model = open_clip.create_model(spec.name, pretrained=tag)
    except Exception as exc:
        if tag and _offline(exc):
            raise _fetch_error(spec, exc, f"its pretrained weights ({spec.name}/{tag})",
                               f"python -c \"import open_clip; open_clip.create_model('{spec.name}', "
                               f"pretrained='{tag}')\"") from None
        raise _build_error(spec, exc) from None
    return model.visual, _open_clip_preprocessing(open_clip.get_model_preprocess_cfg(model)), tag


register_source(Source(*SPEC_FORMS["open_clip"], (), _build_open_clip))


# --- Hugging Face transformers --------------------------------------------------------------------------

POOLINGS = ("cls", "mean")


class HFImageEmbedding(torch.nn.Module):
    """A transformers vision model as ``(B, 3, H, W) -> (B, d)``.

    CLIP-like models (with ``get_image_features``) give their projected image
    embedding.  Others give, from ``last_hidden_state`` (B, T, D), the first
    token (``cls``) or the mean of the other tokens (``mean``); a convolutional
    model's (B, C, h, w) feature map is averaged over space either way.
    """

    def __init__(self, model: torch.nn.Module, pool: str = "cls"):
        super().__init__()
        self.model, self.pool = model, pool
        self.image_features = hasattr(model, "get_image_features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_features:
            out = self.model.get_image_features(pixel_values=x)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        hidden = self.model(pixel_values=x).last_hidden_state
        if hidden.ndim == 4:
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0] if self.pool == "cls" else hidden[:, 1:].mean(dim=1)


_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's numbering, as image processors store it


def _hf_preprocessing(processor) -> Preprocessing:
    """oodml preprocessing from an image processor's size, crop_size, resample, image_mean and image_std."""
    size, crop = getattr(processor, "size", None) or {}, getattr(processor, "crop_size", None) or {}

    def get(d, key):
        return d.get(key) if isinstance(d, dict) else getattr(d, key, None)

    do_crop = bool(getattr(processor, "do_center_crop", False))
    crop_side = get(crop, "height") if do_crop else None
    resample = getattr(processor, "resample", 2)
    interpolation = _RESAMPLE.get(int(getattr(resample, "value", resample) or 2), "bicubic")
    mean = tuple(processor.image_mean) if getattr(processor, "do_normalize", True) else (0.0, 0.0, 0.0)
    std = tuple(processor.image_std) if getattr(processor, "do_normalize", True) else (1.0, 1.0, 1.0)
    if get(size, "shortest_edge"):
        return Preprocessing(resize=int(get(size, "shortest_edge")), crop=crop_side, mean=mean, std=std,
                             interpolation=interpolation)
    height, width = get(size, "height"), get(size, "width")
    if not height or height != width:
        raise OodmlError(f"image processor size {dict(size) if isinstance(size, dict) else size} is not a shortest "
                         "edge or a square; oodml cannot reproduce it")
    return Preprocessing(resize=int(height), crop=crop_side, mean=mean, std=std, interpolation=interpolation,
                         resize_mode="squash")


def _hf_name(spec: ModelSpec) -> str:
    """What to give ``from_pretrained``: the folder of an explicitly local spec, else the hub id.

    transformers reads a folder of the hub id's name in the current directory in place of the hub model, so
    such a folder is refused rather than read by coincidence.
    """
    if is_local_reference(spec.name):
        folder = Path(spec.name).expanduser()
        if not folder.is_dir():
            raise OodmlError(f"{spec.text()}: no folder {folder}; name a folder written by save_pretrained")
        return str(folder)
    if Path(spec.name).exists():
        raise OodmlError(f"{spec.text()}: the current directory holds {spec.name}, which transformers would read in "
                         f"place of the hub model; run oodml from another directory, or write hf:./{spec.name} "
                         "to use that folder")
    return spec.name


def _build_hf(spec: ModelSpec, transformers) -> tuple[torch.nn.Module, Preprocessing, str | None]:
    pool = spec.options.get("pool", "cls")
    if pool not in POOLINGS:
        raise OodmlError(f"{spec.text()}: pool must be one of {', '.join(POOLINGS)}")
    where = {"revision": spec.revision} if spec.revision else {}
    name = _hf_name(spec)
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(name, **where)
        if spec.pretrained:
            model = transformers.AutoModel.from_pretrained(name, **where)
        else:
            model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(name, **where))
    except Exception as exc:
        if _offline(exc) or not is_local_reference(spec.name):
            raise _fetch_error(spec, exc, f"{spec.name} from the Hugging Face hub",
                               f"huggingface-cli download {spec.name}"
                               + (f" --revision {spec.revision}" if spec.revision else "")) from None
        raise _build_error(spec, exc) from None
    config_hash = hashlib.sha256(model.config.to_json_string(use_diff=False).encode()).hexdigest()
    module = HFImageEmbedding(model, pool)
    module.config_sha256 = config_hash  # an attribute, so the model digest covers the configuration
    return module, _hf_preprocessing(processor), HF_PRETRAINING.get(spec.name.split("-")[0])


register_source(Source(*SPEC_FORMS["hf"], ("pool",), _build_hf))


# --- torch hub --------------------------------------------------------------------------------------------

#: pretraining data of well-known Hugging Face model families (the id up to its first '-'), which transformers
#: does not record
HF_PRETRAINING = {"facebook/dinov2": "lvd142m", "openai/clip": "openai webimagetext (400M pairs)"}
#: pretraining data of well-known torch hub repositories, which torch.hub itself does not record
HUB_PRETRAINING = {"facebookresearch/dinov2": "lvd142m", "facebookresearch/dino": "imagenet-1k (self-supervised)"}
#: their test-time preprocessing, for repositories whose models carry none
HUB_PREPROCESSING = {"facebookresearch/dinov2": Preprocessing(interpolation="bicubic")}


#: the environment variable that agrees beforehand to run the code of the torch hub repositories a spec names
TRUST_REPO_ENV = "OODML_TRUST_REPO"


def trust_repo_given() -> bool:
    """Whether the user agreed beforehand to run torch hub repositories' code: ``OODML_TRUST_REPO`` is 1, true
    or yes (``oodml --trust-repo`` sets it)."""
    return os.environ.get(TRUST_REPO_ENV, "").strip().lower() in ("1", "true", "yes")


def _build_torchhub(spec: ModelSpec, _torch) -> tuple[torch.nn.Module, Preprocessing, str | None]:
    repo, entry = spec.name.rsplit(":", 1)
    kwargs = {"pretrained": spec.pretrained}
    try:
        if is_local_reference(repo):
            local = Path(repo).expanduser()
            if not (local / "hubconf.py").is_file():
                raise OodmlError(f"{spec.text()}: no hubconf.py in {local}; name a folder holding one")
            model = torch.hub.load(str(local), entry, source="local", **kwargs)
        else:
            model = _load_hub_repo(spec, repo, entry, kwargs)
    except OodmlError:
        raise
    except Exception as exc:
        if _offline(exc):
            raise _fetch_error(spec, exc, f"{repo} from GitHub and its weights",
                               f"python -c \"import torch; torch.hub.load('{repo}', '{entry}')\"") from None
        raise _build_error(spec, exc) from None
    if not isinstance(model, torch.nn.Module):
        raise OodmlError(f"{spec.text()}: entry {entry!r} returned {type(model).__name__}, not a torch.nn.Module; "
                         "name an entry of the repository's hubconf.py that returns a model")
    carried = getattr(model, "preprocessing", None)
    if isinstance(carried, dict):
        carried = Preprocessing.from_dict(carried)
    if not isinstance(carried, Preprocessing):
        carried = HUB_PREPROCESSING.get(repo)
        if carried is None:
            warnings.warn(f"{spec.text()} declares no preprocessing; assuming ImageNet's (resize 256, crop 224)",
                          stacklevel=3)
            carried = IMAGENET
    return model, carried, HUB_PRETRAINING.get(repo)


def _load_hub_repo(spec: ModelSpec, repo: str, entry: str, kwargs: dict) -> object:
    """``torch.hub.load`` of a GitHub repository, once the user has agreed to run its hubconf.py.

    Agreement is given beforehand (:func:`trust_repo_given`: nothing is asked, and torch's trusted list is left
    as it is), or on a terminal by answering torch's own y/N question (``trust_repo="check"``: asked for a
    repository torch does not trust yet; on yes torch adds it to its trusted list, the user's own choice).
    Without either nothing is downloaded or run.  torch's check that the ref is not from a fork stays on.
    """
    ref = f"{repo}:{spec.revision}" if spec.revision else repo
    if trust_repo_given():
        with _trusted_without_listing():
            return torch.hub.load(ref, entry, source="github", trust_repo=True, skip_validation=False, **kwargs)
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise OodmlError(f"{spec.text()}: running {repo}'s hubconf.py needs your agreement and there is no terminal "
                         f"to ask on; if you trust {repo}, pass oodml --trust-repo or set {TRUST_REPO_ENV}=1")
    try:
        return torch.hub.load(ref, entry, source="github", trust_repo="check", skip_validation=False, **kwargs)
    except Exception as exc:
        if "Untrusted repository" in str(exc) or "Unrecognized response" in str(exc):
            raise OodmlError(f"{spec.text()}: {repo} not trusted, so nothing was downloaded or run; answer y to run "
                             f"its hubconf.py, or pass oodml --trust-repo") from None
        raise


@contextlib.contextmanager
def _trusted_without_listing():
    """torch.hub without its trust check: with ``trust_repo=True`` torch would add the repository to its trusted
    list, a record that only the user's own answer to its question should write.  (torch has no value of
    ``trust_repo`` that trusts without listing.)  Process-wide while it lasts."""
    hub = torch.hub
    check = getattr(hub, "_check_repo_is_trusted", None)
    if check is None:
        raise OodmlError(f"torch {torch.__version__} cannot be told to trust a repository without adding it to its "
                         "trusted list; run oodml on a terminal and answer torch's question instead")
    hub._check_repo_is_trusted = lambda *args, **kwargs: None
    try:
        yield
    finally:
        hub._check_repo_is_trusted = check


register_source(Source(*SPEC_FORMS["torchhub"], (), _build_torchhub))


def declared_training_on(pretraining: str | None, dataset: str) -> bool:
    """Whether a pretraining declaration names ``dataset`` (``cub200`` matches ``cub`` and ``cub200``)."""
    if not pretraining:
        return False
    tokens = set(re.split(r"[^a-z0-9]+", pretraining.lower()))
    name = dataset.lower()
    return name in tokens or re.sub(r"[0-9]+$", "", name) in tokens - {""}


