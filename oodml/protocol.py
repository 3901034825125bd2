"""The evaluation protocol, once for :func:`oodml.evaluate` and the leaderboard verifier alike.

It owns what both must agree on, so the board re-scores an entry with the rule
its authors ran (:mod:`oodml.leaderboard.verify` calls these same functions):

* the protocols (:data:`PROTOCOLS`) and the names of saved embedding files
  (:func:`embedding_file_name`, :func:`parse_embedding_file_name`);
* the few-shot episodes: an episode (from a split set's manifest) names k
  support images per class, its queries are every other image of those classes;
  :func:`episode_split` turns it into dataset rows, and :func:`score_episode`
  scores one episode's embeddings;
* the degradation-curve summary of a metric over levels (:func:`curve_summary`).

The rule, per adaptation (:data:`EPISODE_METRICS`):

* ``none``: the unadapted model.  ``accuracy``: each query takes the label of its
  nearest support image (cosine); ``recall@1`` and ``map@r``: the queries
  retrieved among themselves.
* ``prototypes``: ``accuracy`` by the nearest class prototype, the mean of the
  class's L2-normalised support embeddings, normalised again.  Its embeddings
  are the unadapted ones, so its retrieval is that of ``none``.
* ``finetune-last``, ``finetune-all``: the adapted embeddings' ``recall@1`` and
  ``map@r`` among the queries, and their nearest-prototype ``accuracy``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .adapt import FINETUNED
from .clustering import KMEANS_ITERATIONS
from .errors import OodmlError, brief
from .metrics import CLUSTERING_SEED, METRICS, METRICS_VERSION, retrieval_metrics
from .preprocessing import Preprocessing

#: the evaluation protocols: one model for every level, or one checkpoint per level
PROTOCOLS = ("per-level", "zero-shot")

if TYPE_CHECKING:
    from .datasets import ImageDataset
    from .splits import Episode, Level, SplitSet

#: what :func:`score_episode` reports for each adaptation, in the order :func:`oodml.evaluate` writes its rows
EPISODE_METRICS: Mapping[str, tuple[str, ...]] = {
    "none": ("accuracy", "recall@1", "map@r"),
    "prototypes": ("accuracy",),
    **{name: ("recall@1", "map@r", "accuracy") for name in FINETUNED},
}


def episode_split(ds: ImageDataset, episode: Episode,
                  index_of: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One episode as dataset rows: ``(support, support labels, query, query labels)``.

    The support is the manifest's k images per class (classes in sorted order,
    labelled 0..n-1); the queries are every other image of those classes, in
    dataset order.  All four are int arrays: (n*k,), (n*k,), (Q,), (Q,).
    ``index_of`` (sample id -> row) can be passed to save its construction
    across episodes.

    Raises:
        OodmlError: a support image is not in ``ds`` (the episodes belong to another layout of the data).
    """
    index_of = index_of if index_of is not None else {sid: i for i, sid in enumerate(ds.sample_ids)}
    unknown = [sid for ids in episode.support.values() for sid in ids if sid not in index_of]
    if unknown:
        raise OodmlError(f"episode support image {unknown[0]!r} is not in the dataset; these episodes refer to "
                         "another layout of the data and cannot be matched")
    classes = sorted(episode.support)
    label_of = {ds.class_index[c]: k for k, c in enumerate(classes)}
    support = np.array([index_of[sid] for c in classes for sid in episode.support[c]])
    support_labels = np.repeat(np.arange(len(classes)), [len(episode.support[c]) for c in classes])
    chosen = set(support.tolist())
    query = np.array([i for i in np.flatnonzero(np.isin(ds.labels, list(label_of))) if i not in chosen])
    query_labels = np.array([label_of[int(ds.labels[i])] for i in query])
    return support, support_labels, query, query_labels


def nearest_accuracy(queries: np.ndarray, query_labels: np.ndarray, refs: np.ndarray, ref_labels: np.ndarray,
                     prototypes: bool) -> float:
    """n-way accuracy by cosine similarity: the fraction of queries whose nearest reference has their label.

    Args:
        queries: (Q, d) float embeddings; query_labels: (Q,) int labels.
        refs: (S, d) float support embeddings; ref_labels: (S,) int labels.
        prototypes: compare with each class's prototype (the normalised mean of its normalised
            support embeddings) instead of with every support image.

    Returns:
        A fraction in [0, 1].  Computed in float32.
    """
    q = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
    r = torch.nn.functional.normalize(torch.as_tensor(refs, dtype=torch.float32), dim=1)
    if prototypes:
        r = torch.nn.functional.normalize(torch.stack([r[ref_labels == c].mean(0) for c in np.unique(ref_labels)]),
                                          dim=1)
        ref_labels = np.unique(ref_labels)
    return float((ref_labels[torch.argmax(q @ r.T, 1).numpy()] == query_labels).mean())


