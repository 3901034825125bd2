"""Feature extractors for building splits, and their Parquet cache.

An extractor is a frozen network plus its preprocessing, identified by an id
and the sha256 of its weights.  The registry holds:

* ``resnet50``: torchvision ResNet-50 with ImageNet (IMAGENET1K_V1) weights, the
  2048-d globally average-pooled features, as in ooDML; resize 256, centre crop
  224, ImageNet mean/std.  Weights: ``weights=PATH``, else torchvision's file in the
  torch hub cache, downloaded once and hash-checked if absent (:mod:`oodml.weights`).
* ``pixels``: for the embedded ``glyphs`` dataset, needing no weights: the
  image resized and centre-cropped to 32x32, in grey, area-averaged to 16x16,
  as a 256-d vector in [0, 1].  Chosen
  over a seeded random network because it is exactly reproducible across torch
  versions and machines (no random initialisation), takes about a second for
  all of glyphs on a CPU, and its class means are average glyph shapes, which
  cluster by script (tested: the hardest levels separate the script groups).

Features go through the embedding engine (:mod:`oodml.embedding`) and are
cached there as Parquet shards.  Any TorchScript file is also an extractor (``get_extractor("path/model.pt")``);
its preprocessing is read from an extra file ``preprocessing.json`` saved with
it, else ImageNet's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .datasets import ImageDataset
from .embedding import EmbedSettings, embed_cached, embedding_cache_dir
from .errors import OodmlError
from .models.digest import file_sha256
from .preprocessing import IMAGENET, Preprocessing
from .registry import Registry
from .weights import resnet50_weights_path


@dataclass(frozen=True)
class Extractor:
    """A frozen feature network.

    Attributes:
        id: registry name or ``torchscript:<file name>``.
        weights_hash: sha256 of the weights file (``"none"`` when there are no weights).
        preprocessing: how images become tensors.
        build: returns the ``torch.nn.Module`` (B, 3, H, W) -> (B, d).
        identity: what runs (:mod:`oodml.models.identity`): spec, architecture, weights sha256 and file,
            declared pretraining, random weights or not.
    """

    id: str
    weights_hash: str
    preprocessing: Preprocessing
    build: Callable[[], torch.nn.Module]
    identity: dict = field(default_factory=dict)


ExtractorFactory = Callable[[str | None], Extractor]

#: extractor name -> ``factory(weights: str | None) -> Extractor``; plugins use the entry-point group
#: ``oodml.extractors``.
EXTRACTORS: Registry[ExtractorFactory] = Registry("extractor", entry_points="oodml.extractors")


def register_extractor(name: str) -> Callable[[ExtractorFactory], ExtractorFactory]:
    """Register ``factory(weights: str | None) -> Extractor`` under ``name`` (a second registration warns)."""
    return EXTRACTORS.register(name)


def list_extractors() -> list[str]:
    """Registered extractor names, sorted."""
    return EXTRACTORS.names()


def get_extractor(name: str | Path, weights: str | None = None) -> Extractor:
    """A registered extractor by name, a model spec (``timm:NAME``, ..., see :mod:`oodml.models.sources`), or a
    TorchScript (or ``torch.export``) file by path, read by :func:`oodml.models.refs.resolve_model_ref` with the
    extractors as the registered names (a spec first, then a name, then a file: ``./resnet50`` is the file).

    Raises:
        OodmlError: unknown name, a name with ``?options``, a per-level reference, or missing/unloadable weights.
    """
    from .models.refs import resolve_model_ref

    ref = resolve_model_ref(name, registry=EXTRACTORS, kind="extractor")
    ref.refuse_per_level("an extractor")
    if ref.kind == "registered":
        if ref.options or ref.text != ref.name:
            raise OodmlError(f"extractor {ref.text!r}: an extractor name takes no ?options; give the weights file "
                             "with --weights PATH")
        return EXTRACTORS[ref.name](weights)
    if ref.kind == "spec":
        return spec_extractor(ref.text, weights)
    return torchscript_extractor(ref.path)


def spec_extractor(spec: str, weights: str | None = None) -> Extractor:
    """A model spec as an extractor: id the canonical spec, weights hash the sha256 of the weights it loaded."""
    from .models.sources import load_spec

    if weights is not None:
        raise OodmlError(f"{spec}: a model spec's weights come from its library; drop --weights")
    built = load_spec(spec)
    return Extractor(built.spec.text(), built.identity["weights_sha256"], built.preprocessing, lambda: built.module,
                     built.identity)


@register_extractor("resnet50")
def resnet50_extractor(weights: str | None = None) -> Extractor:
    """The pooled 2048-d trunk of the ``resnet50`` embedding model, with ImageNet weights."""
    path = resnet50_weights_path(weights)

    def build() -> torch.nn.Module:
        from .models import create_model

        return create_model("resnet50", weights=str(path)).backbone

    identity = {"spec": "resnet50" if weights is None else f"resnet50?weights={path.name}", "arch": "resnet50",
                "library": f"oodml {__version__}", "weights_sha256": file_sha256(path), "weights_file": path.name,
                "pretraining": "imagenet-1k", "pretraining_declared": True, "random_weights": False}
    return Extractor("resnet50", identity["weights_sha256"], IMAGENET, build, identity)


class GreyPixels(torch.nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, side * side): grey level, area-averaged to ``side`` x ``side``."""

    def __init__(self, side: int = 16):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(1, keepdim=True)
        return torch.nn.functional.adaptive_avg_pool2d(grey, self.side).flatten(1)


