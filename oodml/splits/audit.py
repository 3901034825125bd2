"""Is a level what it claims?  Two audits of a split set.

**Extractor agreement.**  A split set's levels are ordered by a train-to-test
distance measured in one network's features (``metadata["extractor"]``).
:func:`audit_features` re-measures every level's distance in another
extractor's features, with the split set's own distance and mode
(:func:`oodml.splits.distance.make_scorer`, the scorer the search used), and
compares the two orders by Spearman's rho and Kendall's tau-b
(``scipy.stats``).

Bootstrap scheme (``draws`` resamples, seeded): for each level ``k`` the train
classes and the test classes are resampled with replacement within each side,
by :func:`oodml.splits.levels.bootstrap_interval`, as when a split set is built
and with the same seed (the draws differ from the build's all the same: they
depend on the order of the classes within a side, which the manifest does not
keep); from 512-d features with more classes a side than dimensions they are
the calibrated linearisation of :mod:`oodml.splits.resampling`, as there.  The
level's interval is ``bootstrap_interval``'s bias-shifted percentile interval.  Draw ``b`` of every
level together gives one re-measured distance vector; its rank correlation with
the split set's *published* distances (fixed: they define the levels) is one
bootstrap value of rho and tau.  Their interval uses the same rule as the
distances' (percentile interval shifted so that it is centred on the estimate as
the median is on the draws, clipped to [-1, 1]; resampling duplicates classes,
which biases every draw), so it always contains the estimate.  With the split
set's own extractor, rho = tau = 1 and the interval shows how far class
resampling alone moves the order.

**Pretraining overlap.**  With ``pretraining``, the audit also counts the test
classes each level shares with a model's pretraining data
(:func:`oodml.splits.overlap.pretraining_overlap`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .._fs import atomic_path, check_writable, claim
from ..datasets import DataConfig
from ..errors import OodmlError
from ..shift import MODES, ClassFeatures, get_distance
from ..stats import CONFIDENCE, shifted_interval
from .catalogue import open_split_set
from .distance import make_scorer
from .levels import bootstrap_interval
from .manifest import AUDITS, SplitSet
from .overlap import PretrainingOverlap, pretraining_overlap
from .resampling import resample_distances


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% bootstrap interval (NaNs when not computed)."""

    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class LevelDistance:
    """One level's distance as published and as re-measured (with its bootstrap interval), squared feature units
    of the respective extractor."""

    level: int
    published: float
    distance: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ExtractorAudit:
    """The levels re-measured under one extractor.

    Attributes:
        extractor: what was asked for (a name, a model spec or a file); ``extractor_id`` and
            ``weights_hash``: what it resolved to.
        feature_dim: width of its features.
        levels: per level, published and re-measured distance.
        spearman, kendall: rank agreement of the re-measured distances with the published ones.
    """

    extractor: str
    extractor_id: str
    weights_hash: str
    feature_dim: int
    levels: tuple[LevelDistance, ...]
    spearman: Estimate
    kendall: Estimate


@dataclass(frozen=True)
class Audit:
    """Everything ``oodml splits audit`` measured for one split set."""

    split_set: str
    split_digest: str
    distance: str
    mode: str
    reference_extractor: str
    draws: int
    seed: int
    extractors: tuple[ExtractorAudit, ...]
    pretraining: PretrainingOverlap | None

    def as_dict(self) -> dict:
        """JSON-able, NaN written as null."""
        return _json_safe(asdict(self))


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --- extractor agreement: pure ------------------------------------------------------------------

