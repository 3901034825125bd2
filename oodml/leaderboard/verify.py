"""Re-scoring: every number of an entry is recomputed from its embeddings, never taken from it.

:func:`score` checks the content of a structurally valid submission against the
published split set and the dataset (each level's test images exactly once,
finite values, one width; each fine-tuned episode's support and query images
exactly once) and computes, per level, the retrieval metrics, the per-class
Recall@1 hit counts the board's paired bootstrap resamples, and the few-shot
accuracies of the manifest's episodes, split and scored by :mod:`oodml.protocol`,
the rule :func:`oodml.evaluate` runs.  :func:`verify` runs the whole check and
compares the numbers the entry claims.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..adapt import FINETUNED
from ..datasets import ImageDataset, load_dataset
from ..embedding import read_embedding_table
from ..errors import OodmlError, brief
from ..metrics import metric_names, per_query_metrics
from ..protocol import card_problems, curve_summary, episode_split, score_episode
from ..splits import Episode, Level, SplitSet, load
from .submission import Submission, is_fraction, parse_file_name, read_submission

#: the metrics an entry claims and the board shows, per level: those of oodml.metrics.METRICS with a value per
#: query (the board resamples them), at K = 1, 2, 4, 8 and without map@1000
RETRIEVAL = tuple(metric_names((1, 2, 4, 8), map_depth=None, clustering=False))
#: claimed numbers must match the recomputed ones to this absolute difference
TOLERANCE = 1e-6


@dataclass
class Scores:
    """Recomputed numbers of one entry.

    Attributes:
        levels: per level ``{"level", "distance", "recall@1", ..., "map@r"}``.
        class_hits: level -> (Recall@1 hits per test class, queries per test class), classes
            in the order of ``Level.test_classes``; the unit the paired bootstrap resamples.
        fewshot: ``"<k>-shot"`` -> adaptation (``none`` = nearest support image) -> level -> mean
            accuracy over the episodes.
    """

    levels: list[dict]
    class_hits: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    fewshot: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)

    def curve(self, metric: str = "recall@1") -> dict:
        """Mean, AUC on the [0, 1] distance axis, slope and relative drop of ``metric`` over levels."""
        return curve_summary([lv["distance"] for lv in self.levels], [lv[metric] for lv in self.levels])

    def claims(self) -> dict:
        """The numbers an entry declares in ``submission.json`` (``claimed``), as recomputed here."""
        return {"levels": {str(lv["level"]): {m: lv[m] for m in RETRIEVAL} for lv in self.levels},
                "fewshot": {shots: {a: {str(k): v for k, v in by.items()} for a, by in adaptations.items()}
                            for shots, adaptations in self.fewshot.items()}}


@dataclass
class Verification:
    """The outcome of :func:`verify`: problems (one line each; none means verified) and the scores."""

    path: Path
    submission: Submission | None
    scores: Scores | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and self.scores is not None

    @property
    def reasons(self) -> list[str]:
        """The problems with the entry's folder left out: shown after its name, and independent of where it is."""
        return [p.replace(f"{self.path}/", "").replace(f"{self.path}: ", "") for p in self.problems]


def _table(sub: Submission, name: str, width: int) -> tuple[list[str], np.ndarray] | str:
    """An embedding table of the entry, or the problem with it."""
    try:
        ids, values = read_embedding_table(sub.file(name))
    except OodmlError as exc:
        return str(exc)
    if values.shape[1] != width:
        return f"{sub.file(name)}: embeddings are {values.shape[1]}-d, but embedding_dim is {width}"
    bad = ~np.isfinite(values).all(1)
    if bad.any():
        return f"{sub.file(name)}: {int(bad.sum())} rows hold NaN or inf (first: {ids[int(np.argmax(bad))]!r})"
    return ids, values


