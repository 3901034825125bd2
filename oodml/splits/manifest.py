"""Versioned split manifests: Parquet tables plus metadata, content-hashed and verified on load.

A split set lives in ``splits/<dataset>/<version>/``::

    metadata.json      schema version, dataset and fingerprint, extractor, distance, algorithm
                       and all its parameters, seed, oodml version, creation time
    levels.parquet     level, distance, ci_low, ci_high, kind, class and image counts
    classes.parquet    level, class, role (train/test), tuning (train/val; null for test)
    episodes.parquet   level, shots, episode, class, sample_id (the support set)
    checksums.json     sha256 of every file above, and the overall digest
    audits/            optional: audits of the split set (``oodml splits audit --store``), outside the
                       manifest, so adding one changes neither the digest nor verification

The *digest* identifies the benchmark a split set defines: sha256 over the
canonical rows of the three tables and the metadata, leaving out

* volatile metadata (creation time, oodml version), and
* *measured* values: each level's ``distance``, ``ci_low`` and ``ci_high`` and
  the metadata's ``default_distance``, and
* *derived* metadata (schema 3): ``adjacent_levels``, the paired-bootstrap
  comparison of each adjacent pair of levels (:mod:`oodml.splits.adjacent`),
  computed from the levels; checked for shape on load, and ``oodml splits show
  --adjacent`` recomputes it.

What a model is evaluated on (class sets, tuning split, episodes, level kinds
and counts) and how the split set was generated (dataset fingerprint,
extractor, distance, parameters, seed) are in it; floating-point values whose
last bits depend on the BLAS kernel, the thread count or the device are not, so
the same generation on another machine gives the same digest.  Measured values
are *stored* rounded to ``SIGNIFICANT_DIGITS`` significant digits and compared
with a stated tolerance (:mod:`oodml.splits.compare`).  The rule is recorded in
``metadata.json`` (``canonical_form``).

This is schema 3.  Split sets published under schema 1 (``glyphs@v1``,
``cars196@oodml-v1``) hashed the measured values as computed; they are
immutable, so they keep their recorded digest and are verified under the rule
they were published with.  Schema 2 hashed everything schema 3 does and the
derived metadata (no schema-2 split set holds any, so it hashed nothing more);
schema 3 exists so that an oodml that knows only schema 2 refuses a split set
holding ``adjacent_levels`` as too new, rather than as a digest mismatch.

The digest does not depend on the Parquet writer's bytes; the per-file sha256
sums catch any change to the files themselves.  A published version is
immutable: a ``dataset@version`` has one digest wherever it is published
(:func:`oodml.splits.publish.write_split_set` keeps or copies the published files for content that
reproduces them and refuses other content; :func:`oodml.splits.catalogue.load` refuses a name that two
places on the search paths hold with different digests).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from .._fs import atomic_path, file_digest
from ..errors import OodmlError, brief
from .adjacent import METADATA_KEY as ADJACENT_LEVELS
from .adjacent import pairs_from_metadata
from .levels import LEVEL_KINDS, Episode, Level
from .locations import CHECKSUMS

if TYPE_CHECKING:
    import numpy as np

SCHEMA_VERSION = 3
SCHEMA_VERSIONS = (1, 2, 3)  # the digest rules this oodml can verify
TABLES = ("levels", "classes", "episodes")
FILES = ("metadata.json", "levels.parquet", "classes.parquet", "episodes.parquet")
#: A folder beside the manifest files for audits of the split set; not part of the manifest or its digest.
AUDITS = "audits"
VOLATILE_METADATA = ("created_at", "oodml_version")
#: Measured values: stored rounded, compared with a tolerance, not part of the digest (schema 2).
MEASURED_COLUMNS = ("distance", "ci_low", "ci_high")
MEASURED_METADATA = ("default_distance",)
#: Derived from the levels by a seeded bootstrap, stored rounded, not part of the digest (schema 3).
DERIVED_METADATA = (ADJACENT_LEVELS,)
SIGNIFICANT_DIGITS = 6
CANONICAL_FORM = {
    "digest_excludes": ["created_at", "oodml_version", *MEASURED_METADATA, *DERIVED_METADATA,
                        *(f"levels.{c}" for c in MEASURED_COLUMNS)],
    "measured_values_significant_digits": SIGNIFICANT_DIGITS,
}
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

LEVEL_SCHEMA = pa.schema([("level", pa.int32()), ("distance", pa.float64()), ("ci_low", pa.float64()),
                          ("ci_high", pa.float64()), ("kind", pa.string()), ("n_train_classes", pa.int32()),
                          ("n_test_classes", pa.int32()), ("n_train_images", pa.int64()),
                          ("n_test_images", pa.int64())])
CLASS_SCHEMA = pa.schema([("level", pa.int32()), ("class", pa.string()), ("role", pa.string()),
                          ("tuning", pa.string())])
EPISODE_SCHEMA = pa.schema([("level", pa.int32()), ("shots", pa.int32()), ("episode", pa.int32()),
                            ("class", pa.string()), ("sample_id", pa.string())])


@dataclass(frozen=True)
class SplitSet:
    """A loaded, verified split set.

    Attributes:
        dataset, version: where it was published.
        levels: :class:`Level` records, easiest first.
        metadata: the generation record (see module docstring).
        digest: content digest (hex sha256).
        path: the directory it was read from (None when built in memory).
    """

    dataset: str
    version: str
    levels: tuple[Level, ...]
    metadata: dict
    digest: str
    path: Path | None = None

    def level(self, index: int) -> Level:
        for lv in self.levels:
            if lv.index == index:
                return lv
        raise OodmlError(f"{self.dataset}@{self.version} has no level {index}; levels 1..{len(self.levels)}")

    def check_dataset(self, fingerprint: str, root: object = None) -> None:
        """Refuse data other than what the split set was made from (when it recorded a fingerprint)."""
        expected = self.metadata.get("dataset_fingerprint")
        if expected and expected != fingerprint:
            where = f" (different files or labels under {root})" if root is not None else ""
            raise OodmlError(f"splits {self.dataset}@{self.version} were made from data with fingerprint "
                             f"{expected[:16]}; yours is {fingerprint[:16]}{where}")

    def partitions(self, classes: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each level's (train, test) class indices into ``classes`` (a dataset's class names), level 1 first.

        Raises:
            OodmlError: a level names a class ``classes`` lacks (the data is not what the split set was made from).
        """
        import numpy as np

        index = {c: i for i, c in enumerate(classes)}
        out = []
        for lv in self.levels:
            missing = [c for c in (*lv.train_classes, *lv.test_classes) if c not in index]
            if missing:
                raise OodmlError(f"{self.dataset}@{self.version} level {lv.index} names class {missing[0]!r}, "
                                 f"which the dataset does not have ({len(missing)} such); use the data it was made "
                                 "from (--root)")
            out.append((np.array([index[c] for c in lv.train_classes]),
                        np.array([index[c] for c in lv.test_classes])))
        return out

    @property
    def schema_version(self) -> int:
        """The manifest schema, which fixes the digest rule (see module docstring)."""
        return int(self.metadata.get("schema_version", 1))

    def __repr__(self) -> str:
        return f"SplitSet({self.dataset}@{self.version}, levels={len(self.levels)}, digest={self.digest[:12]})"


