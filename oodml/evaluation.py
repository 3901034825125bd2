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

import dataclasses
import datetime as dt
import difflib
import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .adapt import ADAPTATIONS, EpisodeInput, check_adaptable
from .datasets import DataConfig, ImageDataset, dataset_spec, load_dataset
from .embedding import (
    PRECISIONS,
    EmbedSettings,
    embed_cached,
    resolve_device,
)
from .errors import OodmlError
from .matched import DEFAULT_DRAWS, class_sums, level_draws, matched_count, matched_episode, search_depth
from .metrics import MAP_DEPTH, clustering_metrics, metric_names, per_query_and_neighbours, summary_metrics
from .models import LoadedModel, load_model
from .models.identity import levels_identity
from .models.refs import expand_level_template, resolve_model_ref  # noqa: F401 (expand_level_template: re-exported)
from .models.sources import declared_training_on
from .preprocessing import Preprocessing
from .protocol import (
    episode_split,
    protocol_card,
    score_episode,
)
from .reference import References
from .results import Results
from .splits import Level, SplitSet, resolve
from .splits.overlap import pretraining_meta

#: the K of the recall@K that :func:`evaluate` reports
KS = (1, 2, 4, 8)


# --- the configuration -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FewShotConfig:
    """Few-shot scoring with the manifest's episodes.

    Attributes:
        shots: shots to evaluate (e.g. ``(2, 5)``; empty: no few-shot results).
        adapt: the adaptation(s): ``prototypes``, ``finetune-last``, ``finetune-all``, or several.
        episodes: use only the first ``episodes`` episodes of each shot (default all).
        adapt_iterations: fine-tuning iterations (default 1000 for 2-shot, 1500 for 5-shot).
    """

    shots: Sequence[int] = ()
    adapt: str | Sequence[str] = "prototypes"
    episodes: int | None = None
    adapt_iterations: int | None = None


@dataclass(frozen=True)
class ComputeConfig(EmbedSettings):
    """How images are embedded (:func:`oodml.embedding.embed_cached`); none of it changes a result's meaning.

    The fields of :class:`oodml.embedding.EmbedSettings` (``device``, ``precision``, ``batch_size``,
    ``workers``, ``decode``: declared there once, with their defaults), and the cache's two.

    Attributes:
        use_cache: read and write the embedding cache; shard_size: images per cache shard (an interrupted run
            loses at most one shard).
    """

    use_cache: bool = True
    shard_size: int = 2048

    @property
    def embed(self) -> EmbedSettings:
        """The :class:`~oodml.embedding.EmbedSettings` part, as :func:`oodml.embedding.embed` takes it."""
        return EmbedSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EmbedSettings)})


@dataclass(frozen=True)
class MatchConfig:
    """Class-count-matched scoring (:mod:`oodml.matched`): every level also scored on ``draws`` seeded
    subsets of ``classes`` of its test classes.

    Attributes:
        classes: N: ``"min"`` (the smallest test-class count over all levels of the split set), a number up to
            that, or None (no matched scores).
        draws: subsets per level, averaged.
    """

    classes: int | str | None = "min"
    draws: int = DEFAULT_DRAWS


@dataclass(frozen=True)
class ReportConfig:
    """What a run records besides its scores.

    Attributes:
        label: the run's name in plots.
        save_embeddings: keep the embeddings (``Results.embeddings``, written by ``Results.save``): every level's
            test images, and per episode the fine-tuned embeddings of its support and query images, for a
            leaderboard submission.
        reference: a folder of in-distribution references (:mod:`oodml.reference`): adds ``meta["reference"]``.
    """

    label: str | None = None
    save_embeddings: bool = False
    reference: str | Path | None = None