@register_extractor("pixels")
def pixels_extractor(weights: str | None = None) -> Extractor:
    if weights is not None:
        raise OodmlError("the pixels extractor has no weights; drop --weights")
    no_norm = Preprocessing(resize=32, crop=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    identity = {"spec": "pixels", "arch": "pixels-16", "library": f"oodml {__version__}", "weights_sha256": None,
                "weights_file": None, "pretraining": None, "pretraining_declared": True, "random_weights": False}
    return Extractor("pixels-16", "none", no_norm, lambda: GreyPixels(16), identity)


def torchscript_extractor(path: Path) -> Extractor:
    """A TorchScript (or ``torch.export``) file as an extractor, loaded by :func:`oodml.models.load_model`."""
    from .models import load_model

    if not path.is_file():
        raise OodmlError(f"TorchScript extractor {path} does not exist")
    loaded = load_model(path)
    return Extractor(f"torchscript:{path.name}", file_sha256(path), loaded.preprocessing, lambda: loaded.module,
                     loaded.identity)


# --- cache ------------------------------------------------------------------------------------

def extractor_digest(extractor: Extractor) -> str:
    """The key of an extractor's cached features: its id and weights hash."""
    return hashlib.sha256(f"{extractor.id}|{extractor.weights_hash}".encode()).hexdigest()


def cache_dir(dataset: ImageDataset, extractor: Extractor) -> Path:
    """Where the features of ``dataset`` by ``extractor`` are cached (Parquet shards)."""
    return embedding_cache_dir(dataset, extractor_digest(extractor), extractor.preprocessing)


def extract_features(dataset: ImageDataset, extractor: Extractor, *, device: str = "auto", batch_size: int = 128,
                     workers: int = 0, precision: str = "fp32", use_cache: bool = True) -> np.ndarray:
    """Features of every image of ``dataset``, float32 (N, d), in dataset order.

    Computed by the embedding engine and cached as Parquet shards keyed by
    (dataset fingerprint, extractor id, weights hash); see :func:`cache_dir`.
    """
    return embed_cached(dataset, extractor.build(), extractor.preprocessing, extractor_digest(extractor),
                        range(len(dataset)), use_cache=use_cache, desc=f"features {extractor.id}",
                        settings=EmbedSettings(device, precision, batch_size, workers))
