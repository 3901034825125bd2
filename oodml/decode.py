"""Decoding and resizing images on the embedding device instead of on the loader workers.

The loader path (:mod:`oodml.embedding`'s default) decodes, resizes, crops and
normalises every image with PIL on the DataLoader workers; on a GPU that is
the bottleneck.  The device path splits the work:

* **workers** only read.  A JPEG whose header PIL can parse, whose pixels are
  RGB or grey, whose pixel count is within PIL's ``Image.MAX_IMAGE_PIXELS``,
  whose one frame header states that size (:func:`jpeg_frames`) and whose
  stream ends with the end-of-image marker travels as its encoded bytes.
  Every other image (PNG, CMYK JPEG, a truncated file, a decompression
  bomb, a dataset without files) is decoded on the worker by the one
  decoder, :func:`oodml.datasets.base.decode_image` via ``load_image``, so
  it is refused or accepted exactly as on the loader path;
* **the main process** decodes the batch's JPEGs in one
  ``torchvision.io.decode_jpeg`` call on the device (nvJPEG on CUDA,
  libjpeg-turbo on the CPU).  Anything it refuses is decoded again by
  ``load_image``, which gives the loader path's one-line error or its pixels;
* then resizing, centre cropping and normalising run on the device, batched
  over images of equal size, with the loader path's semantics
  (:func:`preprocess`).  On the CPU they are the loader path's own PIL
  transform instead, run in the main process (see below).

*Equality with the loader path.*  On the CPU, decode_jpeg and PIL share
libjpeg-turbo and decode identically, and the resizing is PIL's: the batches,
and so the embeddings, equal the loader path's exactly (the CPU gains no speed
from this path; it exists for CUDA).  On CUDA and MPS :func:`preprocess`
resizes separably in float32, rounding to 8 bits after each pass as PIL does
(fixed-point coefficients, round half up), horizontal pass first.  Pillow 13
picks the order of the passes per shape and runs some vertical pass first
(e.g. a 500x333 portrait resized to 256x256), and its rounding of exact ties
differs, so a resized pixel differs from PIL's by at most 1 of 255 levels (2
where bicubic upscaling amplifies a first pass's 1): where the order agrees, in
under 0.1% of an image's pixels when shrinking and a few percent when bilinear
enlarges; where it does not, in 19-24% of them (measured with this code on the
CPU against Pillow 13.0); nearest is exact (PIL's source index table is
reproduced).  Decoding: nvJPEG (measured on an
H200) decodes grey and 4:4:4 JPEGs as PIL does, but upsamples 4:2:0 chroma
(PIL's default, and most photos') differently from libjpeg's "fancy"
upsampling: a mean of 3-4 levels on noisy test images
(:func:`decoding_difference` measures it; ``tools/bench_decode.py`` prints it).
Embeddings then move by about 5e-3 relative on CUDA (a random resnet50 on
CUB-sized JPEGs: median 4.7e-3, max 8e-3), as much as bf16 autocast moves
them (4.6e-3).  So the decode mode is part of the embedding-cache key
(:func:`oodml.embedding.embedding_cache_dir`): the two paths never share cached
embeddings.  It is not the default (``tests/test_device_decode.py`` states the
tolerances, ``tools/bench_decode.py`` measures the agreement on any device).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from .errors import OodmlError

if TYPE_CHECKING:
    from .datasets import ImageDataset
    from .preprocessing import Preprocessing

#: ``decode`` values of :func:`oodml.embedding.embed`: ``loader`` (PIL on the workers), ``device``
#: (this module), ``auto`` (``device`` on CUDA when most sampled images are JPEG files, else ``loader``)
DECODES = ("auto", "loader", "device")
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
AUTO_SAMPLE = 8  # images whose format decides ``auto``
_DEPRECATED = "The image decoding and encoding capabilities of TorchVision are deprecated"


def choose_decode(decode: str, device: torch.device, dataset: ImageDataset, indices: Sequence[int]) -> str:
    """``"loader"`` or ``"device"``: where the images of ``dataset[indices]`` are decoded for ``device``.

    ``auto`` picks ``device`` on CUDA when at least half of up to :data:`AUTO_SAMPLE`
    evenly spaced sampled images are stored as JPEG files, else ``loader``.

    Raises:
        OodmlError: ``decode`` is not one of :data:`DECODES`.
    """
    if decode not in DECODES:
        raise OodmlError(f"unknown decode {decode!r}; use {', '.join(DECODES)}")
    if decode != "auto":
        return decode
    if device.type != "cuda" or not indices:
        return "loader"
    step = max(1, len(indices) // AUTO_SAMPLE)
    sample = [indices[k] for k in range(0, len(indices), step)][:AUTO_SAMPLE]
    jpegs = 0
    for index in sample:
        try:
            data = dataset.load_encoded(index)
        except OodmlError:
            continue  # the embedding itself reports it, in order
        jpegs += data is not None and data.startswith(JPEG_MAGIC)
    return "device" if 2 * jpegs >= len(sample) else "loader"


def device_decodable(data: bytes) -> bool:
    """Whether ``data`` may be decoded by ``decode_jpeg`` instead of PIL without changing what is refused.

    True for a complete JPEG stream (it ends with the end-of-image marker; PIL
    refuses truncated files) of RGB or grey pixels whose header PIL reads
    without error and whose pixel count is within ``Image.MAX_IMAGE_PIXELS``
    (the decompression-bomb limit :func:`~oodml.datasets.base.decode_image`
    enforces).  Reads only the header.
    """
    if not (data.startswith(JPEG_MAGIC) and data.endswith(JPEG_END)):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, mode, (width, height) = img.format, img.mode, img.size
    except Exception:  # noqa: BLE001 - any refusal is decode_image's to name, on the worker
        return False
    limit = Image.MAX_IMAGE_PIXELS
    return (fmt == "JPEG" and mode in ("RGB", "L") and (limit is None or width * height <= limit)
            and jpeg_frames(data) == [(height, width)])


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # after entropy-coded data: not stuffing, not a restart


def jpeg_frames(data: bytes) -> list[tuple[int, int]] | None:
    """(height, width) of every start-of-frame header in the JPEG stream ``data``, in order; None when
    its marker structure is malformed.

    nvJPEG sizes its output from a frame header; :func:`device_decodable` asks for exactly one,
    equal to the size PIL checked against the pixel limit, so a file whose headers disagree
    cannot slip a larger image past the limit.
    """
    frames, pos = [], 2
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            return frames
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, restart, TEM: no length
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if pos + 4 > len(data) or length < 2 or pos + 2 + length > len(data):
            return None
        if marker in _SOF:
            if length < 7:
                return None
            frames.append((int.from_bytes(data[pos + 5:pos + 7], "big"), int.from_bytes(data[pos + 7:pos + 9], "big")))
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return None
            pos = found.start()
    return None


def _pixels(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 (H, W, 3) tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))


class _EncodedImages(torch.utils.data.Dataset):
    """Worker side: ``(index, tensor)`` per sample, the tensor either the encoded JPEG (uint8, 1-D)
    or the pixels decoded by ``load_image`` (uint8, (H, W, 3))."""

    def __init__(self, dataset: ImageDataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        index = self.indices[i]
        data = self.dataset.load_encoded(index)
        if data is not None and device_decodable(data):
            return index, torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return index, _pixels(self.dataset.load_image(index))


def _as_list(items: list) -> list:
    return items


def decode_jpegs(encoded: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG streams (uint8 1-D CPU tensors) on ``device`` in one batch.

    Returns:
        per stream, a uint8 (3, H, W) RGB tensor on ``device``, or None where
        ``decode_jpeg`` refused it (the caller decodes those with PIL).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED)
        try:
            return list(decode_jpeg(list(encoded), mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad stream fails the batch: find it
            decoded: list[torch.Tensor | None] = []
            for data in encoded:
                try:
                    decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
            return decoded


def decoding_difference(data: bytes, device: torch.device | str) -> np.ndarray:
    """How far :func:`decode_jpegs` on ``device`` decodes one JPEG from PIL, the loader path's decoder.

    Returns:
        int16 (H, W, 3): the absolute difference per pixel and RGB channel, in 8-bit levels.

    Raises:
        OodmlError: ``decode_jpegs`` refused the stream (the device path would hand it to PIL).
    """
    ours = decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device(device))[0]
    if ours is None:
        raise OodmlError("the device decoder refused this JPEG; the device path decodes it with PIL")
    with Image.open(io.BytesIO(data)) as image:
        pil = np.asarray(image.convert("RGB"), dtype=np.int16)
    return np.abs(ours.permute(1, 2, 0).cpu().numpy().astype(np.int16) - pil)


def resized_size(height: int, width: int, preprocessing: Preprocessing) -> tuple[int, int]:
    """(height, width) after ``preprocessing``'s resize, as ``torchvision.transforms.Resize`` computes it."""
    size = preprocessing.resize
    if size is None:
        return height, width
    if preprocessing.resize_mode == "squash":
        return size, size
    short, long = min(height, width), max(height, width)
    long = int(size * long / short)
    return (size, long) if height <= width else (long, size)


