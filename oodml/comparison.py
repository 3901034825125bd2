"""Paired comparison of evaluation runs: is B better than A, level by level, and by how much?

:func:`compare` reads two or more runs on one split set (folders ``oodml evaluate --out`` wrote, or
leaderboard entries, rescored from their embeddings by :func:`oodml.leaderboard.verify`) and reports, for
every further run against the first, the difference ``X - A`` per level, of the mean over levels and of the
AUC (:func:`oodml.protocol.curve_summary`), each with a paired bootstrap interval (:mod:`oodml.stats`):

* retrieval metrics (``recall@1``, ``map@r``): each draw resamples every level's test classes once with
  replacement and applies the same resample to every run (a level's metric is the drawn classes' metric sum
  over their queries: a run's ``classes.parquet``, :func:`oodml.results.class_records`; an entry's
  ``Scores.class_sums``, recomputed from its embeddings by the verifier);
* few-shot accuracies (per shots and adaptation): paired by episode (a split set fixes its episodes), each
  draw resamples every level's common episodes (a run's rows, an entry's ``Scores.episodes``).

Every quantity is compared on two test sets (``test_set`` of a row): ``matched``, the headline, and ``full``.

* ``full``: each level's whole test set, as above.
* ``matched``: the class-count-matched curve of :mod:`oodml.matched` (every level scored on D seeded draws of N
  of its test classes, averaged).  The draws are seeded from the split set's digest, the level and the draw
  index, so two runs on one split set with the same N and D hold the same classes in every draw; this is
  checked in their records (a leaderboard entry's are :attr:`oodml.leaderboard.Scores.matched`, at its
  protocol card's N and D or the split set's default), and a run without matched records (a run of
  ``--match-classes off`` or of an older oodml), another N or D, or other classes in a draw leaves the runs
  compared on the full test sets only, with a note.  A level's retrieval value is the mean over its draws of
  the drawn classes' summed per-query metric over their queries.  Its interval combines, as
  :func:`oodml.matched.matched_interval` does for one run, two sources in quadrature: a paired class
  bootstrap (each draw of the bootstrap resamples the level's *full* test-class list once, with
  replacement, and applies that one resample to every matched draw's classes and to every run: the draws of
  a level share most of their classes, so one resample keeps their overlap:
  :func:`oodml.matched.paired_matched_draws`; percentile interval of B - A) and the spread of the D draws'
  paired differences (:func:`oodml.stats.with_draw_spread`: their standard error, sd / sqrt(D), times the
  normal quantile of the confidence): ``low = d - sqrt((d - b_low)^2 + (z se)^2)``, ``high = d +
  sqrt((b_high - d)^2 + (z se)^2)``.  Few-shot accuracies on the N-way episodes are paired by episode as on
  the full test sets.

Leaderboard entries are scored from float16 embeddings, runs from float32 ones: a note says so when both
are compared, as part of a difference between a run and an entry can be that rounding.

Only the levels every run has are compared (the others are named in ``notes``).  The same run given twice is
allowed: its differences are exactly 0 with zero-width intervals, a check of the comparison itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import OodmlError
from .matched import MatchedRecords, paired_matched_draws
from .stats import CONFIDENCE, paired_ratio_draws, percentile_interval, with_draw_spread

#: the retrieval metrics compared (per-class sums in a run's classes.parquet)
RETRIEVAL = ("recall@1", "map@r")
#: bootstrap draws unless told otherwise
DRAWS = 2000
#: tolerance of the check that a run's class records add up to its per-level metric
_RECORD_TOLERANCE = 1e-6
#: what ``test_set`` may ask for: both test sets (matched the headline), or one
TEST_SETS = ("both", "matched", "full")


@dataclass
class Scored:
    """One run as the comparison sees it.

    Attributes:
        name: how it is shown (its folder's name; ``parent/name`` when two share a name).
        path: its folder.  kind: ``run`` (``oodml evaluate --out``) or ``entry`` (a leaderboard entry).
        dataset, split_digest: what it was scored on.
        distance: level -> the level's train-test distance.
        classes: level -> test class names, sorted (the bootstrap's units, same order for every run).
        queries: level -> (C,) retrieval queries per class, in ``classes`` order.
        sums: metric -> level -> (C,) the metric summed over each class's queries.
        episodes: (shots, adaptation, metric) -> level -> episode index -> value.
        matched: the class-count-matched records (classes in ``classes`` order), or None (a run without them).
    """

    name: str
    path: Path
    kind: str
    dataset: str
    split_digest: str
    distance: dict[int, float]
    classes: dict[int, list[str]]
    queries: dict[int, np.ndarray]
    sums: dict[str, dict[int, np.ndarray]]
    episodes: dict[tuple[int, str, str], dict[int, dict[int, float]]] = field(default_factory=dict)
    matched: MatchedRecords | None = None


@dataclass
class Comparison:
    """What :func:`compare` returns.

    Attributes:
        runs: ``{"name", "path", "kind"}`` per run, the reference (A) first.
        dataset, split_digest: the split set all runs share.  levels: the levels compared, by distance.
        draws, seed, confidence: of the bootstrap.
        test_sets: the test sets compared (``matched`` first when it is).  matched: ``{"n_classes": N,
            "draws": D}`` of the matched curve, or None when it is not compared.
        rows: one dict per (other run, test set, quantity): ``against`` (A's name), ``run``, ``test_set``
            (``matched`` or ``full``), ``metric``, ``shots`` (0
            for retrieval), ``adaptation``, ``scope`` (``level``, ``mean`` over levels, or ``auc``),
            ``level`` (None unless scope is level), ``a``, ``b`` (the two values), ``difference`` (b - a),
            ``ci_low``, ``ci_high``, ``excludes_zero``, ``units`` (``classes`` or ``episodes``).
        notes: what was left out and why.
    """

    runs: list[dict]
    dataset: str
    split_digest: str
    levels: list[int]
    draws: int
    seed: int
    confidence: float
    rows: list[dict]
    notes: list[str]
    test_sets: list[str] = field(default_factory=lambda: ["full"])
    matched: dict | None = None

    def to_dict(self) -> dict:
        return {"runs": self.runs, "dataset": self.dataset, "split_digest": self.split_digest,
                "levels": self.levels, "draws": self.draws, "seed": self.seed, "confidence": self.confidence,
                "test_sets": self.test_sets, "matched": self.matched, "rows": self.rows, "notes": self.notes}

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON (NaN written as null)."""
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value
        return json.dumps(clean(self.to_dict()), indent=2)

    def format(self) -> str:
        """The comparison as text: one table per run against A; ``*`` marks an interval that excludes 0."""
        out = [f"{self.dataset} (split set {self.split_digest[:12]}), levels {', '.join(map(str, self.levels))}; "
               f"paired bootstrap, {self.draws} draws, seed {self.seed}, {self.confidence:.0%} intervals; "
               "* = the interval excludes 0"]
        if self.matched:
            out.append(f"test set matched: {self.matched['n_classes']} classes per level in "
                       f"{self.matched['draws']} draws, averaged (the headline); full: each level's whole test set")
        for run in self.runs[1:]:
            rows = [r for r in self.rows if r["run"] == run["name"]]
            a = self.runs[0]["name"]
            table = [["metric", "test set", "level", a, run["name"], "difference", "interval", ""]]
            for r in rows:
                what = r["metric"] if not r["shots"] else f"{r['shots']}-shot {r['adaptation']} {r['metric']}"
                table.append([what, r["test_set"], str(r["level"]) if r["scope"] == "level" else r["scope"],
                              f"{r['a']:.4f}",
                              f"{r['b']:.4f}", f"{r['difference']:+.4f}",
                              f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]", "*" if r["excludes_zero"] else ""])
            widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
            units = " and ".join(dict.fromkeys(r["units"] for r in rows)) or "nothing in common"
            out.append(f"\n{run['name']} - {a} (resampled: {units})")
            out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths,
                                                                                               strict=True)))
                    .rstrip() for t in table]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)


