"""Benchmark of oodml.metrics.retrieval_metrics against pytorch-metric-learning + faiss, in one run.

Synthetic embeddings shaped like Stanford Online Products' test split (60,502 x
512 float32, about 5.35 images per class: 11,3xx classes), class centres plus
noise, unit rows (so cosine and faiss's L2 rank alike).  ``--size`` scales the
number of rows (and classes with it) for a quick run.

Reported, every measurement in a fresh Python process:

* the shared metric set: recall@1 / precision_at_1, r_precision, map@r, NMI and
  AMI, by ``retrieval_metrics(..., ks=(1,), map_depth=None)`` and by
  ``AccuracyCalculator(k="max_bin_count")`` with its default faiss kNN and faiss
  k-means (20 iterations): both times, the ratio, and the values side by side;
* the parts: our kNN alone, our k-means alone and faiss's k-means alone, with
  iterations, NMI/AMI and the achieved multiply-add rate (kNN: N(N + B)/2 x d
  dot-product terms; k-means: what ``KMeansResult.multiply_adds`` counts) against
  this machine's peak, measured here as the best of a plain float32 matmul
  (4096 x 512 by 512 x 4096) repeated; and the AMI of one clustering scored by
  :func:`oodml.clustering.adjusted_mutual_info` and by scikit-learn's
  ``adjusted_mutual_info_score`` (which pytorch-metric-learning calls);
* all of our default metrics (map@1000 too, 1000 neighbours per query).

Peak memory: each measurement runs in its own process, which loads the
embeddings from a .npy file, imports its libraries and warms them up on a tiny
input; the figure is ``ru_maxrss`` after the call minus ``ru_maxrss`` before it
(the kernel's high-water mark of resident memory, which sees torch's and
faiss's allocations that tracemalloc does not).

The CPU may be shared: compare ratios from the same run; ``--repeat 2`` measures
the shared set twice, interleaved.  On shared cores, OpenMP threads that spin
while waiting slow every parallel region (both sides use OpenMP);
``OMP_WAIT_POLICY=PASSIVE`` in the environment, which the measuring processes
inherit, avoids that, and the header prints the policy in effect.

Run:  .venv/bin/python tools/bench_metrics.py [--size 60502] [--dim 512] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SOP_ROWS, SOP_PER_CLASS = 60502, 5.35
SHARED = ("recall@1", "r_precision", "map@r")
REFERENCE_NAMES = {"recall@1": "precision_at_1", "r_precision": "r_precision", "map@r": "mean_average_precision_at_r",
                   "nmi": "NMI", "ami": "AMI"}


def max_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gmacs(repeats: int = 5) -> float:
    """This machine's float32 matmul rate, 1e9 multiply-adds per second: the best of a few plain matmuls."""
    a, b = torch.randn(4096, 512), torch.randn(512, 4096)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 4096 * 512 * 4096 / best / 1e9


