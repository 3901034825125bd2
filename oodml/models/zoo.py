"""Built-in architectures: ``resnet50`` as in ooDML, and ``glyph-cnn``, small enough for CPU work on glyphs."""

from __future__ import annotations

import torch

from ..errors import OodmlError, brief, first_line
from ..preprocessing import IMAGENET, Preprocessing
from ..weights import resnet50_weights_path
from .base import EmbeddingModel
from .digest import file_sha256
from .registry import register_model


class FrozenBatchNormResNet(torch.nn.Module):
    """A torchvision ResNet trunk with global average pooling whose batch-norm layers stay in eval mode
    with frozen affine parameters, as in ooDML (batch statistics of small DML batches are unreliable)."""

    def __init__(self, resnet: torch.nn.Module):
        super().__init__()
        resnet.fc = torch.nn.Identity()
        self.resnet = resnet
        for module in self.resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for p in module.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenBatchNormResNet:
        super().train(mode)
        for module in self.resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet(x)


@register_model("resnet50")
def resnet50(embed_dim: int = 512, pretrained: bool = True, weights: str | None = None,
             seed: int = 0) -> EmbeddingModel:
    """ooDML's: ImageNet ResNet-50 (frozen batch norm, average pooling), a linear layer, L2 normalisation.

    The linear layer maps the 2048-d pooled features to ``embed_dim``.

    The trunk's weights are torchvision's ImageNet ones (IMAGENET1K_V1), read from ``weights`` if given, else
    from the torch hub cache, downloaded once if absent (:mod:`oodml.weights`; offline, a one-line error says
    where to put the file); the model declares ``pretraining="imagenet-1k"`` and names the file it read
    (``model.weights_file``).  Random weights only with ``pretrained=False`` (``resnet50?pretrained=false``
    on the command line), which :func:`oodml.models.load_model` records and warns about.  The randomly
    initialised parts come from ``seed`` without touching the global random state.

    Raises:
        OodmlError: ``weights`` with ``pretrained=False``, or weights that cannot be fetched or loaded.
    """
    import torchvision

    if weights is not None and not pretrained:
        raise OodmlError("resnet50: weights=PATH gives pretrained weights; drop it, or drop pretrained=false")
    path = resnet50_weights_path(weights) if pretrained else None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torchvision.models.resnet50(weights=None)
        if path is not None:
            try:
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:  # torch.load / load_state_dict fail in many ways on a wrong file
                raise OodmlError(f"resnet50: cannot load weights {path}: {first_line(exc)} (expected a torchvision "
                                 "ResNet-50 state dict)") from None
        model = EmbeddingModel(FrozenBatchNormResNet(net), 2048, embed_dim, arch="resnet50",
                               config={"embed_dim": embed_dim, "seed": seed}, preprocessing=IMAGENET,
                               augmentation="imagenet-crop-flip",
                               pretraining="imagenet-1k" if path is not None else None)
    if path is not None:  # what the model's identity records (oodml.models.identity); the same on every machine
        model.weights_file = {"name": path.name, "sha256": file_sha256(path)}
    return model


GLYPH_PREPROCESSING = Preprocessing(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _block(cin: int, cout: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout),
                               torch.nn.ReLU(inplace=True))


@register_model("glyph-cnn")
def glyph_cnn(embed_dim: int = 64, width: int = 16, seed: int = 0) -> EmbeddingModel:
    """A 6-layer CNN for 32x32 inputs (about 0.1 M parameters), small enough to train on glyphs on a CPU.

    Initialised from ``seed`` without touching the global random state.
    """
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise OodmlError(f"glyph-cnn: width must be a positive integer, got {brief(width)}")
    w = width
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = torch.nn.Sequential(
            _block(3, w), _block(w, w), torch.nn.MaxPool2d(2),            # 16x16
            _block(w, 2 * w), _block(2 * w, 2 * w), torch.nn.MaxPool2d(2),  # 8x8
            _block(2 * w, 4 * w), _block(4 * w, 4 * w),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        model = EmbeddingModel(backbone, 4 * w, embed_dim, arch="glyph-cnn",
                               config={"embed_dim": embed_dim, "width": w, "seed": seed},
                               preprocessing=GLYPH_PREPROCESSING, augmentation="glyph-affine")
    return model
