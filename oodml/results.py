"""The results of an evaluation run: what :func:`oodml.evaluate` returns, how a run's folder is written and
read back, and the run as data (a pandas DataFrame) for a notebook.

A run's folder (``oodml evaluate --out DIR``, :meth:`Results.save`) holds:

* ``results.parquet``: one row per (test set, level, adaptation, shots, episode, metric), columns
  :data:`RESULT_COLUMNS`; the run's ``meta`` and ``levels`` ride in the schema metadata (key ``oodml``).
  ``test_set`` is ``full`` (the level's test set) or ``matched`` (:mod:`oodml.matched`: retrieval rows per
  draw, ``episode`` holding the draw; few-shot rows per episode at N ways); files written before the column
  existed read as all ``full``.
* ``summary.json``: :meth:`Results.summary`.
* ``classes.parquet``: per level and per test class, the retrieval queries of that class and the sum of
  each per-query metric over them, so that intervals and paired comparisons resample classes
  (:func:`class_records`).  Columns: ``level`` (int64), ``draw`` (int64: -1 for the level's full test set),
  ``class`` (the class name), ``queries`` (int64:
  images of the class that have another image of it at the level; a class of one image has 0), and for
  every retrieval metric ``M`` of :func:`oodml.metrics.per_query_metrics` (``recall@K``, ``r_precision``,
  ``map@r``; not ``map@1000``, nmi or ami, which are not per query) the column ``M`` = the sum of ``M``
  over the class's queries.  A level's metric is ``sum(M) / sum(queries)`` over its classes.  Runs saved
  before this file existed have none (:func:`class_records` says so in one line).
* ``curve-<metric>.png`` / ``.svg``: the degradation curve (:mod:`oodml.plot`).
* ``embeddings/``: with ``--save-embeddings`` (:func:`read_saved_embeddings`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._fs import atomic_path, check_writable, claim
from .errors import OodmlError

RESULT_COLUMNS = ("model", "model_digest", "dataset", "split_digest", "level", "distance", "protocol",
                  "adaptation", "shots", "episode", "metric", "value", "test_set")
#: ``test_set`` of a row: scored on the level's full test set, or on a class-count-matched draw
#: (:mod:`oodml.matched`; ``episode`` is then the draw for retrieval rows); runs saved before it are all full
TEST_SETS = ("full", "matched")
#: what :meth:`Results.save` writes into a run's folder; a folder holding anything else is never replaced
RUN_ENTRY = re.compile(r"results\.parquet|summary\.json|classes\.parquet|curve-[^/]+\.(?:png|svg)|embeddings")
#: the ``Results.meta`` fields of "the same run": saving it again replaces the earlier results unasked
SAME_RUN = ("model", "dataset", "split_digest")
#: the columns of :meth:`Results.frame` and :func:`load`, in order
FRAME_COLUMNS = ("run", "level", "distance", "metric", "value", "ci_low", "ci_high", "adaptation", "shots",
                 "test_set")
#: class-bootstrap resamples behind the zero-shot intervals of :meth:`Results.frame`
BOOTSTRAP_DRAWS = 1000


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of ``values`` (the interval is NaN for fewer than 2)."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return mean, mean - half, mean + half


def class_bootstrap_interval(sums: np.ndarray, queries: np.ndarray, draws: int = BOOTSTRAP_DRAWS,
                             seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a level's metric (``sum(sums) / sum(queries)``) when its test classes are
    resampled with replacement ``draws`` times (seeded, so the same records give the same interval).

    Args:
        sums: (C,) per class, the metric summed over the class's queries; queries: (C,) their counts.

    Returns:
        ``(low, high)``; NaN when fewer than two classes have queries.
    """
    sums, queries = np.asarray(sums, dtype=np.float64), np.asarray(queries, dtype=np.float64)
    if int((queries > 0).sum()) < 2:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(queries), size=(draws, len(queries)))
    drawn_queries = queries[idx].sum(1)
    values = sums[idx].sum(1)[drawn_queries > 0] / drawn_queries[drawn_queries > 0]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class Results:
    """Tidy results of one evaluation run.

    Attributes:
        rows: one dict per (level, adaptation, shots, episode, metric), columns ``RESULT_COLUMNS``.
        levels: per level: ``{"level", "distance", "ci_low", "ci_high"}``.
        meta: model, digests, dataset, split set, protocol, settings, oodml version.
        embeddings: with ``save_embeddings``: ``("test", level)`` and
            ``("fewshot", level, shots, episode, adaptation)`` -> (sample ids, float32 (N, d) array).
        classes: per level and test class, the query count and per-metric sums (the rows of
            ``classes.parquet``, see the module docstring); None for a run read from a folder.
    """

    rows: list[dict]
    levels: list[dict]
    meta: dict = field(default_factory=dict)
    embeddings: dict | None = None
    classes: list[dict] | None = None

    def table(self) -> pa.Table:
        return pa.table({c: [r.get(c, "full") if c == "test_set" else r[c] for r in self.rows]
                         for c in RESULT_COLUMNS})

    def to_parquet(self, path: str | Path) -> Path:
        path = Path(path)
        table = self.table().replace_schema_metadata({"oodml": json.dumps({"meta": self.meta,
                                                                             "levels": self.levels})})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    @classmethod
    def from_parquet(cls, path: str | Path) -> Results:
        """A run read back from its ``results.parquet`` (or the folder holding it); ``classes`` stays None."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.parquet"
        try:
            table = pq.read_table(path)
            extra = json.loads(table.schema.metadata[b"oodml"])
        except (OSError, KeyError, TypeError, ValueError, pa.ArrowException) as exc:
            raise OodmlError(f"{path}: not an oodml results file ({exc})") from None
        rows = table.to_pylist()
        for row in rows:
            row.setdefault("test_set", "full")
        return cls(rows, extra["levels"], extra["meta"])

    def zero_shot(self, metric: str, test_set: str = "full") -> tuple[np.ndarray, np.ndarray]:
        """(distance, value) per level, in order of distance, of the unadapted metric on the full test sets or
        (``test_set="matched"``) on the matched draws, averaged."""
        by_level: dict[int, list] = {}
        for r in self.rows:
            if (r["metric"] == metric and r["adaptation"] == "none" and r["shots"] == 0
                    and r.get("test_set", "full") == test_set):
                by_level.setdefault(r["level"], [r["distance"], []])[1].append(r["value"])
        pairs = sorted((d, float(np.mean(v)) if len(v) > 1 else v[0]) for d, v in by_level.values())
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def summary(self) -> dict:
        """Per metric: per-level values, mean, AUC on the [0, 1] distance axis, slope, relative drop; few-shot
        means with 95% t-intervals over episodes; and ``matched`` (:meth:`matched_summary`)."""
        from .protocol import curve_summary

        out: dict = {"meta": self.meta, "levels": self.levels, "metrics": {}, "fewshot": self._fewshot("full")}
        for metric in sorted({r["metric"] for r in self.rows if r["shots"] == 0}):
            d, v = self.zero_shot(metric)
            if len(d):
                out["metrics"][metric] = {"per_level": v.tolist(), **curve_summary(d, v)}
        out["matched"] = self.matched_summary()
        return out

    def matched_summary(self) -> dict | None:
        """The class-count-matched scores (:mod:`oodml.matched`), or None for a run without them:
        ``{"n_classes": N, "draws": D, "metrics": {name: {"per_level": [...], "ci_low": [...], "ci_high": [...]}},
        "fewshot": ...}``, levels in order of distance, each value the mean over the draws with the interval of
        :func:`oodml.matched.matched_interval` (NaN without class records); ``fewshot`` as the full ``fewshot``."""
        matched = self.meta.get("matched")
        if not matched:
            return None
        metrics = {}
        for metric in sorted({r["metric"] for r in self.rows if r["shots"] == 0 and r.get("test_set") == "matched"}):
            per_level = self.matched_levels(metric)
            metrics[metric] = {"per_level": [v for _, v, _, _ in per_level],
                               "ci_low": [lo for _, _, lo, _ in per_level],
                               "ci_high": [hi for _, _, _, hi in per_level]}
        return {"n_classes": matched["n_classes"], "draws": matched["draws"], "metrics": metrics,
                "fewshot": self._fewshot("matched")}

    def matched_levels(self, metric: str) -> list[tuple[int, float, float, float]]:
        """Per level, in order of distance: ``(level, matched value, ci_low, ci_high)`` of a zero-shot metric."""
        from .matched import matched_interval

        draws: dict[int, list[float]] = {}
        distance = {}
        for r in self.rows:
            if r["metric"] == metric and r["shots"] == 0 and r.get("test_set") == "matched":
                draws.setdefault(r["level"], []).append(r["value"])
                distance[r["level"]] = r["distance"]
        out = []
        for level in sorted(draws, key=lambda lv: (distance[lv], lv)):
            records = self._draw_records(level, metric)
            _, low, high = matched_interval(*records) if records is not None else (None, math.nan, math.nan)
            out.append((level, float(np.mean(draws[level])), low, high))   # the value: the draws' rows, averaged
        return out

    def _draw_records(self, level: int, metric: str) -> tuple[list[tuple], int] | None:
        """For :func:`oodml.matched.matched_interval`: per draw of ``level`` its classes' positions among the
        level's test classes, metric sums and query counts, and the number of test classes; None without
        class records."""
        records = [c for c in self.classes or () if c["level"] == level and metric in c]
        full = [c["class"] for c in records if c["draw"] == -1]
        if not full or not any(c["draw"] >= 0 for c in records):
            return None
        position = {name: k for k, name in enumerate(full)}
        by_draw: dict[int, list[dict]] = {}
        for c in records:
            if c["draw"] >= 0:
                by_draw.setdefault(c["draw"], []).append(c)
        per_draw = [(np.array([position[c["class"]] for c in cs]), np.array([c[metric] for c in cs], dtype=np.float64),
                     np.array([c["queries"] for c in cs], dtype=np.float64)) for _, cs in sorted(by_draw.items())]
        return per_draw, len(full)

    def _fewshot(self, test_set: str) -> dict:
        """``{"<k>-shot": {adaptation: {metric: [{"level", "mean", "ci_low", "ci_high", "episodes"}]}}}``: the
        episodes' mean and 95% t-interval, per level, on the full or the matched (n-way) episodes."""
        out: dict = {}
        for (level, shots, adaptation, metric), values in sorted(self._episode_groups(test_set).items()):
            mean, lo, hi = t_interval(values)
            out.setdefault(f"{shots}-shot", {}).setdefault(adaptation, {}).setdefault(metric, []).append(
                {"level": level, "mean": mean, "ci_low": lo, "ci_high": hi, "episodes": len(values)})
        return out

    def _episode_groups(self, test_set: str = "full") -> dict[tuple[int, int, str, str], list[float]]:
        """(level, shots, adaptation, metric) -> the value of every few-shot episode, in row order."""
        groups: dict[tuple, list[float]] = {}
        for r in self.rows:
            if r["shots"] > 0 and r.get("test_set", "full") == test_set:
                groups.setdefault((r["level"], r["shots"], r["adaptation"], r["metric"]), []).append(r["value"])
        return groups

    def format_table(self, metrics: Sequence[str] = ("recall@1", "map@r", "nmi")) -> str:
        """The per-level table printed at the end of a run: the full test sets' metrics, the matched ones
        (``recall@1 N=132``: the mean over the draws) and the few-shot accuracies."""
        by_level: dict[int, dict[str, float]] = {}
        for r in self.rows:
            if r["shots"] == 0 and r["adaptation"] == "none" and r.get("test_set", "full") == "full":
                by_level.setdefault(r["level"], {})[r["metric"]] = r["value"]
        shown = [m for m in metrics if any(m in v for v in by_level.values())]
        summary = self.summary()
        matched = summary["matched"] or {"metrics": {}}
        matched_shown = [m for m in shown if m in matched["metrics"]]
        matched_at = {m: dict(zip([lv for lv, *_ in self.matched_levels(m)], matched["metrics"][m]["per_level"],
                                  strict=True)) for m in matched_shown}
        fewshot = summary["fewshot"]
        extra = [(shots, adaptation) for shots, by in fewshot.items() for adaptation in by]
        header = ["level", "distance", "classes", *shown, *[f"{m} N={matched['n_classes']}" for m in matched_shown],
                  *[f"{s} {a} acc" for s, a in extra]]
        rows = [header]
        for lv in self.levels:
            cells = [str(lv["level"]), f"{lv['distance']:.4g}", str(lv.get("n_test_classes", "-"))]
            cells += [f"{by_level.get(lv['level'], {}).get(m, float('nan')):.4f}" for m in shown]
            cells += [f"{matched_at[m].get(lv['level'], float('nan')):.4f}" for m in matched_shown]
            for shots, adaptation in extra:
                entry = next((e for e in fewshot[shots][adaptation].get("accuracy", []) if e["level"] == lv["level"]),
                             None)
                cells.append("-" if entry is None else f"{entry['mean']:.3f}±{(entry['ci_high'] - entry['mean']):.3f}"
                             if not math.isnan(entry["ci_high"]) else f"{entry['mean']:.3f}")
            rows.append(cells)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)

    def frame_records(self, run: str) -> list[dict]:
        """The rows of :meth:`frame` as dicts (no pandas needed).

        ``test_set`` ``full``: per level and zero-shot metric its value with a class-bootstrap 95% interval
        (:func:`class_bootstrap_interval`; NaN without class records, and for map@1000, nmi and ami).
        ``matched``: per level and retrieval metric the mean over the draws with the interval of
        :func:`oodml.matched.matched_interval`.  Few-shot rows (both test sets): per level, shots, adaptation
        and metric the episodes' mean with its 95% t-interval.
        """
        distance = {lv["level"]: lv["distance"] for lv in self.levels}
        by_class: dict[int, list[dict]] = {}
        for record in self.classes or ():
            if record.get("draw", -1) == -1:
                by_class.setdefault(record["level"], []).append(record)
        common = {"run": run, "adaptation": "none", "shots": 0}
        out = []
        for r in self.rows:
            if r["shots"] == 0 and r["adaptation"] == "none" and r.get("test_set", "full") == "full":
                records = by_class.get(r["level"], [])
                low, high = (class_bootstrap_interval([c[r["metric"]] for c in records],
                                                      [c["queries"] for c in records])
                             if records and r["metric"] in records[0] else (float("nan"), float("nan")))
                out.append({**common, "level": r["level"], "distance": r["distance"], "metric": r["metric"],
                            "value": r["value"], "ci_low": low, "ci_high": high, "test_set": "full"})
        for metric in dict.fromkeys(r["metric"] for r in self.rows if r.get("test_set") == "matched"
                                    and r["shots"] == 0):
            for level, value, low, high in self.matched_levels(metric):
                out.append({**common, "level": level, "distance": distance.get(level, float("nan")),
                            "metric": metric, "value": value, "ci_low": low, "ci_high": high, "test_set": "matched"})
        for test_set in TEST_SETS:
            for (level, shots, adaptation, metric), values in sorted(self._episode_groups(test_set).items()):
                mean, low, high = t_interval(values)
                out.append({"run": run, "level": level, "distance": distance.get(level, float("nan")),
                            "metric": metric, "value": mean, "ci_low": low, "ci_high": high,
                            "adaptation": adaptation, "shots": shots, "test_set": test_set})
        return out

    def frame(self, run: str | None = None):
        """This run as a long pandas DataFrame (columns :data:`FRAME_COLUMNS`, see :func:`load`); ``run``
        names it (default: its label, else its model)."""
        name = run or self.meta.get("label") or str(self.meta.get("model", "run"))
        return _to_pandas(_frame_table(self.frame_records(name)))

    def plot(self, out_prefix: str | Path, metric: str = "recall@1") -> list[Path]:
        """Write this run's degradation curve of ``metric`` as ``<out_prefix>.png`` and ``.svg``."""
        from .plotting import curve_figure, save_figure

        return save_figure(curve_figure([self], metric), out_prefix)

    def save(self, out_dir: str | Path, metric: str = "recall@1", *, overwrite: bool = False) -> list[Path]:
        """Write ``results.parquet``, ``summary.json``, ``classes.parquet`` (when the run has class records),
        the degradation curve of ``metric`` (PNG and SVG) and the saved embeddings, if any (``embeddings/``,
        see :func:`read_saved_embeddings`) into ``out_dir``.

        The files are written together: into a temporary folder beside ``out_dir``, renamed onto it once all
        are complete, so a failure leaves ``out_dir`` as it was.  An earlier run there is replaced as a whole,
        none of its files kept, under the rule of :func:`check_output_dir`.  ``out_dir`` is claimed
        (:func:`claim_output_dir`) from the check to the rename, so a concurrent run is refused, not lost.

        Returns:
            The paths written, inside ``out_dir``.

        Raises:
            OodmlError: see :func:`check_output_dir`; or ``metric`` is not among this run's zero-shot metrics.
        """
        with claim_output_dir(out_dir) as out:
            check_output_dir(out_dir, self.meta, overwrite=overwrite)
            return self._write(out_dir, out, metric)

    def _write(self, out_dir: str | Path, out: Path, metric: str) -> list[Path]:
        """For :meth:`save`, once ``out`` is claimed and checked: every file, staged, then renamed onto ``out``."""
        from .embedding import write_embedding_table
        from .protocol import embedding_file_name

        with atomic_path(out) as staging:
            staging.mkdir()
            written = self.plot(staging / f"curve-{metric.replace('@', '_at_')}", metric=metric)
            written.append(self.to_parquet(staging / "results.parquet"))
            if self.classes is not None:
                pq.write_table(pa.Table.from_pylist(self.classes), staging / "classes.parquet")
                written.append(staging / "classes.parquet")
            (staging / "summary.json").write_text(json.dumps(self.summary(), indent=2, default=float) + "\n")
            written.append(staging / "summary.json")
            for key, (ids, values) in (self.embeddings or {}).items():
                (staging / "embeddings").mkdir(exist_ok=True)
                written.append(write_embedding_table(staging / "embeddings" / embedding_file_name(key), ids, values))
        return [Path(out_dir) / path.relative_to(staging) for path in written]