@dataclass(frozen=True)
class EvalConfig:
    """The settings of :func:`evaluate`: what is scored (levels, metrics, few-shot) and how it runs.

    Attributes:
        levels: level numbers (default all); ks: the K of ``recall@K``; clustering: also nmi/ami (k-means).
        fewshot, match, compute, data, report: the groups above.

    ``EvalConfig.of(levels=[1], device="cpu", fewshot=(2,))`` builds one from the flat names of
    :data:`FLAT_OPTIONS` (the CLI's option names), :meth:`replace` changes some of them.
    """

    levels: Sequence[int] | None = None
    ks: Sequence[int] = KS
    clustering: bool = True
    fewshot: FewShotConfig = FewShotConfig()
    match: MatchConfig = MatchConfig()
    compute: ComputeConfig = ComputeConfig()
    data: DataConfig = DataConfig()
    report: ReportConfig = ReportConfig()

    @classmethod
    def of(cls, **options: object) -> EvalConfig:
        """A config from flat option names (:data:`FLAT_OPTIONS`), the rest default."""
        return cls().replace(**options)

    def replace(self, **options: object) -> EvalConfig:
        """This config with the flat options (:data:`FLAT_OPTIONS`) changed.

        Raises:
            OodmlError: an unknown option, naming the close ones.
        """
        groups: dict[str, dict[str, object]] = {}
        for name, value in options.items():
            if name not in FLAT_OPTIONS:
                close = difflib.get_close_matches(name, FLAT_OPTIONS, n=3)
                raise OodmlError(f"unknown evaluation option {name!r}"
                                 + (f"; did you mean {', '.join(close)}?" if close else
                                    f"; options: {', '.join(FLAT_OPTIONS)}"))
            group, attr = FLAT_OPTIONS[name]
            groups.setdefault(group, {})[attr] = value
        top = groups.pop("", {})
        nested = {group: dataclasses.replace(getattr(self, group), **values) for group, values in groups.items()}
        return dataclasses.replace(self, **top, **nested)


#: flat option name -> (group of :class:`EvalConfig`, "" for its own fields; attribute)
FLAT_OPTIONS: Mapping[str, tuple[str, str]] = {
    "levels": ("", "levels"), "ks": ("", "ks"), "clustering": ("", "clustering"),
    "fewshot": ("fewshot", "shots"), "adapt": ("fewshot", "adapt"), "episodes": ("fewshot", "episodes"),
    "adapt_iterations": ("fewshot", "adapt_iterations"),
    "match_classes": ("match", "classes"), "match_draws": ("match", "draws"),
    **{f.name: ("compute", f.name) for f in dataclasses.fields(ComputeConfig)},   # EmbedSettings' five, the cache's two
    "root": ("data", "root"), "dataset_options": ("data", "options"),
    **{name: ("report", name) for name in ("label", "save_embeddings", "reference")},
}


