"""From features to a split set: search, then give every level its tuning split,
episodes and confidence interval, and compare adjacent levels.  Pure computation;
writing is in ``manifest``."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..datasets import ImageDataset
from ..errors import OodmlError, brief
from ..progress import progress
from ..registry import Registry
from ..shift import MODES, ClassFeatures, get_distance, split_distance
from .adjacent import AdjacentPair, adjacent_seed, compare_adjacent, not_distinct_note
from .distance import Scorer, make_scorer
from .levels import Level, bootstrap_interval, draw_episodes, tuning_split
from .resampling import resample_distances
from .search import (
    MIN_CLASSES,
    SearchResult,
    SplitState,
    balanced_split_count,
    exhaustive_fits,
    exhaustive_levels,
    greedy_levels,
    level_capacity,
    oodml_parameters,
    removal_continuation,
    seeded_split,
    swap_progression,
)

#: search algorithm name -> ``search(scorer, class_features, classes, cfg) -> (SearchResult, cfg as used)``.
ALGORITHMS: Registry[Callable[..., tuple[SearchResult, SplitConfig]]] = Registry("algorithm")

#: ``SplitConfig.levels`` (``--levels``) that picks the count: the most levels, up to :data:`MOST_LEVELS`,
#: whose adjacent levels are all distinct (:mod:`oodml.splits.adjacent`).
AUTO = "auto"
#: The default level count, and the most that ``--levels auto`` tries.
MOST_LEVELS = 8


@dataclass(frozen=True)
class SplitConfig:
    """Every parameter of a split generation (recorded in the manifest metadata).

    ``levels`` is a count (at least 2) or :data:`AUTO`; ``bootstrap`` draws give
    the levels' intervals and the adjacent-level comparison (0: neither).
    """

    levels: int | str = MOST_LEVELS
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
        """Refuse values no search can use, in one line naming the command-line option (or the field)."""
        get_distance(self.distance)
        if self.mode not in MODES:
            raise OodmlError(f"unknown feature mode {self.mode!r}; choose one of {', '.join(MODES)}")
        ALGORITHMS.entry(self.algorithm)
        problems = _problems(self)
        if problems:
            raise OodmlError(problems[0])
        if num_classes < MIN_CLASSES:
            raise OodmlError(f"{num_classes} classes are too few to split; need at least {MIN_CLASSES} (2 per side)")


def _problems(cfg: SplitConfig) -> list[str]:
    """What is wrong with the numeric parameters, one line each, in field order (empty when nothing is)."""
    auto = cfg.levels == AUTO
    count = isinstance(cfg.levels, int) and not isinstance(cfg.levels, bool)
    checks = [
        (auto or (count and cfg.levels >= 2),
         f"--levels must be at least 2 (got {cfg.levels})" if count else
         f"--levels must be a whole number of at least 2 or {AUTO!r} (got {brief(cfg.levels)})"),
        (not auto or cfg.bootstrap > 0, f"--levels {AUTO} tells levels apart by bootstrap draws; give --bootstrap "
                                        f"N above 0 (got {cfg.bootstrap}) or a number of --levels"),
        (cfg.removal_levels >= 0, f"--removal-levels must be non-negative (got {cfg.removal_levels})"),
        (cfg.seed >= 0, f"--seed must be non-negative (got {cfg.seed})"),
        (len(cfg.shots) > 0 and all(k >= 1 for k in cfg.shots),
         f"--shots must be positive (got {' '.join(map(str, cfg.shots)) or 'none'})"),
        (cfg.episodes >= 0, f"--episodes must be non-negative (got {cfg.episodes})"),
        (cfg.bootstrap >= 0, f"--bootstrap must be non-negative; 0 skips the intervals (got {cfg.bootstrap})"),
        # Fields with no command-line option: named as fields.
        (0 < cfg.val_fraction < 1, f"SplitConfig.val_fraction must lie strictly between 0 and 1 "
                                   f"(got {cfg.val_fraction})"),
        (cfg.shortlist >= 1, f"SplitConfig.shortlist must be at least 1 (got {cfg.shortlist})"),
        (0 < cfg.floor <= 1, f"SplitConfig.floor must lie in (0, 1] (got {cfg.floor})"),
        (cfg.iterations >= 1, f"SplitConfig.iterations must be at least 1 (got {cfg.iterations})"),
        (cfg.swaps_per_iteration >= 1,
         f"SplitConfig.swaps_per_iteration must be at least 1 (got {cfg.swaps_per_iteration})"),
        (cfg.history >= 0, f"SplitConfig.history must be non-negative (got {cfg.history})"),
    ]
    return [message for ok, message in checks if not ok]


def fit_levels(cfg: SplitConfig, num_classes: int, exhaustive: bool, made_by_removal: int | None = None
               ) -> tuple[SplitConfig, str | None]:
    """``cfg`` fitted to ``num_classes``, and a one-line note saying what changed (None if nothing).

    ``levels`` is capped at :func:`level_capacity`, and ``removal_levels`` at
    ``levels - 2`` so that at least two swap levels remain (the searches treat
    removal levels as "up to" anyway: those removal cannot reach become swap
    levels).  ``made_by_removal``, when the search has run, is how many
    levels it made by removal: the note counts those, not the room for them.
    """
    cap = level_capacity(num_classes, exhaustive)
    levels = min(cfg.levels, cap)
    removal = min(cfg.removal_levels, levels - 2)
    fitted = dataclasses.replace(cfg, levels=levels, removal_levels=removal)
    made = removal if made_by_removal is None else made_by_removal
    also = f", {made} by removal" if made != cfg.removal_levels else ""
    if levels < cfg.levels:
        why = (f"have only {balanced_split_count(num_classes)} balanced splits" if exhaustive
               else f"allow at most {cap} levels ({num_classes // 2} classes per side)")
        return fitted, f"{num_classes} classes {why}: making {levels} levels{also}, not {cfg.levels} (--levels)"
    if removal < cfg.removal_levels:
        return fitted, (f"{levels} levels leave room for at most {removal} by class removal, not "
                        f"{cfg.removal_levels} (--removal-levels)")
    return cfg, None


def _oodml_states(cf: ClassFeatures, classes: Sequence[str], cfg: SplitConfig, rng_seed: int) -> list[SplitState]:
    """ooDML progression from a seeded random half split (class names sorted within each side, as ooDML did),
    continued by class removal for ``removal_levels`` iterations; the chosen states as class indices, by
    increasing distance, each split once.  (ooDML also ran the inverse progression for easier splits; this
    uses the forward one.)  Swaps per iteration and history shrink to what the sides allow
    (:func:`oodml_parameters`); removal stops at half the classes per side, as the greedy search's does."""
    half = len(classes) // 2
    # Each side in class-name order, as ooDML sorted it: positions matter to its swaps.
    train, test = (sorted(side.tolist(), key=classes.__getitem__) for side in seeded_split(len(classes), rng_seed))
    per_iteration, history = oodml_parameters(half, cfg.swaps_per_iteration, cfg.history)
    states = swap_progression(cf.means, train, test, iterations=cfg.iterations, swaps_per_iteration=per_iteration,
                              history=history)
    if cfg.removal_levels:
        states += removal_continuation(states[-1], cf.means, iterations=cfg.removal_levels,
                                       swaps_per_iteration=per_iteration, history=history,
                                       min_per_side=max(2, int(np.ceil(cfg.floor * half))))
    # Levels: evenly spaced along the swap states, then the removal states.
    swaps = [s for s in states if s.kind == "swap" and s.swaps >= 0][: cfg.iterations]
    removal = states[cfg.iterations:]
    n_swap = cfg.levels - len(removal)
    picks = np.unique(np.linspace(0, len(swaps) - 1, n_swap).round().astype(int))
    chosen = sorted([swaps[i] for i in picks] + removal, key=lambda s: s.distance)
    # A small class set's progression can come back to a split it visited; keep its first appearance.
    seen: set[tuple[frozenset, frozenset]] = set()
    unique = []
    for state in chosen:
        key = (frozenset(state.train), frozenset(state.test))
        if key not in seen:
            seen.add(key)
            unique.append(state)
    return unique