def rank_agreement(published: Sequence[float], measured: Sequence[float], draws: np.ndarray | None = None,
                   confidence: float = CONFIDENCE) -> tuple[Estimate, Estimate]:
    """Spearman's rho and Kendall's tau-b between two level orders, with bootstrap intervals.

    Args:
        published: (L,) the split set's level distances.
        measured: (L,) the re-measured ones.
        draws: (B, L) bootstrap draws of ``measured`` (row ``b``: every level's ``b``-th draw), or None for
            no intervals.

    Returns:
        ``(spearman, kendall)``; a constant vector gives NaN (no order to compare).
    """
    from scipy import stats

    published, measured = np.asarray(published, np.float64), np.asarray(measured, np.float64)
    if published.shape != measured.shape or published.ndim != 1 or len(published) < 2:
        raise OodmlError(f"rank agreement needs two equally long level vectors of at least 2 levels; got "
                         f"{published.shape} and {measured.shape}")

    def both(x: np.ndarray) -> tuple[float, float]:
        if np.ptp(x) == 0 or np.ptp(published) == 0:
            return math.nan, math.nan
        return float(stats.spearmanr(published, x).statistic), float(stats.kendalltau(published, x).statistic)

    rho, tau = both(measured)
    if draws is None or not len(draws):
        return Estimate(rho, math.nan, math.nan), Estimate(tau, math.nan, math.nan)
    values = np.array([both(row) for row in np.asarray(draws, np.float64)])
    return (Estimate(rho, *shifted_interval(rho, values[:, 0], confidence, (-1.0, 1.0))),
            Estimate(tau, *shifted_interval(tau, values[:, 1], confidence, (-1.0, 1.0))))


def remeasure_levels(cf: ClassFeatures, partitions: Sequence[tuple[np.ndarray, np.ndarray]], *, distance: str,
                     mode: str, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every level's train-to-test distance in ``cf``'s features, with bootstrap intervals and draws.

    Args:
        cf: the dataset's features by class.
        partitions: per level (level 1 first), (train class indices, test class indices).
        distance, mode: as the split set was made.
        draws: bootstrap resamples (0: no intervals).
        seed: the bootstrap's seed (by default the split set's).

    Returns:
        ``(distances (L,), intervals (L, 2), draws (B, L))``.
    """
    get_distance(distance)
    if mode not in MODES:
        raise OodmlError(f"unknown feature mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "samples":
        cf.check_samples_mode(sorted({int(c) for tr, te in partitions for c in (*tr, *te)}))
    scorer = make_scorer(cf, distance, mode)
    values = scorer.distances([(np.asarray(tr), np.asarray(te)) for tr, te in partitions])
    intervals, columns = [], []
    for k, (train, test) in enumerate(partitions, start=1):
        recorded: list[np.ndarray] = []
        scored = resample_distances(scorer, [(np.asarray(train), np.asarray(test))])
        lo, hi = bootstrap_interval(_recording(scored, recorded), np.asarray(train), np.asarray(test),
                                    draws=draws, seed=seed, level=k)
        intervals.append((lo, hi))
        # bootstrap_interval scores its draws in one batch first, then the estimate.
        columns.append(recorded[0] if draws > 0 else np.empty(0))
    return np.asarray(values, np.float64), np.array(intervals, np.float64), np.stack(columns, axis=1)


def _recording(distances: Callable[[list], np.ndarray], into: list) -> Callable[[list], np.ndarray]:
    """``distances``, keeping every batch's values in ``into``."""

    def scored(partitions: list) -> np.ndarray:
        values = np.asarray(distances(partitions), np.float64)
        into.append(values)
        return values

    return scored


def audit_features(split_set: SplitSet, classes: Sequence[str], features: np.ndarray, labels: np.ndarray, *,
                   extractor: str, draws: int = 200, seed: int | None = None) -> ExtractorAudit:
    """Re-measure ``split_set``'s levels in ``features`` and compare the order with the published one.

    Args:
        classes: the dataset's class names, ``labels`` index into them.
        features: (N, d) one row per image; ``labels``: (N,) ints.
        extractor: what to call the extractor in reports; the result names it as its ``extractor_id`` too,
            with ``weights_hash`` ``"unknown"`` (:func:`audit` records the resolved extractor's).
        draws: bootstrap resamples (module docstring); ``seed``: their seed (default: the split set's).
    """
    seed = _seed(split_set, seed)
    cf = ClassFeatures(features, labels)
    meta = split_set.metadata
    distances, intervals, boot = remeasure_levels(cf, split_set.partitions(classes),
                                                  distance=meta.get("distance", "fid"),
                                                  mode=meta.get("mode", "class-mean"), draws=draws, seed=seed)
    published = [lv.distance for lv in split_set.levels]
    spearman, kendall = rank_agreement(published, distances, boot if draws > 0 else None)
    levels = tuple(LevelDistance(lv.index, float(lv.distance), float(d), float(lo), float(hi))
                   for lv, d, (lo, hi) in zip(split_set.levels, distances, intervals, strict=True))
    return ExtractorAudit(extractor, extractor, "unknown", int(np.shape(features)[1]), levels,
                          spearman, kendall)