def compare(paths: Sequence[str | Path], *, draws: int = DRAWS, seed: int = 0, confidence: float = CONFIDENCE,
            data_root: str | Path | None = None, test_set: str = "both") -> Comparison:
    """Compare runs on one split set, each against the first, with paired bootstrap intervals.

    Args:
        paths: two or more folders: evaluation runs (``oodml evaluate --out``) or leaderboard entries; the
            first is the reference A.
        draws: bootstrap resamples (at least 100).  seed: of the resampling (the same seed, the same intervals).
        confidence: of the percentile intervals, in (0, 1).
        data_root: the dataset's folder, for rescoring leaderboard entries of a dataset that needs one.
        test_set: ``both`` (the class-count-matched curve as the headline where every run has the same one,
            else the full test sets with a note), ``matched`` (refused where they lack it) or ``full``.

    Returns:
        A :class:`Comparison` (``.format()`` for text, ``.to_json()`` for machines).

    Raises:
        OodmlError: fewer than two paths; a folder that is neither a run nor an entry; a run without class
            records (saved by an older oodml) or with corrupt ones; an entry that does not verify; runs on
            different datasets or split sets; no level in common; ``draws`` or ``confidence`` out of range;
            ``test_set`` not one of :data:`TEST_SETS`, or ``matched`` for runs without the same matched curve.
    """
    if len(paths) < 2:
        raise OodmlError("compare needs at least two runs (results folders or leaderboard entries): A B [C ...]")
    if draws < 100:
        raise OodmlError(f"--draws {draws}: give at least 100 bootstrap draws")
    if not 0 < confidence < 1:
        raise OodmlError(f"confidence {confidence}: give a number between 0 and 1")
    if test_set not in TEST_SETS:
        raise OodmlError(f"--test-set {test_set!r}: give one of {', '.join(TEST_SETS)}")
    scored = _name_runs([read_scored(p, data_root=data_root) for p in paths])
    _check_same_split_set(scored)
    levels, notes = _common_levels(scored)
    if Path(scored[0].path).resolve() in {Path(s.path).resolve() for s in scored[1:]}:
        notes.append("a run is compared with itself: its differences are 0 by construction")
    if len({s.kind for s in scored}) > 1:
        notes.append("leaderboard entries are scored from their float16 embeddings, evaluation runs from float32: "
                     "part of a difference between a run and an entry can be that rounding")
    test_sets = _test_sets(scored, levels, test_set, notes)
    rows = []
    for other in scored[1:]:
        for which in test_sets:
            rows += _retrieval_rows(scored[0], other, levels, which, (draws, seed, confidence), notes)
            rows += _fewshot_rows(scored[0], other, levels, which, (draws, seed, confidence), notes)
    runs = [{"name": s.name, "path": str(s.path), "kind": s.kind} for s in scored]
    matched = scored[0].matched
    return Comparison(runs, scored[0].dataset, scored[0].split_digest, levels, draws, seed, confidence, rows,
                      list(dict.fromkeys(notes)), test_sets,
                      {"n_classes": matched.n_classes, "draws": matched.draws} if "matched" in test_sets else None)


