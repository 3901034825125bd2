"""The evaluation harness: score an embedding model on every level of a split set.

Two protocols:

* *zero-shot*: one model, evaluated on the test classes of every level;
* *per-level*: one checkpoint per level (a template such as
  ``runs/margin/level{level}.pt``, or a directory of ``level<N>.pt``), as in the
  ooDML study.  A checkpoint whose provenance shows it saw a level's test
  classes in training is refused for that level.

Each distinct image is embedded once per model (the union over the requested
levels), through the shared embedding engine and its resumable cache.  Few-shot
results use the manifest's episodes and an adaptation from :mod:`oodml.adapt`
(``prototypes``, ``finetune-last``, ``finetune-all``), reported beside
``none``: the unadapted model's nearest-support-image accuracy and retrieval
on the same queries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from ._fs import atomic_path, check_writable, claim
from .adapt import ADAPTATIONS, EpisodeInput, check_adaptable
from .datasets import ImageDataset, dataset_spec, load_dataset
from .embedding import (
    PRECISIONS,
    Preprocessing,
    embed_cached,
    read_embedding_table,
    resolve_device,
    write_embedding_table,
)
from .errors import OodmlError
from .metrics import metric_names, retrieval_metrics
from .models import LoadedModel, load_model
from .models.identity import levels_identity
from .models.refs import expand_level_template, resolve_model_ref  # noqa: F401 (expand_level_template: re-exported)
from .models.sources import declared_training_on
from .plotting import new_figure, save_figure
from .protocol import (
    curve_summary,
    embedding_file_name,
    episode_split,
    parse_embedding_file_name,
    protocol_card,
    score_episode,
)
from .reference import References
from .splits import Level, SplitSet, resolve
from .splits.audit import pretraining_meta

RESULT_COLUMNS = ("model", "model_digest", "dataset", "split_digest", "level", "distance", "protocol",
                  "adaptation", "shots", "episode", "metric", "value")
#: the K of the recall@K that :func:`evaluate` reports
KS = (1, 2, 4, 8)
#: what :meth:`Results.save` writes into a run's folder; a folder holding anything else is never replaced
RUN_ENTRY = re.compile(r"results\.parquet|summary\.json|curve-[^/]+\.(?:png|svg)|embeddings")
#: the ``Results.meta`` fields of "the same run": saving it again replaces the earlier results unasked
SAME_RUN = ("model", "dataset", "split_digest")


# --- results ---------------------------------------------------------------------------------------

def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of ``values`` (the interval is NaN for fewer than 2)."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return mean, mean - half, mean + half


@dataclass
class Results:
    """Tidy results of one evaluation run.

    Attributes:
        rows: one dict per (level, adaptation, shots, episode, metric), columns ``RESULT_COLUMNS``.
        levels: per level: ``{"level", "distance", "ci_low", "ci_high"}``.
        meta: model, digests, dataset, split set, protocol, settings, oodml version.
        embeddings: with ``save_embeddings``: ``("test", level)`` and
            ``("fewshot", level, shots, episode, adaptation)`` -> (sample ids, float32 (N, d) array).
    """

    rows: list[dict]
    levels: list[dict]
    meta: dict = field(default_factory=dict)
    embeddings: dict | None = None

    def table(self) -> pa.Table:
        return pa.table({c: [r[c] for r in self.rows] for c in RESULT_COLUMNS})

    def to_parquet(self, path: str | Path) -> Path:
        path = Path(path)
        table = self.table().replace_schema_metadata({"oodml": json.dumps({"meta": self.meta,
                                                                             "levels": self.levels})})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    @classmethod
    def from_parquet(cls, path: str | Path) -> Results:
        try:
            table = pq.read_table(path)
            extra = json.loads(table.schema.metadata[b"oodml"])
        except (OSError, KeyError, TypeError, ValueError, pa.ArrowException) as exc:
            raise OodmlError(f"{path}: not an oodml results file ({exc})") from None
        return cls(table.to_pylist(), extra["levels"], extra["meta"])

    def zero_shot(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(distance, value) per level for the unadapted full-test-set metric."""
        pairs = sorted((r["distance"], r["value"]) for r in self.rows
                       if r["metric"] == metric and r["adaptation"] == "none" and r["shots"] == 0)
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def summary(self) -> dict:
        """Per metric: per-level values, mean, AUC on the [0, 1] distance axis, slope, relative drop;
        and few-shot means with 95% t-intervals over episodes."""
        out: dict = {"meta": self.meta, "levels": self.levels, "metrics": {}, "fewshot": {}}
        for metric in sorted({r["metric"] for r in self.rows if r["shots"] == 0}):
            d, v = self.zero_shot(metric)
            if len(d):
                out["metrics"][metric] = {"per_level": v.tolist(), **curve_summary(d, v)}
        groups: dict[tuple, list[float]] = {}
        for r in self.rows:
            if r["shots"] > 0:
                groups.setdefault((r["level"], r["shots"], r["adaptation"], r["metric"]), []).append(r["value"])
        for (level, shots, adaptation, metric), values in sorted(groups.items()):
            mean, lo, hi = t_interval(values)
            out["fewshot"].setdefault(f"{shots}-shot", {}).setdefault(adaptation, {}).setdefault(metric, []).append(
                {"level": level, "mean": mean, "ci_low": lo, "ci_high": hi, "episodes": len(values)})
        return out

    def format_table(self, metrics: Sequence[str] = ("recall@1", "map@r", "nmi")) -> str:
        """The per-level table printed at the end of a run."""
        by_level: dict[int, dict[str, float]] = {}
        for r in self.rows:
            if r["shots"] == 0 and r["adaptation"] == "none":
                by_level.setdefault(r["level"], {})[r["metric"]] = r["value"]
        shown = [m for m in metrics if any(m in v for v in by_level.values())]
        fewshot = self.summary()["fewshot"]
        extra = [(shots, adaptation) for shots, by in fewshot.items() for adaptation in by]
        header = ["level", "distance", *shown, *[f"{s} {a} acc" for s, a in extra]]
        rows = [header]
        for lv in self.levels:
            cells = [str(lv["level"]), f"{lv['distance']:.4g}"]
            cells += [f"{by_level.get(lv['level'], {}).get(m, float('nan')):.4f}" for m in shown]
            for shots, adaptation in extra:
                entry = next((e for e in fewshot[shots][adaptation].get("accuracy", []) if e["level"] == lv["level"]),
                             None)
                cells.append("-" if entry is None else f"{entry['mean']:.3f}±{(entry['ci_high'] - entry['mean']):.3f}"
                             if not math.isnan(entry["ci_high"]) else f"{entry['mean']:.3f}")
            rows.append(cells)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)

    def plot(self, out_prefix: str | Path, metric: str = "recall@1") -> list[Path]:
        return plot_curves([self], out_prefix, metric=metric)

    def save(self, out_dir: str | Path, metric: str = "recall@1", *, overwrite: bool = False) -> list[Path]:
        """Write ``results.parquet``, ``summary.json``, the degradation curve of ``metric`` (PNG and SVG) and
        the saved embeddings, if any (``embeddings/``, see :func:`read_saved_embeddings`) into ``out_dir``.

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
        with atomic_path(out) as staging:
            staging.mkdir()
            written = self.plot(staging / f"curve-{metric.replace('@', '_at_')}", metric=metric)
            written.append(self.to_parquet(staging / "results.parquet"))
            (staging / "summary.json").write_text(json.dumps(self.summary(), indent=2, default=float) + "\n")
            written.append(staging / "summary.json")
            for key, (ids, values) in (self.embeddings or {}).items():
                (staging / "embeddings").mkdir(exist_ok=True)
                written.append(write_embedding_table(staging / "embeddings" / embedding_file_name(key), ids, values))
        return [Path(out_dir) / path.relative_to(staging) for path in written]


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


def zero_shot_metrics(ks: Sequence[int] = KS, clustering: bool = True) -> list[str]:
    """Names of the zero-shot metrics :func:`evaluate` reports: what ``--metric`` can plot."""
    return metric_names(ks, clustering=clustering)  # the one table, oodml.metrics.METRICS


def read_saved_embeddings(out_dir: str | Path) -> dict:
    """The embeddings an evaluation run saved (``--save-embeddings``), keyed as in ``Results.embeddings``."""
    folder = Path(out_dir) / "embeddings"
    found = {}
    for path in sorted(folder.glob("*.parquet")):
        key = parse_embedding_file_name(path.name)
        if key is not None:
            found[key] = read_embedding_table(path)
    return found


def plot_curves(results: Sequence[Results], out_prefix: str | Path, *, metric: str = "recall@1") -> list[Path]:
    """Overlay the degradation curves (metric against measured distance, with the distance CIs) of several runs."""
    fig, ax = new_figure()
    for res in results:
        d, v = res.zero_shot(metric)
        if not len(d):
            raise OodmlError(f"{res.meta.get('model', 'a run')} has no zero-shot {metric!r}; available: "
                             f"{', '.join(sorted({r['metric'] for r in res.rows}))}")
        ci = {lv["distance"]: (lv["ci_low"], lv["ci_high"]) for lv in res.levels}
        xerr = np.array([[max(x - ci[x][0], 0) if not math.isnan(ci[x][0]) else 0 for x in d],
                         [max(ci[x][1] - x, 0) if not math.isnan(ci[x][1]) else 0 for x in d]])
        ax.errorbar(d, v, xerr=xerr, marker="o", capsize=2, label=res.meta.get("label") or res.meta.get("model"))
    first = results[0].meta
    ax.set_xlabel(f"train-test {first.get('distance', 'distance')} ({first.get('splits')})")
    ax.set_ylabel(metric)
    ax.set_title("degradation under class shift")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return save_figure(fig, out_prefix)


# --- protocol helpers -------------------------------------------------------------------------------

def _per_level_path(model: str | Path, level: int) -> Path | None:
    """Level ``level``'s checkpoint of a per-level ``model`` (a template containing ``{level}``, or a directory
    of ``level<N>.pt``, as :func:`oodml.models.refs.resolve_model_ref` reads it); None when ``model`` is one
    model (a spec, a registered name, a file).

    Raises:
        OodmlError: ``model`` names nothing (an unknown name, a missing file) or is a malformed template.
    """
    ref = resolve_model_ref(model)
    return ref.level_path(level) if ref.kind == "per-level" else None


def check_leak(loaded: LoadedModel, level: Level, split_set: SplitSet) -> None:
    """Refuse a checkpoint whose recorded training classes include this level's test classes."""
    prov = loaded.provenance
    trained: set[str] = set(prov.get("train_classes") or [])
    if not trained and prov.get("split_digest") == split_set.digest and prov.get("level") is not None:
        trained = set(split_set.level(int(prov["level"])).train_classes)
    leaked = trained & set(level.test_classes)
    if leaked:
        raise OodmlError(f"{loaded.source} was trained on {len(leaked)} of level {level.index}'s test classes "
                         f"(e.g. {sorted(leaked)[0]!r}); a per-level checkpoint must come from that level's "
                         "train classes")