def _id_problems(where: Path, ids: list[str], expected: list[str]) -> list[str]:
    problems = []
    duplicates = [sid for sid, n in Counter(ids).items() if n > 1]
    if duplicates:
        problems.append(f"{where}: {len(duplicates)} duplicate sample ids (first: {duplicates[0]!r})")
    missing = sorted(set(expected) - set(ids))
    if missing:
        problems.append(f"{where}: {len(missing)} expected images missing (first: {missing[0]!r})")
    extra = sorted(set(ids) - set(expected))
    if extra:
        problems.append(f"{where}: {len(extra)} sample ids that do not belong here (first: {extra[0]!r})")
    return problems


def _rows_in_order(sub: Submission, name: str, width: int, expected: list[str]) -> np.ndarray | list[str]:
    """The embeddings of file ``name`` in the order of ``expected`` sample ids, or the problems with it."""
    table = _table(sub, name, width)
    if isinstance(table, str):
        return [table]
    ids, values = table
    problems = _id_problems(sub.file(name), ids, expected)
    if problems:
        return problems
    position = {sid: k for k, sid in enumerate(ids)}
    return values[[position[sid] for sid in expected]]


def _shot_problems(sub: Submission, split_set: SplitSet) -> list[str]:
    """The declared shots that some level of the split set has no episodes for."""
    available = sorted(set.intersection(*(set(lv.shots) for lv in split_set.levels))) if split_set.levels else []
    return [f"{sub.path}: fewshot declares {k}-shot episodes, but {split_set.dataset}@{split_set.version} has none "
            f"(available: {', '.join(map(str, available)) or 'none'}); declare only those"
            for k in sub.meta["fewshot"]["shots"] if k not in available]


def _episode_accuracy(support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray,
                      adaptation: str) -> float:
    """The one episode number the board verifies: ``accuracy`` by the rule :func:`oodml.evaluate` runs."""
    return score_episode(support, support_labels, query, query_labels, adaptation, metrics=("accuracy",))["accuracy"]


def score(sub: Submission, split_set: SplitSet, ds: ImageDataset) -> tuple[Scores | None, list[str]]:
    """Recompute every number of ``sub`` from its files; return the scores (None on problems) and problems."""
    meta = sub.meta
    problems = _shot_problems(sub, split_set)
    if problems:
        return None, problems
    shots_list, episodes = meta["fewshot"].get("shots", []), meta["fewshot"].get("episodes", 0)
    finetuned = [a for a in meta["adaptations"] if a in FINETUNED]
    index_of = {sid: i for i, sid in enumerate(ds.sample_ids)}
    levels, class_hits = [], {}
    fewshot: dict[str, dict[str, dict[int, list[float]]]] = {}
    for level in split_set.levels:
        retrieval = _score_retrieval(sub, level, ds)
        if isinstance(retrieval, list):
            problems += retrieval
            continue
        row, class_hits[level.index], emb, rows = retrieval
        levels.append(row)
        emb_of = {int(i): e for i, e in zip(rows, emb, strict=True)}
        for shots in shots_list:
            for ep in level.episodes(shots)[:episodes]:
                accuracies, missing = _score_episode(sub, (level.index, shots, ep), ds, index_of, emb_of, finetuned)
                problems += missing
                for adaptation, value in accuracies.items():
                    fewshot.setdefault(f"{shots}-shot", {}).setdefault(adaptation, {}).setdefault(
                        level.index, []).append(value)
    expected_files = {sub.test_file(lv.index) for lv in split_set.levels} | {
        sub.fewshot_file(lv.index, k, ep.index, a) for lv in split_set.levels for k in shots_list
        for ep in lv.episodes(k)[:episodes] for a in finetuned}
    problems += _unexpected_files(sub, expected_files)
    if problems:
        return None, problems
    means = {shots: {a: {lv: float(np.mean(v)) for lv, v in by.items()} for a, by in adaptations.items()}
             for shots, adaptations in fewshot.items()}
    return Scores(levels, class_hits, means), []