def _seed(split_set: SplitSet, seed: int | None) -> int:
    if seed is not None:
        return int(seed)
    recorded = split_set.metadata.get("seed")
    return int(recorded) if isinstance(recorded, int) else 0


# --- I/O: extract, write, store --------------------------------------------------------------------

def audit(splits: SplitSet | str | Path, extractors: Sequence[str] = (), *, pretraining: str | None = None,
          data: DataConfig | None = None, draws: int = 200, seed: int | None = None, device: str = "auto",
          batch_size: int = 128) -> Audit:
    """Audit a split set: its levels re-measured under each of ``extractors`` (:func:`audit_features`) and,
    with ``pretraining``, the overlap of its test classes with that pretraining data
    (:func:`oodml.splits.overlap.pretraining_overlap`).

    Args:
        splits: a :class:`SplitSet`, a manifest directory or ``DATASET[@VERSION]``.
        extractors: registered extractors, model specs (``'timm:resnet18?pretrained=false'``) or files.
        data: where and how to load the dataset (needed for extractors; for the pretraining audit only to
            count images, which are reported unknown when it cannot be loaded).
        draws: bootstrap resamples; ``seed``: their seed (default the split set's).

    Raises:
        OodmlError: nothing to audit, a bad count, an unknown extractor, data that is not the split set's.
    """
    from ..features import extract_features, get_extractor

    split_set = splits if isinstance(splits, SplitSet) else open_split_set(splits)
    if not extractors and pretraining is None:
        raise OodmlError("nothing to audit: give --extractor SPEC (repeatable) and/or --pretraining NAME")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0:
        raise OodmlError(f"--bootstrap must be a non-negative whole number (got {draws!r})")
    resolved = [get_extractor(spec) for spec in extractors]  # refuse a bad spec before loading any data
    ds = None
    data = data or DataConfig()
    if resolved or data.root is not None or split_set.dataset == "glyphs":
        ds = data.load(split_set.dataset)
        split_set.check_dataset(ds.fingerprint, ds.root)
    results = []
    for spec, ext in zip(extractors, resolved, strict=True):
        features = extract_features(ds, ext, device=device, batch_size=batch_size)
        measured = audit_features(split_set, ds.classes, features, ds.labels, extractor=spec, draws=draws, seed=seed)
        results.append(replace(measured, extractor_id=ext.id, weights_hash=ext.weights_hash))
    overlap = None
    if pretraining is not None:
        counts = dict(zip(ds.classes, (int(n) for n in ds.class_counts()), strict=True)) if ds is not None else None
        overlap = pretraining_overlap(split_set, pretraining, counts)
    meta = split_set.metadata
    return Audit(f"{split_set.dataset}@{split_set.version}", split_set.digest, meta.get("distance", "fid"),
                 meta.get("mode", "class-mean"), str(meta.get("extractor", "unknown")), draws,
                 _seed(split_set, seed), tuple(results), overlap)


def format_audit(result: Audit) -> str:
    """Plain-text tables: per extractor the re-measured distances and the taus; the pretraining overlap."""
    lines = [f"{result.split_set}  digest {result.split_digest[:16]}  {result.distance} on {result.mode} features; "
             f"published under {result.reference_extractor}; {result.draws} bootstrap draws over classes"]
    for ex in result.extractors:
        lines += ["", f"{ex.extractor}  ({ex.extractor_id}, {ex.feature_dim}-d)",
                  f"  Spearman rho {_estimate(ex.spearman)}   Kendall tau {_estimate(ex.kendall)}"]
        rows = [("level", "published", "re-measured", "95% CI")]
        rows += [(str(lv.level), f"{lv.published:.4g}", f"{lv.distance:.4g}", f"{lv.ci_low:.4g}..{lv.ci_high:.4g}")
                 for lv in ex.levels]
        lines += _table(rows)
    if result.pretraining is not None:
        ov = result.pretraining
        kind = f", {ov.overlap} overlap" if ov.overlap else ""
        lines += ["", f"pretraining {ov.pretraining}: {ov.status}{kind} ({ov.reason})"]
        rows = [("level", "test classes", "with counterpart", "test images", "with counterpart")]
        for lv in ov.levels:
            rows.append((str(lv.level), str(lv.test_classes), _count(lv.test_classes_with_counterpart),
                         _count(lv.test_images), _count(lv.test_images_with_counterpart)))
        lines += _table(rows)
    return "\n".join(lines)


