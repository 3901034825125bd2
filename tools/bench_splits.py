"""Benchmark of split generation on synthetic CUB-scale features.

Synthetic features: 200 classes x ~59 images x 2048 dimensions (CUB200-2011's
shape), classes drawn around 10 cluster centres so that shift has structure.
Reports, each against the reference it names:

1. one class-mean FID (100 vs 100 class means, 2048-d): oodml.shift.frechet_distance
   vs the textbook formula (scipy.linalg.sqrtm(cov1 @ cov2), real part), with the ratio;
2. the ooDML progression (25 iterations x 2 swaps): oodml vs the same procedure
   with the textbook FID at every iteration (timed on 2 iterations, extrapolated);
3. the default 8-level greedy search on the cached class means (target < 2 s);
4. the trace term tr (S1 S2)^(1/2) of two 2048 x 2048 covariances (the many-class search's unit of
   work): by a Cholesky factor vs the symmetric matrix square root;
5. at SOP scale (11,318 classes, 2048-d): one class-mean FID (the ooDML progression's unit) and one
   greedy candidate (the many-class search's unit), with the projected search times;
6. the exhaustive search (every balanced split scored, used up to 21 classes) on the first 10, 16 and
   20 of the synthetic class means: its time and the splits it scores, vs the greedy search on the same
   classes (time ratio, and how far short of the true extremes greedy stops), and the vectorised
   scoring vs scoring the splits one at a time.

7. the default search through low-rank updates (``MeanFID`` with ``lowrank``, the default from 512-d
   features) against the exact moment form in the same run, at a size where the exact one is affordable
   (``--compare-classes`` classes of ``--compare-dim``-d synthetic means): time ratio and the chosen levels'
   distances, their largest relative difference;
8. what ``make-splits`` does at SOP scale once features exist (``--sop-search``): ``build_levels`` with the
   default settings on a synthetic image set of 11,318 classes whose class means are 2,048-d synthetic means
   (two identical rows per class), timed whole and by part (search, adjacent-level comparison, intervals and
   episodes), wall and process CPU seconds, the BLAS threads and the load average (the machine may be
   shared); with ``--reference-levels`` the largest difference from an earlier run's levels;
9. the calibrated linearised bootstrap against the exact one (``--bootstrap-check CLASSES DIM``, synthetic
   means, a random and an ordered half split): interval endpoints of 5 seeds x ``--draws`` draws each against
   the exact interval of all 5 x ``--draws`` exact draws pooled, as a fraction of that interval's half-width
   and of the distance, next to the exact bootstrap's own seed-to-seed error.

Run:  .venv/bin/python tools/bench_splits.py [--textbook-repeats N] [--only-exhaustive]
      .venv/bin/python tools/bench_splits.py --only-lowrank [--compare-classes 1100 --compare-dim 512] [--sop-search]
      .venv/bin/python tools/bench_splits.py --bootstrap-check 1400 512
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import scipy.linalg

from oodml.datasets.base import ImageDataset
from oodml.shift import ClassFeatures, Gaussian, frechet_distance, trace_sqrt_of_product, trace_sqrt_product
from oodml.splits import build, distance, resampling
from oodml.splits.adjacent import paired_draws
from oodml.splits.build import SplitConfig
from oodml.splits.distance import MeanFID, Move
from oodml.splits.levels import bootstrap_interval
from oodml.splits.resampling import resample_distances
from oodml.splits.search import balanced_splits, exhaustive_levels, greedy_levels, swap_progression
from oodml.stats import shifted_interval


def textbook_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def synthetic_features(seed: int = 0, classes: int = 200, per_class: int = 59, dim: int = 2048):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim))
    class_centres = centres[np.arange(classes) % 10] + 0.7 * rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    feats = class_centres[labels] + rng.normal(size=(len(labels), dim)).astype(np.float32)
    return np.maximum(feats, 0).astype(np.float32), labels  # ReLU-like, as pooled CNN features


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--textbook-repeats", type=int, default=1, help="timings of the slow reference (best of)")
    parser.add_argument("--only-exhaustive", action="store_true", help="run section 6 alone")
    parser.add_argument("--only-lowrank", action="store_true", help="run sections 7 (and 8) alone")
    parser.add_argument("--compare-classes", type=int, default=1100, help="section 7: classes")
    parser.add_argument("--compare-dim", type=int, default=512, help="section 7: feature width")
    parser.add_argument("--sop-search", action="store_true", help="section 8: the whole search at SOP scale")
    parser.add_argument("--draws", type=int, default=200, help="sections 8 and 9: bootstrap draws")
    parser.add_argument("--reference-levels", metavar="D1,D2,...",
                        help="section 8: level distances of an earlier run, to print the largest difference from")
    parser.add_argument("--bootstrap-check", type=int, nargs=2, metavar=("CLASSES", "DIM"),
                        help="run section 9 alone")
    parser.add_argument("--calibration", type=int, default=resampling.CALIBRATION_DRAWS,
                        help="sections 8 and 9: exact calibration draws per level (default: the library's)")
    args = parser.parse_args()
    resampling.CALIBRATION_DRAWS = args.calibration
    if args.bootstrap_check:
        bench_bootstrap_check(*args.bootstrap_check, draws=args.draws)
        return
    if args.only_lowrank:
        bench_lowrank(args.compare_classes, args.compare_dim)
        if args.sop_search:
            bench_sop_search(draws=args.draws, reference=args.reference_levels)
        return

    feats, labels = synthetic_features()
    start = time.perf_counter()
    cf = ClassFeatures(feats, labels)
    stats_s = time.perf_counter() - start
    means = cf.means
    if args.only_exhaustive:
        bench_exhaustive(means)
        return
    train, test = means[:100], means[100:]
    print(f"synthetic features: {feats.shape[0]} images x {feats.shape[1]} dims, {cf.num_classes} classes "
          f"(class means in {stats_s:.2f} s)")

    ours_value, ref_value = frechet_distance(train, test), textbook_fid(train, test)
    ours_s = best_of(lambda: frechet_distance(train, test), 20)
    ref_s = best_of(lambda: textbook_fid(train, test), args.textbook_repeats)
    print(f"[1] class-mean FID 100 vs 100 x 2048: oodml {ours_s * 1e3:.2f} ms, textbook sqrtm {ref_s:.2f} s, "
          f"ratio {ref_s / ours_s:,.0f}x faster (values {ours_value:.6f} vs {ref_value:.6f}, "
          f"rel. diff {abs(ours_value - ref_value) / ours_value:.1e})")

    ours_s = best_of(lambda: swap_progression(means, range(100), range(100, 200)), 3)
    start = time.perf_counter()
    for _ in range(2):  # the reference evaluates one textbook FID per iteration; time two and extrapolate
        textbook_fid(train, test)
    ref_s = (time.perf_counter() - start) / 2 * 25
    print(f"[2] ooDML progression 25 x 2 swaps: oodml {ours_s:.3f} s, with textbook FID ~{ref_s:.0f} s "
          f"(extrapolated from 2 iterations), ratio {ref_s / ours_s:,.0f}x")

    result = None

    def search():
        nonlocal result
        result = greedy_levels(MeanFID(means), 200, levels=8, removal_levels=2, seed=0)

    search_s = best_of(search, 3)
    oodml_max = max(s.distance for s in swap_progression(means, result.default.train, result.default.test))
    print(f"[3] default greedy search (8 levels, 2 by removal) on cached class means: {search_s:.2f} s "
          f"(target < 2 s: {'met' if search_s < 2 else 'NOT met'})")
    print("    level distances: " + ", ".join(f"{s.distance:.0f}" for s in result.levels)
          + f"; default split {result.default.distance:.0f}; classes per side "
          + ", ".join(str(len(s.train)) for s in result.levels))
    hardest_swap = max(s.distance for s in result.levels if s.kind == "swap")
    print(f"    hardest swap level {hardest_swap:.0f} vs ooDML progression maximum {oodml_max:.0f} from the same start"
          f" ({'>=' if hardest_swap >= oodml_max else '<'})")

    # The many-class search scores each candidate from d x d second moments: its unit of work is the trace term.
    s1, s2 = np.cov(feats[:4000], rowvar=False), np.cov(feats[4000:8000], rowvar=False)
    symmetric_s = best_of(lambda: trace_sqrt_product(Gaussian(np.zeros(len(s1)), s1), s2), 3)
    cholesky_s = best_of(lambda: trace_sqrt_of_product(s1, s2), 3)
    a, b = trace_sqrt_product(Gaussian(np.zeros(len(s1)), s1), s2), trace_sqrt_of_product(s1, s2)
    print(f"[4] tr (S1 S2)^(1/2) of two 2048 x 2048 covariances: Cholesky form {cholesky_s:.2f} s vs symmetric square "
          f"root {symmetric_s:.2f} s, ratio {symmetric_s / cholesky_s:.1f}x (rel. diff {abs(a - b) / a:.1e})")

    # SOP scale (11,318 classes) with these 2048-d features: the unit of work of each search algorithm.
    rng = np.random.default_rng(1)
    sop = rng.normal(size=(11318, feats.shape[1])) + np.repeat(rng.normal(size=(12, feats.shape[1])), 944, 0)[:11318]
    half = len(sop) // 2
    fid_s = best_of(lambda: frechet_distance(sop[:half], sop[half:]), 1)
    scorer, train, test = MeanFID(sop), np.arange(half), np.arange(half, 2 * half)
    moves = [Move(np.array([p]), np.array([p])) for p in range(4)]
    move_s = best_of(lambda: scorer.move_distances(train, test, moves), 1) / len(moves)
    print(f"[5] SOP scale, 11,318 classes x 2048: one class-mean FID {fid_s:.1f} s (the ooDML progression: 25 of "
          f"them, ~{25 * fid_s / 60:.0f} min); one greedy candidate {move_s:.2f} s (x 7,830 candidates as at 10,000 "
          f"classes: ~{7830 * move_s / 3600:.1f} h)")

    bench_exhaustive(means)


def bench_exhaustive(means: np.ndarray) -> None:
    """[6] Exhaustive vs greedy search on the first 10, 16 and 20 class means (levels capped at n // 2 for greedy)."""
    for n in (10, 16, 20):
        scorer, levels = MeanFID(means[:n]), min(8, n // 2)
        ex = exhaustive_levels(scorer, n, levels=levels, removal_levels=0)
        gr = greedy_levels(scorer, n, levels=levels, removal_levels=0)
        exhaustive_s = best_of(lambda: exhaustive_levels(scorer, n, levels=levels, removal_levels=0), 3)  # noqa: B023
        greedy_s = best_of(lambda: greedy_levels(scorer, n, levels=levels, removal_levels=0), 3)  # noqa: B023
        print(f"[6] {n} classes x {means.shape[1]}: exhaustive {exhaustive_s:.3f} s for "
              f"{ex.search['partitions']:,} balanced splits ({exhaustive_s / ex.search['partitions'] * 1e6:.1f} us "
              f"each); greedy {greedy_s:.3f} s, exhaustive/greedy time {exhaustive_s / greedy_s:.2g}x; "
              f"{levels} swap levels span {ex.levels[0].distance:.0f}..{ex.levels[-1].distance:.0f} exhaustive vs "
              f"{gr.levels[0].distance:.0f}..{gr.levels[-1].distance:.0f} greedy")
    first, second = balanced_splits(np.arange(20))
    scorer = MeanFID(means[:20])
    stacked_s = best_of(lambda: scorer.stacked_distances(first, second), 3)
    sample = 5000
    one_s = best_of(lambda: scorer.distances(list(zip(first[:sample], second[:sample], strict=True))), 1)
    one_s *= len(first) / sample
    print(f"    scoring all {len(first):,} splits of 20 classes: vectorised {stacked_s:.2f} s vs one at a time "
          f"~{one_s:.2f} s (timed on {sample:,}), ratio {one_s / stacked_s:.1f}x")


def sop_like_means(classes: int, dim: int, seed: int = 1) -> np.ndarray:
    """(classes, dim) synthetic class means around 12 super-category centres (as section 5's)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(classes, dim)) + np.repeat(rng.normal(size=(12, dim)), classes // 12 + 1, 0)[:classes]


class CountingFID(MeanFID):
    """MeanFID that counts the candidates it scores and the bases (eigendecompositions) it makes."""

    candidates = 0
    bases = 0

    def move_distances(self, train, test, moves):
        self.candidates += len(moves)
        before = self._spectrum
        out = super().move_distances(train, test, moves)
        self.bases += self._spectrum is not before
        return out


def bench_lowrank(classes: int, dim: int) -> None:
    """[7] The default search through low-rank updates vs the exact moment form, same classes, same run."""
    means = sop_like_means(classes, dim)
    runs = {}
    for name, lowrank in (("exact", False), ("low-rank", True)):   # lowrank forced on below 512-d too
        scorer = CountingFID(means, lowrank=lowrank)
        start = time.perf_counter()
        result = greedy_levels(scorer, classes)
        runs[name] = (time.perf_counter() - start, result, scorer)
    (old_s, old, old_scorer), (new_s, new, new_scorer) = runs["exact"], runs["low-rank"]
    old_d, new_d = np.array([s.distance for s in old.levels]), np.array([s.distance for s in new.levels])
    exact_new = np.array([frechet_distance(means[list(s.train)], means[list(s.test)]) for s in new.levels])
    print(f"[7] default search, {classes} classes x {dim} (moment form): exact {old_s:.1f} s "
          f"({old_scorer.candidates} candidates), low-rank {new_s:.1f} s ({new_scorer.candidates} candidates, "
          f"{new_scorer.bases} bases), ratio {old_s / new_s:.1f}x faster")
    print("    level distances exact:    " + ", ".join(f"{v:.3f}" for v in old_d))
    print("    level distances low-rank: " + ", ".join(f"{v:.3f}" for v in new_d)
          + f"; largest level difference {np.abs(new_d / old_d - 1).max():.2%}, "
          f"low-rank values vs direct FID {np.abs(new_d / exact_new - 1).max():.1e}")


def load() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


class Clock:
    """Wall and process CPU seconds since it was made."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __str__(self):
        return f"{time.perf_counter() - self.wall:.0f} s wall, {time.process_time() - self.cpu:.0f} s CPU"


def synthetic_dataset(means: np.ndarray) -> tuple[ImageDataset, np.ndarray]:
    """An image set whose class means are exactly ``means`` (C, d): two identical float64 rows per class
    (their sum is exact, so is its half), so the search sees the same class means as :func:`sop_like_means`."""
    classes = [f"class{c:05d}" for c in range(len(means))]
    labels = np.repeat(np.arange(len(means)), 2)
    ids = [f"{classes[c]}/{k}.jpg" for c in range(len(means)) for k in range(2)]
    return ImageDataset("synthetic", Path("."), "synthetic", ids, labels, classes), means[labels]


def timed(name: str, fn, times: dict):
    """``fn`` wrapped to add its wall and CPU seconds to ``times[name]``."""
    def run(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        old = times.get(name, (0.0, 0.0))
        times[name] = (old[0] + time.perf_counter() - wall, old[1] + time.process_time() - cpu)
        return out
    return run


def bench_sop_search(classes: int = 11318, dim: int = 2048, draws: int = 200, reference: str | None = None) -> None:
    """[8] What ``make-splits`` does at SOP scale once features exist, end to end: search, adjacent-level
    comparison, every level's interval and episodes (:func:`oodml.splits.build.build_levels`)."""
    dataset, features = synthetic_dataset(sop_like_means(classes, dim))
    cfg = SplitConfig(shots=(1,), bootstrap=draws)
    times: dict = {}
    patched = {"greedy_levels": "search", "_compare_adjacent": "adjacent-level comparison",
               "_complete": "intervals and episodes"}
    originals = {attr: getattr(build, attr) for attr in patched}
    for attr, name in patched.items():
        setattr(build, attr, timed(name, originals[attr], times))
    threads = os.environ.get("OPENBLAS_NUM_THREADS", f"default ({os.cpu_count()} cores)")
    print(f"[8] make-splits at SOP scale, {classes:,} classes x {dim}, {draws} bootstrap draws, BLAS threads "
          f"{threads}, {'CUDA' if distance._cuda() else 'CPU'} bases; {load()}", flush=True)
    clock = Clock()
    try:
        levels, info = build.build_levels(dataset, features, cfg)
    finally:
        for attr, fn in originals.items():
            setattr(build, attr, fn)
    print(f"    total: {clock}; {load()}", flush=True)
    for name, (wall, cpu) in times.items():
        print(f"    {name}: {wall:.0f} s wall, {cpu:.0f} s CPU")
    got = np.array([level.distance for level in levels])
    print("    levels " + ", ".join(f"{v:.2f}" for v in got) + "; intervals "
          + ", ".join(f"{level.ci_low:.1f}..{level.ci_high:.1f}" for level in levels))
    print("    adjacent pairs distinct: " + ", ".join(str(p.distinct) for p in info["adjacent_levels"]))
    if reference:
        ref = np.array([float(v) for v in reference.split(",")])
        if len(ref) != len(got):
            print(f"    --reference-levels gives {len(ref)} levels, this run made {len(got)}: not compared")
        else:
            print(f"    largest level difference from --reference-levels: {np.abs(got / ref - 1).max():.2%}")


def bench_bootstrap_check(classes: int, dim: int, draws: int = 200, seeds: int = 5) -> None:
    """[9] Calibrated linearised bootstrap intervals vs the exact bootstrap (pooled over seeds).

    Two calibrations: the interval's own first draws, and (as ``make-splits`` does, comparing adjacent levels
    first) the paired draws of :func:`~oodml.splits.adjacent.paired_draws`, after which the interval makes
    no exact draw.
    """
    resampling.LINEARISED_MIN_DIM = min(resampling.LINEARISED_MIN_DIM, dim)   # forced on below its default
    distance._cuda()                                                          # torch imported before timing
    means = sop_like_means(classes, dim)
    scorer = MeanFID(means)
    for name, order in (("random", np.random.default_rng(0).permutation(classes)),
                        ("ordered", np.argsort(means[:, 0] + means[:, 1]))):
        train, test = order[:classes // 2], order[classes // 2:]
        estimate = scorer.distance(train, test)
        exact, fast = [], {"own": [], "paired": []}
        clock_exact, clock_fast = 0.0, {"own": 0.0, "paired": 0.0}
        for seed in range(seeds):
            for calibration in ("paired", "own"):
                vars(scorer).pop("_calibrated", None)                 # each seed pays for its calibration
                linearised, kept = resample_distances(scorer, [(train, test)]), []

                def keeping(batch, linearised=linearised, kept=kept):
                    kept.append(batch)
                    return linearised(batch)

                start = time.perf_counter()
                if calibration == "paired":
                    paired_draws(linearised, [(train, test)], num_classes=classes, draws=resampling.CALIBRATION_DRAWS,
                                 seed=("check", seed))
                fast[calibration].append(bootstrap_interval(keeping, train, test, draws=draws, seed=seed, level=1))
                clock_fast[calibration] += time.perf_counter() - start
            start = time.perf_counter()
            exact.append(scorer.distances(kept[0]))
            clock_exact += time.perf_counter() - start
        pooled = shifted_interval(estimate, np.concatenate(exact))
        half = (pooled[1] - pooled[0]) / 2

        def error(iv, pooled=pooled, half=half):
            return max(abs(iv[0] - pooled[0]), abs(iv[1] - pooled[1])) / half

        exact_err = [error(shifted_interval(estimate, e)) for e in exact]
        found = []
        for calibration, intervals in fast.items():
            err = [error(iv) for iv in intervals]
            found.append(f"calibrated by {calibration} draws {np.mean(err):.2f} ({max(err):.2f}) = "
                         f"{max(err) * half / estimate:.2%} of the distance, {clock_fast[calibration]:.1f} s "
                         f"({clock_exact / clock_fast[calibration]:.1f}x faster than exact)")
        print(f"[9] {classes} classes x {dim}, {resampling.CALIBRATION_DRAWS} calibration draws, {name} half split "
              f"(distance {estimate:.2f}, pooled exact interval {pooled[0]:.2f}..{pooled[1]:.2f}): endpoint error / "
              f"half-width, mean (worst) of {seeds} seeds: " + "; ".join(found)
              + f"; exact {np.mean(exact_err):.2f} ({max(exact_err):.2f}), {clock_exact:.1f} s", flush=True)

if __name__ == "__main__":
    main()
