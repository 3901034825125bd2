"""Benchmark of oodml.metrics.retrieval_metrics at Stanford-Online-Products scale.

Synthetic embeddings: 60,502 x 512 float32 in 11,316 classes (SOP's test split:
about 5.3 images per class), class centres plus noise.  Reports wall time and
peak memory above the embeddings (tracemalloc does not see torch's allocator,
so peak resident memory is read from the process) for the retrieval metrics,
and, when pytorch-metric-learning's AccuracyCalculator can run (it needs
faiss-cpu for its default kNN), its time on the same input and the ratio.
NMI/AMI (k-means with 11,316 clusters) is timed separately with --clustering.

Run:  .venv/bin/python tools/bench_metrics.py [--n 60502] [--classes 11316] [--clustering]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from oodml.metrics import retrieval_metrics


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clustering", action="store_true", help="also time NMI/AMI (slow at this scale)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, args.classes, size=args.n))
    centres = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    x = centres[labels] + 4.0 * rng.normal(size=(args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit rows: cosine and L2 (faiss) rank alike
    embeddings = torch.from_numpy(x)
    base = rss_mib()
    print(f"embeddings: {args.n} x {args.dim} float32 ({x.nbytes / 2**20:.0f} MiB), {len(np.unique(labels))} "
          f"classes; threads {torch.get_num_threads()}")

    start = time.perf_counter()
    same = retrieval_metrics(embeddings, labels, clustering=False, map_depth=None)
    same_s = time.perf_counter() - start
    print(f"oodml, the reference's metrics (recall@K, r_precision, map@r): {same_s:.1f} s")
    start = time.perf_counter()
    ours = retrieval_metrics(embeddings, labels, clustering=False)
    ours_s = time.perf_counter() - start
    print(f"oodml, all retrieval metrics incl. map@1000 (1000 neighbours per query): {ours_s:.1f} s, peak RSS "
          f"{rss_mib() - base:.0f} MiB above the embeddings (target < 2048): "
          + ", ".join(f"{k} {v:.4f}" for k, v in ours.items() if k != "queries"))

    try:
        import faiss
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    except ImportError:
        print("reference: pytorch-metric-learning's AccuracyCalculator needs faiss-cpu for its default kNN; "
              "`pip install faiss-cpu` to time it (no ratio printed)")
    else:
        calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                                  k="max_bin_count", device=torch.device("cpu"))
        start = time.perf_counter()
        ref = calc.get_accuracy(embeddings, torch.from_numpy(labels))
        ref_s = time.perf_counter() - start
        print(f"pytorch-metric-learning AccuracyCalculator (faiss {faiss.__version__}): {ref_s:.1f} s; ratio "
              f"oodml/reference on the same metrics {same_s / ref_s:.2f} (<= 1: no slower); values "
              f"precision_at_1 {ref['precision_at_1']:.6f} / recall@1 {same['recall@1']:.6f}, map@r "
              f"{ref['mean_average_precision_at_r']:.6f} / {same['map@r']:.6f}")

    if args.clustering:
        start = time.perf_counter()
        clustered = retrieval_metrics(embeddings, labels, clustering=True)
        print(f"with NMI/AMI (k-means, {args.classes} clusters): {time.perf_counter() - start:.1f} s; "
              f"nmi {clustered['nmi']:.4f}, ami {clustered['ami']:.4f}")


if __name__ == "__main__":
    main()