def _nearest_index(source: int, target: int) -> np.ndarray:
    """PIL's source index of each of ``target`` nearest-neighbour samples along a side of ``source``
    pixels: the coordinate accumulated in double precision from half a step, truncated."""
    step = source / target
    increments = np.full(target, step)
    increments[0] = step * 0.5
    return np.minimum(np.cumsum(increments).astype(np.int64), source - 1)


def _round_to_bytes(values: torch.Tensor) -> torch.Tensor:
    """PIL's rounding of a filtered value to 8 bits: half up, clipped to 0..255 (still float)."""
    return values.add_(0.5).floor_().clamp_(0, 255)


def _resize(pixels: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize float (B, 3, H, W) integral pixel values to ``size`` as PIL resizes 8-bit images."""
    height, width = pixels.shape[-2:]
    if interpolation == "nearest":
        rows = torch.from_numpy(_nearest_index(height, size[0])).to(pixels.device)
        cols = torch.from_numpy(_nearest_index(width, size[1])).to(pixels.device)
        return pixels.index_select(-2, rows).index_select(-1, cols)
    if size[1] != width:  # horizontal pass first, as PIL does, each pass rounded to 8 bits
        pixels = _round_to_bytes(torch.nn.functional.interpolate(
            pixels, size=(height, size[1]), mode=interpolation, align_corners=False, antialias=True))
    if size[0] != height:
        pixels = _round_to_bytes(torch.nn.functional.interpolate(
            pixels, size=size, mode=interpolation, align_corners=False, antialias=True))
    return pixels


def preprocess(images: Sequence[torch.Tensor], preprocessing: Preprocessing) -> torch.Tensor:
    """Resize, centre-crop and normalise uint8 (3, H_i, W_i) RGB images, all on one device, into a batch.

    The same steps as ``preprocessing.transform()`` on PIL images (see the
    module docstring for how close): images of equal size are resized together.

    Returns:
        float32 (B, 3, h, w), in the order of ``images``; (h, w) is the crop, or the
        resized size (which must then be equal for all images).
    """
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(k)
    device = images[0].device if images else torch.device("cpu")
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=device).view(3, 1, 1)
    for (height, width), members in groups.items():
        pixels = torch.stack([images[k] for k in members]).float()
        pixels = _resize(pixels, resized_size(height, width, preprocessing), preprocessing.interpolation)
        if preprocessing.crop:
            pixels = TF.center_crop(pixels, [preprocessing.crop, preprocessing.crop])
        pixels = pixels.div_(255).sub_(mean).div_(std)  # ToTensor, then Normalize, in the same order
        for k, image in zip(members, pixels, strict=True):
            out[k] = image
    return torch.stack(out) if out else torch.zeros(0, 3, preprocessing.crop or 0, preprocessing.crop or 0)


class DeviceBatches:
    """Batches of ``dataset[indices]``, decoded and preprocessed on ``device``: float32 (B, 3, h, w) there.

    An iterable with a length, like the DataLoader it replaces in :func:`oodml.embedding.embed`.
    Iterating raises :class:`OodmlError` for an unreadable image, with the loader path's message.
    On the CPU the decoded images are preprocessed by ``preprocessing.transform()`` (PIL), so the
    batches equal the loader path's; elsewhere by :func:`preprocess`.
    """

    def __init__(self, dataset: ImageDataset, indices: Sequence[int], preprocessing: Preprocessing,
                 device: torch.device, *, batch_size: int = 128, workers: int = 0):
        self.dataset, self.preprocessing, self.device = dataset, preprocessing, device
        self.pil_transform = preprocessing.transform() if device.type == "cpu" else None
        self.loader = torch.utils.data.DataLoader(_EncodedImages(dataset, indices), batch_size=batch_size,
                                                  num_workers=workers, collate_fn=_as_list,
                                                  pin_memory=device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for items in self.loader:
            yield self.batch(items)

    def batch(self, items: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """One preprocessed batch from the workers' ``(index, encoded or pixels)`` items."""
        images: list[torch.Tensor | None] = [None] * len(items)
        encoded = [k for k, (_, data) in enumerate(items) if data.ndim == 1]
        for k, (_, data) in enumerate(items):
            if data.ndim == 3:
                images[k] = data.to(self.device, non_blocking=True).permute(2, 0, 1)
        for k, image in zip(encoded, decode_jpegs([items[k][1] for k in encoded], self.device), strict=True):
            if image is None:  # refused on the device: PIL decides, as on the loader path
                image = _pixels(self.dataset.load_image(items[k][0])).to(self.device).permute(2, 0, 1)
            images[k] = image
        if self.pil_transform is not None:  # the CPU: PIL's own resampling, the loader path's pixels exactly
            return torch.stack([self.pil_transform(Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()))
                                for image in images])
        return preprocess(images, self.preprocessing)

