"""``open_clip:ARCH/TAG``: the image tower of ``open_clip.create_model(ARCH, pretrained=TAG)``, with the
preprocessing of the model's own preprocessing config."""

from __future__ import annotations

import warnings

import torch

from ...errors import OodmlError
from ...preprocessing import IMAGENET, Preprocessing
from .base import Source
from .failures import build_error, fetch_error, offline
from .forms import SPEC_FORMS
from .spec import ModelSpec


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
        if tag and offline(exc):
            raise fetch_error(spec, exc, f"its pretrained weights ({spec.name}/{tag})",
                               f"python -c \"import open_clip; open_clip.create_model('{spec.name}', "
                               f"pretrained='{tag}')\"") from None
        raise build_error(spec, exc) from None
    return model.visual, _open_clip_preprocessing(open_clip.get_model_preprocess_cfg(model)), tag


#: the ``open_clip`` source: no options besides pretrained and seed
SOURCE = Source(*SPEC_FORMS["open_clip"], (), _build_open_clip)
