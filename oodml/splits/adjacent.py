"""Are adjacent levels distinct?  A paired bootstrap over classes of each adjacent pair's distance difference.

A level's own interval (:func:`oodml.splits.levels.bootstrap_interval`) says
how much its distance moves when its classes are resampled; two levels whose
intervals overlap may still be told apart, because adjacent levels share most
of their classes and so move together.  What tells them apart is the interval
of the *difference* ``distance(k + 1) - distance(k)`` under a **paired**
resample: one resample of the classes applied to both levels.

The pairing.  Two levels usually hold different class sets on each side (a
swap moves a few classes across; a removal level drops some), so "the same
resample" cannot mean the same positions within a side.  Each draw resamples
*the dataset's classes* (all of them, with replacement:
:func:`oodml.stats.resample_counts`), and every side of every level keeps its
classes with the multiplicity that draw gave them (:func:`oodml.stats.with_counts`).
A class two levels share carries the same weight in both, so the difference of
a pair varies only through the classes that differ, which is what a paired
bootstrap over classes measures.  Sides change size from draw to draw, as they
would had the classes been sampled anew; a draw that leaves some side of some
level with fewer than 2 classes (counted with multiplicity: a covariance needs
two) is redrawn, up to ``20 x draws`` tries in all.  (Resampling each side
within itself instead, as the levels' own intervals do, keeps sizes fixed but
can pair a shared class only in part: a coupled version of it found 2 of 7
adjacent pairs of a 40-class folder distinct where this finds 6.)  One draw serves every level, so the
differences of any two levels are paired too.

The interval is the bias-shifted percentile interval of the draws of the
difference (:func:`oodml.stats.shifted_interval`, the rule of the levels' own
intervals, unclipped).  A pair is *distinct* when its interval lies above 0:
the harder level is farther at 95% confidence.  Seeds are derived from the
split set's seed (its digest when it has none), so ``make-splits`` and
``oodml splits show --adjacent`` give the same numbers for the same features.

``metadata.json`` records them as ``adjacent_levels``: ``[{"levels": [i, i + 1],
"difference": d, "ci_low": lo, "ci_high": hi, "distinct": bool}, ...]``,
distances in squared feature units, outside the content digest (they are
derived from the levels by a seeded bootstrap, like the levels' intervals).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OodmlError, brief
from ..progress import progress
from ..seeding import rng_for
from ..stats import CONFIDENCE, resample_counts, shifted_interval, with_counts

if TYPE_CHECKING:  # manifest imports this module
    from .distance import Scorer
    from .manifest import SplitSet

#: The metadata key of the adjacent pairs (outside the content digest: :mod:`oodml.splits.manifest`).
METADATA_KEY = "adjacent_levels"
#: Partitions scored per call while drawing (bounds the scorer's batched memory).
_BATCH = 256
#: Resamples tried per draw wanted before giving up on the rest (tiny sides make many unusable).
MAX_TRIES = 20

Partition = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class AdjacentPair:
    """Levels ``levels = (i, j)`` compared: ``difference`` = distance(j) - distance(i) (squared feature units)
    with its 95% paired-bootstrap interval ``ci_low``..``ci_high``."""

    levels: tuple[int, int]
    difference: float
    ci_low: float
    ci_high: float

    @property
    def distinct(self) -> bool:
        """Whether the harder level is farther at 95% confidence (the interval lies above 0)."""
        return bool(self.ci_low > 0)

    def as_dict(self) -> dict:
        """The ``metadata.json`` record of the pair."""
        return {"levels": list(self.levels), "difference": self.difference, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "distinct": self.distinct}


def adjacent_seed(seed: object, digest: str | None = None) -> object:
    """What the draws are seeded from: the split set's seed, else (imported sets record none) its digest."""
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else f"digest:{digest}"


