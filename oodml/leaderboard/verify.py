"""Re-scoring: every number of an entry is recomputed from its embeddings, never taken from it.

:func:`score` checks the content of a structurally valid submission against the
published split set and the dataset (each level's test images exactly once,
finite values, one width; each fine-tuned episode's support and query images
exactly once) and computes, with the functions :func:`oodml.evaluate` runs:

* per level, the retrieval metrics and, per test class, their sums over its
  queries (what a paired class bootstrap resamples);
* the class-count-matched scores (:mod:`oodml.matched`): every level on D
  seeded draws of N of its test classes, from the level's one search, with
  per draw and class the metric sums; N and D are those of the entry's
  protocol card, or the split set's default (the fewest test classes of any
  level, 20 draws) for an entry without them;
* the few-shot accuracy of every scored episode of the manifest, on all its
  classes and on N of them (:func:`oodml.matched.matched_episode`), split and
  scored by :mod:`oodml.protocol`.

:func:`verify` runs the whole check and compares the numbers the entry claims.
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
from ..matched import DEFAULT_DRAWS, MatchedRecords, class_sums, level_draws, matched_count, matched_episode
from ..metrics import metric_names
from ..protocol import card_problems, curve_summary, episode_split, score_episode
from ..splits import Episode, Level, SplitSet, load, read_split_set
from .submission import Submission, is_fraction, parse_file_name, read_submission

#: the metrics an entry claims and the board shows, per level: those of oodml.metrics.METRICS with a value per
#: query (the board resamples them), at K = 1, 2, 4, 8 and without map@1000
RETRIEVAL = tuple(metric_names((1, 2, 4, 8), map_depth=None, clustering=False))
#: claimed numbers must match the recomputed ones to this absolute difference
TOLERANCE = 1e-6
#: the most matched draws per level an entry's protocol card may ask the verifier for (each costs a pass over
#: the level's neighbours); ``oodml evaluate`` uses 20 unless told otherwise
MAX_MATCHED_DRAWS = 200

#: an episode's accuracy per (shots, adaptation, ``"accuracy"``) -> level -> episode index
Episodes = dict[tuple[int, str, str], dict[int, dict[int, float]]]


@dataclass
class Scores:
    """Recomputed numbers of one entry.

    Attributes:
        levels: per level ``{"level", "distance", "recall@1", ..., "map@r"}``.
        class_sums: level -> ``(queries, sums)``: (C,) float64 the retrieval queries of each test class and
            metric -> (C,) float64 each :data:`RETRIEVAL` metric summed over them, classes in the order of
            ``Level.test_classes``; the units a paired class bootstrap resamples.
        episodes: (shots, adaptation, ``"accuracy"``) -> level -> episode index -> accuracy (``none`` =
            nearest support image), the manifest's episodes on all their classes.
        matched: the class-count-matched records (classes in ``Level.test_classes`` order; ``episodes`` on
            the N-way episodes), or None for scores made without them.
    """

    levels: list[dict]
    class_sums: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=dict)
    episodes: Episodes = field(default_factory=dict)
    matched: MatchedRecords | None = None

    @property
    def fewshot(self) -> dict[str, dict[str, dict[int, float]]]:
        """``"<k>-shot"`` -> adaptation -> level -> mean accuracy over the episodes (what entries claim)."""
        return _episode_means(self.episodes)

    @property
    def matched_fewshot(self) -> dict[str, dict[str, dict[int, float]]]:
        """As :attr:`fewshot`, on the N-way episodes; empty without matched records."""
        return _episode_means(self.matched.episodes) if self.matched else {}

    def per_level(self, metric: str = "recall@1", test_set: str = "full") -> list[float]:
        """``metric`` per level (in the order of ``levels``) on the full test sets or, ``test_set="matched"``,
        the mean over each level's matched draws."""
        if test_set == "matched":
            return [self.matched.value(metric, lv["level"]) for lv in self.levels]
        return [lv[metric] for lv in self.levels]

    def curve(self, metric: str = "recall@1", test_set: str = "full") -> dict:
        """Mean, AUC on the [0, 1] distance axis, slope and relative drop of ``metric`` over levels."""
        return curve_summary([lv["distance"] for lv in self.levels], self.per_level(metric, test_set))

    def claims(self) -> dict:
        """The numbers an entry declares in ``submission.json`` (``claimed``), as recomputed here."""
        return {"levels": {str(lv["level"]): {m: lv[m] for m in RETRIEVAL} for lv in self.levels},
                "fewshot": {shots: {a: {str(k): v for k, v in by.items()} for a, by in adaptations.items()}
                            for shots, adaptations in self.fewshot.items()}}


def _episode_means(episodes: Episodes) -> dict[str, dict[str, dict[int, float]]]:
    return {f"{shots}-shot": {a: {lv: float(np.mean(list(by_ep.values()))) for lv, by_ep in by_level.items()}
                              for (k, a, _), by_level in episodes.items() if k == shots}
            for shots in dict.fromkeys(k for k, _, _ in episodes)}


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


