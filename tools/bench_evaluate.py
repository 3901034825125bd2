"""Benchmark: evaluating all levels of glyphs/v1 costs one forward pass per distinct image.

Counts the images that go through the model when ``oodml.evaluate`` scores a
model on every level of the published glyphs split set (zero-shot protocol,
cache off so every pass is real), against the passes per-level re-extraction
would need (the sum over levels of their test images, as the ooDML code base
does), and times both.

Run:  .venv/bin/python tools/bench_evaluate.py
"""

from __future__ import annotations

import time

import torch

from oodml.datasets import load_dataset
from oodml.embedding import EmbedSettings, embed
from oodml.evaluation import ComputeConfig, EvalConfig, evaluate
from oodml.models import load_model
from oodml.splits import load


class Counting(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.inner(x)


def main() -> None:
    ds, split_set = load_dataset("glyphs"), load("glyphs", "v1")
    loaded = load_model("glyph-cnn")
    counting = Counting(loaded.module)
    loaded.module = counting
    start = time.perf_counter()
    evaluate(loaded, ds, split_set, EvalConfig(clustering=False, compute=ComputeConfig(device="cpu", use_cache=False)))
    ours_s = time.perf_counter() - start
    per_level = sum(len(ds.indices_of_classes(lv.test_classes)) for lv in split_set.levels)
    distinct = len({c for lv in split_set.levels for c in lv.test_classes})
    print(f"levels: {len(split_set.levels)}; forward passes by oodml.evaluate: {counting.images} "
          f"(= distinct test images {distinct * 32}); per-level re-extraction: {per_level}; "
          f"ratio {per_level / counting.images:.2f}x fewer passes")

    start = time.perf_counter()
    for lv in split_set.levels:  # what per-level re-extraction costs in embedding time alone
        idx = ds.indices_of_classes(lv.test_classes)
        embed(ds, loaded.module.inner, loaded.preprocessing, indices=idx, settings=EmbedSettings("cpu"))
    ref_s = time.perf_counter() - start
    print(f"time: oodml.evaluate (embedding + all metrics) {ours_s:.1f} s; per-level re-extraction, embedding "
          f"only, {ref_s:.1f} s; ratio {ref_s / ours_s:.2f}")


if __name__ == "__main__":
    main()
