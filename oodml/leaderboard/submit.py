"""Package evaluation runs (``oodml evaluate --save-embeddings``) as a leaderboard entry."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .._fs import atomic_path, claim, remove_abandoned
from ..adapt import ADAPTATIONS, FINETUNED
from ..datasets import ImageDataset, load_dataset
from ..embedding import write_embedding_table
from ..errors import OodmlError
from ..models.identity import entry_pretraining
from ..models.sources import is_spec
from ..results import Results, read_saved_embeddings
from ..splits import SplitSet, load
from .submission import NAME_RE, SCHEMA_VERSION, Submission, file_record, schema_problems
from .verify import score


def entry_path(root: str | Path, dataset: str, version: str, name: str) -> Path:
    return Path(root) / "submissions" / dataset / version / name


@dataclass(frozen=True)
class EntryInfo:
    """What a leaderboard entry says about itself (``submission.json``; :mod:`oodml.leaderboard.submission`).

    Attributes:
        name: the entry's folder name (letters, digits, ``.``, ``_``, ``+``, ``-``; at most 64).
        method: the method's name on the board (default ``name``); description: one sentence.
        authors: who made it; paper, code: http(s) links or None.
        training_data: what the model was trained on (a model spec's declaration is appended).
        pretraining: the model's pretraining data (``imagenet-1k``, a library's tag, ``none``); default:
            what the evaluated model spec declares (``none`` for random weights), else not declared.
        baseline: a reference method of oodml's own.
    """

    name: str
    method: str | None = None
    description: str = ""
    authors: Sequence[str] = ()
    paper: str | None = None
    code: str | None = None
    training_data: str = ""
    pretraining: str | None = None
    baseline: bool = False


def submit(results_dirs: Sequence[str | Path], info: EntryInfo, *, adaptations: Sequence[str] | None = None,
           episodes: int | None = None, root: str | Path = "leaderboard", data_root: str | Path | None = None,
           replace: bool = False) -> Path:
    """Write ``root/submissions/<dataset>/<version>/<info.name>/`` from one or more evaluation runs.

    The first run is the one submitted (its embeddings, as float16); the others
    (other seeds of the same method) only contribute the spread of mean Recall@1
    recorded under ``seeds``.  The claimed numbers are computed from the float16
    files exactly as ``verify`` will recompute them.  The entry appears whole or not
    at all, and two submissions of one name at once cannot both succeed (:func:`_publish`).

    Args:
        results_dirs: output folders of ``oodml evaluate --save-embeddings``.
        info: the entry's name and description (:class:`EntryInfo`).
        adaptations: few-shot adaptations to include (default: those evaluated; fine-tuned ones need
            their saved episode embeddings).
        episodes: how many of the manifest's episodes per shot are scored (default: as evaluated).
        root: the leaderboard folder; data_root: where the dataset is read to re-score the entry.
        replace: overwrite an existing entry of the same name.

    Returns:
        The entry folder.
    """
    name = info.name
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise OodmlError(f"entry name {name!r}: use letters, digits, '.', '_', '+' or '-' (at most 64)")
    runs = _read_runs(results_dirs)
    first = runs[0]
    saved = read_saved_embeddings(results_dirs[0])
    if not any(key[0] == "test" for key in saved):
        raise OodmlError(f"{results_dirs[0]} holds no embeddings; rerun `oodml evaluate` with --save-embeddings")
    split_set = _published_split_set(first, results_dirs[0])
    chosen, shots, n_episodes = _protocol_of(first, split_set, adaptations, episodes, results_dirs[0])
    files, width = _entry_files(saved, chosen, shots, n_episodes, results_dirs[0])
    out = entry_path(root, split_set.dataset, split_set.version, name)
    if out.exists() and not replace:
        raise OodmlError(f"{out} exists; choose another --name or pass --replace")
    meta = {
        "schema_version": SCHEMA_VERSION, "entry": name, "method": info.method or name,
        "description": info.description, "authors": list(info.authors), "paper": info.paper, "code": info.code,
        "protocol": first.meta["protocol"], "adaptations": chosen, "fewshot": {"shots": shots, "episodes": n_episodes},
        "training_data": _with_model_declaration(info.training_data, first.meta.get("model_identity")),
        "pretraining": _pretraining(info.pretraining, first.meta.get("model_identity")),
        "baseline": info.baseline, "dataset": split_set.dataset, "split_version": split_set.version,
        "split_digest": split_set.digest, "model_digests": {str(r["level"]): r["model_digest"] for r in first.rows},
        "embedding_dim": width, "oodml_version": __version__,
        "date": dt.datetime.now(dt.timezone.utc).date().isoformat(),
        "seeds": _seeds(runs, results_dirs),
        "claimed": {}, "files": {},
        **({"protocol_card": first.meta["protocol_card"]} if "protocol_card" in first.meta else {}),
    }
    problems = schema_problems(meta)
    if problems:
        raise OodmlError(f"cannot make a valid entry: {problems[0]}")
    _publish(out, meta, files, split_set, data_root, replace=replace)
    return out


def _entry_files(saved: dict[tuple, tuple[list[str], np.ndarray]], chosen: Sequence[str], shots: Sequence[int],
                 n_episodes: int, folder: str | Path) -> tuple[dict[tuple, tuple[list[str], np.ndarray]], int]:
    """The saved embeddings an entry holds (test ones, and the episodes of the chosen fine-tuned
    adaptations), and their common width; refused when the widths differ."""
    files = {key: value for key, value in saved.items()
             if key[0] == "test" or (key[4] in chosen and key[4] in FINETUNED and key[2] in shots
                                     and key[3] < n_episodes)}
    widths = {values.shape[1] for _, values in files.values()}
    if len(widths) != 1:
        raise OodmlError(f"{folder}: embeddings of different widths {sorted(widths)}")
    return files, widths.pop()


def _publish(out: Path, meta: dict, files: dict[tuple, tuple[list[str], np.ndarray]], split_set: SplitSet,
             data_root: str | Path | None, *, replace: bool) -> None:
    """Write the entry at ``out`` with the folder claimed (:func:`oodml._fs.claim`): a second submission
    of the same name meanwhile is refused in one line, and the check that ``out`` is new holds until the
    entry is renamed into place.  What killed submissions left in the version folder (hidden
    temporaries, which ``verify`` and ``build`` skip) is removed first."""
    with claim(out, what=f"the entry {out}", fix="choose another --name"):
        remove_abandoned(out.parent)
        if out.exists() and not replace:
            raise OodmlError(f"{out} exists; choose another --name or pass --replace")
        _write_entry(out, meta, files, split_set, load_dataset(split_set.dataset, root=data_root))


def _seeds(runs: Sequence[Results], results_dirs: Sequence[str | Path]) -> dict:
    """The entry's ``seeds``: every run's mean Recall@1 and their spread (the submitted run first)."""
    means = [run.summary()["metrics"]["recall@1"]["mean"] for run in runs]
    return {"runs": [Path(d).name for d in results_dirs], "submitted": Path(results_dirs[0]).name,
            "mean_recall@1": means, "sd_mean_recall@1": float(np.std(means, ddof=1)) if len(means) > 1 else None}


def _read_runs(results_dirs: Sequence[str | Path]) -> list[Results]:
    """The runs' results, refusing folders without results and runs of another split set or protocol."""
    if not results_dirs:
        raise OodmlError("give at least one results folder")
    runs = []
    for folder in map(Path, results_dirs):
        if not (folder / "results.parquet").exists():
            raise OodmlError(f"{folder} holds no results.parquet; run `oodml evaluate ... --out {folder}` first")
        runs.append(Results.from_parquet(folder / "results.parquet"))
    first = runs[0]
    for folder, run in zip(results_dirs[1:], runs[1:], strict=True):
        if (run.meta["split_digest"], run.meta["protocol"]) != (first.meta["split_digest"], first.meta["protocol"]):
            raise OodmlError(f"{folder} was evaluated on another split set or protocol than {results_dirs[0]}")
    return runs