def canonical_float(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (correctly rounded, so the same on every machine);
    NaN and infinities unchanged."""
    value = float(value)
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


# --- tables <-> levels --------------------------------------------------------------------

def levels_to_tables(levels: tuple[Level, ...]) -> dict[str, pa.Table]:
    """The three tables of ``levels``, measured values in canonical form (:func:`canonical_float`)."""
    return {"levels": _table(LEVEL_SCHEMA, _level_rows(levels)),
            "classes": _table(CLASS_SCHEMA, _class_rows(levels)),
            "episodes": _table(EPISODE_SCHEMA, _episode_rows(levels))}


def _table(schema: pa.Schema, rows: Iterator[tuple]) -> pa.Table:
    """A table of ``schema`` from rows of values in its column order."""
    columns: dict[str, list] = {name: [] for name in schema.names}
    for row in rows:
        for name, value in zip(schema.names, row, strict=True):
            columns[name].append(value)
    return pa.table(columns, schema=schema)


def _level_rows(levels: tuple[Level, ...]) -> Iterator[tuple]:
    """One :data:`LEVEL_SCHEMA` row per level, measured values in canonical form."""
    for lv in levels:
        measured = (canonical_float(lv.distance), canonical_float(lv.ci_low), canonical_float(lv.ci_high))
        yield (lv.index, *measured, lv.kind, len(lv.train_classes), len(lv.test_classes), lv.n_train_images,
               lv.n_test_images)


def _class_rows(levels: tuple[Level, ...]) -> Iterator[tuple]:
    """One :data:`CLASS_SCHEMA` row per level and class: train classes (tuning train or val), then test classes
    (no tuning role)."""
    for lv in levels:
        val = set(lv.val_classes)
        for c in lv.train_classes:
            yield lv.index, c, "train", "val" if c in val else "train"
        for c in lv.test_classes:
            yield lv.index, c, "test", None


def _episode_rows(levels: tuple[Level, ...]) -> Iterator[tuple]:
    """One :data:`EPISODE_SCHEMA` row per support image of every episode."""
    for lv in levels:
        for shots in lv.shots:
            for ep in lv.episodes(shots):
                for c, ids in ep.support.items():
                    for sid in ids:
                        yield lv.index, shots, ep.index, c, sid


def tables_to_levels(tables: dict[str, pa.Table]) -> tuple[Level, ...]:
    classes = tables["classes"].to_pydict()
    episodes = tables["episodes"].to_pydict()
    members: dict[int, dict[str, list[str]]] = {}
    for lv, c, role, tuning in zip(classes["level"], classes["class"], classes["role"], classes["tuning"],
                                   strict=True):
        side = members.setdefault(lv, {"train": [], "test": [], "val": []})
        side[role].append(c)
        if tuning == "val":
            side["val"].append(c)
    support: dict[tuple[int, int, int], dict[str, list[str]]] = {}
    for lv, shots, ep, c, sid in zip(*(episodes[k] for k in EPISODE_SCHEMA.names), strict=True):
        support.setdefault((lv, shots, ep), {}).setdefault(c, []).append(sid)
    out = []
    for row in tables["levels"].to_pylist():
        idx = row["level"]
        eps: dict[int, list[Episode]] = {}
        for (lv, shots, ep), sup in sorted(support.items()):
            if lv == idx:
                eps.setdefault(shots, []).append(Episode(shots, ep, {c: tuple(v) for c, v in sup.items()}))
        side = members.get(idx, {"train": [], "test": [], "val": []})
        out.append(Level(idx, row["distance"], row["ci_low"], row["ci_high"], row["kind"], tuple(side["train"]),
                         tuple(side["test"]), tuple(side["val"]), row["n_train_images"], row["n_test_images"],
                         {s: tuple(e) for s, e in eps.items()}))
    return tuple(out)


# --- hashing --------------------------------------------------------------------------------

def content_digest(tables: dict[str, pa.Table], metadata: dict, schema_version: int = SCHEMA_VERSION) -> str:
    """sha256 over canonical JSON of the table rows and the metadata, under ``schema_version``'s rule.

    Schema 3 leaves out volatile metadata, measured values and derived
    metadata (module docstring); schema 2 the first two; schema 1, kept to
    verify what was published under it, only the volatile metadata.
    """
    skip_meta, skip_cols = VOLATILE_METADATA, ()
    if schema_version >= 2:
        skip_meta, skip_cols = VOLATILE_METADATA + MEASURED_METADATA, MEASURED_COLUMNS
    if schema_version >= 3:
        skip_meta += DERIVED_METADATA
    h = hashlib.sha256()
    stable = {k: v for k, v in metadata.items() if k not in skip_meta}
    h.update(json.dumps(stable, sort_keys=True, separators=(",", ":")).encode())
    for name in TABLES:
        h.update(f"\n{name}\n".encode())
        names = [c for c in tables[name].column_names if c not in skip_cols or name != "levels"]
        columns = tables[name].select(names).to_pydict()
        for row in zip(*(columns[c] for c in names), strict=True):
            h.update(json.dumps(row, separators=(",", ":")).encode())
            h.update(b"\n")
    return h.hexdigest()


# --- writing --------------------------------------------------------------------------------

def check_version_name(version: str) -> None:
    if not _VERSION_RE.match(version):
        raise OodmlError(f"version name {version!r} must be letters, digits, '.', '_' or '-', not starting "
                         "with a punctuation mark")


def split_set_of(dataset: str, version: str, levels: tuple[Level, ...], metadata: dict) -> SplitSet:
    """The split set that :func:`oodml.splits.publish.write_split_set` would publish, in memory (``path``
    None): schema and canonical-form keys added to ``metadata``, measured values in canonical form, digest
    computed."""
    metadata = {"schema_version": SCHEMA_VERSION, "dataset": dataset, "version": version,
                "canonical_form": CANONICAL_FORM, **metadata}
    metadata = json.loads(json.dumps(metadata))  # as metadata.json will read back (tuples become lists)
    for key in MEASURED_METADATA:
        if isinstance(metadata.get(key), float):
            metadata[key] = canonical_float(metadata[key])
    if isinstance(metadata.get(ADJACENT_LEVELS), list):
        metadata[ADJACENT_LEVELS] = [_canonical_pair(p) for p in metadata[ADJACENT_LEVELS]]
    tables = levels_to_tables(levels)
    return SplitSet(dataset, version, tables_to_levels(tables), metadata, content_digest(tables, metadata))


def _canonical_pair(record: object) -> object:
    """An ``adjacent_levels`` record with its numbers in canonical form (:func:`canonical_float`)."""
    if not isinstance(record, dict):
        return record
    return {k: canonical_float(v) if isinstance(v, float) else v for k, v in record.items()}


def write_manifest(new: SplitSet, dest: Path) -> SplitSet:
    """Write ``new``'s files at ``dest`` (a folder that does not exist), atomically; returns it as read back and
    verified.  Whether its name may be published there is :func:`oodml.splits.publish.write_split_set`'s check."""
    tables = levels_to_tables(new.levels)
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for name in TABLES:
            pq.write_table(tables[name], tmp / f"{name}.parquet", compression="zstd")
        (tmp / "metadata.json").write_text(json.dumps(new.metadata, indent=2, sort_keys=True) + "\n")
        sums = {"schema_version": SCHEMA_VERSION, "digest": new.digest,
                "files": {name: file_digest(tmp / name) for name in FILES}}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return read_split_set(dest)


# --- reading --------------------------------------------------------------------------------

def _read_json(path: Path, where: str) -> object:
    """The JSON value in file ``path``; one line naming ``where`` when it is missing, not a file, not text,
    not JSON, or nested too deeply to parse."""
    name = path.name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise OodmlError(f"{where}: missing {name}; not a published split set") from None
    except IsADirectoryError:
        raise OodmlError(f"{where}: {name} is a directory, not a file; restore the split set from where it was "
                         "published") from None
    except OSError as exc:
        raise OodmlError(f"{where}: cannot read {name}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OodmlError(f"{where}: {name} is not valid JSON ({exc}); restore it from where the split set was "
                         "published") from None
    except RecursionError:
        raise OodmlError(f"{where}: {name} is nested too deeply to read; restore it from where the split set was "
                         "published") from None


def read_checksums(path: Path, where: str) -> dict:
    """``checksums.json`` of the split set at ``path``, its shape checked (not yet the files it names)."""
    sums = _read_json(path / CHECKSUMS, where)
    if not isinstance(sums, dict) or not isinstance(sums.get("files"), dict) or not isinstance(sums.get("digest"), str):
        raise OodmlError(f"{where}: {CHECKSUMS} lacks 'files' and 'digest'")
    rule = sums.get("schema_version")
    if type(rule) is not int or rule < 1:
        raise OodmlError(f"{where}: {CHECKSUMS} has schema_version {brief(rule)}, expected a positive integer; "
                         "restore the file from version control")
    if rule > SCHEMA_VERSION:
        raise OodmlError(f"{where}: schema version {rule} is newer than this oodml understands "
                         f"({SCHEMA_VERSION}); upgrade oodml")
    return sums


def _check_files(path: Path, sums: dict, where: str) -> None:
    """Every manifest file present, a plain file, and matching its sha256; nothing foreign beside them."""
    present = {p.name for p in path.iterdir()} - {CHECKSUMS} - ({AUDITS} if (path / AUDITS).is_dir() else set())
    foreign = sorted(present - set(FILES))
    if foreign:
        raise OodmlError(f"{where}: foreign file {brief(foreign[0])} is not part of the manifest; remove it")
    for name in FILES:
        if name not in present:
            raise OodmlError(f"{where}: missing file {name}")
        if not (path / name).is_file():
            raise OodmlError(f"{where}: {name} is not a file; restore the split set from where it was published")
        expected = sums["files"].get(name)
        if not isinstance(expected, str) or file_digest(path / name) != expected:
            raise OodmlError(f"{where}: {name} does not match its sha256 in {CHECKSUMS}; the file was modified "
                             "or corrupted (restore it from version control)")


#: (digest rule, the files' sha256 sums) -> content digest: the files' bytes fix the digest, so a split set read
#: again in this process (every evaluate, verify and board build reads one; 4 s for glyphs@v1) is hashed once.
_DIGESTS: dict[tuple, str] = {}


def _content_digest_of_files(tables: dict[str, pa.Table], metadata: dict, rule: int, sums: dict) -> str:
    """:func:`content_digest` of tables and metadata read from files whose sha256 :func:`_check_files` has
    just matched to ``sums``, remembered under those sums."""
    key = (rule, *(sums["files"][name] for name in FILES))
    if key not in _DIGESTS:
        _DIGESTS[key] = content_digest(tables, metadata, rule)
    return _DIGESTS[key]


def read_split_set(path: Path) -> SplitSet:
    """Read and verify a split set directory; any tampered, missing or foreign file is an error."""
    path = Path(path)
    where = f"split set {path}"
    sums = read_checksums(path, where)
    rule = sums["schema_version"]
    _check_files(path, sums, where)
    metadata = _read_json(path / "metadata.json", where)
    try:
        tables = {name: pq.read_table(path / f"{name}.parquet") for name in TABLES}
    except (OSError, pa.ArrowException) as exc:
        raise OodmlError(f"{where}: cannot read it: {exc}") from None
    if not isinstance(metadata, dict) or metadata.get("schema_version", 1) != rule:
        raise OodmlError(f"{where}: metadata.json is not a schema-{rule} record")
    for name, schema in zip(TABLES, (LEVEL_SCHEMA, CLASS_SCHEMA, EPISODE_SCHEMA), strict=True):
        if not tables[name].schema.equals(schema):
            raise OodmlError(f"{where}: {name}.parquet has columns {tables[name].schema.names}, "
                             f"expected {schema.names}")
    try:
        digest = _content_digest_of_files(tables, metadata, rule, sums)
    except RecursionError:
        raise OodmlError(f"{where}: metadata.json is nested too deeply to hash; restore it from where the split "
                         "set was published") from None
    if digest != sums["digest"]:
        raise OodmlError(f"{where}: content digest {digest[:12]} does not match the recorded {sums['digest'][:12]}")
    _check_values(tables, where)
    levels = tables_to_levels(tables)
    check_levels(levels, where)
    if ADJACENT_LEVELS in metadata:
        pairs_from_metadata(metadata[ADJACENT_LEVELS], len(levels), where)
    return SplitSet(str(metadata.get("dataset", path.parent.name)), str(metadata.get("version", path.name)),
                    levels, metadata, digest, path)


def _check_values(tables: dict[str, pa.Table], where: str) -> None:
    """Refuse values the tables cannot hold: a missing value (only a test class has no tuning role), or a
    class role other than train (tuning train or val) and test."""
    malformed = "the split set is malformed, restore it from where it was published"
    for name in TABLES:
        for column in tables[name].column_names:
            if (name, column) != ("classes", "tuning") and tables[name].column(column).null_count:
                raise OodmlError(f"{where}: {name}.parquet has missing values in column {column!r}; {malformed}")
    classes = tables["classes"].to_pydict()
    for role, tuning in zip(classes["role"], classes["tuning"], strict=True):
        if tuning not in {"train": ("train", "val"), "test": (None,)}.get(role, ()):
            raise OodmlError(f"{where}: classes.parquet has a class with role {brief(role)} and tuning "
                             f"{brief(tuning)}, expected train with train or val, or test with none; {malformed}")


def check_levels(levels: tuple[Level, ...], where: str) -> None:
    """Refuse a split set no evaluation could use: levels not numbered 1..n, a level without train classes or
    with fewer than 2 test classes, a class on both sides, validation classes outside train, or episode
    support from classes other than the level's test classes."""
    if not levels:
        raise OodmlError(f"{where}: has no levels")
    if [lv.index for lv in levels] != list(range(1, len(levels) + 1)):
        raise OodmlError(f"{where}: levels are numbered {[lv.index for lv in levels][:10]}, expected 1..{len(levels)}")
    for lv in levels:
        problem = level_problem(lv)
        if problem:
            raise OodmlError(f"{where}: level {lv.index} has {problem}; the split set is malformed, "
                             "restore it from where it was published")


def level_problem(lv: Level) -> str | None:
    """What makes level ``lv`` unusable, a few words (see :func:`check_levels`), or None."""
    train, test = set(lv.train_classes), set(lv.test_classes)
    if not train:
        return "no train classes"
    if len(test) < 2:
        return f"{len(test)} test classes (retrieval needs at least 2)"
    if lv.kind not in LEVEL_KINDS:
        return f"kind {brief(lv.kind)}, not one of {', '.join(LEVEL_KINDS)}"
    if train & test:
        return f"class {brief(sorted(train & test)[0])} on both sides"
    if not set(lv.val_classes) <= train:
        return "validation classes that are not train classes"
    if any(not set(ep.support) <= test for eps in lv.episode_table.values() for ep in eps):
        return "episode support from classes that are not test classes"
    return None
