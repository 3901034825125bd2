"""Scale simulation for docs/scaling.md: 100,000 x 512 embeddings in 10,000 classes through the
retrieval metrics and the split search, on this machine, with synthetic data.

Measures:

1. the default greedy split search (8 levels, 2 by removal) on the 10,000 class means of the
   embeddings, and the bootstrap intervals of its levels (200 draws each), with time and peak memory;
2. how the search grows with the class count (a fit over 2,500 / 5,000 / 10,000 classes);
3. several swaps per step against single swaps on ``--compare-classes`` classes: time ratio,
   exact evaluations, and the range of distances each reaches;
4. one class-mean FID at 5,000 vs 5,000 classes (the ooDML progression's unit of work);
5. retrieval metrics (all but NMI/AMI) on the embeddings.

Each figure is printed with the projection used in docs/scaling.md.

Run:  .venv/bin/python tools/bench_scaling.py [--n 100000] [--classes 10000] [--compare-classes 2000]
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
import torch

from oodml.metrics import retrieval_metrics
from oodml.shift import ClassFeatures, frechet_distance
from oodml.splits.distance import MeanFID
from oodml.splits.levels import bootstrap_interval
from oodml.splits.search import greedy_levels


class CountingMeanFID(MeanFID):
    """MeanFID that counts the partitions it scores exactly."""

    evaluated = 0

    def distances(self, partitions):
        self.evaluated += len(partitions)
        return super().distances(partitions)

    def move_distances(self, train, test, moves):
        if any(self._gram_form(*m.sizes(len(train), len(test))) for m in moves):
            return super().move_distances(train, test, moves)   # counted by distances()
        self.evaluated += len(moves)
        return super().move_distances(train, test, moves)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def search(means: np.ndarray, batch: int | None = None):
    scorer = CountingMeanFID(means)
    seconds, result = timed(lambda: greedy_levels(scorer, len(means), levels=8, removal_levels=2, batch=batch))
    return seconds, result, scorer.evaluated


def describe(result) -> str:
    levels = ", ".join(f"{s.distance:.0f}{'r' if s.kind == 'removal' else ''}" for s in result.levels)
    return (f"default split {result.default.distance:.1f}, swaps reach {result.path[0].distance:.1f} .. "
            f"{result.path[-1].distance:.1f}; levels {levels} (r: by removal, down to "
            f"{len(result.levels[-1].train)} classes per side)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="images")
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--compare-classes", type=int, default=2000,
                        help="class count for single vs several swaps per step (0 skips; single swaps are slow)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    # Classes in 20 super-categories (as SOP's 12), images scattered around their class centre.
    centres = rng.normal(size=(args.classes, args.dim)) + np.repeat(rng.normal(size=(20, args.dim)),
                                                                    -(-args.classes // 20), 0)[:args.classes]
    labels = np.sort(rng.permutation(args.n) % args.classes)   # every class gets N / C images
    x = (centres[labels] + 2.0 * rng.normal(size=(args.n, args.dim))).astype(np.float32)
    seconds, cf = timed(lambda: ClassFeatures(x, labels))
    means = cf.means
    print(f"[means] {args.n} x {args.dim} features -> {args.classes} class means: {seconds:.1f} s (grows as N d)")
    del cf

    tracemalloc.start()
    full_seconds, result, evaluated = search(means)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"[search] {args.classes} classes x {args.dim}: {full_seconds:.0f} s, {evaluated} partitions scored "
          f"exactly, peak {peak / 2**20:.0f} MiB above the class means; {describe(result)}")
    scorer = MeanFID(means)
    seconds, _ = timed(lambda: [bootstrap_interval(scorer.distances, np.array(s.train), np.array(s.test), draws=200,
                                                   seed=0, level=k) for k, s in enumerate(result.levels, 1)])
    print(f"[search] bootstrap intervals of the 8 levels (200 draws each): {seconds:.0f} s")

    sizes = [args.classes // 4, args.classes // 2]
    times = [search(means[rng.choice(args.classes, c, replace=False)])[0] for c in sizes]
    sizes, times = [*sizes, args.classes], [*times, full_seconds]
    slope = np.polyfit(np.log(sizes), np.log(times), 1)[0]
    at_million = round(1e6 * args.classes / args.n)   # classes of 1M images at this many images per class
    grid = ", ".join(f"{c} classes {t:.1f} s" for c, t in zip(sizes, times, strict=True))
    print(f"[search] {grid}: grows as "
          f"classes^{slope:.1f}; 1M images at {args.n / args.classes:g} per class ({at_million} classes) would take "
          f"~{full_seconds * (at_million / args.classes) ** slope / 3600:.1f} h here (images only enter through the "
          f"class means)")

    if args.compare_classes:
        sub = means[rng.choice(args.classes, args.compare_classes, replace=False)]
        single_s, single, single_n = search(sub, batch=1)
        several_s, several, several_n = search(sub)
        print(f"[compare] {args.compare_classes} classes, single swaps: {single_s:.0f} s, {single_n} scored; "
              f"{describe(single)}")
        print(f"[compare] {args.compare_classes} classes, default (several per step): {several_s:.0f} s, "
              f"{several_n} scored; {describe(several)}")
        print(f"[compare] several swaps per step: {single_s / several_s:.1f}x faster, "
              f"{single_n / several_n:.1f}x fewer exact evaluations")

    half = args.classes // 2
    seconds, _ = timed(lambda: frechet_distance(means[:half], means[half:]))
    print(f"[fid] class-mean FID {half} vs {half} classes x {args.dim}: {seconds:.2f} s (cost ~min(n, d)^3; here the "
          f"symmetric {args.dim} x {args.dim} form); the ooDML progression's 25 FIDs: ~{25 * seconds:.0f} s")

    base = peak_rss_mib()
    seconds, _ = timed(lambda: retrieval_metrics(torch.from_numpy(x), labels, clustering=False))
    print(f"[metrics] {args.n} x {args.dim}, {args.classes} classes: {seconds:.0f} s, peak RSS "
          f"+{peak_rss_mib() - base:.0f} MiB; the cost is N^2 d: 1M images would take "
          f"~{seconds * (1e6 / args.n) ** 2 / 3600:.1f} h here")


if __name__ == "__main__":
    main()