def zero_shot_metrics(ks: Sequence[int] = KS, clustering: bool = True) -> list[str]:
    """Names of the zero-shot metrics :func:`evaluate` reports: what ``--metric`` can plot."""
    return metric_names(ks, clustering=clustering)  # the one table, oodml.metrics.METRICS


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
             config: EvalConfig | None = None, **options: object) -> Results:
    """Score ``model`` on every requested level of ``splits``; returns the :class:`~oodml.results.Results`.

    Args:
        model: a registered name, a model spec (``timm:NAME``, ``open_clip:ARCH/TAG``, ``hf:ORG/NAME``,
            ``torchhub:REPO:ENTRY``), a model file, a :class:`LoadedModel`, or for the per-level protocol
            a template containing ``{level}`` or a directory of ``level<N>.pt``.
        dataset: a dataset name (loaded from ``config.data``) or a loaded dataset.
        splits: a :class:`SplitSet`, a version of ``dataset``'s published split sets, or a
            manifest directory (default: the latest published version).
        config: the settings (:class:`EvalConfig`; default: all levels, every metric, no few-shot).
        options: flat settings changed on ``config`` (:meth:`EvalConfig.replace`), e.g. ``levels=[1, 8]``.

    Raises:
        OodmlError: for any setting that cannot be honoured, naming it; every setting (device, counts, levels,
            shots, episodes, checkpoint and reference files) is checked, the models loaded, before data is read.
    """
    config = (config or EvalConfig()).replace(**options)
    few, report = config.fewshot, config.report
    adaptations = _checked_adaptations(few.adapt)
    _check_counts(episodes=few.episodes, adapt_iterations=few.adapt_iterations, batch_size=config.compute.batch_size,
                  workers=config.compute.workers, shard_size=config.compute.shard_size, match_draws=config.match.draws)
    _check_device(config.compute.device, config.compute.precision)
    fewshot = tuple(dict.fromkeys(few.shots))
    split_set, chosen = _levels_of(dataset, splits, config.levels)
    n_match = matched_count(split_set, config.match.classes)
    _check_fewshot(chosen, fewshot, few.episodes)
    references, models = _references_and_models(report.reference, model, split_set, chosen,
                                                adaptations if fewshot else ())
    ds = dataset if isinstance(dataset, ImageDataset) else load_dataset(dataset, root=config.data.root,
                                                                         **dict(config.data.options))
    split_set.check_dataset(ds.fingerprint, ds.root)
    _warn_if_trained_on(models.shared, ds)
    scoring = _Scoring.of(config, ds, split_set, models.protocol, adaptations=adaptations,
                          save_embeddings=report.save_embeddings or bool(references), n_match=n_match)
    rows, saved, classes, images_embedded = _score_levels(chosen, models, scoring)
    matched = {"n_classes": n_match, "draws": config.match.draws} if n_match else None
    meta = {"model": str(model if not isinstance(model, LoadedModel) else model.source), "label": report.label,
            "protocol": models.protocol, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
            "splits": f"{split_set.dataset}@{split_set.version}", "split_digest": split_set.digest,
            "distance": split_set.metadata.get("distance"), "fewshot": list(fewshot),
            "adapt": list(adaptations) if fewshot else None, "episodes": few.episodes, "matched": matched,
            "images_embedded": images_embedded, **_model_meta(models),
            **pretraining_meta(models.identity(), split_set, chosen, ds),
            **references.meta(saved, ds, scoring.embedder),
            "protocol_card": models.card(split_set, chosen, config.ks, config.clustering, matched),
            "oodml_version": __version__, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return Results(rows, _level_records(chosen), meta, saved if report.save_embeddings else None, classes)


def _level_records(chosen: list[Level]) -> list[dict]:
    """``Results.levels``: each level's number, distance, the distance's interval and its test-class count."""
    return [{"level": lv.index, "distance": lv.distance, "ci_low": lv.ci_low, "ci_high": lv.ci_high,
             "n_test_classes": len(lv.test_classes)} for lv in chosen]


def _levels_of(dataset: str | ImageDataset, splits: SplitSet | str | Path | None, levels: Sequence[int] | None
               ) -> tuple[SplitSet, list[Level]]:
    """The split set ``splits`` names for ``dataset``, and the requested levels of it (default all), each once."""
    split_set = resolve(dataset.name if isinstance(dataset, ImageDataset) else dataset_spec(dataset).name, splits)
    return split_set, [split_set.level(k) for k in dict.fromkeys(levels)] if levels else list(split_set.levels)


def _score_levels(chosen: list[Level], models: _Models, scoring: _Scoring
                  ) -> tuple[list[dict], dict, list[dict], int | None]:
    """Score every chosen level; returns the results rows, the saved embeddings, the per-class records
    (:mod:`oodml.results`, ``classes.parquet``) and, for a shared model, how many distinct images were
    embedded (each once, whatever levels it belongs to)."""
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
    return rows, saved, scoring.classes, int(len(union)) if models.shared is not None else None


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
    match_classes: int | None = None   # N of the class-count-matched scores (None: none)
    match_draws: int = DEFAULT_DRAWS
    classes: list[dict] = field(default_factory=list)  # the per-class records of the levels scored so far

    @classmethod
    def of(cls, config: EvalConfig, ds: ImageDataset, split_set: SplitSet, protocol: str, *,
           adaptations: tuple[str, ...], save_embeddings: bool, n_match: int | None) -> _Scoring:
        """The scoring of ``config`` (its few-shot shots each once), embedding through the cache."""
        compute = config.compute
        embedder = _Embedder(ds, dict(use_cache=compute.use_cache, shard_size=compute.shard_size,
                                      settings=compute.embed))
        return cls(ds=ds, split_set=split_set, protocol=protocol, embedder=embedder, ks=tuple(config.ks),
                   clustering=config.clustering, fewshot=tuple(dict.fromkeys(config.fewshot.shots)),
                   adaptations=adaptations, episodes=config.fewshot.episodes,
                   adapt_iterations=config.fewshot.adapt_iterations, device=compute.device,
                   batch_size=compute.batch_size, save_embeddings=save_embeddings, match_classes=n_match,
                   match_draws=config.match.draws)

    def level(self, level: Level, loaded: LoadedModel, embeddings: dict[str, np.ndarray]
              ) -> tuple[list[dict], dict]:
        """The results rows of ``level`` and, with ``save_embeddings``, its embeddings by key."""
        ds = self.ds
        indices = ds.indices_of_classes(level.test_classes)
        emb = np.stack([embeddings[ds.sample_ids[i]] for i in indices])
        saved = {("test", level.index): ([ds.sample_ids[i] for i in indices], emb)} if self.save_embeddings else {}
        base = {"model": loaded.source, "model_digest": loaded.digest, "dataset": ds.name,
                "split_digest": self.split_set.digest, "level": level.index, "distance": level.distance,
                "protocol": self.protocol, "test_set": "full"}
        rows = self.retrieval(level, emb, ds.labels[indices], base)
        if self.fewshot:
            features = (self.embedder.backbone_features(loaded, indices, level)
                        if any(ADAPTATIONS[a].uses_backbone for a in self.adaptations) else None)
            ctx = _FewShotContext(ds, loaded, embeddings, features, self.adaptations, self.adapt_iterations,
                                  self.device, self.batch_size, {} if self.save_embeddings else None)
            _adapt_level(ctx, level, self.fewshot, self.episodes, self.split_set.digest)
            for shots in self.fewshot:
                rows += _fewshot_rows(ctx, level, shots, self.episodes, base)
                if self.match_classes:  # the same episodes at n ways (oodml.matched)
                    rows += _matched_fewshot_rows(ctx, level, shots, self.episodes, base, self.match_classes)
            saved.update({("fewshot", *key): value for key, value in (ctx.saved or {}).items()})
        return rows, saved

    def retrieval(self, level: Level, emb: np.ndarray, labels: np.ndarray, base: dict) -> list[dict]:
        """The retrieval rows of a level's (N, d) test embeddings (unadapted), on its full test set and on
        every matched draw (``test_set`` ``matched``, ``episode`` the draw), and its per-class records
        appended to ``classes``: one search of the level for all of them."""
        per_query, neighbours = per_query_and_neighbours(
            emb, labels, ks=self.ks, keep=search_depth(labels, self.ks) if self.match_classes else 0)
        rows = _retrieval_rows(per_query, (emb, labels), base, self.ks, self.clustering)
        if not self.match_classes:
            whole = {m: v for m, v in per_query.items() if m != f"map@{MAP_DEPTH}"}  # as level_draws' whole
            self.classes += _class_records(level.index, -1, level.test_classes, whole, labels, self.ds)
            return rows
        whole, per_draw = level_draws(emb, labels, level.test_classes, self.ds.class_index,
                                      (self.split_set.digest, level.index), (self.match_classes, self.match_draws),
                                      self.ks, neighbours)
        self.classes += _class_records(level.index, -1, level.test_classes, whole, labels, self.ds)
        for d, (classes, values) in enumerate(per_draw):
            self.classes += _class_records(level.index, d, classes, values, labels, self.ds)
            rows += [{**base, "test_set": "matched", "adaptation": "none", "shots": 0, "episode": d, "metric": m,
                      "value": float(v.mean())} for m, v in values.items() if m != "query"]
        return rows


def _class_records(level: int, draw: int, classes: Sequence[str], per_query: dict[str, np.ndarray],
                   labels: np.ndarray, ds: ImageDataset) -> list[dict]:
    """Per class of ``classes`` (a level's test classes, or a matched draw's): its query count and the sum of
    each per-query metric over its queries (:func:`oodml.metrics.per_query_metrics` output, its ``query`` rows
    of ``labels``, the (N,) dataset labels of the level's test images)."""
    counts, sums = class_sums(per_query, labels, [ds.class_index[c] for c in classes])
    return [{"level": level, "draw": draw, "class": name, "queries": int(counts[k]),
             **{m: float(s[k]) for m, s in sums.items()}} for k, name in enumerate(classes)]


def _matched_fewshot_rows(ctx: _FewShotContext, level: Level, shots: int, episodes: int | None, base: dict,
                          ways: int) -> list[dict]:
    """Per episode, its scores restricted to ``ways`` of its classes (:func:`oodml.matched.episode_classes`):
    the support and the queries of the other classes dropped, the embeddings those of the whole episode
    (adapted ones from ``ctx.adapted``), so that n-way accuracy is compared at the same n on every level."""
    rows = []
    for index, (support, support_labels, query, query_labels), _ in ctx.episodes(level, shots, episodes,
                                                                                   base["split_digest"]):
        s_in, s_labels, q_in, q_labels = matched_episode((base["split_digest"], level.index, shots, index),
                                                         support_labels, query_labels, ways)
        emb_s, emb_q = ctx.stack(ctx.embeddings, support), ctx.stack(ctx.embeddings, query)
        embedded = {"none": (emb_s, emb_q)}
        for adapt in ctx.adaptations:
            adapted = None if ADAPTATIONS[adapt].run is None else ctx.adapted[(shots, index, adapt)]
            embedded[adapt] = (emb_s, emb_q) if adapted is None else (adapted[:len(support)], adapted[len(support):])
        for adapt, (e_s, e_q) in embedded.items():
            scored = score_episode(e_s[s_in], s_labels, e_q[q_in], q_labels, adapt)
            rows += [{**base, "test_set": "matched", "shots": shots, "episode": index, "adaptation": adapt,
                      "metric": m, "value": v} for m, v in scored.items()]
    return rows


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

    def card(self, split_set: SplitSet, chosen: list[Level], ks: Sequence[int], clustering: bool,
             matched: dict | None) -> dict:
        """The protocol card (:func:`oodml.protocol.protocol_card`) of scoring the chosen levels with these
        models: each level's preprocessing is its model's (per level: its checkpoint's, loaded by now)."""
        preprocessing = ({lv.index: self.shared.preprocessing for lv in chosen} if self.shared is not None
                         else self.level_preprocessing)
        return protocol_card(split_set, chosen, preprocessing, protocol=self.protocol, ks=ks, clustering=clustering,
                             matched=matched)

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


def _retrieval_rows(per_query: dict[str, np.ndarray], level: tuple[np.ndarray, np.ndarray], base: dict,
                    ks: Sequence[int], clustering: bool) -> list[dict]:
    """One results row per retrieval metric of a level, unadapted: the means of its per-query values
    (:func:`oodml.metrics.per_query_metrics`) and, with ``clustering``, k-means over its ``(embeddings (N, d),
    labels (N,))``."""
    metrics = summary_metrics(per_query, ks)
    metrics.pop("queries")
    if clustering:
        metrics.update(clustering_metrics(*level))
    return [{**base, "adaptation": "none", "shots": 0, "episode": -1, "metric": m, "value": v}
            for m, v in metrics.items()]


def _check_counts(**counts: int | None) -> None:
    """Refuse a count that is not a whole number at least its minimum; None (the default) passes.

    The CLI's argument types refuse these before this; it guards the Python API.
    """
    minimum = {"episodes": 1, "adapt_iterations": 1, "batch_size": 1, "shard_size": 1, "workers": 0,
               "match_draws": 1}
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
