"""How images become model input: a model's :class:`Preprocessing` (resize, centre-crop, normalise).

A model carries its preprocessing (:class:`oodml.models.EmbeddingModel`, a checkpoint's or a TorchScript
file's ``preprocessing.json``, a foundation model's own config), so nobody guesses it.  This module only
describes it and builds the PIL transform from it; the embedding engine (:mod:`oodml.embedding`) applies
it on the loader workers, :mod:`oodml.decode` reproduces it on the device, and the training augmentations
(:mod:`oodml.augmentations`) start from it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from torchvision import transforms as T

from .errors import OodmlError, brief

MAX_SIDE = 4096  # pixels: a larger resize or crop is a typo, and would exhaust memory before it failed
#: resampling filters of :attr:`Preprocessing.interpolation`
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
                  "nearest": T.InterpolationMode.NEAREST}
RESIZE_MODES = ("shorter-side", "squash")


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into tensors: resize the short side, centre-crop, normalise.

    ``resize``/``crop`` in pixels, 1 to :data:`MAX_SIDE` (``None`` skips the step);
    ``mean``/``std`` per RGB channel, three finite numbers each, ``std`` positive.
    ``interpolation`` (one of :data:`INTERPOLATIONS`) and ``resize_mode`` (``shorter-side``, or
    ``squash``: both sides to ``resize``, ignoring the aspect ratio, as Hugging Face ViT processors
    and some OpenCLIP models do) carry foundation models' own preprocessing; at their defaults they are
    left out of :meth:`as_dict`, so the records (and digests) of earlier models are unchanged.

    Raises:
        OodmlError: on construction, naming the first field out of range or of the wrong type.
    """

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    resize_mode: str = "shorter-side"

    def __post_init__(self) -> None:
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise OodmlError(f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                             f"{brief(self.interpolation)}")
        if not isinstance(self.resize_mode, str) or self.resize_mode not in RESIZE_MODES:
            raise OodmlError(f"preprocessing resize_mode must be one of {', '.join(RESIZE_MODES)}, got "
                             f"{brief(self.resize_mode)}")
        for name in ("resize", "crop"):
            side = getattr(self, name)
            if side is not None and not (_is_integer(side) and 1 <= side <= MAX_SIDE):
                raise OodmlError(f"preprocessing {name} must be a whole number of pixels from 1 to {MAX_SIDE}, or "
                                 f"null to skip it, got {brief(side)}")
            object.__setattr__(self, name, None if side is None else int(side))
        for name in ("mean", "std"):  # JSON gives lists; keep records comparable and hashable
            values = _channel_values(getattr(self, name), positive=name == "std")
            if values is None:
                rule = "positive finite numbers (dividing by 0 gives inf)" if name == "std" else "finite numbers"
                raise OodmlError(f"preprocessing {name} must be 3 {rule}, one per RGB channel, got "
                                 f"{brief(getattr(self, name))}")
            object.__setattr__(self, name, values)

    @classmethod
    def from_dict(cls, record: object) -> Preprocessing:
        """The inverse of :meth:`as_dict`, for records read from files (``preprocessing.json``).

        Missing keys take the defaults (ImageNet's).

        Raises:
            OodmlError: not a dict, an unknown key, or a value out of range.
        """
        if not isinstance(record, dict):
            raise OodmlError(f"a preprocessing record must be a JSON object, got {type(record).__name__}")
        keys = ("resize", "crop", "mean", "std", "interpolation", "resize_mode")
        unknown = [key for key in record if key not in keys]
        if unknown:
            raise OodmlError(f"unknown preprocessing key {brief(unknown[0])}; the keys are {', '.join(keys)}")
        return cls(**record)

    def transform(self) -> Callable:
        """The PIL image -> float32 (3, H, W) tensor transform: resize, centre-crop, ``ToTensor``, normalise."""
        steps = []
        if self.resize:
            size = (self.resize, self.resize) if self.resize_mode == "squash" else self.resize
            steps.append(T.Resize(size, interpolation=INTERPOLATIONS[self.interpolation], antialias=True))
        if self.crop:
            steps.append(T.CenterCrop(self.crop))
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def as_dict(self) -> dict:
        """The JSON record (``preprocessing.json``); fields at their defaults since added are left out."""
        record = {"resize": self.resize, "crop": self.crop, "mean": list(self.mean), "std": list(self.std)}
        if self.interpolation != "bilinear":
            record["interpolation"] = self.interpolation
        if self.resize_mode != "shorter-side":
            record["resize_mode"] = self.resize_mode
        return record


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _channel_values(values: object, *, positive: bool) -> tuple[float, float, float] | None:
    """Three finite floats (positive if asked) from a sequence of real numbers, else None."""
    if not isinstance(values, list | tuple) or len(values) != 3:
        return None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        return None
    try:
        floats = tuple(float(v) for v in values)
    except OverflowError:  # an integer beyond float range
        return None
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in floats):
        return None
    return floats


#: ImageNet's: resize the short side to 256, centre-crop 224, ImageNet's channel mean and std
IMAGENET = Preprocessing()
