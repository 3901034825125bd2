"""Images/s of embedding with images decoded on the loader workers (today's path) vs on the device, in one run.

Writes ``--images`` JPEGs of CUB's typical size (500 x 375, quality 90, smooth
colour fields with noise and edges) as an imagefolder (or reuses ``--folder``),
then embeds them all with ``decode="loader"`` and with ``decode="device"``,
same images, same model, same batch size and workers, best of ``--repeats``
timed passes after a warm-up each, on whatever device ``--device`` resolves to.
Prints both rates and their ratio, and how far the two paths' embeddings are
apart, next to how far bf16 autocast moves the loader path's (which the
embedding cache key ignores; it keys the decode mode).

``--model pool`` (8 x 8 average pooling, flattened) measures the input pipeline
alone; ``resnet50`` (random weights: speed does not depend on them) is the
configuration of docs/scaling.md's GPU table.  On a CPU the device path only
moves decoding from the workers into the main process, so expect no gain there;
it exists for CUDA (tools/gpu_decode_check.sh).

Run:  .venv/bin/python tools/bench_decode.py [--images 256] [--model pool] [--workers 2] [--device auto]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oodml.datasets import load_dataset
from oodml.decode import decoding_difference
from oodml.embedding import EmbedSettings, embed, resolve_device
from oodml.preprocessing import IMAGENET
from oodml.progress import set_quiet


def write_photos(root: Path, count: int, width: int, height: int, classes: int = 10) -> None:
    """``count`` distinct JPEGs (quality 90) in ``classes`` class folders under ``root``."""
    rng = np.random.default_rng(0)
    for k in range(count):
        folder = root / f"class{k % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        pixels = smooth + rng.integers(-12, 13, size=smooth.shape)
        band = rng.integers(0, height - height // 6)
        pixels[band: band + height // 6, :, rng.integers(0, 3)] = 250
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{k:06d}.jpg", quality=90)


def build_model(name: str) -> torch.nn.Module:
    if name == "pool":
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten())
    from torchvision import models

    torch.manual_seed(0)
    return getattr(models, name)(num_classes=512)


def timed_embed(ds, model, decode: str, args: argparse.Namespace) -> tuple[float, np.ndarray]:
    """(images/s of the best of ``args.repeats`` passes after a warm-up, the embeddings)."""
    settings = EmbedSettings(args.device, args.precision, args.batch_size, args.workers, decode)
    embed(ds, model, IMAGENET, indices=range(min(len(ds), 2 * args.batch_size)), settings=settings)  # warm-up
    best, values = float("inf"), None
    for _ in range(args.repeats):
        synchronize(args.device)
        start = time.perf_counter()
        values = embed(ds, model, IMAGENET, settings=settings)
        synchronize(args.device)
        best = min(best, time.perf_counter() - start)
    return len(ds) / best, values


def synchronize(device: str) -> None:
    if resolve_device(device).type == "cuda":
        torch.cuda.synchronize()


def relative_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, ||a - b|| / ||b||."""
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)


def bf16_difference(ds, model, args: argparse.Namespace) -> np.ndarray:
    """Per image of the first batch, how far bf16 autocast moves the loader path's fp32 embedding."""
    dev = resolve_device(args.device)
    batch = torch.stack([IMAGENET.transform()(ds.load_image(i)) for i in range(min(len(ds), args.batch_size))])
    model = model.eval().to(dev)
    with torch.no_grad():
        fp32 = model(batch.to(dev)).float().cpu().numpy()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            bf16 = model(batch.to(dev)).float().cpu().numpy()
    return relative_difference(bf16, fp32)


def decoder_gaps(ds, device: torch.device, count: int = 32) -> dict[str, np.ndarray]:
    """Per chroma layout, the device decoder's mean |difference| from PIL (8-bit levels) on each of the first
    ``count`` images: the JPEGs as written (PIL's default 4:2:0 chroma), and re-saved with full-resolution
    chroma (4:4:4) and as grey."""
    gaps: dict[str, list[float]] = {"4:2:0": [], "4:4:4": [], "grey": []}
    for i in range(min(count, len(ds))):
        image = ds.load_image(i)
        full, grey = io.BytesIO(), io.BytesIO()
        image.save(full, format="JPEG", quality=90, subsampling=0)
        image.convert("L").save(grey, format="JPEG", quality=90)
        for layout, data in (("4:2:0", ds.load_encoded(i)), ("4:4:4", full.getvalue()), ("grey", grey.getvalue())):
            gaps[layout].append(float(decoding_difference(data, device).mean()))
    return {layout: np.array(values) for layout, values in gaps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--folder", type=Path, help="reuse (or create) the JPEG folder here")
    parser.add_argument("--model", choices=["pool", "resnet18", "resnet50"], default="pool")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads of the main process (default torch's)")
    args = parser.parse_args()
    set_quiet(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch)
        if not any(folder.glob("*/*.jpg")):
            start = time.perf_counter()
            write_photos(folder, args.images, width, height)
            print(f"wrote {args.images} JPEGs of {width}x{height} in {time.perf_counter() - start:.1f} s")
        ds = load_dataset("imagefolder", root=folder)
        model = build_model(args.model)
        dev = resolve_device(args.device)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"{len(ds)} images, {args.model}, {dev} ({name}), {args.precision}, batch {args.batch_size}, "
              f"{args.workers} workers, torch {torch.__version__}")
        loader_rate, loader = timed_embed(ds, model, "loader", args)
        device_rate, ours = timed_embed(ds, model, "device", args)
        print(f"loader path (PIL on the workers): {loader_rate:8.1f} images/s")
        print(f"device path (decode_jpeg + resize on {dev.type}): {device_rate:8.1f} images/s")
        print(f"ratio device / loader: {device_rate / loader_rate:.2f}x")
        apart = relative_difference(ours, loader)
        print(f"embeddings, device vs loader path: relative L2 difference median {np.median(apart):.1e}, "
              f"max {apart.max():.1e}")
        for layout, gap in decoder_gaps(ds, dev).items():
            print(f"decoding, device vs PIL, {layout} JPEGs: mean |difference| per image {gap.min():.2f} to "
                  f"{gap.max():.2f} levels ({len(gap)} images)")
        if args.model != "pool":
            bf16 = bf16_difference(ds, model, args)
            print(f"for scale, bf16 vs fp32 autocast on the loader path: median {np.median(bf16):.1e}, "
                  f"max {bf16.max():.1e}")


if __name__ == "__main__":
    main()
