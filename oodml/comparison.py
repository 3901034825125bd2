"""Paired comparison of evaluation runs: is B better than A, level by level, and by how much?

:func:`compare` reads two or more runs on one split set (folders ``oodml evaluate --out`` wrote, or
leaderboard entries, rescored from their embeddings by :func:`oodml.leaderboard.verify`) and reports, for
every further run against the first, the difference ``X - A`` per level, of the mean over levels and of the
AUC (:func:`oodml.protocol.curve_summary`), each with a paired bootstrap interval (:mod:`oodml.stats`):

* retrieval metrics (``recall@1``, ``map@r``): each draw resamples every level's test classes once with
  replacement and applies the same resample to every run (a level's metric is the drawn classes' metric sum
  over their queries: ``classes.parquet``, :func:`oodml.results.class_records`); an entry has per-class
  records of Recall@1 only (``Scores.class_hits``), so ``map@r`` is compared between runs alone;
* few-shot accuracies (per shots and adaptation): paired by episode (a split set fixes its episodes), each
  draw resamples every level's common episodes; only runs that recorded every episode have them (entries
  keep per-level means), so they are compared between folders of ``oodml evaluate``.

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
from .stats import CONFIDENCE, paired_ratio_draws, percentile_interval

#: the retrieval metrics compared (per-class sums in a run's classes.parquet)
RETRIEVAL = ("recall@1", "map@r")
#: bootstrap draws unless told otherwise
DRAWS = 2000
#: tolerance of the check that a run's class records add up to its per-level metric
_RECORD_TOLERANCE = 1e-6


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


@dataclass
class Comparison:
    """What :func:`compare` returns.

    Attributes:
        runs: ``{"name", "path", "kind"}`` per run, the reference (A) first.
        dataset, split_digest: the split set all runs share.  levels: the levels compared, by distance.
        draws, seed, confidence: of the bootstrap.
        rows: one dict per (other run, quantity): ``against`` (A's name), ``run``, ``metric``, ``shots`` (0
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

    def to_dict(self) -> dict:
        return {"runs": self.runs, "dataset": self.dataset, "split_digest": self.split_digest,
                "levels": self.levels, "draws": self.draws, "seed": self.seed, "confidence": self.confidence,
                "rows": self.rows, "notes": self.notes}

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
        for run in self.runs[1:]:
            rows = [r for r in self.rows if r["run"] == run["name"]]
            a = self.runs[0]["name"]
            table = [["metric", "level", a, run["name"], "difference", "interval", ""]]
            for r in rows:
                what = r["metric"] if not r["shots"] else f"{r['shots']}-shot {r['adaptation']} {r['metric']}"
                table.append([what, str(r["level"]) if r["scope"] == "level" else r["scope"], f"{r['a']:.4f}",
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
            data_root: str | Path | None = None) -> Comparison:
    """Compare runs on one split set, each against the first, with paired bootstrap intervals.

    Args:
        paths: two or more folders: evaluation runs (``oodml evaluate --out``) or leaderboard entries; the
            first is the reference A.
        draws: bootstrap resamples (at least 100).  seed: of the resampling (the same seed, the same intervals).
        confidence: of the percentile intervals, in (0, 1).
        data_root: the dataset's folder, for rescoring leaderboard entries of a dataset that needs one.

    Returns:
        A :class:`Comparison` (``.format()`` for text, ``.to_json()`` for machines).

    Raises:
        OodmlError: fewer than two paths; a folder that is neither a run nor an entry; a run without class
            records (saved by an older oodml) or with corrupt ones; an entry that does not verify; runs on
            different datasets or split sets; no level in common; ``draws`` or ``confidence`` out of range.
    """
    if len(paths) < 2:
        raise OodmlError("compare needs at least two runs (results folders or leaderboard entries): A B [C ...]")
    if draws < 100:
        raise OodmlError(f"--draws {draws}: give at least 100 bootstrap draws")
    if not 0 < confidence < 1:
        raise OodmlError(f"confidence {confidence}: give a number between 0 and 1")
    scored = _name_runs([read_scored(p, data_root=data_root) for p in paths])
    _check_same_split_set(scored)
    levels, notes = _common_levels(scored)
    if Path(scored[0].path).resolve() in {Path(s.path).resolve() for s in scored[1:]}:
        notes.append("a run is compared with itself: its differences are 0 by construction")
    rows = []
    for other in scored[1:]:
        rows += _retrieval_rows(scored[0], other, levels, draws, seed, confidence, notes)
        rows += _fewshot_rows(scored[0], other, levels, draws, seed, confidence, notes)
    runs = [{"name": s.name, "path": str(s.path), "kind": s.kind} for s in scored]
    return Comparison(runs, scored[0].dataset, scored[0].split_digest, levels, draws, seed, confidence, rows,
                      list(dict.fromkeys(notes)))


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
    records = [r for r in class_records(folder) if r.get("draw", -1) == -1]
    meta = results.meta
    distance = {lv["level"]: float(lv["distance"]) for lv in results.levels}
    classes, queries, sums = _class_arrays(folder, records, distance)
    _check_records(folder, results.rows, queries, sums)
    episodes: dict = {}
    for r in results.rows:
        if r["shots"] > 0 and r.get("test_set", "full") == "full" and r["level"] in classes:
            episodes.setdefault((r["shots"], r["adaptation"], r["metric"]), {}).setdefault(
                r["level"], {})[int(r["episode"])] = float(r["value"])
    return Scored(folder.name, folder, "run", str(meta.get("dataset")), str(meta.get("split_digest")), distance,
                  classes, queries, sums, episodes)


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
    classes, queries, hits = {}, {}, {}
    for level in split_set.levels:
        if level.index not in scores.class_hits:
            continue
        order = np.argsort(np.array(level.test_classes, dtype=object), kind="stable")
        classes[level.index] = [level.test_classes[i] for i in order]
        hits[level.index] = scores.class_hits[level.index][0][order]
        queries[level.index] = scores.class_hits[level.index][1][order]
    distance = {lv["level"]: float(lv["distance"]) for lv in scores.levels}
    return Scored(path.name, path, "entry", meta["dataset"], meta["split_digest"], distance, classes, queries,
                  {"recall@1": hits})


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

def _retrieval_rows(a: Scored, b: Scored, levels: list[int], draws: int, seed: int, confidence: float,
                    notes: list[str]) -> list[dict]:
    rows = []
    for metric in RETRIEVAL:
        if metric not in a.sums or metric not in b.sums:
            notes.append(f"{metric} is compared between evaluation runs only (a leaderboard entry records "
                         "per-class Recall@1 alone)")
            continue
        units = [[(run.sums[metric][lv], run.queries[lv]) for run in (a, b)] for lv in levels]
        rows += _difference_rows(units, [a.distance[lv] for lv in levels], levels, draws, seed, confidence,
                                 {"against": a.name, "run": b.name, "metric": metric, "shots": 0,
                                  "adaptation": "none", "units": "classes"})
    return rows


def _fewshot_rows(a: Scored, b: Scored, levels: list[int], draws: int, seed: int, confidence: float,
                  notes: list[str]) -> list[dict]:
    rows = []
    for key in sorted(k for k in set(a.episodes) | set(b.episodes) if k[2] == "accuracy"):
        both = key in a.episodes and key in b.episodes
        common = {lv: sorted(set(a.episodes[key].get(lv, {})) & set(b.episodes[key].get(lv, {})))
                  for lv in levels} if both else {}
        if not both or not all(common.values()):
            notes.append(f"{key[0]}-shot {key[1]} {key[2]}: not compared with {b.name}, as not both have "
                         "per-episode values at every level compared")
            continue
        units = [[(np.array([run.episodes[key][lv][e] for e in common[lv]]), np.ones(len(common[lv])))
                  for run in (a, b)] for lv in levels]
        rows += _difference_rows(units, [a.distance[lv] for lv in levels], levels, draws, seed, confidence,
                                 {"against": a.name, "run": b.name, "metric": key[2], "shots": key[0],
                                  "adaptation": key[1], "units": "episodes"})
    return rows


def _difference_rows(units: list, distance: list[float], levels: list[int], draws: int, seed: int,
                     confidence: float, common: dict) -> list[dict]:
    """Per level, the mean over levels and the AUC: A's and B's values and B - A with its paired interval.

    ``units[l] = [(sums_a, counts_a), (sums_b, counts_b)]`` at level ``levels[l]``.
    """
    from .protocol import curve_summary

    point = np.array([[s.sum() / c.sum() if c.sum() > 0 else math.nan for s, c in level] for level in units]).T
    drawn = paired_ratio_draws(units, draws, np.random.default_rng(seed))  # (2, levels, draws)
    # the AUC is linear in the per-level values: its weights are curve_summary's AUC of each unit vector
    weights = np.array([curve_summary(distance, np.eye(len(levels))[i])["auc"] for i in range(len(levels))])
    out = []
    quantities = [("level", lv, point[:, i], drawn[:, i]) for i, lv in enumerate(levels)]
    quantities += [("mean", None, point.mean(1), drawn.mean(1)),
                   ("auc", None, np.array([curve_summary(distance, p)["auc"] for p in point]),
                    np.einsum("l,rld->rd", weights, drawn))]
    for scope, level, (va, vb), (da, db) in quantities:
        low, high = percentile_interval(db - da, confidence)
        out.append({**common, "scope": scope, "level": level, "a": float(va), "b": float(vb),
                    "difference": float(vb - va), "ci_low": low, "ci_high": high,
                    "excludes_zero": bool(low > 0 or high < 0)})
    return out
