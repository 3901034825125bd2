"""Benchmark of the adjacent-level comparison that make-splits adds (oodml.splits.adjacent).

On glyphs@v1 (330 classes, 256-d pixel features, 8 levels of 132-165 classes per side), times

1. the levels' own intervals: ``bootstrap_interval`` for every level (the reference: what make-splits
   already spent on bootstrap draws), and
2. the paired comparison of adjacent levels: ``paired_draws`` with the same number of draws,

in CPU seconds of this process (``time.process_time``: less sensitive than wall time to other load on a
shared machine, but it counts every BLAS thread), and prints the ratio 2 / 1 and the pairs found.  The
paired draws change each side's size from draw to draw, so the scorer cannot batch them by shape as it
batches the levels' own draws: expect them to cost more per draw.

Measured here (2 shared cores, 2026-12-07, 50 draws): with one BLAS thread
(``OPENBLAS_NUM_THREADS=1``) 1.01 s for the levels' intervals and 0.97 s for the
paired comparison (ratio 0.96); with the default BLAS threads on the loaded
machine 19.5 s and 32.3 s (ratio 1.65): the many small SVDs lose most of their
time to BLAS threads competing for the cores.

Run:  .venv/bin/python tools/bench_adjacent.py [--draws N]   (make-splits uses --bootstrap, default 200)
"""

from __future__ import annotations

import argparse
import time

from oodml.datasets import load_dataset
from oodml.features import extract_features, get_extractor
from oodml.shift import ClassFeatures
from oodml.splits import load
from oodml.splits.adjacent import adjacent_pairs, paired_draws
from oodml.splits.distance import make_scorer
from oodml.splits.levels import bootstrap_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=50, help="bootstrap draws (default 50)")
    args = parser.parse_args()
    split_set = load("glyphs", "v1")
    ds = load_dataset("glyphs")
    cf = ClassFeatures(extract_features(ds, get_extractor("pixels")), ds.labels)
    scorer = make_scorer(cf)
    partitions = split_set.partitions(ds.classes)

    start = time.process_time()
    for k, (train, test) in enumerate(partitions, start=1):
        bootstrap_interval(scorer.distances, train, test, draws=args.draws, seed=0, level=k)
    reference = time.process_time() - start
    start = time.process_time()
    estimates, draws = paired_draws(scorer.distances, partitions, num_classes=len(ds.classes), draws=args.draws,
                                    seed=0)
    paired = time.process_time() - start
    print(f"glyphs@v1, {args.draws} draws, {len(partitions)} levels (CPU seconds)")
    print(f"  levels' own intervals (bootstrap_interval): {reference:.2f} s")
    print(f"  adjacent-level comparison (paired_draws):   {paired:.2f} s  ratio {paired / reference:.2f}")
    for pair in adjacent_pairs(estimates, draws):
        print(f"  levels {pair.levels[0]}-{pair.levels[1]}: {pair.difference:+.4f} "
              f"[{pair.ci_low:+.4f}, {pair.ci_high:+.4f}] {'distinct' if pair.distinct else 'NOT distinct'}")


if __name__ == "__main__":
    main()
