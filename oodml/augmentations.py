"""Training augmentations, by name: each builds an image transform from a model's test preprocessing.

A model names its augmentation (``EmbeddingModel.augmentation``), so per-level
training and ``finetune-all`` augment its images the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms as T

from .preprocessing import Preprocessing
from .registry import Registry


def _normalize(prep: Preprocessing) -> list:
    return [T.ToTensor(), T.Normalize(prep.mean, prep.std)]


#: training augmentation name -> builder from the model's test preprocessing
AUGMENTATIONS: Registry[Callable[[Preprocessing], Callable]] = Registry("augmentation")
AUGMENTATIONS.register(
    "imagenet-crop-flip", description="random resized crop and horizontal flip (the DML papers' recipe)",
    value=lambda p: T.Compose([T.RandomResizedCrop(p.crop or 224), T.RandomHorizontalFlip(), *_normalize(p)]))
# Characters must not be flipped (b/d, p/q): small affine jitter only.
AUGMENTATIONS.register(
    "glyph-affine", description="small rotation, shift and scale jitter; never a flip (b/d, p/q)",
    value=lambda p: T.Compose([T.Resize(p.resize or 32), T.CenterCrop(p.crop or 32),
                               T.RandomAffine(degrees=8, translate=(0.06, 0.06), scale=(0.9, 1.1), fill=255),
                               *_normalize(p)]))
AUGMENTATIONS.register("none", lambda p: p.transform(), description="the test preprocessing, unchanged")
