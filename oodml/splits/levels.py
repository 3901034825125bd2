"""What each level carries besides its train/test classes: a tuning split of the
train classes, few-shot episodes over the test classes, and a bootstrap
confidence interval of its distance."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import OodmlError
from ..seeding import rng_for
from ..stats import shifted_interval

#: What a level is made by: swapping classes between the sides, or removing classes from both.
LEVEL_KINDS = ("swap", "removal")


@dataclass(frozen=True)
class Episode:
    """One few-shot episode: ``shots`` support sample ids per test class.

    The query set of a class is every other image of that class.
    """

    shots: int
    index: int
    support: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Level:
    """One split level.

    Attributes:
        index: 1 = easiest.
        distance: train-to-test distance (squared feature units), with its
            bootstrap interval ``ci_low``..``ci_high``.
        kind: one of :data:`LEVEL_KINDS`: ``"swap"`` or ``"removal"``.
        train_classes, test_classes: class names of each side.
        val_classes: the tuning validation classes (a subset of train_classes);
            ``tuning_train_classes`` are the rest.
        n_train_images, n_test_images: images on each side.
    """

    index: int
    distance: float
    ci_low: float
    ci_high: float
    kind: str
    train_classes: tuple[str, ...]
    test_classes: tuple[str, ...]
    val_classes: tuple[str, ...]
    n_train_images: int
    n_test_images: int
    episode_table: Mapping[int, tuple[Episode, ...]] = field(default_factory=dict, repr=False)

    @property
    def tuning_train_classes(self) -> tuple[str, ...]:
        val = set(self.val_classes)
        return tuple(c for c in self.train_classes if c not in val)

    @property
    def shots(self) -> tuple[int, ...]:
        return tuple(sorted(self.episode_table))

    def episodes(self, shots: int) -> tuple[Episode, ...]:
        """The few-shot episodes with ``shots`` support images per test class."""
        try:
            return self.episode_table[shots]
        except KeyError:
            raise OodmlError(f"level {self.index} has no {shots}-shot episodes; available: "
                             f"{', '.join(map(str, self.shots)) or 'none'}") from None


def tuning_split(train_classes: Sequence[str], *, seed: int, level: int,
                 val_fraction: float = 0.25) -> tuple[str, ...]:
    """The validation classes of a level: a seeded ``val_fraction`` (rounded, at least 1) of its train classes."""
    n_val = max(1, int(round(val_fraction * len(train_classes))))
    order = rng_for(seed, "tuning", level).permutation(len(train_classes))
    return tuple(sorted(train_classes[i] for i in order[:n_val]))


def draw_episodes(test_classes: Sequence[str], samples_by_class: Mapping[str, Sequence[str]], *, shots: int,
                  episodes: int, seed: int, level: int) -> tuple[Episode, ...]:
    """``episodes`` seeded episodes of ``shots`` support sample ids per test class.

    Raises:
        OodmlError: when a test class has no image left for the query set.
    """
    small = [c for c in test_classes if len(samples_by_class[c]) <= shots]
    if small:
        raise OodmlError(f"{shots}-shot episodes need more than {shots} images per test class; class {small[0]!r} "
                         f"has {len(samples_by_class[small[0]])} ({len(small)} such classes); choose smaller --shots")
    out = []
    for e in range(episodes):
        rng = rng_for(seed, "episodes", level, shots, e)
        support = {}
        for c in test_classes:
            ids = sorted(samples_by_class[c])
            support[c] = tuple(sorted(ids[i] for i in rng.choice(len(ids), size=shots, replace=False)))
        out.append(Episode(shots, e, support))
    return tuple(out)


def bootstrap_interval(distances: Callable[[list[tuple[np.ndarray, np.ndarray]]], np.ndarray],
                       train: np.ndarray, test: np.ndarray, *, draws: int, seed: int, level: int,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of a level's distance, resampling classes with replacement within each side.

    Resampling with replacement duplicates classes, which biases Fréchet-type
    distances upwards (duplicated points look like a tighter, more separated
    set), so the raw percentile interval can lie entirely above the estimate.
    The interval returned is the percentile interval shifted by that bias (the
    median of the draws minus the full-sample distance), clamped at 0
    (:func:`oodml.stats.shifted_interval`): its width shows the sampling
    variability of the class sets, and it always contains the estimate.

    Args:
        distances: scores a batch of (train indices, test indices) partitions (duplicates allowed).
        train, test: class indices of the level.

    Returns:
        ``(low, high)`` in the distance's units; NaNs when ``draws`` is 0.
    """
    if draws <= 0:
        return float("nan"), float("nan")
    rng = rng_for(seed, "bootstrap", level)
    batch = [(rng.choice(train, size=len(train)), rng.choice(test, size=len(test))) for _ in range(draws)]
    values = distances(batch)
    estimate = float(distances([(np.asarray(train), np.asarray(test))])[0])
    return shifted_interval(estimate, values, confidence, bounds=(0.0, math.inf))
