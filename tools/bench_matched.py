"""Cost of the class-count-matched scores (oodml.matched) against scoring the levels' full test sets.

For each level of glyphs@v1 (random 64-d embeddings of its test images, so nothing is downloaded or trained):
the full-level retrieval metrics as evaluate computes them (oodml.metrics.retrieval_metrics, without
clustering), the matched scores of D draws from one search (oodml.matched.matched_per_query), and, as the
reference, D searches among each draw's own images (per_query_metrics on the subset).  Prints seconds and the
ratios; the machine is shared, so compare ratios measured in the same run.

    python tools/bench_matched.py [--draws 20] [--levels 1,8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from oodml.datasets import load_dataset
from oodml.matched import draw_classes, matched_count, matched_per_query
from oodml.metrics import per_query_metrics, retrieval_metrics
from oodml.splits import load

KS = (1, 2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--levels", default="1,8")
    args = parser.parse_args()
    ds, split_set = load_dataset("glyphs"), load("glyphs", "v1")
    n = matched_count(split_set, "min")
    totals = np.zeros(3)
    for index in map(int, args.levels.split(",")):
        level = split_set.level(index)
        rows = ds.indices_of_classes(level.test_classes)
        labels = ds.labels[rows]
        emb = np.random.default_rng(index).normal(size=(len(rows), 64)).astype(np.float32)
        subsets = [np.array([ds.class_index[c] for c in draw_classes(split_set.digest, index, d,
                                                                       level.test_classes, n)])
                   for d in range(args.draws)]
        times = []
        start = time.perf_counter()
        retrieval_metrics(emb, labels, ks=KS, clustering=False)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        matched_per_query(emb, labels, [np.unique(labels), *subsets], KS)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for subset in subsets:
            keep = np.isin(labels, subset)
            per_query_metrics(emb[keep], labels[keep], ks=KS, map_depth=None)
        times.append(time.perf_counter() - start)
        totals += times
        print(f"level {index}: {len(rows)} images, {len(level.test_classes)} classes, N={n}, D={args.draws}: "
              f"full {times[0]:.2f} s, matched {times[1]:.2f} s, a search per draw {times[2]:.2f} s")
    print(f"total: matched / full = {totals[1] / totals[0]:.2f}; matched / a search per draw = "
          f"{totals[1] / totals[2]:.2f}")


if __name__ == "__main__":
    main()