def matched_setting(meta: dict, split_set: SplitSet) -> tuple[int, int] | str:
    """``(N, D)`` of the entry's class-count-matched scores: its protocol card's (checked: N must be a class
    count every level has, D at most :data:`MAX_MATCHED_DRAWS`), else the split set's default; or the problem."""
    card = meta.get("protocol_card")
    recorded = card.get("matched") if isinstance(card, dict) else None
    if not recorded:
        return matched_count(split_set, "min"), DEFAULT_DRAWS
    n, draws = recorded["n_classes"], recorded["draws"]
    try:
        n = matched_count(split_set, n)   # the rule evaluate's --match-classes N is held to
    except OodmlError:
        return (f"protocol_card matched n_classes {n} is not a class count every level of {split_set.dataset}@"
                f"{split_set.version} has (2 to {matched_count(split_set, 'min')}); submit the card `oodml "
                "evaluate` wrote")
    if not 1 <= draws <= MAX_MATCHED_DRAWS:
        return (f"protocol_card matched draws {draws}: the verifier scores at most {MAX_MATCHED_DRAWS}; evaluate "
                f"with --match-draws {DEFAULT_DRAWS} (the default) and submit again")
    return n, draws


@dataclass
class _Tally:
    """What :func:`score` gathers level by level."""

    levels: list[dict] = field(default_factory=list)
    class_sums: dict = field(default_factory=dict)
    episodes: Episodes = field(default_factory=dict)
    matched: MatchedRecords | None = None

    def add_episode(self, key: tuple[int, str, str], level: int, episode: int, value: float,
                    matched: bool = False) -> None:
        into = self.matched.episodes if matched else self.episodes
        into.setdefault(key, {}).setdefault(level, {})[episode] = value


def score(sub: Submission, split_set: SplitSet, ds: ImageDataset) -> tuple[Scores | None, list[str]]:
    """Recompute every number of ``sub`` from its files; return the scores (None on problems) and problems."""
    meta = sub.meta
    problems = _shot_problems(sub, split_set)
    setting = matched_setting(meta, split_set)
    if isinstance(setting, str):
        problems.append(f"{sub.path}/submission.json: {setting}")
    if problems:
        return None, problems
    shots_list, episodes = meta["fewshot"].get("shots", []), meta["fewshot"].get("episodes", 0)
    finetuned = [a for a in meta["adaptations"] if a in FINETUNED]
    index_of = {sid: i for i, sid in enumerate(ds.sample_ids)}
    tally = _Tally(matched=MatchedRecords(*setting, {}, {}, {}))
    for level in split_set.levels:
        retrieval = _score_retrieval(sub, level, ds, tally)
        if isinstance(retrieval, list):
            problems += retrieval
            continue
        emb, rows = retrieval
        emb_of = {int(i): e for i, e in zip(rows, emb, strict=True)}
        for shots in shots_list:
            for ep in level.episodes(shots)[:episodes]:
                problems += _score_episode(sub, (level.index, shots, ep), (ds, index_of, split_set.digest), emb_of,
                                           tally)
    expected_files = {sub.test_file(lv.index) for lv in split_set.levels} | {
        sub.fewshot_file(lv.index, k, ep.index, a) for lv in split_set.levels for k in shots_list
        for ep in lv.episodes(k)[:episodes] for a in finetuned}
    problems += _unexpected_files(sub, expected_files)
    if problems:
        return None, problems
    return Scores(tally.levels, tally.class_sums, tally.episodes, tally.matched), []


def _score_retrieval(sub: Submission, level: Level, ds: ImageDataset, tally: _Tally
                     ) -> tuple[np.ndarray, np.ndarray] | list[str]:
    """One level's retrieval metrics and per-class sums, on its full test set and its matched draws (one
    search, :func:`oodml.matched.level_draws`), added to ``tally``.

    Returns ``(embeddings (M, d), dataset rows (M,))`` of the level's test images, or the problems with its file.
    """
    name = sub.test_file(level.index)
    if name not in sub.meta["files"]:
        return [f"{sub.path}: level {level.index} has no {name}"]
    rows = ds.indices_of_classes(level.test_classes)
    emb = _rows_in_order(sub, name, sub.meta["embedding_dim"], [ds.sample_ids[i] for i in rows])
    if isinstance(emb, list):
        return emb
    labels, matched = ds.labels[rows], tally.matched
    class_labels = [ds.class_index[c] for c in level.test_classes]
    whole, per_draw = level_draws(emb, labels, level.test_classes, ds.class_index, (sub.meta["split_digest"],
                                  level.index), (matched.n_classes, matched.draws), (1, 2, 4, 8))
    tally.levels.append({"level": level.index, "distance": level.distance,
                         **{m: float(whole[m].mean()) for m in RETRIEVAL}})
    queries, sums = class_sums(whole, labels, class_labels)
    tally.class_sums[level.index] = (queries.astype(np.float64), {m: sums[m] for m in RETRIEVAL})
    drawn = [class_sums(values, labels, class_labels) for _, values in per_draw]
    position = {c: k for k, c in enumerate(level.test_classes)}
    matched.subsets[level.index] = np.array([[position[c] for c in classes] for classes, _ in per_draw],
                                            dtype=np.int64).reshape(len(per_draw), matched.n_classes)
    matched.queries[level.index] = np.array([q for q, _ in drawn], dtype=np.float64)
    for m in RETRIEVAL:
        matched.sums.setdefault(m, {})[level.index] = np.array([s[m] for _, s in drawn])
    return emb, rows