def _fitted(cfg: SplitConfig, num_classes: int, exhaustive: bool) -> SplitConfig:
    """``cfg`` with ``levels`` capped to what the classes allow (:func:`_search` says so, once it knows the
    levels made)."""
    return fit_levels(cfg, num_classes, exhaustive)[0]


def _search_options(cfg: SplitConfig) -> dict:
    return dict(levels=cfg.levels, removal_levels=cfg.removal_levels, seed=cfg.seed, shortlist=cfg.shortlist,
                floor=cfg.floor)


@ALGORITHMS.register("greedy")
def greedy_search(scorer: Scorer, cf: ClassFeatures, classes: Sequence[str], cfg: SplitConfig
                  ) -> tuple[SearchResult, SplitConfig]:
    """Evenly spaced levels, easiest to hardest: every balanced split scored when that fits, else swaps."""
    exhaustive = exhaustive_fits(scorer, len(classes))
    cfg = _fitted(cfg, len(classes), exhaustive)
    search = exhaustive_levels if exhaustive else greedy_levels
    return search(scorer, len(classes), **_search_options(cfg)), cfg


@ALGORITHMS.register("oodml")
def oodml_search(scorer: Scorer, cf: ClassFeatures, classes: Sequence[str], cfg: SplitConfig
                 ) -> tuple[SearchResult, SplitConfig]:
    """The ooDML procedure: its swap progression from a seeded half split, continued by class removal."""
    cfg = _fitted(cfg, len(classes), exhaustive=False)
    states = _oodml_states(cf, classes, cfg, cfg.seed)
    return SearchResult(states, states[0], states, {"method": "oodml"}), cfg