def paired_draws(distances: Callable[[list[Partition]], np.ndarray], partitions: Sequence[Partition], *,
                 num_classes: int, draws: int, seed: object) -> tuple[np.ndarray, np.ndarray]:
    """Every level's distance and its paired bootstrap draws (module docstring).

    Args:
        distances: scores a batch of (train indices, test indices) partitions (duplicates allowed).
        partitions: per level, easiest first: (train class indices, test class indices) into the dataset's
            ``num_classes`` classes.
        draws: resamples wanted; ``seed``: from :func:`adjacent_seed`.

    Returns:
        ``(estimates (L,), draws (B, L))`` float64, squared feature units: row ``b`` holds every level's
        distance under the ``b``-th resample; ``B`` is ``draws`` unless too many resamples left a side
        with fewer than 2 classes (then fewer; 0 rows when none was usable).
    """
    partitions = [(np.asarray(tr, np.int64), np.asarray(te, np.int64)) for tr, te in partitions]
    estimates = np.asarray(distances(partitions), np.float64)
    rng = rng_for("adjacent-levels", seed)
    values, batch, usable, tries = [], [], 0, MAX_TRIES * draws
    for _ in progress(range(draws), "levels: adjacent-level comparison", unit="draw"):
        drawn = _usable_draw(partitions, num_classes, rng, tries)
        tries -= drawn[1]
        if drawn[0] is None:
            break
        usable += 1
        batch += drawn[0]
        if len(batch) >= _BATCH:
            values.append(np.asarray(distances(batch), np.float64))
            batch = []
    if batch:
        values.append(np.asarray(distances(batch), np.float64))
    flat = np.concatenate(values) if values else np.empty(0)
    return estimates, flat.reshape(usable, len(partitions))


def _usable_draw(partitions: Sequence[Partition], num_classes: int, rng: np.random.Generator, tries: int
                 ) -> tuple[list[Partition] | None, int]:
    """The next resample of every level that leaves each side at least 2 classes, and the tries it took (None
    when ``tries`` ran out first)."""
    for attempt in range(1, tries + 1):
        counts = resample_counts(num_classes, 1, rng)[0]
        drawn = [(with_counts(tr, counts), with_counts(te, counts)) for tr, te in partitions]
        if min(min(len(tr), len(te)) for tr, te in drawn) >= 2:
            return drawn, attempt
    return None, max(tries, 0)


def pair(estimates: np.ndarray, draws: np.ndarray, i: int, j: int, confidence: float = CONFIDENCE) -> AdjacentPair:
    """Levels ``i`` < ``j`` (1-based) compared from :func:`paired_draws`' output."""
    difference = float(estimates[j - 1] - estimates[i - 1])
    lo, hi = shifted_interval(difference, draws[:, j - 1] - draws[:, i - 1], confidence)
    return AdjacentPair((i, j), difference, float(lo), float(hi))


def adjacent_pairs(estimates: np.ndarray, draws: np.ndarray, confidence: float = CONFIDENCE
                   ) -> tuple[AdjacentPair, ...]:
    """Each adjacent pair of levels (1-2, 2-3, ...) compared; empty when there are no draws."""
    if not len(draws):
        return ()
    return tuple(pair(estimates, draws, k, k + 1, confidence) for k in range(1, len(estimates)))


def compare_adjacent(scorer: Scorer, partitions: Sequence[Partition], *, num_classes: int, draws: int,
                     seed: object) -> tuple[AdjacentPair, ...]:
    """Each adjacent pair of ``partitions``' levels compared by ``scorer``'s distance, as ``make-splits`` and
    ``splits show --adjacent`` both do: :func:`paired_draws` scored by
    :func:`~oodml.splits.resampling.resample_distances` (exact, or calibrated-linear for many wide classes,
    whose calibration the levels' intervals then reuse)."""
    from .resampling import resample_distances  # scipy's linear algebra, only once levels are compared

    estimates, values = paired_draws(resample_distances(scorer, partitions), partitions, num_classes=num_classes,
                                     draws=draws, seed=seed)
    return adjacent_pairs(estimates, values)


#: What a not-distinct note advises by default.
FEWER_LEVELS = "fewer levels separate better (make-splits --levels N, or --levels auto)"


def not_distinct_note(pairs: Sequence[AdjacentPair], advice: str = FEWER_LEVELS) -> str | None:
    """One line naming the adjacent pairs that are not distinct, ending with ``advice`` (None when all are)."""
    blurred = [f"{a}-{b}" for (a, b) in (p.levels for p in pairs if not p.distinct)]
    if not blurred:
        return None
    return (f"levels {', '.join(blurred)} are not distinct: the 95% paired-bootstrap interval of their distance "
            f"difference reaches 0 ({len(blurred)} of {len(pairs)} adjacent pairs); {advice}")


