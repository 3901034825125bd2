"""Scale simulation for docs/scaling.md: metrics at 100,000 x 512, split search as classes grow.

Measures on this machine, with synthetic data:

1. retrieval metrics (all but NMI/AMI) on N x 512 embeddings in N/10 classes;
2. one class-mean FID with 10,000 classes (5,000 per side, 512 dims) through the
   nuclear-norm path, and the ooDML progression's per-iteration cost there;
3. the default greedy search at growing class counts, to fit its growth.

Each figure is printed with the projection used in docs/scaling.md.

Run:  .venv/bin/python tools/bench_scaling.py [--n 100000] [--classes 10000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from oodml.metrics import retrieval_metrics
from oodml.shift import frechet_distance
from oodml.splits.scoring import MeanFID
from oodml.splits.search import greedy_levels


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    labels = np.sort(rng.integers(0, args.n // 10, size=args.n))
    x = (rng.normal(size=(args.n // 10, args.dim)).astype(np.float32)[labels]
         + 2.0 * rng.normal(size=(args.n, args.dim)).astype(np.float32))
    base = peak_rss_mib()
    seconds = timed(lambda x=x: retrieval_metrics(torch.from_numpy(x), labels, clustering=False))
    print(f"[metrics] {args.n} x {args.dim}, {args.n // 10} classes: {seconds:.0f} s, peak RSS "
          f"+{peak_rss_mib() - base:.0f} MiB; the cost is N^2 d: 1M images would take "
          f"~{seconds * (1e6 / args.n) ** 2 / 3600:.1f} h here")
    del x

    means = rng.normal(size=(args.classes, args.dim)) + np.repeat(rng.normal(size=(20, args.dim)),
                                                                  args.classes // 20, 0)
    half = args.classes // 2
    seconds = timed(lambda: frechet_distance(means[:half], means[half:]))
    print(f"[fid] class-mean FID {half} vs {half} classes x {args.dim}: {seconds:.1f} s (cost ~min(n, d)^3; "
          f"here the symmetric {args.dim} x {args.dim} form); the ooDML progression's 25 FIDs: ~{25 * seconds:.0f} s")

    sizes = (200, 400, 800)
    times = []
    for c in sizes:
        sub = means[rng.choice(args.classes, c, replace=False)]
        times.append(timed(lambda sub=sub, c=c: greedy_levels(MeanFID(sub), c, levels=8, removal_levels=2)))
        print(f"[greedy] {c} classes: {times[-1]:.1f} s")
    slope = np.polyfit(np.log(sizes), np.log(times), 1)[0]
    projected = times[-1] * (args.classes / sizes[-1]) ** slope
    print(f"[greedy] time grows as classes^{slope:.1f}; {args.classes} classes projected at "
          f"~{projected / 3600:.0f} h on this machine")


if __name__ == "__main__":
    main()
