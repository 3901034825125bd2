"""From features to a split set: search, then give every level its tuning split,
episodes and confidence interval.  Pure computation; writing is in ``manifest``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..datasets import ImageDataset
from ..errors import OodmlError
from ..progress import progress
from ..shift import MODES, ClassFeatures, get_distance, split_distance
from .levels import Level, bootstrap_interval, draw_episodes, tuning_split
from .scoring import make_scorer
from .search import SplitState, greedy_levels, removal_continuation, swap_progression

ALGORITHMS = ("greedy", "oodml")


@dataclass(frozen=True)
class SplitConfig:
    """Every parameter of a split generation (recorded in the manifest metadata)."""

    levels: int = 8
    removal_levels: int = 2
    distance: str = "fid"
    mode: str = "class-mean"
    algorithm: str = "greedy"
    seed: int = 0
    shots: tuple[int, ...] = (2, 5, 10)
    episodes: int = 10
    bootstrap: int = 200
    val_fraction: float = 0.25
    shortlist: int = 4
    floor: float = 0.5
    # ooDML procedure only
    iterations: int = 25
    swaps_per_iteration: int = 2
    history: int = 5

    def validate(self, num_classes: int) -> None:
        get_distance(self.distance)
        if self.mode not in MODES:
            raise OodmlError(f"unknown feature mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.algorithm not in ALGORITHMS:
            raise OodmlError(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if num_classes < 2 * max(self.levels, 4):
            raise OodmlError(f"{num_classes} classes are too few for {self.levels} levels; need at least "
                             f"{2 * max(self.levels, 4)} (ask for fewer --levels)")
        if any(k < 1 for k in self.shots) or self.episodes < 0:
            raise OodmlError("--shots must be positive and --episodes non-negative")


def _oodml_states(cf: ClassFeatures, classes: Sequence[str], cfg: SplitConfig, rng_seed: int) -> list[SplitState]:
    """ooDML progression from a seeded random half split (class names sorted within each side, as ooDML did),
    continued by class removal for ``removal_levels`` iterations; the chosen states as class indices, by
    increasing distance.  (ooDML also ran the inverse progression for easier splits; this uses the forward one.)"""
    perm = np.random.default_rng(rng_seed).permutation(len(classes))
    half = len(classes) // 2
    index = {c: i for i, c in enumerate(classes)}
    train = sorted(classes[i] for i in perm[:half])
    test = sorted(classes[i] for i in perm[half:2 * half])
    states = swap_progression(train, cf.means[[index[c] for c in train]], test, cf.means[[index[c] for c in test]],
                              iterations=cfg.iterations, swaps_per_iteration=cfg.swaps_per_iteration,
                              history=cfg.history)
    if cfg.removal_levels:
        means_by_name = {c: cf.means[i] for c, i in index.items()}
        states += removal_continuation(states[-1], means_by_name, iterations=cfg.removal_levels,
                                       swaps_per_iteration=cfg.swaps_per_iteration, history=cfg.history)
    as_index = [SplitState(tuple(index[c] for c in s.train), tuple(index[c] for c in s.test), s.distance, s.swaps,
                           s.kind) for s in states]
    # Levels: evenly spaced along the swap states, then the removal states.
    swaps = [s for s in as_index if s.kind == "swap" and s.swaps >= 0][: cfg.iterations]
    removal = as_index[cfg.iterations:]
    n_swap = cfg.levels - len(removal)
    picks = np.unique(np.linspace(0, len(swaps) - 1, n_swap).round().astype(int))
    return sorted([swaps[i] for i in picks] + removal, key=lambda s: s.distance)


def build_levels(dataset: ImageDataset, features: np.ndarray, cfg: SplitConfig) -> tuple[tuple[Level, ...], dict]:
    """Search for the levels and complete each one.

    Args:
        dataset: gives class names, labels and sample ids.
        features: (N, d) features in dataset order.

    Returns:
        ``(levels, info)``: levels easiest first, and facts for the metadata
        (``default_distance``: distance of the seeded random split).
    """
    if features.shape[0] != len(dataset):
        raise OodmlError(f"{features.shape[0]} feature rows for {len(dataset)} images")
    cfg.validate(len(dataset.classes))
    cf = ClassFeatures(features, dataset.labels)
    if cfg.mode == "samples":
        cf.check_samples_mode(range(len(dataset.classes)))
    scorer = make_scorer(cf, cfg.distance, cfg.mode)
    if cfg.algorithm == "greedy":
        result = greedy_levels(scorer, len(dataset.classes), levels=cfg.levels, removal_levels=cfg.removal_levels,
                               seed=cfg.seed, shortlist=cfg.shortlist, floor=cfg.floor)
        states, default = result.levels, result.default
    else:
        states = _oodml_states(cf, dataset.classes, cfg, cfg.seed)
        default = states[0]

    samples_by_class: dict[str, list[str]] = {c: [] for c in dataset.classes}
    for sid, label in zip(dataset.sample_ids, dataset.labels, strict=True):
        samples_by_class[dataset.classes[label]].append(sid)
    counts = cf.n
    levels = []
    for k, state in enumerate(progress(states, "levels: intervals and episodes", unit="level"), start=1):
        train, test = np.array(state.train), np.array(state.test)
        distance = split_distance(cf, train, test, distance=cfg.distance, mode=cfg.mode)
        lo, hi = bootstrap_interval(scorer.distances, train, test, draws=cfg.bootstrap, seed=cfg.seed, level=k)
        train_names = tuple(sorted(dataset.classes[i] for i in train))
        test_names = tuple(sorted(dataset.classes[i] for i in test))
        episodes = {shots: draw_episodes(test_names, samples_by_class, shots=shots, episodes=cfg.episodes,
                                         seed=cfg.seed, level=k) for shots in cfg.shots}
        levels.append(Level(k, distance, lo, hi, state.kind, train_names, test_names,
                            tuning_split(train_names, seed=cfg.seed, level=k, val_fraction=cfg.val_fraction),
                            int(counts[train].sum()), int(counts[test].sum()), episodes))
    info = {"default_distance": split_distance(cf, np.array(default.train), np.array(default.test),
                                               distance=cfg.distance, mode=cfg.mode)}
    return tuple(levels), info
