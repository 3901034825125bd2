"""Cost of finetune-last per episode: oodml's distance-weighted miner against pytorch-metric-learning's.

Synthetic backbone features for one 2-shot episode (``--classes`` test classes x
2 support images, 20 queries per class), two head sizes: the glyph baselines'
(64 -> 32) and a ResNet-50 head (2048 -> 128).  For each, ``finetune-last``
(the ooDML protocol: margin loss with distance-weighted mining on 56 x 2
batches) is timed per episode twice in the same run, alternating, best of
``--repeats``, in CPU seconds of this process (on a shared machine wall time
also counts the other jobs; with one thread, CPU time is the work done):

* with :class:`oodml.miners.DistanceWeightedMiner` (what ``oodml evaluate`` runs);
* with pytorch-metric-learning's ``DistanceWeightedMiner`` swapped in, the rest
  of the loop unchanged (the reference: same distribution, one draw per class in
  a Python loop).  The loop before this miner also picked each batch's rows
  class by class, so the ratio to the old code is at least the one printed.

The miners alone are timed on the same batch shape, and the prototype classifier
(no training) is printed for scale.  Last, the glyphs baseline study's
finetune-last cost with 10 episodes per level and shot is estimated from the
glyph head's time per iteration (16 runs x 8 levels x 10 episodes x 1000 + 1500
iterations), in one process.

With ``--compare-batched`` it instead times finetune-last on a level's worth of episodes, 10 episodes x 2- and
5-shot (1000 and 1500 iterations, ``--iterations`` scales both), one episode at a time
(:func:`oodml.adapt.finetune_last`, the reference) against all 20 at once
(:func:`oodml.adapt_batched.finetune_last_batched`, what ``evaluate`` runs), in the same run, on both heads,
and prints per head ``<head>: speed-up N.Nx`` with both times (CPU seconds of this process) and the largest
difference between the two paths' embeddings.

Run:  .venv/bin/python tools/bench_adapt.py [--classes 100] [--iterations 1000] [--repeats 2] [--threads 1]
      .venv/bin/python tools/bench_adapt.py --compare-batched [--classes 100] [--episodes 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch

import oodml.adapt
from oodml.adapt import FINETUNE_ITERATIONS, finetune_last
from oodml.adapt_batched import BATCH_CLASSES, PER_CLASS, HeadEpisode, finetune_last_batched
from oodml.miners import DistanceWeightedMiner
from oodml.protocol import nearest_accuracy

STUDY_RUNS, STUDY_LEVELS, STUDY_EPISODES = 16, 8, 10   # tools/reproduce_baselines.sh: 4 losses x +-SEC x 2 seeds
HEADS = {"glyph head": (64, 32), "2048->128 head": (2048, 128)}


def timed(fn) -> float:
    """CPU seconds this process spent in ``fn()``: on a shared machine, wall time also counts other jobs."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def library_miner(cutoff: float, nonzero_loss_cutoff: float, generator: torch.Generator | None = None):
    """pytorch-metric-learning's miner behind oodml's constructor (it draws from torch's global generator)."""
    from pytorch_metric_learning import miners

    return miners.DistanceWeightedMiner(cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)


def episode_seconds(model, support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, iterations: int,
                    library: bool) -> float:
    """Seconds for one finetune-last episode, with the library's miner swapped in when ``library``."""
    def run():
        finetune_last(model, HeadEpisode(support, support_labels, iterations, ("bench",)), query)

    if not library:
        return timed(run)
    with mock.patch.object(oodml.adapt, "DistanceWeightedMiner", library_miner):
        return timed(run)


