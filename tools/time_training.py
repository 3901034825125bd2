"""Measure how long one level of ``oodml train`` takes: the figure the train guide quotes.

Trains glyph-cnn with its default recipe (400 iterations, validation every 150) on levels of glyphs@v1, on the
CPU with ``--threads`` torch threads, and prints per level the wall time and the process's CPU time (user +
system: on a shared machine the wall time grows with the load, the CPU time much less).  The dataset is
loaded (and fingerprinted) before the clock starts; nothing is written.

Run:  .venv/bin/python tools/time_training.py [--levels 1 8] [--threads 2] [--iterations N]

Measured 2026-12-07 on the shared 2-core development machine (load average 5 to 8), 2 threads: level 1
118.4 s CPU / 348.1 s wall, level 8 120.3 s CPU / 140.1 s wall (docs/guides/train.md quotes it).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from oodml.datasets import load_dataset
from oodml.progress import set_quiet
from oodml.splits import load
from oodml.training import TrainConfig, train


def time_level(ds, splits, level: int, config: TrainConfig) -> tuple[float, float, float]:
    """``(wall seconds, CPU seconds, best validation Recall@1)`` of one training run of ``level``."""
    wall, cpu = time.perf_counter(), time.process_time()
    _, provenance = train(ds, splits, level, config, device="cpu")
    return time.perf_counter() - wall, time.process_time() - cpu, provenance["best_val_recall@1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8], help="glyphs@v1 levels to time")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--iterations", type=int, help="training steps (default: glyph-cnn's, 400)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    ds, splits = load_dataset("glyphs"), load("glyphs", "v1")
    ds.fingerprint  # noqa: B018 - computed once, outside the timed runs
    config = TrainConfig(arch="glyph-cnn", iterations=args.iterations)
    print(f"glyph-cnn on glyphs@v1, {args.threads} threads, {os.cpu_count()} cores visible, load average "
          f"{os.getloadavg()[0]:.1f}")
    for level in args.levels:
        wall, cpu, recall = time_level(ds, splits, level, config)
        print(f"level {level}: {wall:.1f} s wall, {cpu:.1f} s CPU, best val recall@1 {recall:.4f}")


if __name__ == "__main__":
    main()