def _score_retrieval(sub: Submission, level: Level, ds: ImageDataset
                     ) -> tuple[dict, tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray] | list[str]:
    """One level's retrieval metrics from its test embeddings.

    Returns ``(row, (hits per class, queries per class), embeddings (N, d), dataset rows (N,))`` with ``row``
    the level's line of the scores table, or the problems with its file.
    """
    name = sub.test_file(level.index)
    if name not in sub.meta["files"]:
        return [f"{sub.path}: level {level.index} has no {name}"]
    rows = ds.indices_of_classes(level.test_classes)
    emb = _rows_in_order(sub, name, sub.meta["embedding_dim"], [ds.sample_ids[i] for i in rows])
    if isinstance(emb, list):
        return emb
    labels = ds.labels[rows]
    per_query = per_query_metrics(emb, labels, map_depth=None)
    row = {"level": level.index, "distance": level.distance, **{m: float(per_query[m].mean()) for m in RETRIEVAL}}
    class_pos = {ds.class_index[c]: k for k, c in enumerate(level.test_classes)}
    query_class = np.array([class_pos[int(y)] for y in labels[per_query["query"]]])
    n = len(level.test_classes)
    hits = (np.bincount(query_class, weights=per_query["recall@1"], minlength=n),
            np.bincount(query_class, minlength=n).astype(np.float64))
    return row, hits, emb, rows


def _score_episode(sub: Submission, where: tuple[int, int, Episode], ds: ImageDataset, index_of: dict[str, int],
                   emb_of: dict[int, np.ndarray], finetuned: list[str]) -> tuple[dict[str, float], list[str]]:
    """One episode's accuracy per adaptation.

    Args:
        where: (level, shots, episode).
        index_of: sample id -> dataset row.
        emb_of: dataset row -> its (d,) test embedding at this level, for the unadapted adaptations;
            fine-tuned ones are read from the episode's own file.

    Returns:
        adaptation -> accuracy, and the problems (missing or malformed episode files).
    """
    level, shots, ep = where
    support, support_labels, query, query_labels = episode_split(ds, ep, index_of)
    emb_s, emb_q = (np.stack([emb_of[int(i)] for i in part]) for part in (support, query))
    unadapted = ["none", *(a for a in sub.meta["adaptations"] if a not in FINETUNED)]
    accuracies = {name: _episode_accuracy(emb_s, support_labels, emb_q, query_labels, name) for name in unadapted}
    problems = []
    for adaptation in finetuned:
        file = sub.fewshot_file(level, shots, ep.index, adaptation)
        if file not in sub.meta["files"]:
            problems.append(f"{sub.path}: {adaptation} is declared but {file} is missing")
            continue
        adapted = _rows_in_order(sub, file, sub.meta["embedding_dim"],
                                 [ds.sample_ids[i] for i in np.concatenate([support, query])])
        if isinstance(adapted, list):
            problems += adapted
            continue
        accuracies[adaptation] = _episode_accuracy(adapted[:len(support)], support_labels, adapted[len(support):],
                                                   query_labels, adaptation)
    return accuracies, problems


def _unexpected_files(sub: Submission, expected: set[str]) -> list[str]:
    """A problem for every listed file that the split set and submission.json do not call for."""
    problems = []
    for name in sorted(set(sub.meta["files"]) - expected):
        key = parse_file_name(name)
        problems.append(f"{sub.file(name)}: not part of this entry's protocol (level {key[1]} "
                        f"{'test set' if key[0] == 'test' else 'episode'} beyond what the split set and "
                        "submission.json declare)")
    return problems