def _test_sets(scored: list[Scored], levels: list[int], test_set: str, notes: list[str]) -> list[str]:
    """The test sets to compare: ``matched`` where asked for and every run has the same matched curve."""
    if test_set == "full":
        return ["full"]
    problem = _matched_problem(scored, levels)
    if problem is None:
        return ["matched", "full"] if test_set == "both" else ["matched"]
    if test_set == "matched":
        raise OodmlError(f"--test-set matched: {problem}; compare them with --test-set full")
    notes.append(f"compared on the full test sets only: {problem}")
    return ["full"]


def _matched_problem(scored: list[Scored], levels: list[int]) -> str | None:
    """Why the runs cannot be compared on one class-count-matched curve, or None when they can."""
    a = scored[0].matched
    for s in scored:
        if s.matched is None:
            return (f"{s.name} has no class-count-matched records (evaluated with --match-classes off or by an "
                    "older oodml)")
        missing = [lv for lv in levels if lv not in s.matched.subsets]
        if missing:
            return f"{s.name} has no class-count-matched records at level {missing[0]}"
    for s in scored[1:]:
        m = s.matched
        if (m.n_classes, m.draws) != (a.n_classes, a.draws):
            return (f"{scored[0].name} is matched at {a.n_classes} classes in {a.draws} draws, {s.name} at "
                    f"{m.n_classes} in {m.draws}; evaluate both with the same --match-classes and --match-draws")
        for lv in levels:
            if not np.array_equal(m.subsets[lv], a.subsets[lv]):
                return (f"the matched draws of {s.name} at level {lv} hold other classes than {scored[0].name}'s "
                        "(not the same split set's seeded draws)")
    return None