def _published_split_set(run: Results, folder: str | Path) -> SplitSet:
    """The published split set ``run`` was evaluated on; refused when its digest is not the published one."""
    dataset, digest = run.meta["dataset"], run.meta["split_digest"]
    split_set = load(dataset, run.meta["splits"].split("@", 1)[1])
    if split_set.digest != digest:
        raise OodmlError(f"{folder} was evaluated on split digest {digest[:12]}, not on the published "
                         f"{dataset}@{split_set.version} ({split_set.digest[:12]}); re-evaluate")
    return split_set


def _protocol_of(run: Results, split_set: SplitSet, adaptations: Sequence[str] | None, episodes: int | None,
                 folder: str | Path) -> tuple[list[str], list[int], int]:
    """``(adaptations, shots, episodes per shot)`` of the entry: the ones asked for, all evaluated in ``run``."""
    evaluated = run.meta.get("adapt") or []
    chosen = list(evaluated if adaptations is None else adaptations)
    unknown = [a for a in chosen if a not in ADAPTATIONS or a not in evaluated]
    if unknown:
        raise OodmlError(f"adaptation {unknown[0]!r} was not evaluated in {folder} "
                         f"(evaluated: {', '.join(evaluated) or 'none'})")
    shots = list(run.meta.get("fewshot") or []) if chosen else []
    n_episodes = episodes if episodes is not None else run.meta.get("episodes") or (
        len(split_set.levels[0].episodes(shots[0])) if shots else 0)
    return chosen, shots, n_episodes