def format_pairs(pairs: Sequence[AdjacentPair], source: str = "") -> list[str]:
    """Plain-text lines: a heading (``source`` says where the numbers come from), then one row per pair."""
    lines = [f"adjacent levels: distance difference with its 95% paired bootstrap interval over classes{source}"]
    for p in pairs:
        verdict = "distinct" if p.distinct else "NOT distinct"
        lines.append(f"  levels {p.levels[0]}-{p.levels[1]}: {p.difference:+.4g}  "
                     f"[{p.ci_low:+.4g}, {p.ci_high:+.4g}]  {verdict}")
    return lines


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(record: object, k: int) -> str | None:
    """What is wrong with the ``k``-th record (levels ``k``, ``k + 1``), or None."""
    keys = {"levels", "difference", "ci_low", "ci_high", "distinct"}
    if not isinstance(record, dict) or set(record) != keys:
        return f"entry {k} is {brief(record)}, expected an object with keys {', '.join(sorted(keys))}"
    if record["levels"] != [k, k + 1]:
        return f"entry {k} compares levels {brief(record['levels'])}, expected [{k}, {k + 1}]"
    values = [record[name] for name in ("ci_low", "difference", "ci_high")]
    if not all(_number(v) for v in values):
        return f"entry {k} has a difference or interval bound that is not a finite number"
    if not values[0] <= values[1] <= values[2]:
        return f"entry {k} has its difference outside its interval"
    if record["distinct"] is not (values[0] > 0):
        return f"entry {k} says distinct {brief(record['distinct'])} for an interval from {values[0]:g}"
    return None


def pairs_from_metadata(value: object, num_levels: int, where: str) -> tuple[AdjacentPair, ...]:
    """The pairs a ``metadata.json`` records (its ``adjacent_levels`` value), checked against ``num_levels``.

    Raises:
        OodmlError: one line naming what is malformed (the value is outside the digest, so a hand edit that
            also updates the file's sha256 is caught here).
    """
    problem = None
    if not isinstance(value, list):
        problem = f"it is {brief(value)}, not a list"
    elif len(value) != num_levels - 1:
        problem = f"{len(value)} entries for {num_levels} levels, expected {num_levels - 1}"
    else:
        problem = next((p for k, record in enumerate(value, start=1) if (p := _problem(record, k))), None)
    if problem:
        raise OodmlError(f"{where}: metadata.json has malformed {METADATA_KEY} ({problem}); restore the split set "
                         "from where it was published")
    return tuple(AdjacentPair((k, k + 1), float(r["difference"]), float(r["ci_low"]), float(r["ci_high"]))
                 for k, r in enumerate(value, start=1))


def measure_adjacent(split_set: SplitSet, *, root: str | Path | None = None, options: dict | None = None,
                     extractor: str | None = None, weights: str | None = None, draws: int | None = None,
                     device: str = "auto", batch_size: int = 128) -> tuple[tuple[AdjacentPair, ...], str]:
    """Compare ``split_set``'s adjacent levels in its dataset's features, as ``make-splits`` does (the I/O edge:
    loads the dataset at ``root`` and extracts features).

    Args:
        extractor, weights: the features (default: the dataset's split extractor, as ``make-splits``).
        draws: bootstrap resamples (default: the split set's ``parameters.bootstrap``, else 200).

    Returns:
        ``(pairs, extractor id)``; the pairs equal those ``make-splits`` recorded when the features are the
        ones the split set was made from.

    Raises:
        OodmlError: data other than the split set's, a class the data lacks, a bad ``draws``.
    """
    from ..datasets import dataset_spec, load_dataset
    from ..features import extract_features, get_extractor
    from ..shift import ClassFeatures
    from .distance import make_scorer

    meta = split_set.metadata
    recorded = (meta.get("parameters") or {}).get("bootstrap") if isinstance(meta.get("parameters"), dict) else None
    draws = draws if draws is not None else recorded if isinstance(recorded, int) and recorded > 0 else 200
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise OodmlError(f"--bootstrap must be a whole number of at least 1 to compare levels (got {brief(draws)})")
    # The data first: a split set whose data is absent or other is refused before any weights are fetched.
    ds = load_dataset(split_set.dataset, root=root, **(options or {}))
    split_set.check_dataset(ds.fingerprint, ds.root)
    partitions = split_set.partitions(ds.classes)
    ext = get_extractor(extractor or dataset_spec(split_set.dataset).split_extractor, weights)
    cf = ClassFeatures(extract_features(ds, ext, device=device, batch_size=batch_size), ds.labels)
    scorer = make_scorer(cf, str(meta.get("distance", "fid")), str(meta.get("mode", "class-mean")))
    pairs = compare_adjacent(scorer, partitions, num_classes=len(ds.classes), draws=draws,
                             seed=adjacent_seed(meta.get("seed"), split_set.digest))
    return pairs, ext.id
