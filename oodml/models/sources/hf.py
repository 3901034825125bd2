"""``hf:ORG/NAME[@REVISION]``: a transformers ``AutoModel`` with its ``AutoImageProcessor``'s preprocessing (a hub
id, or a local folder written by ``save_pretrained``, named as a path: ``hf:./FOLDER``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ...errors import OodmlError
from ...preprocessing import Preprocessing
from .base import Source
from .failures import build_error, fetch_error, offline
from .forms import SPEC_FORMS
from .spec import ModelSpec, is_local_reference

#: pretraining data of well-known Hugging Face model families (the id up to its first '-'), which transformers
#: does not record
HF_PRETRAINING = {"facebook/dinov2": "lvd142m", "openai/clip": "openai webimagetext (400M pairs)"}

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
        if offline(exc) or not is_local_reference(spec.name):
            raise fetch_error(spec, exc, f"{spec.name} from the Hugging Face hub",
                               f"huggingface-cli download {spec.name}"
                               + (f" --revision {spec.revision}" if spec.revision else "")) from None
        raise build_error(spec, exc) from None
    config_hash = hashlib.sha256(model.config.to_json_string(use_diff=False).encode()).hexdigest()
    module = HFImageEmbedding(model, pool)
    module.config_sha256 = config_hash  # an attribute, so the model digest covers the configuration
    return module, _hf_preprocessing(processor), HF_PRETRAINING.get(spec.name.split("-")[0])


#: the ``hf`` source: ``?pool=cls|mean`` besides pretrained and seed
SOURCE = Source(*SPEC_FORMS["hf"], ("pool",), _build_hf)