# --- reading runs and entries -----------------------------------------------------------------------

def read_scored(path: str | Path, *, data_root: str | Path | None = None) -> Scored:
    """A run's or a leaderboard entry's per-class and per-episode scores (see :class:`Scored`).

    Raises:
        OodmlError: ``path`` is neither, or its records are missing, corrupt or do not verify.
    """
    path = Path(path)
    if (path / "results.parquet").is_file() or path.name == "results.parquet" and path.is_file():
        return _read_run(path)
    if (path / "submission.json").is_file():
        return _read_entry(path, data_root)
    raise OodmlError(f"{path}: neither an evaluation run (no results.parquet) nor a leaderboard entry (no "
                     "submission.json); give a folder `oodml evaluate --out` wrote or one under "
                     "leaderboard/submissions/DATASET/VERSION/")


def _read_run(path: Path) -> Scored:
    from .results import class_records, read_run

    folder = path.parent if path.name == "results.parquet" else path
    results = read_run(folder)
    everything = class_records(folder)
    records = [r for r in everything if r.get("draw", -1) == -1]
    meta = results.meta
    distance = {lv["level"]: float(lv["distance"]) for lv in results.levels}
    classes, queries, sums = _class_arrays(folder, records, distance)
    _check_records(folder, results.rows, queries, sums)
    matched = _read_matched(folder, meta.get("matched"), [r for r in everything if r.get("draw", -1) >= 0],
                            results.rows, classes)
    return Scored(folder.name, folder, "run", str(meta.get("dataset")), str(meta.get("split_digest")), distance,
                  classes, queries, sums, _episodes(results.rows, "full", classes), matched)


def _episodes(rows: list[dict], test_set: str, classes: dict) -> dict:
    """(shots, adaptation, metric) -> level -> episode -> value of the few-shot rows of ``test_set``."""
    episodes: dict = {}
    for r in rows:
        if r["shots"] > 0 and r.get("test_set", "full") == test_set and r["level"] in classes:
            episodes.setdefault((r["shots"], r["adaptation"], r["metric"]), {}).setdefault(
                r["level"], {})[int(r["episode"])] = float(r["value"])
    return episodes


def _read_matched(folder: Path, meta: dict | None, records: list[dict], rows: list[dict],
                  classes: dict[int, list[str]]) -> MatchedRecords | None:
    """A run's matched records (:class:`oodml.matched.MatchedRecords`), checked against its matched rows; None
    without them."""
    if not meta or not records:
        return None
    by_draw: dict[tuple[int, int], list[dict]] = {}
    for r in records:
        by_draw.setdefault((int(r["level"]), int(r["draw"])), []).append(r)
    bad = f"{folder}/classes.parquet: the class-count-matched records of level {{}} are corrupt or do not add " \
          "up to results.parquet; evaluate the run again"
    reported = {(r["level"], r["episode"], r["metric"]): r["value"] for r in rows
                if r["shots"] == 0 and r.get("test_set") == "matched"}
    metrics = [m for m in RETRIEVAL if m in records[0]]
    subsets, queries, sums = {}, {}, {m: {} for m in metrics}
    for level in sorted({lv for lv, _ in by_draw}):
        position = {c: i for i, c in enumerate(classes.get(level, []))}
        draws = [by_draw[(level, d)] for d in range(int(meta["draws"])) if (level, d) in by_draw]
        if len(draws) != int(meta["draws"]) or len(draws) != len([k for k in by_draw if k[0] == level]) or any(
                r["class"] not in position for d in draws for r in d):
            raise OodmlError(bad.format(level))
        subsets[level] = np.array([sorted(position[r["class"]] for r in d) for d in draws], dtype=np.int64)
        queries[level] = _per_class(draws, "queries", position)
        for m in metrics:
            sums[m][level] = s = _per_class(draws, m, position)
            q = queries[level]
            if not (np.isfinite(s).all() and (s > -1e-9).all() and (s <= q + 1e-9).all() and (q.sum(1) > 0).all()):
                raise OodmlError(bad.format(level))
            values = s.sum(1) / q.sum(1)
            if any(abs(v - reported.get((level, d, m), v)) > _RECORD_TOLERANCE for d, v in enumerate(values)):
                raise OodmlError(bad.format(level))
    return MatchedRecords(int(meta["n_classes"]), int(meta["draws"]), subsets, queries, sums,
                          _episodes(rows, "matched", classes))