# --- a run's folder ---------------------------------------------------------------------------------

@contextlib.contextmanager
def claim_output_dir(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``out_dir`` (``--out``) for this run alone (:func:`oodml._fs.claim`): a second evaluation into
    it while this one runs is refused in one line.  Enter it before :func:`check_output_dir` and leave it
    after :meth:`Results.save`; it yields ``out_dir`` as an absolute path.

    Raises:
        OodmlError: ``out_dir`` or the folder beside it cannot be written, or another process holds it.
    """
    out = Path(os.path.abspath(out_dir))
    check_writable(out)          # the folder itself, when it exists ...
    check_writable(out.parent)   # ... and beside it, where the run is staged and the claim's lock file lies
    with claim(out, what=f"--out {out_dir}", fix="choose another --out"):
        yield out


def check_output_dir(out_dir: str | Path, run: Mapping[str, object], *, overwrite: bool = False) -> dict | None:
    """Check, before any work, that a run can be saved into ``out_dir`` (``--out``).

    ``out_dir`` may be new, an empty folder, or hold an earlier evaluation run
    (only what :meth:`Results.save` writes, ``RUN_ENTRY``).  An earlier run is
    replaced if it scored the same model on the same dataset and split set
    (``run``'s ``SAME_RUN`` fields, as in ``Results.meta``) or with
    ``overwrite``; another run is refused, so no results are lost unasked.
    A folder holding anything else is never replaced.

    Returns:
        The meta of the earlier run that saving will replace, or None.

    Raises:
        OodmlError: ``out_dir`` is a file or cannot be written, holds other files,
            or holds another run without ``overwrite``.
    """
    out = Path(os.path.abspath(out_dir))
    check_writable(out)          # the folder itself, when it exists ...
    check_writable(out.parent)   # ... and beside it, where the run is staged
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return None
    foreign = [name for name in entries if not RUN_ENTRY.fullmatch(name)]
    if foreign or "results.parquet" not in entries:
        raise OodmlError(f"--out {out_dir} holds files that no oodml evaluation wrote (e.g. "
                         f"{(foreign or entries)[0]!r}); choose a new or empty folder")
    try:
        earlier = json.loads(pq.read_schema(out / "results.parquet").metadata[b"oodml"])["meta"]
    except (OSError, KeyError, TypeError, ValueError, pa.ArrowException):
        earlier = {}
    if overwrite or (earlier and all(earlier.get(k) == run.get(k) for k in SAME_RUN)):
        return earlier
    what = f"{earlier.get('model')} on {earlier.get('splits')}" if earlier else "an unreadable results.parquet"
    raise OodmlError(f"--out {out_dir} holds another run ({what}); pass --overwrite to replace it, "
                     "or choose another --out")


def read_saved_embeddings(out_dir: str | Path) -> dict:
    """The embeddings an evaluation run saved (``--save-embeddings``), keyed as in ``Results.embeddings``."""
    from .embedding import read_embedding_table
    from .protocol import parse_embedding_file_name

    folder = Path(out_dir) / "embeddings"
    found = {}
    for path in sorted(folder.glob("*.parquet")):
        key = parse_embedding_file_name(path.name)
        if key is not None:
            found[key] = read_embedding_table(path)
    return found


def class_records(path: str | Path) -> list[dict]:
    """The per-class records of a run (``classes.parquet`` in its folder; the module docstring gives the
    columns): one dict per (level, test class).

    Raises:
        OodmlError: the run has no ``classes.parquet`` (saved by an older oodml: evaluate it again) or it is
            not readable.
    """
    folder = _run_folder(path)
    file = folder / "classes.parquet"
    if not file.is_file():
        raise OodmlError(f"{folder} holds no classes.parquet (a run saved before oodml recorded per-class "
                         "scores); evaluate it again with `oodml evaluate ... --out` to get them")
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException) as exc:
        raise OodmlError(f"{file}: not readable as Parquet ({exc}); evaluate the run again") from None
    missing = {"level", "draw", "class", "queries"} - set(table.column_names)
    if missing:
        raise OodmlError(f"{file} lacks the column {sorted(missing)[0]!r}; evaluate the run again")
    return table.to_pylist()


def read_run(path: str | Path) -> Results:
    """A saved run (its folder, or its results file) with its class records when its folder has them."""
    path = Path(path)
    if path.is_file():  # a results file, perhaps renamed: its class records only beside it under their names
        results = Results.from_parquet(path)
        folder = path.parent if path.name == "results.parquet" else None
    else:
        folder = _run_folder(path)
        results = Results.from_parquet(folder / "results.parquet")
    if folder is not None and (folder / "classes.parquet").is_file():
        results.classes = class_records(folder)
    return results


def _run_folder(path: str | Path) -> Path:
    """The folder of a run given as its folder or its ``results.parquet``; refused when neither exists."""
    path = Path(path)
    folder = path.parent if path.name == "results.parquet" or path.is_file() else path
    if not (folder / "results.parquet").is_file():
        raise OodmlError(f"{path}: no results.parquet there; give a folder `oodml evaluate --out` wrote")
    return folder


# --- a run as data ----------------------------------------------------------------------------------

def load(path: str | Path, run: str | None = None):
    """A saved run as a long pandas DataFrame, one row per (test set, level, metric[, shots, adaptation]).

    Columns (:data:`FRAME_COLUMNS`): ``run`` (``run``, default the folder's name), ``level``, ``distance``
    (the level's measured train-test distance), ``metric``, ``value``, ``ci_low``/``ci_high`` (95%: for
    zero-shot retrieval metrics a class bootstrap over the level's test classes, from ``classes.parquet``,
    NaN when the run has none and for map@1000/nmi/ami; on matched test sets that bootstrap combined with
    the draws' spread, :func:`oodml.matched.matched_interval`; for few-shot rows the t-interval over
    episodes), ``adaptation`` (``none`` for zero-shot rows), ``shots`` (0 for zero-shot rows) and
    ``test_set`` (``full``, or ``matched``: the mean over the class-count-matched draws, :mod:`oodml.matched`).

    Raises:
        OodmlError: pandas is not installed (``pip install pandas``), or ``path`` holds no readable run.
    """
    _pandas()  # before reading anything
    folder = _run_folder(path)
    return _to_pandas(_frame_table(read_run(folder).frame_records(run or folder.resolve().name)))


def load_many(paths: Iterable[str | Path]):
    """Several saved runs as one DataFrame (as :func:`load`), each named by its folder; two folders of the
    same name are told apart by their parent (``seed0/margin``, ``seed1/margin``)."""
    _pandas()
    folders = [_run_folder(p).resolve() for p in paths]
    if not folders:
        raise OodmlError("give at least one results folder")
    names = [f.name for f in folders]
    names = [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]
    records = [r for folder, name in zip(folders, names, strict=True) for r in read_run(folder).frame_records(name)]
    return _to_pandas(_frame_table(records))


def _frame_table(records: list[dict]) -> pa.Table:
    types = {"run": pa.string(), "level": pa.int64(), "distance": pa.float64(), "metric": pa.string(),
             "value": pa.float64(), "ci_low": pa.float64(), "ci_high": pa.float64(), "adaptation": pa.string(),
             "shots": pa.int64(), "test_set": pa.string()}
    return pa.table({c: pa.array([r[c] for r in records], type=types[c]) for c in FRAME_COLUMNS})


def _pandas():
    """pandas, or a one-line error saying how to install it (it is an optional extra)."""
    try:
        import pandas
    except ImportError:
        raise OodmlError("results as a DataFrame need pandas: pip install pandas (or pip install "
                         "'oodml[pandas]')") from None
    return pandas


def _to_pandas(table: pa.Table):
    _pandas()
    return table.to_pandas()