def make_data(rows: int, classes: int, dim: int, folder: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, classes, size=rows))
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    x = centres[labels] + 4.0 * rng.normal(size=(rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(folder / "x.npy", x)
    np.save(folder / "labels.npy", labels)


def child(task: str, folder: Path) -> dict:
    """One measurement in this (fresh) process: seconds, peak MiB above the loaded data, values."""
    from oodml.clustering import kmeans
    from oodml.knn import DEFAULT_BLOCK
    from oodml.metrics import retrieval_metrics

    x, labels = np.load(folder / "x.npy"), np.load(folder / "labels.npy")
    embeddings, clusters = torch.from_numpy(x), len(np.unique(labels))
    tiny, tiny_labels = embeddings[:64], labels[:64] % 4
    if task.startswith("reference") or task == "faiss-kmeans":
        import faiss
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(include=tuple(REFERENCE_NAMES.values()), k="max_bin_count",
                                  device=torch.device("cpu"))
        calc.get_accuracy(tiny, torch.from_numpy(tiny_labels))
    else:
        retrieval_metrics(tiny, tiny_labels, ks=(1,), map_depth=None)
    base = max_rss_mib()
    start = time.perf_counter()
    out: dict = {}
    if task == "ours-shared":
        out["values"] = retrieval_metrics(embeddings, labels, ks=(1,), map_depth=None)
    elif task == "reference-shared":
        ref = calc.get_accuracy(embeddings, torch.from_numpy(labels))
        out["values"] = {ours: float(ref[theirs]) for ours, theirs in REFERENCE_NAMES.items()}
    elif task == "ours-knn":
        out["values"] = retrieval_metrics(embeddings, labels, ks=(1,), map_depth=None, clustering=False)
        out["multiply_adds"] = len(x) * (len(x) + DEFAULT_BLOCK) // 2 * x.shape[1]
    elif task == "ours-kmeans":
        result = kmeans(embeddings, clusters)
        out["labels"], out["iterations"], out["multiply_adds"] = result.labels, result.iterations, result.multiply_adds
    elif task == "faiss-kmeans":
        km = faiss.Kmeans(x.shape[1], clusters, niter=20)  # as pytorch-metric-learning's FaissKMeans
        km.train(x)
        out["labels"] = km.index.search(x, 1)[1][:, 0]
        out["iterations"] = len(km.obj)
        out["multiply_adds"] = (len(km.obj) + 1) * len(x) * clusters * x.shape[1]
    elif task in ("ours-ami", "sklearn-ami"):
        from sklearn.metrics import adjusted_mutual_info_score

        from oodml.clustering import adjusted_mutual_info

        assigned = kmeans(embeddings, clusters, iterations=1).labels
        score = adjusted_mutual_info if task == "ours-ami" else adjusted_mutual_info_score
        start = time.perf_counter()
        out["values"] = {"ami": float(score(labels, assigned))}
    elif task == "ours-all":
        out["values"] = retrieval_metrics(embeddings, labels)
    out["seconds"] = time.perf_counter() - start
    out["peak_mib"] = max_rss_mib() - base
    if "labels" in out:
        from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

        out["values"] = {"nmi": normalized_mutual_info_score(labels, out["labels"]),
                         "ami": adjusted_mutual_info_score(labels, out.pop("labels"))}
    return out


def measure(task: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", task, "--data", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{task} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=SOP_ROWS, help="rows (SOP's test split: 60502)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1, help="measure the shared metric set this many times")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.data)), default=float))
        return
    try:
        import faiss  # noqa: F401
        import pytorch_metric_learning  # noqa: F401
    except ImportError:
        raise SystemExit("the reference needs pytorch-metric-learning and faiss-cpu: pip install -e '.[bench]'") \
            from None

    classes = max(2, round(args.size / SOP_PER_CLASS))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(args.size, classes, args.dim, folder)
        labels = np.load(folder / "labels.npy")
        print(f"embeddings {args.size} x {args.dim} float32 ({args.size * args.dim * 4 / 2**20:.0f} MiB), "
              f"{len(np.unique(labels))} classes, largest {np.bincount(labels).max()}; "
              f"torch threads {torch.get_num_threads()}; OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")
        peak = peak_gmacs()
        print(f"machine: float32 matmul peak {peak:.1f} GMAC/s (best of 5, 4096 x 512 x 4096)")

        print("\nshared metric set (recall@1 / precision_at_1, r_precision, map@r, NMI, AMI):")
        for _ in range(args.repeat):
            ours, ref = measure("ours-shared", folder), measure("reference-shared", folder)
            print(f"  oodml {ours['seconds']:.1f} s (peak +{ours['peak_mib']:.0f} MiB); pytorch-metric-learning + "
                  f"faiss {ref['seconds']:.1f} s (peak +{ref['peak_mib']:.0f} MiB); ratio "
                  f"{ours['seconds'] / ref['seconds']:.2f} (target <= 0.6)")
        same = all(abs(ours["values"][m] - ref["values"][m]) <= 1e-6 for m in SHARED)
        print("  values (oodml / reference): "
              + ", ".join(f"{m} {ours['values'][m]:.6f} / {ref['values'][m]:.6f}" for m in REFERENCE_NAMES)
              + f"; retrieval values equal to 1e-6: {'yes' if same else 'NO'}")

        print("\nparts:")
        knn_part = measure("ours-knn", folder)
        print(f"  oodml kNN (half the matrix, k = max(1, R)): {knn_part['seconds']:.1f} s, "
              f"{knn_part['multiply_adds'] / knn_part['seconds'] / 1e9:.1f} GMAC/s = "
              f"{knn_part['multiply_adds'] / knn_part['seconds'] / 1e9 / peak:.0%} of peak; "
              f"peak +{knn_part['peak_mib']:.0f} MiB")
        for name, task in (("oodml k-means", "ours-kmeans"), ("faiss k-means", "faiss-kmeans")):
            part = measure(task, folder)
            print(f"  {name}: {part['seconds']:.1f} s, {part['iterations']} iterations, "
                  f"{part['multiply_adds'] / part['seconds'] / 1e9:.1f} GMAC/s of distance terms "
                  f"({part['multiply_adds'] / part['seconds'] / 1e9 / peak:.0%} of peak), nmi "
                  f"{part['values']['nmi']:.4f}, ami {part['values']['ami']:.4f}")

        ami = {task: measure(task, folder) for task in ("ours-ami", "sklearn-ami")}
        print(f"  AMI of one k-means clustering: oodml {ami['ours-ami']['seconds']:.2f} s, scikit-learn "
              f"{ami['sklearn-ami']['seconds']:.2f} s (as pytorch-metric-learning calls it); difference "
              f"{abs(ami['ours-ami']['values']['ami'] - ami['sklearn-ami']['values']['ami']):.1e}")

        everything = measure("ours-all", folder)
        print(f"\noodml, all default metrics (recall@1,2,4,8, r_precision, map@r, map@1000, NMI, AMI): "
              f"{everything['seconds']:.1f} s, peak +{everything['peak_mib']:.0f} MiB above the embeddings (target "
              f"< 2048)")


if __name__ == "__main__":
    main()
