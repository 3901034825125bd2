"""Comparing two split sets by content: do they define the same benchmark?

Two split sets *reproduce* each other when they have the same levels, every
level has the same kind, train, test and validation classes and the same
few-shot episodes, the generation records agree (dataset fingerprint, extractor,
distance, mode, algorithm, parameters, seed), and every measured value
(distance, interval bounds, default split distance) agrees within ``RTOL``
relative (``ATOL`` absolute near zero).

The tolerance sits between the noise of another machine and what a level's
distance means.  Another BLAS kernel or thread count changes distances by
~1e-15 relative.  A GPU changes more: on an H100, a glyph-cnn's features from
cuDNN (TF32 convolutions, PyTorch's default) differ from CPU features by
2.7e-5 relative, and the tiny class-mean distances of that untrained network
by up to 1.1e-3 relative, with every class and episode identical
(``tools/gpu_reproduce_splits.sh``).  Levels are spaced far more than 1% apart
and their bootstrap intervals are about +-10% wide, so 1% is noise.  When a
regeneration legitimately differs, for example because GPU features tip a
greedy step the other way, :class:`SplitComparison` says which levels and
which classes differ.  The published split set is the benchmark; regenerating
it is a check.

>>> from oodml import splits
>>> diff = splits.compare(splits.load("glyphs", "v1"), "build/demo-splits/glyphs/v1")
>>> diff.reproduces, print(diff.format())
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import brief
from .catalogue import open_split_set
from .levels import Level
from .manifest import SplitSet

RTOL = 1e-2
ATOL = 1e-12
#: Metadata that says how a split set was generated; other keys (times, versions, schema) may differ.
GENERATION_KEYS = ("dataset", "dataset_fingerprint", "dataset_source", "num_classes", "num_images", "extractor",
                   "weights_hash", "feature_dim", "mode", "distance", "algorithm", "parameters", "seed", "search")


def _role(level: Level, name: str) -> str:
    if name in level.test_classes:
        return "test"
    if name in level.val_classes:
        return "val"
    return "train" if name in level.train_classes else "absent"


def _episode_keys(level: Level) -> dict[tuple[int, int], tuple]:
    return {(shots, ep.index): tuple(sorted(ep.support.items())) for shots in level.shots
            for ep in level.episodes(shots)}


def _difference(a: float, b: float) -> tuple[float, float]:
    """Absolute and relative difference of two measured values (0 when both are NaN; inf when one is)."""
    if math.isnan(a) and math.isnan(b):
        return 0.0, 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf, math.inf
    diff = abs(a - b)
    return diff, diff / max(abs(a), abs(b)) if diff else 0.0


def _within(a: float, b: float) -> bool:
    absolute, relative = _difference(a, b)
    return absolute <= ATOL or relative <= RTOL


@dataclass(frozen=True)
class LevelComparison:
    """How level ``index`` of split set A compares with B's.

    Attributes:
        moved: ``(class, role in A, role in B)`` for every class whose role differs; roles are
            ``train`` (tuning train), ``val``, ``test`` and ``absent`` (removed from the level).
        episodes_differing: ``(shots, episode)`` of the episodes whose support differs or that only one has.
        distance_a, distance_b: the level's distance in each (squared feature units).
        abs_difference, rel_difference: the largest over distance, ci_low and ci_high.
        kind_a, kind_b: how the level was made in each (``swap`` or ``removal``).
    """

    index: int
    moved: tuple[tuple[str, str, str], ...]
    episodes_differing: tuple[tuple[int, int], ...]
    distance_a: float
    distance_b: float
    abs_difference: float
    rel_difference: float
    distances_agree: bool
    kind_a: str = "swap"
    kind_b: str = "swap"

    @property
    def classes_same(self) -> bool:
        return not self.moved

    @property
    def episodes_same(self) -> bool:
        return not self.episodes_differing

    @property
    def same(self) -> bool:
        return self.classes_same and self.episodes_same and self.distances_agree and self.kind_a == self.kind_b

    def differences(self) -> list[str]:
        """What differs in this level, a few words each (empty when it is the same)."""
        found = [f"kind {self.kind_a} vs {self.kind_b}"] if self.kind_a != self.kind_b else []
        found += [f"{len(self.moved)} classes moved"] if self.moved else []
        found += [f"{len(self.episodes_differing)} episodes differ"] if self.episodes_differing else []
        if not self.distances_agree:
            found.append(f"distance {self.distance_a:.6g} vs {self.distance_b:.6g} (beyond relative {RTOL:g})")
        return found


def compare_levels(a: Level, b: Level) -> LevelComparison:
    """Compare two levels with the same index: class roles, episodes and measured values."""
    names = sorted(set(a.train_classes) | set(a.test_classes) | set(b.train_classes) | set(b.test_classes))
    moved = tuple((n, _role(a, n), _role(b, n)) for n in names if _role(a, n) != _role(b, n))
    ea, eb = _episode_keys(a), _episode_keys(b)
    episodes = tuple(sorted(k for k in set(ea) | set(eb) if ea.get(k) != eb.get(k)))
    pairs = [(a.distance, b.distance), (a.ci_low, b.ci_low), (a.ci_high, b.ci_high)]
    diffs = [_difference(x, y) for x, y in pairs]
    return LevelComparison(a.index, moved, episodes, a.distance, b.distance, max(d[0] for d in diffs),
                           max(d[1] for d in diffs), all(_within(x, y) for x, y in pairs), a.kind, b.kind)


@dataclass(frozen=True)
class SplitComparison:
    """The content comparison of split sets ``a`` and ``b`` (see module docstring).

    Attributes:
        levels: one comparison per level index both have.
        only_a, only_b: level indices that only one of them has.
        metadata: ``(key, value in A, value in B)`` for every generation key that differs.
        default_distances_agree: whether the default (seeded random) split distances agree.
    """

    a: SplitSet
    b: SplitSet
    levels: tuple[LevelComparison, ...]
    only_a: tuple[int, ...]
    only_b: tuple[int, ...]
    metadata: tuple[tuple[str, object, object], ...]
    default_distances_agree: bool

    @property
    def reproduces(self) -> bool:
        """True when A and B define the same benchmark (identical classes and episodes, records agree,
        measured values within the tolerance)."""
        return (not self.only_a and not self.only_b and not self.metadata and self.default_distances_agree
                and all(lv.same for lv in self.levels))

    @property
    def largest_difference(self) -> tuple[float, float]:
        """The largest absolute and relative difference of a measured level value."""
        return (max((lv.abs_difference for lv in self.levels), default=0.0),
                max((lv.rel_difference for lv in self.levels), default=0.0))

    def first_difference(self) -> str:
        """The first thing that differs, in a few words (empty when A reproduces B): a generation record,
        the levels each has, the default split's distance, or a level's kind, classes, episodes or distance."""
        for key, x, y in self.metadata:
            return f"metadata {key}: {brief(x)} vs {brief(y)}"
        if self.only_a or self.only_b:
            return f"{len(self.a.levels)} levels vs {len(self.b.levels)}"
        if not self.default_distances_agree:
            return (f"default split distance {brief(self.a.metadata.get('default_distance'))} vs "
                    f"{brief(self.b.metadata.get('default_distance'))}")
        for lv in self.levels:
            if not lv.same:
                return f"level {lv.index}: {', '.join(lv.differences())}"
        return ""

    def format(self) -> str:
        """A verdict line, then (when they differ) what differs, level by level."""
        a, b = _label(self.a), _label(self.b)
        absolute, relative = self.largest_difference
        if self.reproduces:
            return (f"{a} reproduces {b}: {len(self.levels)} levels with identical class sets and episodes, "
                    f"distances within relative {RTOL:g} (largest difference {absolute:.2g}, "
                    f"relative {relative:.2g})")
        lines = [f"{a} DIFFERS from {b}:"]
        for key, x, y in self.metadata:
            lines.append(f"  metadata {key}: {brief(x)} vs {brief(y)}")
        if self.only_a or self.only_b:
            lines.append(f"  levels only in A: {list(self.only_a) or 'none'}; only in B: {list(self.only_b) or 'none'}")
        if not self.default_distances_agree:
            lines.append(f"  default split distance: {self.a.metadata.get('default_distance')} vs "
                         f"{self.b.metadata.get('default_distance')}")
        lines.append("  level  classes            episodes      distance A    distance B    rel diff")
        for lv in self.levels:
            classes = "same" if lv.classes_same else f"{len(lv.moved)} moved"
            episodes = "same" if lv.episodes_same else f"{len(lv.episodes_differing)} differ"
            mark = "" if lv.distances_agree else "  beyond tolerance"
            mark += "" if lv.kind_a == lv.kind_b else f"  kind {lv.kind_a} vs {lv.kind_b}"
            lines.append(f"  {lv.index:>5}  {classes:<17}  {episodes:<12}  {lv.distance_a:<12.6g}  "
                         f"{lv.distance_b:<12.6g}  {lv.rel_difference:.2g}{mark}")
            for name, role_a, role_b in lv.moved[:5]:
                lines.append(f"         {name}: {role_a} in A, {role_b} in B")
            if len(lv.moved) > 5:
                lines.append(f"         ... and {len(lv.moved) - 5} more classes")
        return "\n".join(lines)


def _canonical(key: str, value: object) -> object:
    """A generation record in the form compared: a ``dataset_source`` split selection of parts joined with
    ``+`` names the same rows in any order (sample ids name their split, the fingerprint sorts them), so its
    parts are sorted (``test+train`` is ``train+test``)."""
    if key == "dataset_source" and isinstance(value, dict) and isinstance(value.get("split"), str):
        return {**value, "split": "+".join(sorted(part.strip() for part in value["split"].split("+")))}
    return value


def _label(split_set: SplitSet) -> str:
    where = f" ({split_set.path})" if split_set.path is not None else ""
    return f"{split_set.dataset}@{split_set.version}{where}"


def compare(a: SplitSet | str | Path, b: SplitSet | str | Path) -> SplitComparison:
    """Compare split sets ``a`` and ``b`` by content (loaded split sets, manifest directories, or
    ``DATASET@VERSION`` references to published ones).

    Returns:
        :class:`SplitComparison`; ``.reproduces`` is the verdict, ``.format()`` the report.
    """
    a, b = open_split_set(a), open_split_set(b)
    levels_a, levels_b = {lv.index: lv for lv in a.levels}, {lv.index: lv for lv in b.levels}
    common = sorted(set(levels_a) & set(levels_b))
    metadata = tuple((k, a.metadata.get(k), b.metadata.get(k)) for k in GENERATION_KEYS
                     if _canonical(k, a.metadata.get(k)) != _canonical(k, b.metadata.get(k)))
    da, db = a.metadata.get("default_distance"), b.metadata.get("default_distance")
    default_agree = (da is None) == (db is None) and (da is None or _within(float(da), float(db)))
    return SplitComparison(a, b, tuple(compare_levels(levels_a[i], levels_b[i]) for i in common),
                           tuple(sorted(set(levels_a) - set(levels_b))), tuple(sorted(set(levels_b) - set(levels_a))),
                           metadata, default_agree)
