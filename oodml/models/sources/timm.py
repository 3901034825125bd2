"""``timm:NAME``: ``timm.create_model(NAME, pretrained=True, num_classes=0)``, its pooled features, with the
preprocessing of ``timm.data.resolve_model_data_config``; ``?size=N`` and any timm option (``checkpoint_path=FILE``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ...errors import OodmlError
from ...preprocessing import Preprocessing
from .base import Source
from .failures import build_error, fetch_error, offline
from .forms import SPEC_FORMS
from .spec import COMMON_OPTIONS, ModelSpec


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
        if spec.pretrained and offline(exc):
            cfg = timm.models.get_pretrained_cfg(spec.name)
            hub = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or spec.name
            raise fetch_error(spec, exc, f"its pretrained weights ({hub})",
                               f"python -c \"import timm; timm.create_model('{spec.name}', pretrained=True)\"") \
                from None
        raise build_error(spec, exc) from None
    config = timm.data.resolve_model_data_config(model)
    if size is not None:
        config = {**config, "input_size": (3, size, size)}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    pretraining = cfg.get("tag") or None
    return model, _timm_preprocessing(config), pretraining


#: the ``timm`` source: any timm option passes through to ``timm.create_model``
SOURCE = Source(*SPEC_FORMS["timm"], None, _build_timm)
