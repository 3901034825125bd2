"""In-distribution references: what a level's test classes allow when they are not out of distribution.

A level's Recall@1 falls with distance either because the shift grows or because
the test classes are simply harder (more alike, more varied) whatever a model
was trained on.  The reference separates the two.  For level k it is a model of
the same architecture and recipe as the evaluated one, trained on the level's
*test* classes with 2-fold cross-fitting:

* each test class's images are cut into two halves (:func:`fold_split`: seeded
  by the split set's digest and the class name, by sample id, never by
  position; the halves differ in size by at most one image and are the same at
  every level that tests the class);
* the reference of fold f is trained on half f of every test class, selected
  on the level's val classes (as the evaluated model is; the held-out half is
  never looked at), and embeds the other half.

Scoring rule (:func:`level_gap`).  Cross-fitting gives two embedding spaces, so
retrieval stays inside a half: each test image is a query once, against the
other images of its own half, embedded by the reference that did not see that
half.  A half holds about half the distractors (easier) and half the
same-class images (harder) of the full test set, so its Recall@1 is not the
full-set ``recall@1`` of the results.  The evaluated model is therefore scored
under the same rule (the same queries against the same galleries), and the
gap is reference minus model on those queries.  Its 95% interval is a paired
bootstrap over test classes (:func:`oodml.stats.paired_ratio_draws`, as the
leaderboard and ``oodml compare`` use it: each draw resamples the level's
classes with replacement, the same classes for both).

What the reference does not equalise: it trains on half the images of each
test class, and on as many classes as the level tests rather than as it
trains on; the iterations, batch layout and hyper-parameters are the model's.
References of another architecture than the evaluated model (another
``--arch``, ``--embed-dim`` or width, or a model oodml did not build) are
used with a one-line warning (:func:`architecture_warning`): their gap also
measures the architectures' difference, while their own Recall@1 from level
to level still shows each level's difficulty.

Files: ``level{k}-fold{f}.pt``, the reference of level k trained on half f
(``oodml train --reference``); ``oodml evaluate MODEL --reference DIR`` adds
the per-level comparison to the results (``meta["reference"]``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .datasets import ImageDataset
from .distributed import barrier, rank_world
from .errors import OodmlError
from .metrics import per_query_metrics
from .models import EmbeddingModel, LoadedModel, load_model, save
from .seeding import derive_seed, rng_for
from .splits import Level, SplitSet
from .stats import paired_ratio_draws, percentile_interval

if TYPE_CHECKING:  # training (and its losses) is imported only to train, not to evaluate
    from .training import TrainConfig

FOLDS = 2
#: bootstrap draws of each level's gap interval (as the leaderboard's)
DRAWS = 2000
RULE = ("Recall@1 within each half of every test class (the reference trained on the other half embeds it); "
        "model and reference scored on the same queries and galleries; gap = reference - model, 95% paired "
        "bootstrap over test classes")


def checkpoint_name(level: int, fold: int) -> str:
    """``level3-fold0.pt``: the reference of ``level`` trained on half ``fold`` of its test classes."""
    return f"level{level}-fold{fold}.pt"


def fold_split(sample_ids: Sequence[str], classes: Sequence[str], *, key: object) -> np.ndarray:
    """The half (0 or 1) of every image: per class, its sample ids sorted, shuffled by a generator seeded
    from (``key``, class name), the first ceil(n/2) in half 0.

    Args:
        sample_ids, classes: (N,) each image's sample id and class name, in any order.
        key: what makes the split (the split set's digest).

    Returns:
        (N,) int8 array of 0 and 1 aligned with ``sample_ids``; the same for any order of the input.
    """
    ids = np.asarray(sample_ids, dtype=str)
    names, inverse = np.unique(np.asarray(classes, dtype=str), return_inverse=True)
    order = np.lexsort((ids, inverse))               # by class, then by sample id
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
    folds = np.empty(len(ids), np.int8)
    for group in np.split(order, starts[1:]):
        shuffled = group[rng_for("reference-folds", key, names[inverse[group[0]]]).permutation(len(group))]
        folds[shuffled] = np.arange(len(group)) >= (len(group) + 1) // 2
    return folds


def level_halves(ds: ImageDataset, level: Level, key: object) -> tuple[np.ndarray, np.ndarray]:
    """Dataset rows of the level's test images in half 0 and in half 1 (:func:`fold_split`)."""
    rows = ds.indices_of_classes(level.test_classes)
    folds = fold_split([ds.sample_ids[i] for i in rows], [ds.classes[y] for y in ds.labels[rows]], key=key)
    return rows[folds == 0], rows[folds == 1]


def _ids_digest(ds: ImageDataset, rows: np.ndarray) -> str:
    return hashlib.sha256("\n".join(sorted(ds.sample_ids[i] for i in rows)).encode()).hexdigest()


def train_reference(ds: ImageDataset, splits: SplitSet, level: int, fold: int, config: TrainConfig | None = None,
                    *, out: str | Path | None = None, device: str = "auto", workers: int = 0
                    ) -> tuple[EmbeddingModel, dict]:
    """Train the reference of ``level`` on half ``fold`` of its test classes; return it and its provenance.

    The recipe is ``config``'s (as :func:`oodml.training.train`), selection on the level's val classes.  With
    ``out``, writes ``out/level{level}-fold{fold}.pt`` (kept when it is already this very run; a killed run
    resumes from ``out/level{level}-fold{fold}.state.pt``).
    """
    from .training import TrainConfig, TrainingRows, finished_checkpoint, train_on, with_iterations

    cfg = (config or TrainConfig()).resolved()
    splits.check_dataset(ds.fingerprint, ds.root)
    lv = splits.level(level)
    train_idx = level_halves(ds, lv, splits.digest)[fold]
    cfg = with_iterations(cfg, len(train_idx))
    identity = {"config": dataclasses.asdict(cfg), "split_digest": splits.digest, "level": level}
    path = Path(out) / checkpoint_name(level, fold) if out is not None else None
    finished = finished_checkpoint(path, identity) if path is not None else None
    if finished is not None and finished[1].get("reference", {}).get("fold") == fold:
        return finished
    if finished is not None:
        raise OodmlError(f"{path} is not the reference of half {fold}; choose another --out or delete it")
    state_path = path.with_suffix(".state.pt") if path is not None else None
    model, fitted = train_on(ds, TrainingRows(lv.test_classes, train_idx, ds.indices_of_classes(lv.val_classes)),
                             cfg, name=f"level {level} reference fold {fold}", device=device, workers=workers,
                             state_path=state_path, identity={**identity, "fold": fold})
    provenance = {
        "dataset": ds.name, "dataset_fingerprint": ds.fingerprint, "splits": f"{splits.dataset}@{splits.version}",
        "split_digest": splits.digest, "level": level, "train_classes": list(lv.test_classes),
        "val_classes": list(lv.val_classes), "selected_on": "val recall@1", **fitted,
        "reference": {"fold": fold, "folds": FOLDS, "train_ids_sha256": _ids_digest(ds, train_idx)},
        "config": dataclasses.asdict(cfg), "oodml_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if path is not None and rank_world()[0] == 0:
        save(model, path, provenance=provenance)
        state_path.unlink(missing_ok=True)
    barrier()
    return model, provenance


def train_references(ds: ImageDataset, splits: SplitSet, levels: Sequence[int] | None = None,
                     config: TrainConfig | None = None, *, out: str | Path, device: str = "auto", workers: int = 0,
                     report: Callable[[int, dict], None] | None = None) -> dict[tuple[int, int], dict]:
    """Train both halves' references of every level (all of ``splits`` when ``levels`` is None) into ``out``.

    ``report(level, provenance)`` is called as each reference finishes (its half: ``provenance["reference"]``).

    Returns:
        (level, fold) -> provenance.
    """
    done = {}
    for level in levels if levels is not None else [lv.index for lv in splits.levels]:
        for fold in range(FOLDS):
            _, done[(level, fold)] = train_reference(ds, splits, level, fold, config, out=out, device=device,
                                                     workers=workers)
            if report is not None:
                report(level, done[(level, fold)])
    return done


def half_recall(embeddings: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(N,) Recall@1 of every image as a query within its own half: 1.0 when its nearest other image of that
    half (cosine) has its class, 0.0 when not, NaN when its class has no other image in the half."""
    out = np.full(len(labels), np.nan)
    for half in range(FOLDS):
        rows = np.flatnonzero(folds == half)
        if len(rows) < 2 or len(np.unique(labels[rows])) == len(rows):
            continue
        per_query = per_query_metrics(embeddings[rows], labels[rows], ks=(1,), map_depth=None)
        out[rows[per_query["query"]]] = per_query["recall@1"]
    return out


@dataclass(frozen=True)
class Gap:
    """One level's comparison: Recall@1 of the model and of the reference on the same halves (:data:`RULE`),
    the gap reference - model with its 95% paired class-bootstrap interval, and the number of queries."""

    model: float
    reference: float
    gap: float
    ci_low: float
    ci_high: float
    queries: int


def level_gap(model_emb: np.ndarray, reference_emb: np.ndarray, labels: np.ndarray, folds: np.ndarray, *,
              draws: int = DRAWS, seed: int = 0) -> Gap:
    """Compare a model with the cross-fitted reference on one level's test images (the rule of :data:`RULE`).

    Args:
        model_emb: (N, d) the evaluated model's embeddings of the level's test images.
        reference_emb: (N, d') row i embedded by the reference trained on the half ``1 - folds[i]``.
        labels: (N,) class labels; folds: (N,) the half of each image (:func:`fold_split`).
        draws, seed: of the paired bootstrap over classes.

    Returns:
        The :class:`Gap` (Recall@1 values in [0, 1]; the model's is on the halves, not the full set).

    Raises:
        OodmlError: no class has two images in one half (fewer than 4 images per class).
    """
    model_hits, reference_hits = half_recall(model_emb, labels, folds), half_recall(reference_emb, labels, folds)
    queries = ~np.isnan(model_hits)       # the same for both: it depends on labels and halves only
    if not queries.any():
        raise OodmlError("no test class has two images in one half; the reference comparison needs at least 4 "
                         "images per class")
    _, cls = np.unique(labels[queries], return_inverse=True)
    counts = np.bincount(cls).astype(np.float64)
    per_class = [(np.bincount(cls, weights=hits[queries]), counts) for hits in (model_hits, reference_hits)]
    samples = paired_ratio_draws([per_class], draws, np.random.default_rng(seed))[:, 0]   # (2, draws)
    low, high = percentile_interval(samples[1] - samples[0])
    model, reference = float(model_hits[queries].mean()), float(reference_hits[queries].mean())
    return Gap(model, reference, reference - model, float(low), float(high), int(queries.sum()))


#: (loaded model, dataset rows, progress label) -> sample id -> embedding, as the evaluation's embedder
Embed = Callable[[LoadedModel, np.ndarray, str], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class References:
    """The references of some levels, loaded and checked (:meth:`open`); falsy when none were asked for.

    Attributes:
        folder: where they were read (None: no comparison).
        split_set: the split set they were trained on.
        models: (level, fold) -> the reference trained on half ``fold`` of the level's test classes.
    """

    folder: Path | None
    split_set: SplitSet
    models: Mapping[tuple[int, int], LoadedModel]

    def __bool__(self) -> bool:
        return self.folder is not None

    @classmethod
    def open(cls, folder: str | Path | None, split_set: SplitSet, levels: Sequence[Level]) -> References:
        """Load ``folder/level{k}-fold{f}.pt`` for every level and half, before any data is read.

        Raises:
            OodmlError: a missing file, or one that is not a reference of this split set's level and half.
        """
        models: dict[tuple[int, int], LoadedModel] = {}
        for level in levels if folder is not None else ():
            for fold in range(FOLDS):
                path = Path(folder) / checkpoint_name(level.index, fold)
                if not path.is_file():
                    raise OodmlError(f"--reference {folder}: no {path.name} for level {level.index}; train the "
                                     f"references with `oodml train --reference --out {folder}` or choose --levels")
                loaded = models[(level.index, fold)] = load_model(path)
                prov = loaded.provenance
                if (prov.get("split_digest"), prov.get("level"), (prov.get("reference") or {}).get("fold")) != \
                        (split_set.digest, level.index, fold):
                    raise OodmlError(f"{path} is not the half-{fold} reference of level {level.index} of "
                                     f"{split_set.dataset}@{split_set.version}; retrain it with `oodml train "
                                     "--reference`")
        return cls(Path(folder) if folder is not None else None, split_set, models)

    def warn_if_other_architecture(self, model: LoadedModel) -> None:
        """Warn in one line when these references are not all of ``model``'s architecture
        (:func:`architecture_warning`); nothing when falsy."""
        message = architecture_warning(model, self.models.values()) if self else None
        if message is not None:
            warnings.warn(f"--reference {self.folder}: {message}", stacklevel=4)

    def meta(self, test_embeddings: Mapping[tuple, tuple[list[str], np.ndarray]], ds: ImageDataset,
             embed: Embed) -> dict:
        """``{"reference": {...}}`` for the results' meta (``{}`` when falsy): folder, rule, the references'
        config and identities (``model_identities``: ``level<k>-fold<f>`` -> what each reference ran), and per
        level the model's and the reference's Recall@1 on the halves, the gap and its interval.

        Args:
            test_embeddings: ``("test", level) -> (sample ids, (N, d) embeddings)`` of the evaluated model.
            embed: embeds the held-out halves with the references (the evaluation's embedder and its cache).
        """
        if not self:
            return {}
        levels = sorted({level for level, _ in self.models})
        rows = []
        for k in levels:
            ids, emb = test_embeddings[("test", k)]
            gap = self._level_gap(self.split_set.level(k), ids, emb, ds, embed)
            rows.append({"level": k, "distance": self.split_set.level(k).distance, "model_recall@1": gap.model,
                         "reference_recall@1": gap.reference, "gap": gap.gap, "ci_low": gap.ci_low,
                         "ci_high": gap.ci_high, "queries": gap.queries})
        config = self.models[(levels[0], 0)].provenance.get("config")
        identities = {checkpoint_name(k, f).removesuffix(".pt"): loaded.identity
                      for (k, f), loaded in sorted(self.models.items())}
        return {"reference": {"folder": str(self.folder), "rule": RULE, "draws": DRAWS, "config": config,
                              "levels": rows, "model_identities": identities}}

    def _level_gap(self, level: Level, ids: Sequence[str], model_emb: np.ndarray, ds: ImageDataset,
                   embed: Embed) -> Gap:
        """Embed each half with the reference trained on the other one, check that reference's training
        images, and compare (:func:`level_gap`)."""
        index_of = {sid: i for i, sid in enumerate(ds.sample_ids)}
        rows = np.array([index_of[sid] for sid in ids])
        labels = ds.labels[rows]
        folds = fold_split(list(ids), [ds.classes[y] for y in labels], key=self.split_set.digest)
        parts = {}
        for half in range(FOLDS):
            loaded = self.models[(level.index, 1 - half)]
            trained = loaded.provenance["reference"].get("train_ids_sha256")
            if trained != _ids_digest(ds, rows[folds == 1 - half]):
                raise OodmlError(f"{loaded.source} was trained on other images than half {1 - half} of level "
                                 f"{level.index}'s test classes (dataset or fold rule changed); retrain it")
            table = embed(loaded, rows[folds == half], f"reference level {level.index} half {half}")
            parts[half] = np.stack([table[ds.sample_ids[i]] for i in rows[folds == half]])
        reference_emb = np.empty((len(rows), parts[0].shape[1]), np.float32)
        for half, values in parts.items():
            reference_emb[folds == half] = values
        return level_gap(model_emb, reference_emb, labels, folds,
                         seed=derive_seed("reference-gap", self.split_set.digest, level.index))


def architecture_of(loaded: LoadedModel) -> str | None:
    """What a model computes, to compare it with its references: ``glyph-cnn(embed_dim=32, width=16)``, the
    registered architecture (or model spec) and the configuration that builds it, less the seed; None for a
    module oodml did not build (TorchScript, torch.export, a model spec evaluated as it is)."""
    module = loaded.module
    if not isinstance(module, EmbeddingModel):
        return None
    options = ", ".join(f"{key}={value}" for key, value in sorted(module.config.items()) if key != "seed")
    return f"{module.arch}({options})"


def architecture_warning(model: LoadedModel, references: Iterable[LoadedModel]) -> str | None:
    """Why a gap between ``model`` and ``references`` is not the shift alone, or None when every reference is
    of the model's architecture (:func:`architecture_of`).

    The rule (:data:`RULE`) assumes a reference of the model's own architecture and recipe: with another, the
    gap also measures the architectures' difference.  It is a warning, not a refusal, because the references'
    own Recall@1 from level to level still shows how hard each level's test classes are.
    """
    mine = architecture_of(model)
    theirs = sorted({architecture_of(reference) or "not built by oodml" for reference in references})
    if mine is not None and theirs == [mine]:
        return None
    return (f"the references are {' and '.join(theirs)} but {model.source} is {mine or 'not built by oodml'}, so "
            "the gap measures the difference of architecture as well as the shift; train the references with "
            "the model's --arch and --embed-dim (`oodml train --reference`)")


def format_gaps(reference: Mapping) -> str:
    """The per-level table of ``meta["reference"]`` printed after an evaluation."""
    header = ["level", "distance", "model R@1 (halves)", "reference R@1", "gap [95% CI]"]
    rows = [header] + [[str(r["level"]), f"{r['distance']:.4g}", f"{r['model_recall@1']:.4f}",
                        f"{r['reference_recall@1']:.4f}", f"{r['gap']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"]
                       for r in reference["levels"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