def miner_call_seconds(miner, embed_dim: int, calls: int) -> float:
    """Seconds per call of ``miner`` on a random 56-class x 2 batch (best of 3 rounds)."""
    batch = BATCH_CLASSES * PER_CLASS
    raw = torch.randn(batch, embed_dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(BATCH_CLASSES).repeat_interleave(PER_CLASS)
    return min(timed(lambda: [miner(raw, labels) for _ in range(calls)]) for _ in range(3)) / calls


def level_episodes(features: int, classes: int, episodes: int, scale: float, rng: np.random.Generator,
                   ) -> tuple[list[HeadEpisode], list[np.ndarray]]:
    """``episodes`` synthetic episodes per shot count (2, 5) of ``classes`` classes: support features and
    labels, iterations (ooDML's, times ``scale``), seeds; and per episode its targets (support, then 20
    queries per class)."""
    centres = rng.normal(size=(classes, features))
    query_labels = np.repeat(np.arange(classes), 20)
    heads, targets = [], []
    for shots in (2, 5):
        for episode in range(episodes):
            labels = np.repeat(np.arange(classes), shots)
            support = (centres[labels] + rng.normal(size=(len(labels), features))).astype(np.float32)
            query = (centres[query_labels] + rng.normal(size=(len(query_labels), features))).astype(np.float32)
            heads.append(HeadEpisode(support, labels, max(1, round(FINETUNE_ITERATIONS[shots] * scale)),
                                     ("bench", shots, episode)))
            targets.append(np.concatenate([support, query]))
    return heads, targets


def compare_head(name: str, features: int, embed_dim: int, args: argparse.Namespace,
                 rng: np.random.Generator) -> None:
    """Time one head both ways in this process and print its two lines."""
    model = SimpleNamespace(head=torch.nn.Linear(features, embed_dim))
    heads, targets = level_episodes(features, args.classes, args.episodes, args.scale, rng)
    finetune_last_batched(model, heads[:2], lambda i: targets[i][:1])       # one-time costs (imports)
    one_at_a_time: list[np.ndarray] = []

    def alone() -> None:
        for h, t in zip(heads, targets, strict=True):
            one_at_a_time.append(finetune_last(model, h, t))

    batched: list[np.ndarray] = []
    sequential_s = timed(alone)
    batched_s = timed(lambda: batched.extend(finetune_last_batched(model, heads, lambda i: targets[i])))
    differs = max(float(np.abs(a - b).max()) for a, b in zip(one_at_a_time, batched, strict=True))
    iterations = sum(h.iterations for h in heads)
    print(f"    {name} ({features} -> {embed_dim}): one at a time {sequential_s:.1f} s "
          f"({sequential_s / iterations * 1e3:.2f} ms per episode-iteration), all at once {batched_s:.1f} s "
          f"({batched_s / iterations * 1e3:.3f} ms); embeddings differ by at most {differs:.1e}")
    print(f"{name}: speed-up {sequential_s / batched_s:.1f}x", flush=True)


def compare_batched(args: argparse.Namespace) -> None:
    """One at a time against all at once, per head: CPU seconds, speed-up, largest embedding difference."""
    rng = np.random.default_rng(0)
    print(f"finetune-last on {args.episodes} episodes x 2- and 5-shot of {args.classes} classes "
          f"({args.scale:g} x ooDML's iterations), {args.threads} thread(s), CPU seconds of this process",
          flush=True)
    for name, (features, embed_dim) in HEADS.items():
        if args.head == "both" or name.startswith(args.head):
            compare_head(name, features, embed_dim, args, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-batched", action="store_true",
                        help="time finetune-last one episode at a time against all episodes at once")
    parser.add_argument("--episodes", type=int, default=10, help="--compare-batched: episodes per shot count")
    parser.add_argument("--head", choices=["glyph", "2048", "both"], default="both",
                        help="--compare-batched: the glyph head (64 -> 32), the 2048 -> 128 head, or both")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="--compare-batched: fraction of ooDML's iterations (1000 at 2-shot, 1500 at 5-shot)")
    parser.add_argument("--classes", type=int, default=100, help="test classes in the episode")
    parser.add_argument("--iterations", type=int, default=1000, help="finetune-last iterations (ooDML: 1000 at 2-shot)")
    parser.add_argument("--repeats", type=int, default=2, help="episodes timed per miner; the best is reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the baseline study runs one per process)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare_batched:
        compare_batched(args)
        return
    from pytorch_metric_learning import miners

    rng = np.random.default_rng(0)
    support_labels = np.repeat(np.arange(args.classes), 2)
    query_labels = np.repeat(np.arange(args.classes), 20)
    print(f"finetune-last, one 2-shot episode of {args.classes} classes, {args.iterations} iterations, "
          f"{args.threads} thread(s), best of {args.repeats}")
    glyph_iteration_s = {}
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
        times = {True: [], False: []}
        for _ in range(args.repeats):       # alternate, so both see the same load
            for library in (True, False):
                times[library].append(episode_seconds(model, support, support_labels, query, args.iterations,
                                                      library))
        lib_s, ours_s = min(times[True]), min(times[False])
        calls = 200
        lib_call = miner_call_seconds(miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
                                      embed_dim, calls)
        ours_call = miner_call_seconds(DistanceWeightedMiner(generator=torch.Generator().manual_seed(0)),
                                       embed_dim, calls)
        glyph_iteration_s.setdefault("library", lib_s / args.iterations)
        glyph_iteration_s.setdefault("ours", ours_s / args.iterations)
        print(f"[{features} -> {embed_dim} head] per episode: library miner {lib_s:.2f} s, oodml miner {ours_s:.2f} s "
              f"-> {lib_s / ours_s:.1f}x faster ({ours_s / args.iterations * 1e3:.2f} ms per iteration)")
        print(f"    miner alone per call: library {lib_call * 1e3:.2f} ms, oodml {ours_call * 1e3:.3f} ms "
              f"-> {lib_call / ours_call:.1f}x; library miner's share of its episode "
              f"{lib_call * args.iterations / lib_s:.0%}; prototypes {proto_s * 1e3:.1f} ms per episode")
    study_iterations = STUDY_RUNS * STUDY_LEVELS * STUDY_EPISODES * sum(FINETUNE_ITERATIONS.values())
    print(f"baseline study, finetune-last on {STUDY_EPISODES} episodes per level and shot "
          f"({study_iterations:,} iterations of the glyph head, one process): "
          f"library miner {study_iterations * glyph_iteration_s['library'] / 3600:.1f} h, "
          f"oodml miner {study_iterations * glyph_iteration_s['ours'] / 3600:.2f} h")


if __name__ == "__main__":
    main()
