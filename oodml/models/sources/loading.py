"""Building the model a spec names: :func:`load_spec` (frozen, with its preprocessing and identity) and
:func:`spec_embedding_model` (a trainable backbone under a linear head), whatever the source."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch

from ...errors import OodmlError, brief
from ..identity import warn_random_weights, weights_record
from .base import SOURCES, Source, SourceModel
from .spec import ModelSpec, checkpoint_spec_problem, parse_spec


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
    from ..base import EmbeddingModel

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


def _import_library(source: Source, spec: ModelSpec) -> object:
    try:
        return importlib.import_module(source.library)
    except ImportError:
        raise OodmlError(f"{spec.text()} needs the {source.library} package; install it with "
                         f"pip install 'oodml[{source.extra}]'") from None
