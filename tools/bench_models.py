"""Benchmark: images per second of model specs through oodml's embedding engine, against a plain loop.

For each source (timm, OpenCLIP, Hugging Face transformers, torch hub) a model
of a common size is built with random weights (nothing is downloaded) at its
native resolution, and the same glyphs images are embedded twice:

* **oodml**: ``oodml.embedding.embed`` with the spec's module and preprocessing
  (DataLoader, per-batch output checks, the model wrapper of the source);
* **plain**: a ``torch.no_grad()`` loop over the same DataLoader calling the
  library's own module directly (for transformers: ``model(pixel_values=x)`` and
  its CLS token, without oodml's wrapper).

Both read and preprocess the images the same way, so the ratio is oodml's
overhead; the target is at most 5%.  Each path runs ``--repeats`` times,
interleaved, and the best time counts (this machine is shared and noisy).

Run:  .venv/bin/python tools/bench_models.py [--images 128] [--repeats 2] [--device cpu] [--precision fp32]
          [--threads N] [--sources timm open_clip hf torchhub]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from oodml.datasets import load_dataset
from oodml.embedding import PRECISIONS, EmbedSettings, _Images, embed, resolve_device
from oodml.models import load_model
from oodml.progress import set_quiet

HUBCONF = '''
import torchvision

dependencies = ["torch", "torchvision"]


def resnet18(pretrained=False):
    model = torchvision.models.resnet18(weights=None)
    model.fc = __import__("torch").nn.Identity()
    return model
'''


def specs(workdir: Path) -> dict[str, tuple[str, callable]]:
    """source -> (spec, plain forward of the library's module given oodml's loaded module)."""
    import transformers

    vit = workdir / "vit-base"
    transformers.ViTModel(transformers.ViTConfig()).save_pretrained(vit)    # ViT-B/16 at 224, random weights
    transformers.ViTImageProcessor().save_pretrained(vit)
    hub = workdir / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(HUBCONF)
    return {
        "timm": ("timm:resnet18?pretrained=false", lambda m: m),
        "open_clip": ("open_clip:ViT-B-32?pretrained=false", lambda m: m),
        "hf": (f"hf:{vit}", lambda m: lambda x: m.model(pixel_values=x).last_hidden_state[:, 0]),
        "torchhub": (f"torchhub:{hub}:resnet18?pretrained=false", lambda m: m),
    }


def plain_loop(ds, indices, forward, preprocessing, batch_size: int, device: torch.device, precision: str) -> None:
    loader = torch.utils.data.DataLoader(_Images(ds, indices, preprocessing.transform()), batch_size=batch_size)
    autocast = PRECISIONS[precision] if device.type == "cuda" else None
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        for batch in loader:
            forward(batch.to(device)).float().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--sources", nargs="+", default=["timm", "open_clip", "hf", "torchhub"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    set_quiet(True)
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    ds = load_dataset("glyphs")
    indices = list(range(args.images))
    print(f"{args.images} glyphs images, batch {args.batch_size}, {device}, {args.precision}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'source':<10} {'spec':<42} {'input':>5} {'plain img/s':>11} {'oodml img/s':>11} {'overhead':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for source, (spec, plain) in specs(Path(tmp)).items():
            if source not in args.sources:
                continue
            loaded = load_model(spec)
            module = loaded.module.eval().to(device)
            forward = plain(module)
            best = {"plain": float("inf"), "oodml": float("inf")}
            plain_loop(ds, indices[:args.batch_size], forward, loaded.preprocessing, args.batch_size, device,
                       args.precision)   # warm-up
            for _ in range(args.repeats):
                start = time.perf_counter()
                plain_loop(ds, indices, forward, loaded.preprocessing, args.batch_size, device, args.precision)
                best["plain"] = min(best["plain"], time.perf_counter() - start)
                start = time.perf_counter()
                embed(ds, module, loaded.preprocessing, indices=indices,
                      settings=EmbedSettings(str(device), args.precision, args.batch_size))
                best["oodml"] = min(best["oodml"], time.perf_counter() - start)
            shown = spec if len(spec) <= 42 else "..." + spec[-39:]
            print(f"{source:<10} {shown:<42} {loaded.preprocessing.crop or loaded.preprocessing.resize:>5} "
                  f"{args.images / best['plain']:>11.1f} {args.images / best['oodml']:>11.1f} "
                  f"{best['oodml'] / best['plain'] - 1:>+8.1%}")


if __name__ == "__main__":
    main()