def _compare_claims(sub: Submission, scores: Scores) -> list[str]:
    """Problems where a claimed number differs from the recomputed one, or names nothing recomputed."""
    problems, actual = [], scores.claims()

    def walk(claimed: object, real: object, path: tuple[str, ...]) -> None:
        if isinstance(claimed, dict):
            if not isinstance(real, dict):
                problems.append(f"{sub.path}: claims {'/'.join(path)}, which oodml does not compute")
                return
            for key, value in claimed.items():
                if key not in real:
                    problems.append(f"{sub.path}: claims {'/'.join((*path, key))}, which oodml does not compute")
                else:
                    walk(value, real[key], (*path, key))
        elif not is_fraction(claimed) or not abs(claimed - float(real)) <= TOLERANCE:
            # read_submission admits only numbers in [0, 1]; checked again so no value can overflow here
            problems.append(f"{sub.path}: claims {'/'.join(path)} = {brief(claimed)}, but its embeddings give "
                            f"{float(real):.6f}")

    walk(sub.meta["claimed"], actual, ())
    return problems


def verify(path: str | Path, *, data_root: str | Path | None = None, dataset: ImageDataset | None = None,
           datasets: dict[str, ImageDataset] | None = None) -> Verification:
    """Verify one entry folder end to end: structure, split digest, content, recomputed numbers, claims.

    ``dataset`` (or ``data_root`` for a dataset that needs one) supplies the
    images' ids and labels; ``datasets`` (name -> dataset) keeps the datasets
    loaded across calls.  The split set is the published one the entry names.
    Never raises :class:`OodmlError`: whatever stops the check is the entry's
    problem, so one bad entry cannot stop the others from being verified.
    """
    path = Path(path)
    try:
        return _verify(path, data_root, dataset, datasets)
    except OodmlError as exc:
        return Verification(path, None, None, [f"{path}: {exc}"])


def _verify(path: Path, data_root: str | Path | None, dataset: ImageDataset | None,
            datasets: dict[str, ImageDataset] | None) -> Verification:
    sub, problems = read_submission(path)
    if sub is None:
        return Verification(path, None, None, problems)
    meta = sub.meta
    try:
        split_set = load(meta["dataset"], meta["split_version"])
    except OodmlError as exc:
        return Verification(path, sub, None, [f"{path}: {exc}"])
    if split_set.digest != meta["split_digest"]:
        return Verification(path, sub, None, [
            f"{path}: split digest {meta['split_digest'][:12]} is not that of the published "
            f"{meta['dataset']}@{meta['split_version']} ({split_set.digest[:12]}); re-evaluate on the published "
            "split set"])
    if "protocol_card" in meta:
        card = card_problems(meta["protocol_card"], split_set, meta["protocol"])
        if card:
            return Verification(path, sub, None, [f"{path}/submission.json: {p}" for p in card])
    try:
        ds = dataset
        if ds is None:
            cache = datasets if datasets is not None else {}
            if meta["dataset"] not in cache:
                cache[meta["dataset"]] = load_dataset(meta["dataset"], root=data_root)
            ds = cache[meta["dataset"]]
        split_set.check_dataset(ds.fingerprint, ds.root)
    except OodmlError as exc:
        return Verification(path, sub, None, [f"{path}: cannot verify without the dataset: {exc}"])
    scores, problems = score(sub, split_set, ds)
    if scores is None:
        return Verification(path, sub, None, problems)
    return Verification(path, sub, scores, _compare_claims(sub, scores))


def verify_entries(paths: list[Path], *, data_root: str | Path | None = None) -> list[Verification]:
    """:func:`verify` for each entry on its own (one failing does not stop the others), loading each dataset once."""
    datasets: dict[str, ImageDataset] = {}
    return [verify(path, data_root=data_root, datasets=datasets) for path in paths]


def iter_entries(root: str | Path) -> list[Path]:
    """Every entry folder under ``root/submissions/<dataset>/<version>/``, sorted.  Hidden names are not
    entries (no entry name starts with ``.``): they are what a submission being written, or killed
    midway, keeps beside its entry (temporaries, lock files)."""
    base = Path(root) / "submissions"
    return sorted(p for p in base.glob("*/*/*") if p.is_dir() and not p.name.startswith(".")) \
        if base.is_dir() else []
