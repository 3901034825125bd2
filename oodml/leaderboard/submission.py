"""The submission format (schema version 1): what a leaderboard entry holds, and its structural checks.

An entry lives in ``leaderboard/submissions/<dataset>/<split version>/<entry>/``::

    submission.json                       who, what, how (below), and the sha256 of every file
    embeddings/level<L>.parquet           the test images of level L: sample_id, embedding (float16)
    embeddings/level<L>-<k>shot-episode<E>-<adaptation>.parquet
                                          fine-tuned adaptations only: the episode's support and
                                          query images after adapting to its support set

``submission.json`` fields: ``schema_version``, ``entry`` (the folder name),
``method``, ``description``, ``authors`` (list), ``paper`` and ``code`` (URL or
null), ``protocol`` (``per-level`` or ``zero-shot``), ``adaptations`` (few-shot
adaptations whose episodes are scored: ``prototypes`` needs no extra file),
``fewshot`` (``{"shots": [...], "episodes": N}``: the first N episodes of the
manifest), ``training_data`` (a declaration), ``baseline`` (bool), ``dataset``,
``split_version``, ``split_digest``, ``model_digests`` (level -> digest),
``embedding_dim``, ``oodml_version``, ``date``, ``seeds`` (how the submitted run
compares with the other seeds), ``claimed`` (numbers the verifier must
reproduce) and ``files`` (path -> ``{"sha256", "bytes"}``).

Everything here reads untrusted input: every problem is reported as one line,
nothing is executed, and no path outside the entry folder is ever opened.
"""

from __future__ import annotations

import json
import re
import types
from dataclasses import dataclass
from pathlib import Path

from ..evaluation import embedding_file_name, parse_embedding_file_name
from ..splits.manifest import sha256_file

SCHEMA_VERSION = 1
MAX_JSON_BYTES = 1 << 20
MAX_FILE_BYTES = 16 << 20
MAX_ENTRY_BYTES = 64 << 20
PROTOCOLS = ("per-level", "zero-shot")
FINETUNED = ("finetune-last", "finetune-all")
ADAPTATIONS = ("prototypes", *FINETUNED)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_NONE = types.NoneType
FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "entry": (str,), "method": (str,), "description": (str,), "authors": (list,),
    "paper": (str, _NONE), "code": (str, _NONE), "protocol": (str,), "adaptations": (list,), "fewshot": (dict,),
    "training_data": (str,), "baseline": (bool,), "dataset": (str,), "split_version": (str,),
    "split_digest": (str,), "model_digests": (dict,), "embedding_dim": (int,), "oodml_version": (str,),
    "date": (str,), "seeds": (dict,), "claimed": (dict,), "files": (dict,),
}


@dataclass(frozen=True)
class Submission:
    """A structurally valid entry: its folder and its ``submission.json``."""

    path: Path
    meta: dict

    @property
    def key(self) -> str:
        return f"{self.meta['dataset']}/{self.meta['split_version']}/{self.meta['entry']}"

    def file(self, name: str) -> Path:
        return self.path / name

    def test_file(self, level: int) -> str:
        return f"embeddings/{embedding_file_name(('test', level))}"

    def fewshot_file(self, level: int, shots: int, episode: int, adaptation: str) -> str:
        return f"embeddings/{embedding_file_name(('fewshot', level, shots, episode, adaptation))}"


def parse_file_name(name: str) -> tuple | None:
    """``("test", level)`` or ``("fewshot", level, shots, episode, adaptation)`` for an allowed name, else None.

    Allowed: ``embeddings/<file>`` where ``<file>`` is exactly what
    ``oodml evaluate --save-embeddings`` writes for that key (no leading zeros),
    levels and shots below 1000, episodes below 10000, and few-shot files only
    for fine-tuned adaptations (prototypes are recomputed from the test set).
    """
    folder, _, file = name.partition("/")
    key = parse_embedding_file_name(file) if folder == "embeddings" else None
    if key is None or embedding_file_name(key) != file or key[1] >= 1000:
        return None
    if key[0] == "fewshot" and (key[2] >= 1000 or key[3] >= 10_000 or key[4] not in FINETUNED):
        return None
    return key