def _write_entry(out: Path, meta: dict, files: dict[tuple, tuple[list[str], np.ndarray]], split_set: SplitSet,
                 ds: ImageDataset) -> None:
    """Write the float16 embedding files and ``submission.json`` with the claims re-scored from those files,
    atomically: a failure leaves nothing at ``out``."""
    with atomic_path(out) as tmp:
        (tmp / "embeddings").mkdir(parents=True)
        for key, (ids, values) in files.items():
            sub_name = Submission(tmp, meta).test_file(key[1]) if key[0] == "test" else \
                Submission(tmp, meta).fewshot_file(*key[1:])
            write_embedding_table(tmp / sub_name, ids, values, dtype=np.float16)
            meta["files"][sub_name] = file_record(tmp / sub_name)
        scores, problems = score(Submission(tmp, meta), split_set, ds)
        if scores is None:
            raise OodmlError(f"the results cannot make a valid entry: {problems[0]}")
        meta["claimed"] = scores.claims()
        (tmp / "submission.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _with_model_declaration(training_data: str, identity: dict | None) -> str:
    """``training_data`` with what a model spec declares appended: the spec (or the spec a checkpoint was trained
    on) and its pretraining data, as the library records them (``timm:resnet50 (pretraining declared by timm
    1.0: a1_in1k)``), which ``verify`` holds the entry's ``pretraining`` to.  Other models add nothing."""
    spec = str((identity or {}).get("arch") or (identity or {}).get("spec") or "")
    if not identity or not is_spec(spec):
        return training_data
    declared = "random weights" if identity.get("random_weights") else entry_pretraining(identity) or "not declared"
    declaration = f"{spec} (pretraining declared by {identity.get('library')}: {declared})"
    return f"{training_data}; {declaration}" if training_data else declaration


def _pretraining(given: str | None, identity: dict | None) -> str:
    """The entry's ``pretraining``: ``given``, else what the evaluated weights declare
    (:func:`oodml.models.identity.entry_pretraining`: ``none`` for random weights or a model trained from
    scratch), else ``""`` (not declared).  A ``given`` that contradicts the declaration is refused."""
    declared = entry_pretraining(identity)
    if given is None:
        return declared or ""
    given = given.strip()
    if declared and given != declared:
        raise OodmlError(f"--pretraining {given!r} contradicts the model, which declares {declared!r} "
                         f"({identity.get('spec')}); leave --pretraining out")
    return given