def score_episode(support_embeddings: np.ndarray, support_labels: np.ndarray, query_embeddings: np.ndarray,
                  query_labels: np.ndarray, adaptation: str = "none", *,
                  metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Score one few-shot episode under ``adaptation`` (the rule in the module docstring).

    Args:
        support_embeddings: (S, d) float embeddings of the support images (after ``adaptation``).
        support_labels: (S,) int class labels of the support images.
        query_embeddings: (Q, d) float embeddings of the query images (after ``adaptation``).
        query_labels: (Q,) int class labels of the queries, in the same label space.
        adaptation: ``none``, ``prototypes``, ``finetune-last`` or ``finetune-all``.
        metrics: a subset of ``EPISODE_METRICS[adaptation]`` to compute (default all of them); the
            leaderboard verifies only ``accuracy``.

    Returns:
        Metric name -> fraction in [0, 1], in the order of ``EPISODE_METRICS[adaptation]``.

    Raises:
        OodmlError: an unknown adaptation or a metric that adaptation does not report; for retrieval,
            what :func:`oodml.metrics.retrieval_metrics` refuses (e.g. no query with a same-class neighbour).
    """
    if adaptation not in EPISODE_METRICS:
        raise OodmlError(f"unknown adaptation {adaptation!r}; choose one of {', '.join(EPISODE_METRICS)}")
    wanted = EPISODE_METRICS[adaptation] if metrics is None else tuple(metrics)
    unknown = [m for m in wanted if m not in EPISODE_METRICS[adaptation]]
    if unknown:
        raise OodmlError(f"{adaptation} episodes report {', '.join(EPISODE_METRICS[adaptation])}, not {unknown[0]!r}")
    retrieval = {}
    if {"recall@1", "map@r"} & set(wanted):
        retrieval = retrieval_metrics(query_embeddings, query_labels, ks=(1,), clustering=False, map_depth=None)
    out = {}
    for name in EPISODE_METRICS[adaptation]:
        if name == "accuracy" and name in wanted:
            out[name] = nearest_accuracy(query_embeddings, query_labels, support_embeddings, support_labels,
                                         prototypes=adaptation != "none")
        elif name in wanted:
            out[name] = retrieval[name]
    return out


def curve_summary(distance: Sequence[float], value: Sequence[float]) -> dict:
    """Degradation-curve summary of one metric over levels.

    Returns the mean over levels, the area under metric-versus-distance with the
    distance axis scaled to [0, 1] (trapezoids, levels sorted by distance), the
    least-squares slope on that scaled axis, and the relative drop from the
    first (easiest) to the last level.
    """
    d, v = np.asarray(distance, np.float64), np.asarray(value, np.float64)
    order = np.argsort(d, kind="stable")
    d, v = d[order], v[order]
    span = d[-1] - d[0]
    x = (d - d[0]) / span if span > 0 else np.zeros_like(d)
    auc = float(np.sum((x[1:] - x[:-1]) * (v[1:] + v[:-1]) / 2)) if len(d) > 1 and span > 0 else float(v.mean())
    slope = float(np.polyfit(x, v, 1)[0]) if len(d) > 1 and span > 0 else 0.0
    drop = float((v[0] - v[-1]) / v[0]) if v[0] != 0 else float("nan")
    return {"mean": float(v.mean()), "auc": auc, "slope": slope, "relative_drop": drop}


def embedding_file_name(key: tuple) -> str:
    """``level3.parquet`` for ``("test", 3)``; ``level3-2shot-episode0-finetune-last.parquet`` for few-shot."""
    if key[0] == "test":
        return f"level{key[1]}.parquet"
    _, level, shots, episode, adaptation = key
    return f"level{level}-{shots}shot-episode{episode}-{adaptation}.parquet"


_EMBEDDING_FILE = re.compile(r"level([0-9]{1,9})(?:-([0-9]{1,9})shot-episode([0-9]{1,9})-([a-z-]+))?\.parquet")


def parse_embedding_file_name(name: str) -> tuple | None:
    """The key :func:`embedding_file_name` made ``name`` from, or None for any other name."""
    m = _EMBEDDING_FILE.fullmatch(name)
    if m is None:
        return None
    if m.group(2) is None:
        return ("test", int(m.group(1)))
    return ("fewshot", int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4))


# --- the protocol card -------------------------------------------------------------------------------

#: the version of the card's layout (its keys), apart from the metrics' definitions (``metrics_version``)
CARD_VERSION = 1
#: why the card's ``matched`` is null: levels are not matched to a common class count (issue 26, part 1)
UNMATCHED = ("each level keeps its own class counts (under classes); no level is subsampled to a common class "
             "count, so there are no matched draws and absolute values of levels with different counts differ "
             "partly because of the count")
#: how the class-count-matched scores are drawn and combined (:mod:`oodml.matched`)
MATCHED_RULE = ("every level also scored on D draws of N of its test classes (N the same at every level; by default "
                "the fewest test classes of any level of the split set); draw d of level L keeps the classes a "
                "generator seeded by sha256('oodml-matched|<split digest>|L|d') chooses; a draw's retrieval is the "
                "level's ranking restricted to the drawn classes' images; the level's value is the mean over its "
                "draws, its interval the class bootstrap and the draws' standard error added in quadrature; "
                "few-shot episodes scored on N of their classes (seeded per episode), support and queries alike")
#: the retrieval rule, as :func:`oodml.metrics.per_query_metrics` and :mod:`oodml.knn` implement it
RETRIEVAL_RULE = {
    "gallery": "every test image of the level (all of its test classes), unadapted embeddings",
    "queries": "every test image of the level whose class has another test image there; a class of one image "
               "is a distractor only",
    "query_in_gallery": "excluded by index: a query is never its own neighbour, an identical copy of it is",
    "similarity": "cosine of L2-normalised float32 embeddings (exact search)",
    "ties": "equal similarity: the image earlier in the dataset's order (lower row) ranks first",
}
#: what each metric is, per query, averaged over the queries (the retrieval ones from oodml.metrics.METRICS)
METRIC_DEFINITIONS = {
    **{metric.name: metric.definition for metric in METRICS if metric.needs == "knn"},
    "accuracy": "few-shot episodes: the share of queries (every non-support image of the episode's classes) whose "
                "nearest support image (adaptation none) or class prototype (the others) by cosine has their class",
}


def preprocessing_record(preprocessing: Preprocessing) -> dict:
    """Every field of a :class:`~oodml.preprocessing.Preprocessing`, defaults included (``as_dict`` leaves
    default interpolation and resize mode out): resize and crop in pixels (null: skipped), the
    interpolation, the resize mode and the per-channel mean and std of normalisation."""
    return {"resize": preprocessing.resize, "resize_mode": preprocessing.resize_mode,
            "interpolation": preprocessing.interpolation, "crop": preprocessing.crop,
            "mean": list(preprocessing.mean), "std": list(preprocessing.std)}


def clustering_rule(clustering: bool) -> dict | None:
    """How ``nmi`` and ``ami`` are computed (:mod:`oodml.clustering`), or None when they are not."""
    if not clustering:
        return None
    return {"algorithm": "Lloyd's k-means, faiss's policy (nredo 1, an emptied cluster refilled by splitting a "
                         "populous one), each image labelled by its nearest final centroid",
            "input": "L2-normalised embeddings", "clusters": "the number of test classes of the level",
            "iterations": KMEANS_ITERATIONS, "seed": CLUSTERING_SEED, "ties": "the lower centroid index",
            **{metric.name: metric.definition for metric in METRICS if metric.needs == "clustering"}}


def matched_record(matched: Mapping[str, int] | None) -> dict | None:
    """The card's ``matched``: N and D of the class-count-matched scores (:mod:`oodml.matched`) and how their
    draws are made; None when a run has none."""
    if not matched:
        return None
    return {"n_classes": int(matched["n_classes"]), "draws": int(matched["draws"]), "rule": MATCHED_RULE}


def protocol_card(split_set: SplitSet, levels: Sequence[Level], preprocessing: Mapping[int, Preprocessing], *,
                  protocol: str, ks: Sequence[int], clustering: bool, matched: Mapping[str, int] | None = None
                  ) -> dict:
    """What a result measures, so that numbers are compared only with numbers of the same protocol.

    Args:
        split_set: the split set evaluated; levels: its levels evaluated.
        preprocessing: level number -> the preprocessing of the model evaluated there.
        protocol: ``zero-shot`` or ``per-level``; ks: the K of ``recall@K``; clustering: nmi/ami computed.
        matched: ``{"n_classes": N, "draws": D}`` of the matched scores, or None.

    Returns:
        A JSON-ready dict: ``card_version``, ``metrics_version``, the split set, ``class_disjoint`` (no level
        shares a class between train and test), the retrieval rule (gallery, queries, query exclusion,
        similarity, ties), the metric definitions, the clustering settings (or null), ``preprocessing`` (one
        record, or ``{"levels": {level: record}}`` when levels differ), per level its train and test class
        counts and images, and ``matched``: ``matched`` as :func:`matched_record` states it (N, D and the rule),
        or null with ``matched_note`` saying why.
    """
    records = {lv.index: preprocessing_record(preprocessing[lv.index]) for lv in levels}
    distinct = {json.dumps(r, sort_keys=True) for r in records.values()}
    classes = {str(lv.index): {"train": len(lv.train_classes), "test": len(lv.test_classes),
                               "train_images": lv.n_train_images, "test_images": lv.n_test_images} for lv in levels}
    return {"card_version": CARD_VERSION, "metrics_version": METRICS_VERSION, "protocol": protocol,
            "splits": f"{split_set.dataset}@{split_set.version}", "split_digest": split_set.digest,
            "class_disjoint": all(not set(lv.train_classes) & set(lv.test_classes) for lv in levels),
            **RETRIEVAL_RULE, "ks": [int(k) for k in ks],
            "metrics": METRIC_DEFINITIONS,
            "clustering": clustering_rule(clustering),
            "preprocessing": (next(iter(records.values())) if len(distinct) == 1
                              else {"levels": {str(k): r for k, r in records.items()}}),
            "classes": classes, "matched": matched_record(matched),
            **({} if matched else {"matched_note": UNMATCHED})}


def card_problems(card: object, split_set: SplitSet, protocol: str) -> list[str]:
    """Where a leaderboard entry's ``protocol_card`` differs from the card this oodml states for it, one line
    each (none: it matches).

    The card is rebuilt with :func:`protocol_card` from the published ``split_set`` (every level), the
    entry's ``protocol`` and the card's own ``preprocessing``, ``ks`` and clustering, which the embeddings
    alone cannot show; everything else (metrics version, split facts, class counts, the rule) must equal
    what this oodml computes, so no card can claim another protocol than the one the board re-scores with.
    """
    if not isinstance(card, dict):
        return [f"protocol_card must be the object `oodml evaluate` wrote (summary.json meta), not {brief(card)}"]
    if card.get("metrics_version") != METRICS_VERSION:
        return [f"protocol_card records metrics version {brief(card.get('metrics_version'))}, this oodml scores "
                f"with version {METRICS_VERSION}; evaluate again with this oodml and submit the new results"]
    ks, record = card.get("ks"), card.get("preprocessing")
    if not (isinstance(ks, list) and 0 < len(ks) <= 20 and
            all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 1000 for k in ks)):
        return [f"protocol_card ks must be a list of 1 to 20 whole numbers 1..1000, not {brief(ks)}"]
    records = record.get("levels") if isinstance(record, dict) and set(record) == {"levels"} else None
    try:
        by_level = {lv.index: Preprocessing.from_dict(records.get(str(lv.index)) if isinstance(records, dict)
                                                       else record) for lv in split_set.levels}
    except OodmlError as exc:
        return [f"protocol_card preprocessing: {exc}"]
    matched = card.get("matched")
    if matched is not None:
        counts = [matched.get(key) if isinstance(matched, dict) else None for key in ("n_classes", "draws")]
        if not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 100_000 for c in counts):
            return [f"protocol_card 'matched' must hold whole numbers n_classes and draws, not {brief(matched)}"]
        matched = dict(zip(("n_classes", "draws"), counts, strict=True))
    expected = protocol_card(split_set, split_set.levels, by_level, protocol=protocol, ks=ks,
                             clustering=card.get("clustering") is not None, matched=matched)
    wrong = [key for key in dict.fromkeys([*expected, *card]) if card.get(key, ...) != expected.get(key, ...)]
    if wrong:
        return [f"protocol_card {wrong[0]!r} is not what oodml states for this entry ({brief(card.get(wrong[0]))}"
                f" instead of {brief(expected.get(wrong[0]))}); submit the card `oodml evaluate` wrote"]
    return []