def _per_class(draws: list[list[dict]], column: str, position: dict[str, int]) -> np.ndarray:
    """(D, C) float64: per draw, ``column`` of each of the level's classes (0 for a class it left out)."""
    out = np.zeros((len(draws), len(position)), dtype=np.float64)
    for d, records in enumerate(draws):
        for r in records:
            out[d, position[r["class"]]] = float(r.get(column, np.nan))
    return out


def _class_arrays(folder: Path, records: list[dict], distance: dict[int, float]):
    """Per level the sorted class names, the queries and each retrieval metric's sums, from class records."""
    by_level: dict[int, dict[str, dict]] = {}
    for r in records:
        if r["class"] in by_level.setdefault(int(r["level"]), {}):
            raise OodmlError(f"{folder}/classes.parquet lists class {r['class']!r} twice at level {r['level']}; "
                             "evaluate the run again")
        by_level[int(r["level"])][r["class"]] = r
    if not by_level or set(by_level) - set(distance):
        raise OodmlError(f"{folder}/classes.parquet does not match the run's levels; evaluate the run again")
    classes = {lv: sorted(by) for lv, by in by_level.items()}
    queries = {lv: np.array([by_level[lv][c]["queries"] for c in names], dtype=np.float64)
               for lv, names in classes.items()}
    sums = {m: {lv: np.array([by_level[lv][c].get(m, np.nan) for c in names], dtype=np.float64)
                for lv, names in classes.items()} for m in RETRIEVAL if m in records[0]}
    return classes, queries, sums


def _check_records(folder: Path, rows: list[dict], queries: dict, sums: dict) -> None:
    """Refuse class records that are not counts and sums in range or do not add up to the run's metrics."""
    reported = {(r["level"], r["metric"]): r["value"] for r in rows
                if r["shots"] == 0 and r["adaptation"] == "none" and r.get("test_set", "full") == "full"}
    for level, q in queries.items():
        for metric in sums:
            s = sums[metric][level]
            bad = (not np.isfinite(q).all() or (q < 0).any() or not np.isfinite(s).all() or (s < -1e-9).any()
                   or (s > q + 1e-9).any())
            value = float(s.sum() / q.sum()) if q.sum() > 0 and not bad else math.nan
            if bad or abs(value - reported.get((level, metric), value)) > _RECORD_TOLERANCE:
                raise OodmlError(f"{folder}/classes.parquet: the {metric} records of level {level} are corrupt or "
                                 "do not add up to results.parquet; evaluate the run again")