def _search(scorer: Scorer, cf: ClassFeatures, classes: Sequence[str], cfg: SplitConfig
            ) -> tuple[SearchResult, SplitConfig]:
    """Find the levels' splits with ``cfg.algorithm``; returns them with ``cfg`` as used (``levels`` capped to
    the class count).

    The greedy algorithm scores every balanced split when the scorer allows
    (:func:`exhaustive_fits`: up to 21 classes for class-mean FID), else
    searches by swaps.  A one-line warning says when ``--levels`` was capped or
    fewer distinct levels exist than asked.
    """
    asked = cfg
    result, cfg = ALGORITHMS[cfg.algorithm](scorer, cf, classes, cfg)
    by_removal = sum(state.kind == "removal" for state in result.levels)
    _, note = fit_levels(asked, len(classes), result.search.get("method") == "exhaustive", by_removal)
    if note:
        warnings.warn(note, stacklevel=3)
    _warn_if_fewer(result, cfg)
    return result, cfg


def _warn_if_fewer(result: SearchResult, cfg: SplitConfig) -> None:
    if len(result.levels) < cfg.levels:
        made = len(result.levels)
        warnings.warn(f"made {made} level{'s' * (made != 1)}, not {cfg.levels}: the search found no more splits "
                      f"of distinct distance", stacklevel=4)


def _partitions(result: SearchResult) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.array(state.train), np.array(state.test)) for state in result.levels]


def _compare_adjacent(scorer: Scorer, result: SearchResult, num_classes: int, cfg: SplitConfig
                      ) -> tuple[AdjacentPair, ...]:
    """The adjacent pairs of ``result``'s levels (:mod:`oodml.splits.adjacent`); empty without bootstrap draws."""
    if cfg.bootstrap <= 0:
        return ()
    return compare_adjacent(scorer, _partitions(result), num_classes=num_classes, draws=cfg.bootstrap,
                            seed=adjacent_seed(cfg.seed))


def _search_auto(scorer: Scorer, cf: ClassFeatures, classes: Sequence[str], cfg: SplitConfig
                 ) -> tuple[SearchResult, SplitConfig, tuple[AdjacentPair, ...], list[int]]:
    """``--levels auto``: search for ``n`` levels, ``n`` from :data:`MOST_LEVELS` (capped to what the classes
    allow) down to 2, and keep the first whose adjacent levels are all distinct (else the 2 levels).

    Each ``n`` is a fresh search (the levels of ``n`` are spread evenly over the
    same range, not a subset of the levels of ``n + 1``).  Returns the result,
    ``cfg`` as used (``levels`` the count chosen), its adjacent pairs and the
    counts tried, most first.
    """
    exhaustive = cfg.algorithm == "greedy" and exhaustive_fits(scorer, len(classes))
    top = min(MOST_LEVELS, level_capacity(len(classes), exhaustive))
    tried, n = [], max(top, 2)
    while True:
        result, used = ALGORITHMS[cfg.algorithm](scorer, cf, classes, fit_levels(
            dataclasses.replace(cfg, levels=n), len(classes), exhaustive)[0])
        pairs = _compare_adjacent(scorer, result, len(classes), used)
        tried.append(len(result.levels))
        if all(p.distinct for p in pairs) or len(result.levels) <= 2:
            return result, used, pairs, tried
        # The search may make fewer than n (too few distinct distances): the next count is below what it made.
        n = len(result.levels) - 1