@dataclass
class _FewShotContext:
    """Everything the few-shot loop needs besides the level: the model, its embeddings and (for
    finetune-last) backbone features by sample id, and the adaptation settings."""

    ds: ImageDataset
    loaded: LoadedModel
    embeddings: dict[str, np.ndarray]
    features: dict[str, np.ndarray] | None
    adaptations: tuple[str, ...]
    iterations: int | None
    device: str
    batch_size: int
    saved: dict | None = None   # (level, shots, episode, adaptation) -> (sample ids, adapted embeddings)
    adapted: dict = field(default_factory=dict)   # (shots, episode, adaptation) -> adapted embeddings

    def stack(self, table: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
        """(len(idx), ...) the rows of ``table`` (by sample id) of dataset rows ``idx``."""
        return np.stack([table[self.ds.sample_ids[i]] for i in idx])

    def episodes(self, level: Level, shots: int, episodes: int | None, split_digest: str) -> list[tuple]:
        """Per episode of ``level`` at ``shots``: its index, its split (support, support labels, query, query
        labels: :func:`episode_split`) and the :class:`EpisodeInput` an adaptation sees."""
        index_of = {sid: i for i, sid in enumerate(self.ds.sample_ids)}
        out = []
        for ep in level.episodes(shots)[:episodes]:
            split = episode_split(self.ds, ep, index_of)
            out.append((ep.index, split, EpisodeInput(
                self.loaded.module, self.ds, split[0], split[1], np.concatenate([split[0], split[2]]),
                lambda idx: self.stack(self.features, idx), shots, (split_digest, level.index, shots, ep.index))))
        return out


def _adapt_level(ctx: _FewShotContext, level: Level, fewshot: Sequence[int], episodes: int | None,
                 split_digest: str) -> None:
    """Run each fine-tuning adaptation once on every episode of ``level`` at every shot count (finetune-last
    trains them all at once; each shows its progress and, when long, its estimated time); their adapted
    embeddings go to ``ctx.adapted``."""
    inputs = [(shots, index, episode) for shots in fewshot
              for index, _, episode in ctx.episodes(level, shots, episodes, split_digest)]
    for adapt in ctx.adaptations:
        run = ADAPTATIONS[adapt].run
        if run is not None and inputs:
            adapted = run([episode for _, _, episode in inputs], iterations=ctx.iterations, device=ctx.device,
                          batch_size=ctx.batch_size, desc=f"{adapt} level {level.index}")
            ctx.adapted.update({(shots, index, adapt): emb for (shots, index, _), emb in zip(inputs, adapted,
                                                                                          strict=True)})


def _fewshot_rows(ctx: _FewShotContext, level: Level, shots: int, episodes: int | None, base: dict) -> list[dict]:
    """Per episode: the unadapted model's scores ('none') and each adaptation's, by :func:`score_episode`
    (fine-tuned embeddings from ``ctx.adapted``, filled by :func:`_adapt_level`)."""
    ds, rows = ctx.ds, []
    for index, split, episode in ctx.episodes(level, shots, episodes, base["split_digest"]):
        support, support_labels, query, query_labels = split
        emb_s, emb_q = ctx.stack(ctx.embeddings, support), ctx.stack(ctx.embeddings, query)
        common = {**base, "shots": shots, "episode": index}
        scored = {"none": score_episode(emb_s, support_labels, emb_q, query_labels, "none")}
        for adapt in ctx.adaptations:
            if ADAPTATIONS[adapt].run is None:
                adapted_s, adapted_q = emb_s, emb_q
            else:
                adapted = ctx.adapted[(shots, index, adapt)]
                adapted_s, adapted_q = adapted[:len(support)], adapted[len(support):]
                if ctx.saved is not None:
                    ctx.saved[(level.index, shots, index, adapt)] = (
                        [ds.sample_ids[i] for i in episode.targets], adapted)
            scored[adapt] = score_episode(adapted_s, support_labels, adapted_q, query_labels, adapt)
        rows += [{**common, "adaptation": adapt, "metric": m, "value": v}
                 for adapt, values in scored.items() for m, v in values.items()]
    return rows


# --- the harness ------------------------------------------------------------------------------------

def evaluate(model: str | Path | LoadedModel, dataset: str | ImageDataset, splits: SplitSet | str | Path | None = None,
             *, root: str | Path | None = None, levels: Sequence[int] | None = None, fewshot: Sequence[int] = (),
             adapt: str | Sequence[str] = "prototypes", episodes: int | None = None,
             adapt_iterations: int | None = None, ks: Sequence[int] = KS,
             clustering: bool = True, device: str = "auto", precision: str = "fp32", batch_size: int = 128,
             workers: int = 0, use_cache: bool = True, shard_size: int = 2048, label: str | None = None,
             save_embeddings: bool = False, dataset_options: Mapping[str, object] | None = None,
             decode: str = "loader", reference: str | Path | None = None) -> Results:
    """Score ``model`` on every requested level of ``splits``; returns the :class:`Results`.

    Args:
        model: a registered name, a model spec (``timm:NAME``, ``open_clip:ARCH/TAG``, ``hf:ORG/NAME``,
            ``torchhub:REPO:ENTRY``), a model file, a :class:`LoadedModel`, or for the per-level protocol
            a template containing ``{level}`` or a directory of ``level<N>.pt``.
        dataset: a dataset name (loaded from ``root``) or a loaded dataset.
        splits: a :class:`SplitSet`, a version of ``dataset``'s published split sets, or a
            manifest directory (default: the latest published version).
        levels: level numbers (default all).
        fewshot: shots to evaluate with the manifest's episodes (e.g. ``(2, 5)``).
        adapt: the few-shot adaptation(s): ``prototypes``, ``finetune-last``, ``finetune-all``, or several.
        episodes: use only the first ``episodes`` episodes (default all).
        adapt_iterations: override the fine-tuning iterations (default 1000 for 2-shot, 1500 for 5-shot).
        shard_size: images per embedding-cache shard (an interrupted run loses at most one shard).
        save_embeddings: keep the embeddings in the results (``Results.embeddings``; written by
            ``Results.save``): every level's test images, and per episode the fine-tuned embeddings of
            its support and query images, for a leaderboard submission.
        dataset_options: adapter options for loading ``dataset`` by name (e.g. ``{"subset": "test"}``).
        decode: where images are decoded: ``loader``, ``device`` or ``auto`` (see :func:`oodml.embedding.embed`).
        reference: a folder of in-distribution references (:mod:`oodml.reference`): adds ``meta["reference"]``.

    Raises:
        OodmlError: for any argument that cannot be honoured, naming it; every argument (device, counts, levels,
            shots, episodes, checkpoint and reference files) is checked, the models loaded, before data is read.
    """
    adaptations = _checked_adaptations(adapt)
    _check_counts(episodes=episodes, adapt_iterations=adapt_iterations, batch_size=batch_size, workers=workers,
                  shard_size=shard_size)
    _check_device(device, precision)
    fewshot = tuple(dict.fromkeys(fewshot))
    split_set, chosen = _levels_of(dataset, splits, levels)
    _check_fewshot(chosen, fewshot, episodes)
    references, models = _references_and_models(reference, model, split_set, chosen, adaptations if fewshot else ())
    ds = dataset if isinstance(dataset, ImageDataset) else load_dataset(dataset, root=root, **(dataset_options or {}))
    split_set.check_dataset(ds.fingerprint, ds.root)
    _warn_if_trained_on(models.shared, ds)
    embedder = _Embedder(ds, dict(use_cache=use_cache, shard_size=shard_size, device=device, precision=precision,
                                  batch_size=batch_size, workers=workers, decode=decode))
    scoring = _Scoring(ds, split_set, models.protocol, embedder, tuple(ks), clustering, fewshot,
                       adaptations, episodes, adapt_iterations, device, batch_size, save_embeddings or bool(references))
    rows, saved, images_embedded = _score_levels(chosen, models, scoring)
    meta = {"model": str(model if not isinstance(model, LoadedModel) else model.source), "label": label,
            "protocol": models.protocol, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
            "splits": f"{split_set.dataset}@{split_set.version}", "split_digest": split_set.digest,
            "distance": split_set.metadata.get("distance"), "fewshot": list(fewshot),
            "adapt": list(adaptations) if fewshot else None, "episodes": episodes,
            "images_embedded": images_embedded, **_model_meta(models),
            **pretraining_meta(models.identity(), split_set, chosen, ds), **references.meta(saved, ds, embedder),
            "protocol_card": models.card(split_set, chosen, ks, clustering),
            "oodml_version": __version__, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return Results(rows, _level_records(chosen), meta, saved if save_embeddings else None)


def _level_records(chosen: list[Level]) -> list[dict]:
    """``Results.levels``: each level's number, distance and the distance's interval."""
    return [{"level": lv.index, "distance": lv.distance, "ci_low": lv.ci_low, "ci_high": lv.ci_high} for lv in chosen]


def _levels_of(dataset: str | ImageDataset, splits: SplitSet | str | Path | None, levels: Sequence[int] | None
               ) -> tuple[SplitSet, list[Level]]:
    """The split set ``splits`` names for ``dataset``, and the requested levels of it (default all), each once."""
    split_set = resolve(dataset.name if isinstance(dataset, ImageDataset) else dataset_spec(dataset).name, splits)
    return split_set, [split_set.level(k) for k in dict.fromkeys(levels)] if levels else list(split_set.levels)


def _score_levels(chosen: list[Level], models: _Models, scoring: _Scoring) -> tuple[list[dict], dict, int | None]:
    """Score every chosen level; returns the results rows, the saved embeddings and, for a shared model, how
    many distinct images were embedded (each once, whatever levels it belongs to)."""
    ds, embedder = scoring.ds, scoring.embedder
    union = np.unique(np.concatenate([ds.indices_of_classes(lv.test_classes) for lv in chosen]))
    shared_embeddings = embedder(models.shared, union, "embed") if models.shared is not None else None
    rows: list[dict] = []
    saved: dict = {}
    for level in chosen:
        if models.shared is not None:
            loaded, embeddings = models.shared, shared_embeddings
        else:
            loaded = models.for_level(level, scoring.split_set)
            embeddings = embedder(loaded, ds.indices_of_classes(level.test_classes), f"embed level {level.index}")
        level_rows, level_saved = scoring.level(level, loaded, embeddings)
        rows += level_rows
        saved.update(level_saved)
    return rows, saved, int(len(union)) if models.shared is not None else None


def _model_meta(models: _Models) -> dict:
    """The shared model's digest, and the evaluated weights' identity (source, weights hash, declared
    pretraining; :meth:`_Models.identity`) for ``meta``."""
    return {"model_digest": models.shared.digest if models.shared is not None else None,
            "model_identity": models.identity() or None}


@dataclass
class _Scoring:
    """How every level is scored: retrieval metrics of its test embeddings, then its few-shot episodes."""

    ds: ImageDataset
    split_set: SplitSet
    protocol: str
    embedder: _Embedder
    ks: tuple[int, ...]
    clustering: bool
    fewshot: tuple[int, ...]
    adaptations: tuple[str, ...]
    episodes: int | None
    adapt_iterations: int | None
    device: str
    batch_size: int
    save_embeddings: bool

    def level(self, level: Level, loaded: LoadedModel, embeddings: dict[str, np.ndarray]
              ) -> tuple[list[dict], dict]:
        """The results rows of ``level`` and, with ``save_embeddings``, its embeddings by key."""
        ds = self.ds
        indices = ds.indices_of_classes(level.test_classes)
        emb = np.stack([embeddings[ds.sample_ids[i]] for i in indices])
        saved = {("test", level.index): ([ds.sample_ids[i] for i in indices], emb)} if self.save_embeddings else {}
        base = {"model": loaded.source, "model_digest": loaded.digest, "dataset": ds.name,
                "split_digest": self.split_set.digest, "level": level.index, "distance": level.distance,
                "protocol": self.protocol}
        rows = _retrieval_rows(emb, ds.labels[indices], base, self.ks, self.clustering)
        if self.fewshot:
            features = (self.embedder.backbone_features(loaded, indices, level)
                        if any(ADAPTATIONS[a].uses_backbone for a in self.adaptations) else None)
            ctx = _FewShotContext(ds, loaded, embeddings, features, self.adaptations, self.adapt_iterations,
                                  self.device, self.batch_size, {} if self.save_embeddings else None)
            _adapt_level(ctx, level, self.fewshot, self.episodes, self.split_set.digest)
            for shots in self.fewshot:
                rows += _fewshot_rows(ctx, level, shots, self.episodes, base)
            saved.update({("fewshot", *key): value for key, value in (ctx.saved or {}).items()})
        return rows, saved


def _check_device(device: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise OodmlError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    resolve_device(device)


def _checked_adaptations(adapt: str | Sequence[str]) -> tuple[str, ...]:
    """The adaptations asked for, each once, in order; an unknown name raises a one-line error."""
    adaptations = (adapt,) if isinstance(adapt, str) else tuple(dict.fromkeys(adapt))
    for name in adaptations:
        ADAPTATIONS.entry(name)
    return adaptations


@dataclass
class _Models:
    """The model(s) of one evaluation: one ``shared`` model (zero-shot protocol) or one checkpoint per level
    (per-level protocol, ``model`` a template or a directory), each checked for the adaptations asked."""

    model: str | Path | LoadedModel
    protocol: str
    shared: LoadedModel | None
    adaptations: tuple[str, ...]
    level_identities: dict[int, dict] = field(default_factory=dict)  # level -> its checkpoint's, as loaded
    level_preprocessing: dict[int, Preprocessing] = field(default_factory=dict)  # level -> its checkpoint's

    @classmethod
    def of(cls, model: str | Path | LoadedModel, chosen: list[Level], adaptations: tuple[str, ...]) -> _Models:
        """Resolve the protocol, refuse missing per-level checkpoints, and load the shared model."""
        per_level = isinstance(model, (str, Path)) and _per_level_path(model, chosen[0].index) is not None
        if per_level:
            missing = [lv.index for lv in chosen if not _per_level_path(model, lv.index).exists()]
            if missing:
                raise OodmlError(f"per-level checkpoint {_per_level_path(model, missing[0])} for level "
                                 f"{missing[0]} does not exist ({len(missing)} of {len(chosen)} levels have none); "
                                 "train them first or choose --levels")
            return cls(model, "per-level", None, adaptations)
        shared = model if isinstance(model, LoadedModel) else load_model(model)
        for name in adaptations:
            check_adaptable(shared.module, name)
        return cls(model, "zero-shot", shared, adaptations)

    def for_level(self, level: Level, split_set: SplitSet) -> LoadedModel:
        """The per-level checkpoint of ``level``, refused if it was trained on the level's test classes."""
        loaded = load_model(_per_level_path(self.model, level.index))
        check_leak(loaded, level, split_set)
        for name in self.adaptations:
            check_adaptable(loaded.module, name)
        self.level_identities[level.index] = loaded.identity
        self.level_preprocessing[level.index] = loaded.preprocessing
        return loaded

    def card(self, split_set: SplitSet, chosen: list[Level], ks: Sequence[int], clustering: bool) -> dict:
        """The protocol card (:func:`oodml.protocol.protocol_card`) of scoring the chosen levels with these
        models: each level's preprocessing is its model's (per level: its checkpoint's, loaded by now)."""
        preprocessing = ({lv.index: self.shared.preprocessing for lv in chosen} if self.shared is not None
                         else self.level_preprocessing)
        return protocol_card(split_set, chosen, preprocessing, protocol=self.protocol, ks=ks, clustering=clustering)

    def identity(self) -> dict:
        """What ran (:attr:`LoadedModel.identity`): the shared model's; per level, what the checkpoints loaded
        so far share, with each one's under ``levels`` (:func:`oodml.models.identity.levels_identity`)."""
        if self.shared is not None:
            return self.shared.identity
        return levels_identity(str(self.model), self.level_identities)


def _references_and_models(reference: str | Path | None, model: str | Path | LoadedModel, split_set: SplitSet,
                           chosen: list[Level], adaptations: tuple[str, ...]) -> tuple[References, _Models]:
    """Load the references (:meth:`References.open`) and the model(s) (:meth:`_Models.of`), and warn when the
    references are of another architecture than the model (per level, the first level's checkpoint stands
    for the others)."""
    references = References.open(reference, split_set, chosen)
    models = _Models.of(model, chosen, adaptations)
    if references:
        references.warn_if_other_architecture(models.shared if models.shared is not None
                                              else load_model(_per_level_path(model, chosen[0].index)))
    return references, models


def _warn_if_trained_on(shared: LoadedModel | None, ds: ImageDataset) -> None:
    """Warn when the zero-shot model declares training (or pretraining) on the evaluated dataset."""
    if shared is not None and (shared.provenance.get("dataset") == ds.name
                               or declared_training_on(shared.identity.get("pretraining"), ds.name)):
        warnings.warn(f"{shared.source} declares training on {ds.name}; zero-shot results on its test classes may "
                      "be optimistic", stacklevel=3)


@dataclass
class _Embedder:
    """Embeds images of ``ds`` through the embedding cache, returning sample id -> embedding."""

    ds: ImageDataset
    options: dict

    def __call__(self, loaded: LoadedModel, indices: np.ndarray, desc: str) -> dict[str, np.ndarray]:
        values = embed_cached(self.ds, loaded.module, loaded.preprocessing, loaded.digest, indices, desc=desc,
                              model_name=loaded.source, **self.options)
        return dict(zip((self.ds.sample_ids[i] for i in indices), values, strict=True))

    def backbone_features(self, loaded: LoadedModel, indices: np.ndarray, level: Level) -> dict[str, np.ndarray]:
        """The frozen backbone's features (for finetune-last), once per image, through the cache."""
        digest = hashlib.sha256(f"{loaded.digest}|backbone".encode()).hexdigest()
        backbone = LoadedModel(loaded.module.backbone, loaded.preprocessing, digest, loaded.source)
        return self(backbone, indices, f"backbone features level {level.index}")


def _retrieval_rows(emb: np.ndarray, labels: np.ndarray, base: dict, ks: Sequence[int], clustering: bool
                    ) -> list[dict]:
    """One results row per retrieval metric of a level's (N, d) test embeddings, unadapted."""
    metrics = retrieval_metrics(emb, labels, ks=ks, clustering=clustering)
    metrics.pop("queries")
    return [{**base, "adaptation": "none", "shots": 0, "episode": -1, "metric": m, "value": v}
            for m, v in metrics.items()]


def _check_counts(**counts: int | None) -> None:
    """Refuse a count that is not a whole number at least its minimum; None (the default) passes.

    The CLI's argument types refuse these before this; it guards the Python API.
    """
    minimum = {"episodes": 1, "adapt_iterations": 1, "batch_size": 1, "shard_size": 1, "workers": 0}
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or value < minimum[name]):
            raise OodmlError(f"{name}={value!r}: must be a whole number of at least {minimum[name]}")


def _check_fewshot(levels: Sequence[Level], fewshot: Sequence[int], episodes: int | None) -> None:
    """Refuse, before any work, shots that the manifest has no episodes for and more episodes than it holds."""
    for shots in fewshot:
        for level in levels:
            held = len(level.episodes(shots))  # an OodmlError listing the shots there are
            if episodes is not None and episodes > held:
                raise OodmlError(f"{episodes} episodes requested (--episodes), but level {level.index} has {held} "
                                 f"{shots}-shot episodes; ask for at most {held}")


_LEVEL_PART = re.compile(r"\s*([0-9]{1,9})\s*(?:-\s*([0-9]{1,9})\s*)?")


def level_ranges(text: str) -> list[tuple[int, int]] | None:
    """Read a level selection without expanding it, so that ``1-20000000`` costs nothing.

    Returns:
        None for ``all``; else inclusive ``(first, last)`` ranges: ``1,3-5`` -> ``[(1, 1), (3, 5)]``.

    Raises:
        ValueError: for a reversed range (``3-1``) or anything else; the message says what to write.
    """
    if text.strip() == "all":
        return None
    ranges = []
    for part in text.split(","):
        m = _LEVEL_PART.fullmatch(part)
        if not m:
            raise ValueError("use all, a list like 1,3,5 or a range like 2-4")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first:
            raise ValueError(f"the range {first}-{last} runs backwards; write {last}-{first}")
        ranges.append((first, last))
    return ranges


def parse_levels(text: str, split_set: SplitSet, option: str = "--levels") -> list[int] | None:
    """A level selection (``--levels``) as level numbers of ``split_set``.

    Returns:
        None for ``all``; else the levels of ``1,3,5``, ``2-4`` or ``1,3-5``, in the order given, each once.

    Raises:
        OodmlError: bad syntax, a reversed range, or a level ``split_set`` does not have (naming those it has).
    """
    try:
        ranges = level_ranges(text)
    except ValueError as exc:
        raise OodmlError(f"{option} {text!r}: {exc}") from None
    if ranges is None:
        return None
    available = sorted(lv.index for lv in split_set.levels)
    chosen: list[int] = []
    for first, last in ranges:
        for end in (first, last):
            if end not in available:
                span = f"{available[0]}-{available[-1]}" if available == list(range(available[0], available[-1] + 1)) \
                    else ",".join(map(str, available))
                raise OodmlError(f"{option} {text!r}: {split_set.dataset}@{split_set.version} has no level {end}; "
                                 f"its levels are {span}")
        chosen += [k for k in available if first <= k <= last]
    return list(dict.fromkeys(chosen))