def _read_entry(path: Path, data_root: str | Path | None) -> Scored:
    from .leaderboard import verify
    from .splits import load

    checked = verify(path, data_root=data_root)
    if not checked.ok:
        raise OodmlError(f"{path}: the leaderboard entry does not verify ({checked.reasons[0]}); check it "
                         f"with `oodml leaderboard verify {path}`")
    meta, scores = checked.submission.meta, checked.scores
    split_set = load(meta["dataset"], meta["split_version"])
    classes, queries, sums, order = {}, {}, {m: {} for m in RETRIEVAL}, {}
    for level in split_set.levels:
        if level.index not in scores.class_sums:
            continue
        order[level.index] = np.argsort(np.array(level.test_classes, dtype=object), kind="stable")
        classes[level.index] = [level.test_classes[i] for i in order[level.index]]
        counts, by_metric = scores.class_sums[level.index]
        queries[level.index] = counts[order[level.index]]
        for m in RETRIEVAL:
            sums[m][level.index] = by_metric[m][order[level.index]]
    distance = {lv["level"]: float(lv["distance"]) for lv in scores.levels}
    return Scored(path.name, path, "entry", meta["dataset"], meta["split_digest"], distance, classes, queries, sums,
                  scores.episodes, scores.matched.reordered(order) if scores.matched else None)


def _name_runs(scored: list[Scored]) -> list[Scored]:
    """Two runs of one name are told apart by their parent folder (``seed0/margin``)."""
    folders: dict[str, set[Path]] = {}
    for s in scored:
        folders.setdefault(s.name, set()).add(Path(s.path).resolve())
    for s in scored:
        if len(folders[s.name]) > 1 and Path(s.path).parent.name:
            s.name = f"{Path(s.path).parent.name}/{s.name}"
    return scored


def _check_same_split_set(scored: list[Scored]) -> None:
    a = scored[0]
    for s in scored[1:]:
        if s.dataset != a.dataset:
            raise OodmlError(f"{s.path} is a run on {s.dataset}, {a.path} on {a.dataset}; compare runs on one "
                             "dataset and split set")
        if s.split_digest != a.split_digest:
            raise OodmlError(f"{s.path} was scored on split set {s.split_digest[:12]}, {a.path} on "
                             f"{a.split_digest[:12]}; compare runs on the same split set (oodml evaluate "
                             "--splits)")


def _common_levels(scored: list[Scored]) -> tuple[list[int], list[str]]:
    """The levels every run has, by distance, and a note for each level some run lacks."""
    common = set.intersection(*(set(s.classes) for s in scored))
    notes = [f"level {lv} is left out: {', '.join(s.name for s in scored if lv not in s.classes)} did not "
             "score it" for lv in sorted(set.union(*(set(s.classes) for s in scored)) - common)]
    if not common:
        raise OodmlError("the runs have no level in common; evaluate them on the same levels (--levels)")
    for lv in common:
        for s in scored[1:]:
            if s.classes[lv] != scored[0].classes[lv]:
                raise OodmlError(f"{s.path} and {scored[0].path} have different test classes at level {lv}; "
                                 "compare runs on the same split set")
    return sorted(common, key=lambda lv: (scored[0].distance[lv], lv)), notes


# --- the paired differences -------------------------------------------------------------------------

def _retrieval_rows(a: Scored, b: Scored, levels: list[int], test_set: str, bootstrap: tuple[int, int, float],
                    notes: list[str]) -> list[dict]:
    """The retrieval rows of ``b`` against ``a`` on ``test_set``; ``bootstrap`` is (draws, seed, confidence)."""
    draws, seed, confidence = bootstrap
    rows = []
    for metric in RETRIEVAL:
        if metric not in a.sums or metric not in b.sums:
            notes.append(f"{metric} is not compared: {a.name if metric not in a.sums else b.name} has no per-class "
                         "records of it")
            continue
        common = {"against": a.name, "run": b.name, "test_set": test_set, "metric": metric, "shots": 0,
                  "adaptation": "none", "units": "classes"}
        if test_set == "full":
            units = [[(run.sums[metric][lv], run.queries[lv]) for run in (a, b)] for lv in levels]
            point, drawn = _paired(units, draws, seed)
            rows += _difference_rows(point, drawn, [a.distance[lv] for lv in levels], levels, confidence, common)
            continue
        if metric not in a.matched.sums or metric not in b.matched.sums:
            continue
        # every (run, matched draw) is one "run" of the paired bootstrap: one class resample per level for all
        per_draw, drawn = paired_matched_draws([a.matched, b.matched], metric, levels, draws,
                                               np.random.default_rng(seed))
        rows += _difference_rows(per_draw.mean(1), drawn, [a.distance[lv] for lv in levels], levels, confidence,
                                 common, per_draw)
    return rows