def _score_episode(sub: Submission, where: tuple[int, int, Episode], data: tuple[ImageDataset, dict[str, int], str],
                   emb_of: dict[int, np.ndarray], tally: _Tally) -> list[str]:
    """One episode's accuracy per adaptation, on all its classes and on N of them, added to ``tally``.

    Args:
        where: (level, shots, episode).
        data: (the dataset, sample id -> dataset row, the split digest).
        emb_of: dataset row -> its (d,) test embedding at this level, for the unadapted adaptations;
            fine-tuned ones are read from the episode's own file.

    Returns:
        The problems (missing or malformed episode files).
    """
    level, shots, ep = where
    ds, index_of, digest = data
    support, support_labels, query, query_labels = episode_split(ds, ep, index_of)
    emb_s, emb_q = (np.stack([emb_of[int(i)] for i in part]) for part in (support, query))
    embedded = {name: (emb_s, emb_q) for name in ["none", *(a for a in sub.meta["adaptations"] if a not in FINETUNED)]}
    problems = []
    for adaptation in (a for a in sub.meta["adaptations"] if a in FINETUNED):
        file = sub.fewshot_file(level, shots, ep.index, adaptation)
        if file not in sub.meta["files"]:
            problems.append(f"{sub.path}: {adaptation} is declared but {file} is missing")
            continue
        adapted = _rows_in_order(sub, file, sub.meta["embedding_dim"],
                                 [ds.sample_ids[i] for i in np.concatenate([support, query])])
        if isinstance(adapted, list):
            problems += adapted
            continue
        embedded[adaptation] = adapted[:len(support)], adapted[len(support):]
    s_in, s_labels, q_in, q_labels = matched_episode((digest, level, shots, ep.index), support_labels, query_labels,
                                                     tally.matched.n_classes)
    for adaptation, (e_s, e_q) in embedded.items():
        key = (shots, adaptation, "accuracy")
        tally.add_episode(key, level, ep.index, _episode_accuracy(e_s, support_labels, e_q, query_labels, adaptation))
        tally.add_episode(key, level, ep.index, _episode_accuracy(e_s[s_in], s_labels, e_q[q_in], q_labels, adaptation),
                          matched=True)
    return problems


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
        split_set = published_split_set(meta["dataset"], meta["split_version"])
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


#: split sets read and verified by :func:`read_split_set_once`, by what their directory holds on disk
_READ_SPLIT_SETS: dict[tuple, SplitSet] = {}
_READ_SPLIT_SETS_KEPT = 8


def _on_disk(path: Path) -> tuple:
    """What a split set directory holds, cheaply: its resolved path and every file's name, size, inode,
    modification and status-change times (a file rewritten or replaced changes the inode or the change time,
    which no one can set back)."""
    path = path.resolve()
    return (str(path), tuple(sorted((f.name, s.st_size, s.st_ino, s.st_mtime_ns, s.st_ctime_ns)
                                    for f in path.iterdir() for s in [f.stat()])))


def read_split_set_once(path: Path) -> SplitSet:
    """:func:`oodml.splits.read_split_set`, read and verified once per content on disk: the entries of one split
    set, and the board built from them, share one read (the committed glyphs entries read the same set 8
    times), and a directory whose files change, between two verifications or during one, is read again."""
    key = _on_disk(path)
    if key in _READ_SPLIT_SETS:
        return _READ_SPLIT_SETS[key]
    split_set = read_split_set(path)
    if _on_disk(path) == key:   # kept only when nothing changed while it was read
        if len(_READ_SPLIT_SETS) >= _READ_SPLIT_SETS_KEPT:
            _READ_SPLIT_SETS.clear()
        _READ_SPLIT_SETS[key] = split_set
    return split_set


def published_split_set(dataset: str, version: str) -> SplitSet:
    """``oodml.splits.load(dataset, version)`` through :func:`read_split_set_once`.

    Raises:
        OodmlError: as :func:`oodml.splits.load`.
    """
    return load(dataset, version, read=read_split_set_once)


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