def read_submission(path: Path) -> tuple[Submission | None, list[str]]:
    """Check an entry folder's structure; return it (None if unusable) and its problems, one line each.

    Checks ``submission.json`` (size, JSON, schema version, every field and its
    type, values from the allowed sets), that the folder matches the declared
    dataset, split version and entry name, and that the files are exactly those
    listed (allowed names only, regular files inside the folder, no links, within
    the size limits, matching sha256).  Content (ids, values, numbers) is checked
    by :func:`oodml.leaderboard.verify`.
    """
    path = Path(path)
    where = str(path)
    spec = path / "submission.json"
    if not path.is_dir() or path.is_symlink():
        return None, [f"{where}: not a submission folder"]
    if not spec.is_file() or spec.is_symlink():
        return None, [f"{where}: submission.json is missing"]
    if spec.stat().st_size > MAX_JSON_BYTES:
        return None, [f"{spec}: {spec.stat().st_size} bytes, more than the {MAX_JSON_BYTES} allowed"]
    try:
        meta = json.loads(spec.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, [f"{spec}: not valid JSON ({exc})"]
    if not isinstance(meta, dict):
        return None, [f"{spec}: must hold a JSON object"]
    version = meta.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return None, [f"{spec}: schema_version must be a positive integer"]
    if version > SCHEMA_VERSION:
        return None, [f"{spec}: schema version {version} is newer than this oodml reads ({SCHEMA_VERSION}); "
                      "upgrade oodml"]
    problems = [f"{spec}: field {name!r} is missing" for name in FIELDS if name not in meta]
    problems += [f"{spec}: unknown field {name!r}" for name in meta if name not in FIELDS]
    for name, types_ in FIELDS.items():
        value = meta.get(name)
        if name in meta and (not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_)):
            problems.append(f"{spec}: field {name!r} must be {' or '.join(t.__name__ for t in types_)}, "
                            f"not {type(value).__name__}")
    if problems:
        return None, problems
    problems += _check_values(meta, spec, path)
    problems += _check_files(meta["files"], path)
    return (Submission(path, meta) if not problems else None), problems


def _check_values(meta: dict, spec: Path, path: Path) -> list[str]:
    problems = []
    if meta["protocol"] not in PROTOCOLS:
        problems.append(f"{spec}: protocol {meta['protocol']!r} is not one of {', '.join(PROTOCOLS)}")
    bad = [a for a in meta["adaptations"] if a not in ADAPTATIONS]
    if bad:
        problems.append(f"{spec}: unknown adaptation {bad[0]!r}; use {', '.join(ADAPTATIONS)}")
    shots, episodes = meta["fewshot"].get("shots", []), meta["fewshot"].get("episodes", 0)
    if not (isinstance(shots, list) and all(isinstance(k, int) and k > 0 for k in shots)
            and isinstance(episodes, int) and episodes >= 0):
        problems.append(f"{spec}: fewshot must be {{\"shots\": [positive ints], \"episodes\": int >= 0}}")
    if meta["adaptations"] and not (shots and episodes):
        problems.append(f"{spec}: adaptations are declared but fewshot names no shots or episodes")
    for name in ("entry", "dataset", "split_version"):
        if not NAME_RE.fullmatch(meta[name]):
            problems.append(f"{spec}: {name} {meta[name]!r} must be letters, digits, '.', '_', '+' or '-'")
    declared = (meta["dataset"], meta["split_version"], meta["entry"])
    actual = (path.parent.parent.name, path.parent.name, path.name)
    if declared != actual:
        problems.append(f"{spec}: declares {'/'.join(declared)} but lives in {'/'.join(actual)}")
    if not 1 <= meta["embedding_dim"] <= 4096:
        problems.append(f"{spec}: embedding_dim {meta['embedding_dim']} is outside 1..4096")
    if not re.fullmatch(r"[0-9a-f]{64}", meta["split_digest"]):
        problems.append(f"{spec}: split_digest must be 64 hex digits")
    return problems


def _check_files(listed: dict, path: Path) -> list[str]:
    """Problems with the listed files' names, links, sizes and hashes, and with unlisted files."""
    problems, total = [], 0
    for name, record in sorted(listed.items()):
        if parse_file_name(name) is None:
            problems.append(f"{path}: file name {name!r} is not allowed (embeddings/level<L>.parquet or "
                            "embeddings/level<L>-<k>shot-episode<E>-<adaptation>.parquet)")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or \
                not isinstance(record.get("bytes"), int):
            problems.append(f"{path}: files[{name!r}] must be {{\"sha256\": hex, \"bytes\": int}}")
            continue
        file = path / name
        if file.is_symlink() or file.parent.is_symlink():
            problems.append(f"{file}: a link; submissions hold regular files only")
            continue
        if not file.is_file():
            problems.append(f"{file}: listed but missing")
            continue
        size = file.stat().st_size
        total += size
        if size > MAX_FILE_BYTES:
            problems.append(f"{file}: {size} bytes, more than the {MAX_FILE_BYTES} allowed per file")
            continue
        if size != record["bytes"] or sha256_file(file) != record["sha256"]:
            problems.append(f"{file}: content does not match the sha256 in submission.json")
    if total > MAX_ENTRY_BYTES:
        problems.append(f"{path}: {total} bytes in all, more than the {MAX_ENTRY_BYTES} allowed per entry")
    for found in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
        rel = found.relative_to(path).as_posix()
        if rel != "submission.json" and rel not in listed:
            problems.append(f"{found}: not listed in submission.json (remove it)")
    return problems


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