def _fewshot_rows(a: Scored, b: Scored, levels: list[int], test_set: str, bootstrap: tuple[int, int, float],
                  notes: list[str]) -> list[dict]:
    """The few-shot accuracy rows of ``b`` against ``a`` on ``test_set`` (full or N-way episodes)."""
    draws, seed, confidence = bootstrap
    ea, eb = (a.episodes, b.episodes) if test_set == "full" else (a.matched.episodes, b.matched.episodes)
    rows = []
    for key in sorted(k for k in set(ea) | set(eb) if k[2] == "accuracy"):
        both = key in ea and key in eb
        common = {lv: sorted(set(ea[key].get(lv, {})) & set(eb[key].get(lv, {}))) for lv in levels} if both else {}
        if not both or not all(common.values()):
            notes.append(f"{key[0]}-shot {key[1]} {key[2]} ({test_set} test sets): not compared with {b.name}, as "
                         "not both have per-episode values at every level compared")
            continue
        units = [[(np.array([run[key][lv][e] for e in common[lv]]), np.ones(len(common[lv]))) for run in (ea, eb)]
                 for lv in levels]
        point, drawn = _paired(units, draws, seed)
        rows += _difference_rows(point, drawn, [a.distance[lv] for lv in levels], levels, confidence,
                                 {"against": a.name, "run": b.name, "test_set": test_set, "metric": key[2],
                                  "shots": key[0], "adaptation": key[1], "units": "episodes"})
    return rows


def _paired(units: list, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The point values (runs, levels) and the paired bootstrap draws (runs, levels, draws) of ``units``
    (``units[l][r] = (sums, counts)`` of run ``r`` at level ``l``, :func:`oodml.stats.paired_ratio_draws`)."""
    point = np.array([[s.sum() / c.sum() if c.sum() > 0 else math.nan for s, c in level] for level in units]).T
    return point, paired_ratio_draws(units, draws, np.random.default_rng(seed))


def _difference_rows(point: np.ndarray, drawn: np.ndarray, distance: list[float], levels: list[int],
                     confidence: float, common: dict, per_draw: np.ndarray | None = None) -> list[dict]:
    """Per level, the mean over levels and the AUC: A's and B's values and B - A with its paired interval.

    ``point``: (2, L) A's and B's values at ``levels``; ``drawn``: (2, L, draws) their paired bootstrap draws;
    ``per_draw``: (2, D, L) the values of each matched draw (the matched curve only): the standard error of
    their paired differences is added to the interval in quadrature (the module docstring).
    """
    from .protocol import curve_summary

    # the AUC is linear in the per-level values: its weights are curve_summary's AUC of each unit vector
    weights = np.array([curve_summary(distance, np.eye(len(levels))[i])["auc"] for i in range(len(levels))])
    spread = (per_draw[1] - per_draw[0]) if per_draw is not None else np.zeros((1, len(levels)))  # (D, L)
    quantities = [("level", lv, point[:, i], drawn[:, i], spread[:, i]) for i, lv in enumerate(levels)]
    quantities += [("mean", None, point.mean(1), drawn.mean(1), spread.mean(1)),
                   ("auc", None, np.array([curve_summary(distance, p)["auc"] for p in point]),
                    np.einsum("l,rld->rd", weights, drawn), spread @ weights)]
    out = []
    for scope, level, (va, vb), (da, db), differences in quantities:
        low, high = percentile_interval(db - da, confidence)
        diff = float(vb - va)
        if per_draw is not None:  # the matched draws' Monte-Carlo error, in quadrature
            low, high = with_draw_spread(diff, (low, high), differences, confidence)
        out.append({**common, "scope": scope, "level": level, "a": float(va), "b": float(vb),
                    "difference": diff, "ci_low": low, "ci_high": high,
                    "excludes_zero": bool(low > 0 or high < 0)})
    return out
