"""Cost of few-shot adaptation per episode, and where finetune-last spends it.

Synthetic backbone features for one 2-shot episode (``--classes`` test classes x
2 support images, 20 queries per class), two head sizes: the glyph baselines'
(64 -> 32) and a ResNet-50 head (2048 -> 128).  For each, ``finetune-last``
(the ooDML protocol: 1000 iterations of margin loss with distance-weighted
mining on 56 x 2 batches) is timed per episode and per iteration, against the
reference it replaces, the prototype classifier (no training); the share of
pytorch-metric-learning's DistanceWeightedMiner is measured by running the
miner alone on the same batch shapes as often.

Run:  .venv/bin/python tools/bench_adapt.py [--classes 100] [--iterations 1000]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch

from oodml.adapt import BATCH_CLASSES, PER_CLASS, finetune_last
from oodml.fewshot import nearest_accuracy


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat(fn, *args, times: int) -> None:
    for _ in range(times):
        fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100, help="test classes in the episode")
    parser.add_argument("--iterations", type=int, default=1000, help="finetune-last iterations (ooDML: 1000 at 2-shot)")
    args = parser.parse_args()
    from pytorch_metric_learning import miners

    rng = np.random.default_rng(0)
    support_labels = np.repeat(np.arange(args.classes), 2)
    query_labels = np.repeat(np.arange(args.classes), 20)
    for features, embed_dim in ((64, 32), (2048, 128)):
        model = SimpleNamespace(head=torch.nn.Linear(features, embed_dim))   # finetune-last trains only the head
        centres = rng.normal(size=(args.classes, features))
        support = (centres[support_labels] + rng.normal(size=(len(support_labels), features))).astype(np.float32)
        query = (centres[query_labels] + rng.normal(size=(len(query_labels), features))).astype(np.float32)

        def prototypes(model=model, support=support, query=query):
            with torch.no_grad():
                s, q = model.head(torch.from_numpy(support)), model.head(torch.from_numpy(query))
            return nearest_accuracy(q.numpy(), query_labels, s.numpy(), support_labels, prototypes=True)

        proto_s = min(timed(prototypes) for _ in range(5))
        tune_s = timed(lambda model=model, support=support, query=query: finetune_last(
            model, support, support_labels, query, shots=2, iterations=args.iterations, seed=("bench",)))
        miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
        batch = min(BATCH_CLASSES, args.classes) * PER_CLASS
        raw = torch.randn(batch, embed_dim)
        labels = torch.as_tensor(np.repeat(np.arange(batch // PER_CLASS), PER_CLASS))
        miner_s = timed(lambda raw=raw, labels=labels, miner=miner: repeat(miner, raw, labels, times=args.iterations))
        print(f"[{features} -> {embed_dim} head] finetune-last {tune_s:.1f} s per episode "
              f"({tune_s / args.iterations * 1e3:.1f} ms per iteration; the miner alone {miner_s / tune_s:.0%} of it); "
              f"prototypes {proto_s * 1e3:.1f} ms: fine-tuning costs {tune_s / proto_s:,.0f}x the prototypes")


if __name__ == "__main__":
    main()