def _complete(dataset: ImageDataset, cf: ClassFeatures, scorer: Scorer, result: SearchResult, cfg: SplitConfig
              ) -> tuple[Level, ...]:
    """Each chosen state made a :class:`Level`: distance, interval, class names, tuning split, episodes."""
    samples_by_class: dict[str, list[str]] = {c: [] for c in dataset.classes}
    for sid, label in zip(dataset.sample_ids, dataset.labels, strict=True):
        samples_by_class[dataset.classes[label]].append(sid)
    counts = cf.n
    levels = []
    for k, state in enumerate(progress(result.levels, "levels: intervals and episodes", unit="level"), start=1):
        train, test = np.array(state.train), np.array(state.test)
        distance = split_distance(cf, train, test, distance=cfg.distance, mode=cfg.mode)
        lo, hi = bootstrap_interval(resample_distances(scorer, [(train, test)]), train, test, draws=cfg.bootstrap,
                                    seed=cfg.seed, level=k)
        train_names = tuple(sorted(dataset.classes[i] for i in train))
        test_names = tuple(sorted(dataset.classes[i] for i in test))
        episodes = {shots: draw_episodes(test_names, samples_by_class, shots=shots, episodes=cfg.episodes,
                                         seed=cfg.seed, level=k) for shots in cfg.shots}
        levels.append(Level(k, distance, lo, hi, state.kind, train_names, test_names,
                            tuning_split(train_names, seed=cfg.seed, level=k, val_fraction=cfg.val_fraction),
                            int(counts[train].sum()), int(counts[test].sum()), episodes))
    return tuple(levels)


def build_levels(dataset: ImageDataset, features: np.ndarray, cfg: SplitConfig) -> tuple[tuple[Level, ...], dict]:
    """Search for the levels, complete each one and compare adjacent ones.

    Args:
        dataset: gives class names, labels and sample ids.
        features: (N, d) features in dataset order.

    Returns:
        ``(levels, info)``: levels easiest first, and facts for the metadata:
        ``default_distance`` (distance of the seeded random split), ``search``
        (how the levels were found: ``{"method": "exhaustive", "partitions": P}``,
        ``{"method": "greedy"}`` or ``{"method": "oodml"}``), ``algorithm`` (the
        search that ran: ``search["method"]``, so ``exhaustive`` when
        ``--algorithm greedy`` could score every balanced split), ``config`` (the
        :class:`SplitConfig` used: ``cfg`` with ``levels`` capped to the class
        count, or the count ``auto`` chose), ``adjacent_levels`` (the
        :class:`~oodml.splits.adjacent.AdjacentPair` of each adjacent pair; empty
        without bootstrap draws) and, for ``levels="auto"``, ``levels_tried`` (the
        counts searched, most first).  A one-line warning names adjacent levels
        that are not distinct.
    """
    if features.shape[0] != len(dataset):
        raise OodmlError(f"{features.shape[0]} feature rows for {len(dataset)} images")
    cfg.validate(len(dataset.classes))
    cf = ClassFeatures(features, dataset.labels)
    if cfg.mode == "samples":
        cf.check_samples_mode(range(len(dataset.classes)))
    scorer = make_scorer(cf, cfg.distance, cfg.mode)
    info: dict = {}
    advice = None
    if cfg.levels == AUTO:
        result, cfg, pairs, info["levels_tried"] = _search_auto(scorer, cf, dataset.classes, cfg)
        advice = (f"--levels auto found no level count with every adjacent pair distinct and made the fewest, "
                  f"{len(result.levels)}: more classes, or other features, separate levels better")
    else:
        result, cfg = _search(scorer, cf, dataset.classes, cfg)
        pairs = _compare_adjacent(scorer, result, len(dataset.classes), cfg)
    note = not_distinct_note(pairs, advice) if advice else not_distinct_note(pairs)
    if note:
        warnings.warn(note, stacklevel=2)
    default = result.default
    info.update({"default_distance": split_distance(cf, np.array(default.train), np.array(default.test),
                                                    distance=cfg.distance, mode=cfg.mode),
                 "search": dict(result.search), "algorithm": str(result.search.get("method", cfg.algorithm)),
                 "config": cfg, "adjacent_levels": pairs})
    return _complete(dataset, cf, scorer, result, cfg), info
