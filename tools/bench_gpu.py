"""GPU benchmark: images/s for embedding and for training, seconds for the metrics, at fp32 and bf16.

Needs a CUDA device; without one it prints a skip message and exits 0, so it can
sit in scripts that run everywhere.  Uses the glyphs dataset (generated offline)
upscaled to 224 px through a randomly initialised resnet50 embedding model (no
weights needed: speed does not depend on them), synthetic 60,502 x 512
embeddings for the metrics, and for training the ooDML resnet50 step (batch 112
= 56 classes x 2, multi-similarity loss, Adam) on synthetic 224-px batches
already on the device (the model's and loss's throughput, not the data
loader's).  The CPU is the reference for the ratios.

Run:  .venv/bin/python tools/bench_gpu.py [--images 4096] [--batch-size 256] [--train-steps 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from oodml.datasets import load_dataset
from oodml.embedding import EmbedSettings, embed
from oodml.metrics import retrieval_metrics
from oodml.models import create_model
from oodml.preprocessing import IMAGENET


def images_per_second(ds, model, n: int, device: str, precision: str, batch_size: int) -> float:
    settings = EmbedSettings(device, precision, batch_size, workers=4)
    embed(ds, model, IMAGENET, indices=range(min(n, 256)), settings=settings)  # warm-up: kernels, cudnn autotuning
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    embed(ds, model, IMAGENET, indices=range(n), settings=settings)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def training_images_per_second(device: str, precision: str, steps: int, batch: int = 112) -> float:
    """Images/s of the per-level training step for resnet50 (after warm-up steps)."""
    from oodml.embedding import PRECISIONS
    from oodml.losses import get_loss
    from oodml.training import _Objective

    model = create_model("resnet50", embed_dim=512, pretrained=False).to(device).train()
    loss_fn, miner = get_loss("multi-similarity").build(batch // 2, 512)
    objective = _Objective(model, loss_fn, miner, None, 0.0, PRECISIONS[precision] if device == "cuda" else None)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=4e-4)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.arange(batch, device=device) // 2

    def step() -> None:
        loss = objective(images, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(3 if device == "cuda" else 1):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skip: no CUDA device here; run tools/bench_gpu.py on a machine with a GPU")
        return
    ds = load_dataset("glyphs")
    model = create_model("resnet50", embed_dim=512, pretrained=False)
    print(f"device: {torch.cuda.get_device_name(0)}; {args.images} images at 224 px, batch {args.batch_size}")
    cpu = images_per_second(ds, model, min(args.images, 256), "cpu", "fp32", 64)
    for precision in ("fp32", "bf16"):
        rate = images_per_second(ds, model, args.images, "cuda", precision, args.batch_size)
        print(f"embedding {precision}: {rate:,.0f} images/s ({rate / cpu:,.0f}x the CPU's {cpu:,.1f} images/s)")

    cpu_train = training_images_per_second("cpu", "fp32", 2)
    for precision in ("fp32", "bf16"):
        rate = training_images_per_second("cuda", precision, args.train_steps)
        print(f"training resnet50 {precision}: {rate:,.0f} images/s ({rate / cpu_train:,.0f}x the CPU's "
              f"{cpu_train:,.1f} images/s); 10,000 ooDML iterations of 112 images: {10_000 * 112 / rate / 60:.1f} min")

    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, 11316, size=60502))
    x = rng.normal(size=(11316, 512)).astype(np.float32)[labels] + rng.normal(size=(60502, 512)).astype(np.float32)
    for device in ("cuda", "cpu"):
        start = time.perf_counter()
        retrieval_metrics(torch.from_numpy(x), labels, clustering=False, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"metrics 60,502 x 512 on {device}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