def _estimate(e: Estimate) -> str:
    if math.isnan(e.value):
        return "n/a (a constant distance vector)"
    if math.isnan(e.ci_low):
        return f"{e.value:.3f}"
    return f"{e.value:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]"


def _count(n: int | None) -> str:
    return "unknown" if n is None else str(n)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]


def plot_audit(result: Audit, out_prefix: str | Path) -> list[Path]:
    """One panel per extractor: each level's re-measured distance (with its interval) against the published one,
    levels numbered; written as ``<prefix>.png`` and ``.svg``."""
    from ..plotting import new_figure, save_figure

    n = len(result.extractors)
    fig, ax = new_figure(3.6 * n, 3.4)
    ax.remove()
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, ex in zip(axes, result.extractors, strict=True):
        x = [lv.published for lv in ex.levels]
        y = [lv.distance for lv in ex.levels]
        err = [[max(lv.distance - lv.ci_low, 0) if math.isfinite(lv.ci_low) else 0 for lv in ex.levels],
               [max(lv.ci_high - lv.distance, 0) if math.isfinite(lv.ci_high) else 0 for lv in ex.levels]]
        ax.errorbar(x, y, yerr=err, fmt="o", color="tab:blue", ecolor="grey", capsize=3)
        for lv in ex.levels:
            ax.annotate(str(lv.level), (lv.published, lv.distance), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.set_title(f"{ex.extractor}\ntau {_estimate(ex.kendall)}", fontsize=8)
        ax.set_xlabel(f"published {result.distance} ({result.reference_extractor})", fontsize=8)
        ax.set_ylabel(f"re-measured {result.distance}", fontsize=8)
    return save_figure(fig, out_prefix)


def write_audit(result: Audit, out: str | Path, *, replace: bool = False) -> list[Path]:
    """Write ``audit.json`` and, when extractors were audited, ``audit.png``/``audit.svg`` into ``out``, each
    file atomically, with ``out`` claimed (:func:`audit_destinations`); plots of an earlier audit that this
    one has none of are removed.  An ``audit.json`` of another split set is replaced only with ``replace``.

    Returns:
        The paths written.

    Raises:
        OodmlError: ``out`` cannot be written, another process writes it, or it holds the audit of another
            split set and ``replace`` is false.
    """
    out = Path(out)
    dest = out / "audit.json"
    with _claim_out(out):
        _check_out(out, result.split_set, result.split_digest, replace=replace)
        with atomic_path(dest) as tmp:
            tmp.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        if result.extractors:
            return [dest, *plot_audit(result, out / "audit")]
        for stale in (out / "audit.png", out / "audit.svg"):
            stale.unlink(missing_ok=True)
    return [dest]


def _claim_out(out: Path) -> contextlib.AbstractContextManager[Path]:
    check_writable(out)
    return claim(out / "audit.json", what=f"--out {out}", fix="choose another --out")


def _check_out(out: Path, split_set: str, digest: str, *, replace: bool) -> None:
    """Refuse to replace, unasked, an ``audit.json`` in ``out`` that is not of the split set ``digest``."""
    if replace or not (out / "audit.json").exists():
        return
    try:
        earlier = json.loads((out / "audit.json").read_text(encoding="utf-8"))
        what = f"the audit of {earlier['split_set']} ({str(earlier['split_digest'])[:12]})"
        if earlier["split_digest"] == digest:
            return
    except (OSError, ValueError, TypeError, KeyError):
        what = "an audit.json that is not readable"
    raise OodmlError(f"--out {out} holds {what}, not of {split_set} ({digest[:12]}); pass --replace to replace "
                     "it, or choose another --out")


def audit_slug(name: str) -> str:
    """A file name for an audit of ``name`` (an extractor or a pretraining declaration), distinct for distinct
    names but for a 32-bit hash collision: ``name`` itself when it is lower-case letters, digits and inner
    ``-`` (``pixels``), else those characters (runs of others as ``-``, at most 64) and the first 8 hex
    digits of the name's sha256 (``timm:resnet18?pretrained=false`` -> ``timm-resnet18-pretrained-false-<8 hex>``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].strip("-")
    if slug == name:
        return slug
    return f"{slug or 'audit'}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def stored_audit_paths(split_set: SplitSet, extractors: Sequence[str] = (),
                       pretraining: str | None = None) -> list[Path]:
    """Where :func:`store_audit` keeps the audits of ``extractors`` (as given) and of ``pretraining``:
    ``<split set>/audits/<extractor slug>.json`` and ``pretraining-<slug>.json``.

    Raises:
        OodmlError: the split set was built in memory and has no directory.
    """
    if split_set.path is None:
        raise OodmlError("this split set was built in memory and has no directory to keep audits in; "
                         "publish it first (write_split_set) or write the audit with --out")
    names = [audit_slug(spec) for spec in extractors]
    if pretraining is not None:
        names.append(f"pretraining-{audit_slug(pretraining)}")
    return [split_set.path / AUDITS / f"{name}.json" for name in names]


@contextlib.contextmanager
def audit_destinations(split_set: SplitSet, out: str | Path, *, extractors: Sequence[str] = (),
                       pretraining: str | None = None, store: bool = False, replace: bool = False) -> Iterator[None]:
    """Claim and check, before any work, every file an audit will write: ``out/audit.json`` and, with
    ``store``, the stored audits.  While the block runs, another process writing any of them is refused;
    :func:`write_audit` and :func:`store_audit` inside it reuse these claims.

    Raises:
        OodmlError: a destination cannot be written or is being written by another process, ``out``
            holds the audit of another split set, or a stored audit exists, unless ``replace``.
    """
    out = Path(out)
    with contextlib.ExitStack() as claims:
        claims.enter_context(_claim_out(out))
        _check_out(out, f"{split_set.dataset}@{split_set.version}", split_set.digest, replace=replace)
        for dest in stored_audit_paths(split_set, extractors, pretraining) if store else []:
            claims.enter_context(_claim_stored(dest))
            _check_stored(dest, replace=replace)
        yield


def _claim_stored(dest: Path) -> contextlib.AbstractContextManager[Path]:
    check_writable(dest.parent, option="the split set folder")
    return claim(dest, what=f"the stored audit {dest}", fix="leave out --store")


def _check_stored(dest: Path, *, replace: bool) -> None:
    """Refuse to replace a stored audit unasked, naming how many draws it was made with."""
    if replace or not dest.exists():
        return
    try:
        draws = f"{int(json.loads(dest.read_text(encoding='utf-8'))['draws'])} draws"
    except (OSError, ValueError, TypeError, KeyError):
        draws = "not readable"
    raise OodmlError(f"{dest} already holds a stored audit ({draws}); pass --replace to replace it, or leave "
                     "out --store")


def store_audit(result: Audit, split_set: SplitSet, *, replace: bool = False) -> list[Path]:
    """Keep the audit beside the published split set, in ``<split set>/audits/``: one
    ``<extractor slug>.json`` per extractor and ``pretraining-<name>.json``.  The folder is outside the
    manifest, so the digest and ``oodml splits verify`` do not change.  Each file is claimed while it is
    checked and written; one that exists is replaced only with ``replace``.

    Raises:
        OodmlError: the split set has no directory, the audit is of another split set, a stored audit
            exists and ``replace`` is false, or another process is storing the same audit.
    """
    pretraining = result.pretraining.pretraining if result.pretraining is not None else None
    paths = stored_audit_paths(split_set, [ex.extractor for ex in result.extractors], pretraining)
    if split_set.digest != result.split_digest:
        raise OodmlError(f"the audit is of split set digest {result.split_digest[:12]}, not of "
                         f"{split_set.dataset}@{split_set.version} ({split_set.digest[:12]})")
    common = {k: v for k, v in result.as_dict().items() if k not in ("extractors", "pretraining")}
    records = [{**common, "extractors": [_json_safe(asdict(ex))]} for ex in result.extractors]
    if result.pretraining is not None:
        records.append({**common, "pretraining": _json_safe(asdict(result.pretraining))})
    with contextlib.ExitStack() as claims:
        for dest in paths:
            claims.enter_context(_claim_stored(dest))
            _check_stored(dest, replace=replace)
        for dest, record in zip(paths, records, strict=True):
            with atomic_path(dest) as tmp:
                tmp.write_text(json.dumps(record, indent=2) + "\n")
    return paths
