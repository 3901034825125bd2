"""The submission format (schema version 2): what a leaderboard entry holds, and its structural checks.

An entry lives in ``leaderboard/submissions/<dataset>/<split version>/<entry>/``::

    submission.json                       who, what, how (below), and the sha256 of every file
    embeddings/level<L>.parquet           the test images of level L: sample_id, embedding (float16)
    embeddings/level<L>-<k>shot-episode<E>-<adaptation>.parquet
                                          fine-tuned adaptations only: the episode's support and
                                          query images after adapting to its support set

``submission.json`` fields: ``schema_version``, ``entry`` (the folder name),
``method``, ``description``, ``authors`` (list), ``paper`` and ``code`` (http(s)
URL or null), ``protocol`` (``per-level`` or ``zero-shot``), ``adaptations``
(few-shot adaptations whose episodes are scored: ``prototypes`` needs no extra
file), ``fewshot`` (``{"shots": [...], "episodes": N}``: the first N episodes of
the manifest), ``training_data`` (a declaration), ``baseline`` (bool),
``dataset``, ``split_version``, ``split_digest``, ``model_digests`` (level ->
digest), ``embedding_dim``, ``oodml_version``, ``date``, ``seeds`` (how the
submitted run compares with the other seeds), ``claimed`` (numbers the verifier
must reproduce), ``files`` (path -> ``{"sha256", "bytes"}``) and, from schema
version 2 on, ``pretraining``: the model's declared pretraining data
(``imagenet-1k``, a library's tag such as ``a1_in1k`` or ``laion2b_s34b_b79k``,
``none`` for a model trained from scratch, or empty when not declared), from
which the board counts each level's test classes seen in pretraining
(:func:`oodml.splits.overlap.pretraining_overlap`).  Version 1 entries (without
it) stay valid and show as not declared.  An entry of any version may carry
``protocol_card``, the card ``oodml evaluate`` wrote in ``summary.json``
(:func:`oodml.protocol.protocol_card`: metrics version, split facts, the
retrieval rule, preprocessing); the verifier refuses one that differs from
what it states for the entry (:func:`oodml.protocol.card_problems`), and the
board shows it.  Entries without one stay valid.

Everything here reads untrusted input: every problem is reported as one line,
nothing is executed, and no path outside the entry folder is ever opened.  The
free text (method, description, authors, training data) is bounded in length
and holds no control characters, and the links are plain http(s) URLs, because
the board shows them to readers; the board escapes them again when it renders.
Every claimed number is a finite fraction in [0, 1] and every count a small
integer, so no value can overflow or reach the comparison as anything else.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .._fs import file_digest
from ..adapt import ADAPTATIONS, FINETUNED
from ..errors import brief
from ..models import identity
from ..protocol import PROTOCOLS, embedding_file_name, parse_embedding_file_name

SCHEMA_VERSION = 2
MAX_JSON_BYTES = 1 << 20
MAX_FILE_BYTES = 16 << 20
MAX_ENTRY_BYTES = 64 << 20
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
#: longest free text per field, in characters
MAX_TEXT = {"method": 100, "pretraining": 100, "description": 2000, "training_data": 500, "author": 200, "url": 500,
            "run": 200}
MAX_AUTHORS = 50
MAX_SEEDS = 100
_NONE = types.NoneType
FIELDS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "entry": (str,), "method": (str,), "description": (str,), "authors": (list,),
    "paper": (str, _NONE), "code": (str, _NONE), "protocol": (str,), "adaptations": (list,), "fewshot": (dict,),
    "training_data": (str,), "baseline": (bool,), "dataset": (str,), "split_version": (str,),
    "split_digest": (str,), "model_digests": (dict,), "embedding_dim": (int,), "oodml_version": (str,),
    "date": (str,), "seeds": (dict,), "claimed": (dict,), "files": (dict,), "pretraining": (str,),
    "protocol_card": (dict,),
}
#: fields an entry may leave out: ``protocol_card`` (what the results measure, :func:`oodml.protocol.protocol_card`;
#: entries made before it have none, and the verifier checks it against the published split set when present)
OPTIONAL = {"protocol_card"}
#: fields added after schema version 1 -> the version that introduced them (absent from older entries)
SINCE = {"pretraining": 2}
#: what ``pretraining`` holds for a model trained from scratch (empty: not declared); one value with
#: :func:`oodml.models.identity.entry_pretraining`, which derives an entry's declaration from what ran
NO_PRETRAINING = identity.NO_PRETRAINING
#: what ``oodml leaderboard submit`` appends to ``training_data`` for a model spec (or a checkpoint trained on one)
_DECLARATION = re.compile(r"(?P<spec>[^\s;()]+) \(pretraining declared by [^:()]{1,80}: (?P<data>[^()]{1,100})\)")
#: a model spec named in free text, with its options
_SPEC_IN_TEXT = re.compile(r"(?<![\w:])(?:timm|open_clip|hf|torchhub):[^\s;()]+")
# control characters, bidirectional overrides (they reorder what a reader sees) and lone surrogates (they
# cannot be written as UTF-8)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LEVEL_KEY = re.compile(r"0|[1-9][0-9]{0,2}")
_SHOT_KEY = re.compile(r"[1-9][0-9]{0,2}-shot")
_METRIC_KEY = re.compile(r"[a-z0-9@_-]{1,32}")
#: the shape of ``claimed``: top-level key -> the pattern of the keys at each depth below it; leaves are numbers
CLAIM_SHAPES = {"levels": (_LEVEL_KEY, _METRIC_KEY), "fewshot": (_SHOT_KEY, _METRIC_KEY, _LEVEL_KEY)}


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


def one_line(text: str) -> str:
    """``text`` with control and bidirectional-override characters and runs of whitespace made single spaces."""
    return " ".join(_UNPRINTABLE.sub(" ", text).split())


def is_fraction(value: object) -> bool:
    """True for a JSON number (not a bool) in [0, 1]; NaN, infinities and huge integers are not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def is_small_int(value: object, low: int, high: int) -> bool:
    """True for an int (not a bool) in ``low..high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_web_url(value: object) -> bool:
    """True for an absolute ``http://`` or ``https://`` URL with a host, no user part and nothing to escape.

    Anything else (``javascript:``, ``data:``, relative links, quotes, angle
    brackets, spaces, backslashes, control characters) is refused: the board
    turns these into links.
    """
    if not isinstance(value, str) or len(value) > MAX_TEXT["url"] or _UNPRINTABLE.search(value) or \
            any(c in value for c in " \"'<>`\\"):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and value.startswith(f"{parts.scheme}://") and \
        bool(parts.hostname) and "@" not in parts.netloc


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


# Field checks: each takes the field's name and a value of its declared type, and returns a one-line problem
# (naming the field, what it must be and what it holds) or None.

def _text_problem(name: str, value: str, limit: int, *, required: bool = False) -> str | None:
    if required and not value.strip():
        return f"{name} is empty; give it a value"
    if len(value) > limit:
        return f"{name} is {len(value)} characters long; shorten it to at most {limit}"
    bad = _UNPRINTABLE.search(value)
    if bad:
        return f"{name} holds the control character U+{ord(bad.group()):04X}; use one line of plain text"
    return None


def _text(limit: int, *, required: bool = False) -> Callable[[str, str], str | None]:
    return lambda name, value: _text_problem(name, value, limit, required=required)


def _name(name: str, value: str) -> str | None:
    if NAME_RE.fullmatch(value):
        return None
    return f"{name} {brief(value)} must be letters, digits, '.', '_', '+' or '-' (at most 64, starting with a " \
           "letter or digit)"


def _url(name: str, value: str | None) -> str | None:
    if value is None or is_web_url(value):
        return None
    return f"{name} {brief(value)} is not an http(s) URL; give a link such as https://arxiv.org/abs/... or null"


def _authors(name: str, value: list) -> str | None:
    if len(value) > MAX_AUTHORS:
        return f"{name}: {len(value)} names, more than the {MAX_AUTHORS} allowed; name a group instead"
    for author in value:
        if not isinstance(author, str):
            return f"{name} must be a list of names (strings), not hold {brief(author)}"
        problem = _text_problem(f"{name} entry {brief(author)}", author, MAX_TEXT["author"], required=True)
        if problem:
            return problem
    return None


def _protocol(name: str, value: str) -> str | None:
    return None if value in PROTOCOLS else f"{name} {brief(value)} is not one of {', '.join(PROTOCOLS)}"


def _adaptations(name: str, value: list) -> str | None:
    bad = [a for a in value if a not in ADAPTATIONS]
    if bad:
        return f"unknown adaptation {brief(bad[0])}; use {', '.join(ADAPTATIONS)}"
    if len(set(value)) != len(value):
        return f"{name} {brief(value)} names an adaptation twice; list each once"
    return None


def _fewshot(name: str, value: dict) -> str | None:
    shots, episodes = value.get("shots"), value.get("episodes")
    if set(value) == {"shots", "episodes"} and isinstance(shots, list) and len(shots) <= 20 and \
            all(is_small_int(k, 1, 999) for k in shots) and len(set(shots)) == len(shots) and \
            is_small_int(episodes, 0, 9999):
        return None
    return f'{name} must be {{"shots": [distinct ints 1..999], "episodes": int 0..9999}}, not {brief(value)}'


def _hex64(name: str, value: str) -> str | None:
    return None if _HEX64.fullmatch(value) else f"{name} must be 64 hex digits (a sha256), not {brief(value)}"


def _model_digests(name: str, value: dict) -> str | None:
    for level, digest in value.items():
        if not _LEVEL_KEY.fullmatch(level) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            return f"{name} must map levels (\"1\", \"2\", ...) to 64-hex-digit digests, not hold " \
                   f"{brief(level)}: {brief(digest)}"
    return None


def _embedding_dim(name: str, value: int) -> str | None:
    return None if 1 <= value <= 4096 else f"{name} {brief(value)} is outside 1..4096"


def _date(name: str, value: str) -> str | None:
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        try:
            dt.date.fromisoformat(value)
            return None
        except ValueError:
            pass
    return f"{name} {brief(value)} is not a date; write it as YYYY-MM-DD"


def _seeds(name: str, value: dict) -> str | None:
    runs, means, sd = value.get("runs"), value.get("mean_recall@1"), value.get("sd_mean_recall@1")
    form = (f'{name} must be {{"runs": [names], "submitted": the first run, "mean_recall@1": [one number in '
            f'[0, 1] per run], "sd_mean_recall@1": number in [0, 1] or null}}, not {brief(value)}')
    if set(value) != {"runs", "submitted", "mean_recall@1", "sd_mean_recall@1"} or \
            not isinstance(runs, list) or not 1 <= len(runs) <= MAX_SEEDS or \
            not all(isinstance(r, str) and not _text_problem("run", r, MAX_TEXT["run"]) for r in runs) or \
            value["submitted"] != runs[0] or not isinstance(means, list) or len(means) != len(runs) or \
            not all(map(is_fraction, means)) or not (sd is None or is_fraction(sd)):
        return form
    return None


def claim_problem(node: object, keys: tuple[re.Pattern, ...], where: str) -> str | None:
    """The first problem in the claims under ``where``: a key not matching its depth's pattern, a level of the
    tree that is not an object, or a leaf that is not a number in [0, 1]."""
    if not keys:
        return None if is_fraction(node) else f"claimed {where} = {brief(node)} must be a number in [0, 1]"
    if not isinstance(node, dict):
        return f"claimed {where} must be an object, not {brief(node)}"
    for key, value in node.items():
        if not keys[0].fullmatch(key):
            return f"claimed {where}: key {brief(key)} must match {keys[0].pattern}"
        problem = claim_problem(value, keys[1:], f"{where}/{key}")
        if problem:
            return problem
    return None


def _claimed(name: str, value: dict) -> str | None:
    for top, subtree in value.items():
        if top not in CLAIM_SHAPES:
            return f"{name}: key {brief(top)} must be one of {', '.join(CLAIM_SHAPES)}"
        problem = claim_problem(subtree, CLAIM_SHAPES[top], top)
        if problem:
            return problem
    return None


#: the value check of each field (``files`` is checked against the folder by :func:`read_submission`)
FIELD_CHECKS: dict[str, Callable[[str, object], str | None]] = {
    "entry": _name, "method": _text(MAX_TEXT["method"], required=True), "description": _text(MAX_TEXT["description"]),
    "authors": _authors, "paper": _url, "code": _url, "protocol": _protocol, "adaptations": _adaptations,
    "fewshot": _fewshot, "training_data": _text(MAX_TEXT["training_data"]), "dataset": _name,
    "split_version": _name, "split_digest": _hex64, "model_digests": _model_digests,
    "embedding_dim": _embedding_dim, "oodml_version": _name, "date": _date, "seeds": _seeds, "claimed": _claimed,
    "pretraining": _text(MAX_TEXT["pretraining"]),
}


def pretraining_problems(meta: dict) -> list[str]:
    """Where an entry's ``pretraining`` contradicts its own ``training_data``: a model declaration that
    ``submit`` wrote there (``timm:x (pretraining declared by timm 1.0: a1_in1k)``; ``random weights`` means
    ``none``) names other data, or ``none`` is declared for a pretrained model spec named there (one without
    ``pretrained=false`` or its own ``checkpoint_path``).  One line each; none for a schema 1 entry."""
    if "pretraining" not in meta:
        return []
    given, text = declared_pretraining(meta), meta["training_data"]
    problems = []
    for match in _DECLARATION.finditer(text):
        data = match.group("data").strip()
        expected = NO_PRETRAINING if data == "random weights" else None if data == "not declared" else data
        if expected is not None and given != expected:
            problems.append(f"pretraining {given!r} contradicts training_data, which declares {expected!r} for "
                            f"{brief(match.group('spec'), 120)}; set pretraining to {expected!r}")
    if given == NO_PRETRAINING and not problems:
        problems += [f"pretraining 'none' contradicts training_data, which names the pretrained model "
                     f"{brief(spec, 120)}; declare its pretraining data (e.g. imagenet-1k, a library's tag)"
                     for spec in _SPEC_IN_TEXT.findall(text)
                     if "pretrained=false" not in spec.lower() and "checkpoint_path=" not in spec]
    return problems


def declared_pretraining(meta: dict) -> str:
    """An entry's declared pretraining data: ``none``, a declaration, or ``""`` (not declared; schema 1)."""
    return meta.get("pretraining", "").strip()


def schema_problems(meta: object) -> list[str]:
    """Everything wrong with a parsed ``submission.json`` on its own (no file is opened), one line each.

    Checks the schema version, that every field is present with its type, and
    each field's value (:data:`FIELD_CHECKS`).  An empty list means the
    document is well formed; its files are checked by :func:`read_submission`.
    """
    if not isinstance(meta, dict):
        return ["must hold a JSON object"]
    version = meta.get("schema_version")
    if not is_small_int(version, 1, 1 << 31):
        return [f"schema_version must be a positive integer, not {brief(version)}"]
    if version > SCHEMA_VERSION:
        return [f"schema version {version} is newer than this oodml reads ({SCHEMA_VERSION}); upgrade oodml"]
    fields = {name: types_ for name, types_ in FIELDS.items() if version >= SINCE.get(name, 1)}
    problems = [f"field {name!r} is missing" for name in fields if name not in meta and name not in OPTIONAL]
    problems += [f"unknown field {brief(name)}" + (f" (schema version {version} has none; it came with version "
                                                   f"{SINCE[name]})" if name in SINCE else "")
                 for name in meta if name not in fields]
    for name, types_ in fields.items():
        value = meta.get(name)
        if name in meta and (not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_)):
            problems.append(f"field {name!r} must be {' or '.join(t.__name__ for t in types_)}, "
                            f"not {type(value).__name__}")
    if problems:
        return problems
    problems = [p for name, check in FIELD_CHECKS.items() if name in fields and (p := check(name, meta[name]))]
    problems += pretraining_problems(meta) if not problems else []
    fewshot = meta["fewshot"]
    if meta["adaptations"] and not (fewshot.get("shots") and fewshot.get("episodes")):
        problems.append("adaptations are declared but fewshot names no shots or episodes")
    return problems


def _read_json(spec: Path) -> tuple[object, str | None]:
    """The parsed ``submission.json`` and None, or None and the one-line problem with it."""
    try:
        size = spec.stat().st_size
        if size > MAX_JSON_BYTES:
            return None, f"{spec}: {size} bytes, more than the {MAX_JSON_BYTES} allowed"
        return json.loads(spec.read_text(encoding="utf-8")), None
    except OSError as exc:
        return None, f"{spec}: cannot be read ({exc.strerror or exc})"
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"{spec}: not valid JSON ({brief(str(exc))})"
    except RecursionError:
        return None, f"{spec}: not valid JSON (nested too deeply)"


def read_submission(path: Path) -> tuple[Submission | None, list[str]]:
    """Check an entry folder's structure; return it (None if unusable) and its problems, one line each.

    Checks ``submission.json`` (size, JSON, :func:`schema_problems`), that the
    folder matches the declared dataset, split version and entry name, and that
    the files are exactly those listed (allowed names only, regular files inside
    the folder, no links, within the size limits, matching sha256).  Content
    (ids, values, numbers) is checked by :func:`oodml.leaderboard.verify`.
    """
    path = Path(path)
    spec = path / "submission.json"
    if not path.is_dir() or path.is_symlink():
        return None, [f"{path}: not a submission folder"]
    if not spec.is_file() or spec.is_symlink():
        return None, [f"{path}: submission.json is missing"]
    meta, problem = _read_json(spec)
    if problem:
        return None, [problem]
    problems = [f"{spec}: {p}" for p in schema_problems(meta)]
    if problems:
        return None, problems
    declared = (meta["dataset"], meta["split_version"], meta["entry"])
    actual = (path.parent.parent.name, path.parent.name, path.name)
    if declared != actual:
        problems.append(f"{spec}: declares {'/'.join(declared)} but lives in {'/'.join(actual)}")
    problems += _check_files(meta["files"], path)
    return (Submission(path, meta) if not problems else None), problems


def _check_files(listed: dict, path: Path) -> list[str]:
    """Problems with the listed files' names, links, sizes and hashes, and with unlisted files."""
    problems, total = [], 0
    for name, record in sorted(listed.items()):
        problem, size = _file_problem(path, name, record, total)
        total += size
        problems += [problem] if problem else []
    if total > MAX_ENTRY_BYTES:
        problems.append(f"{path}: {total} bytes in all, more than the {MAX_ENTRY_BYTES} allowed per entry")
    return problems + _unlisted_files(listed, path)


def _record_problem(path: Path, name: object, record: object) -> str | None:
    """The problem with one ``files`` item's name (one evaluate writes) or record (sha256 and bytes), or None."""
    if parse_file_name(name) is None:
        return (f"{path}: file name {brief(name)} is not allowed (embeddings/level<L>.parquet or "
                "embeddings/level<L>-<k>shot-episode<E>-<adaptation>.parquet)")
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or \
            not is_small_int(record.get("bytes"), 0, MAX_ENTRY_BYTES):
        return f"{path}: files[{name!r}] must be {{\"sha256\": hex, \"bytes\": int >= 0}}"
    return None


def _file_problem(path: Path, name: str, record: object, total: int) -> tuple[str | None, int]:
    """One listed file checked: ``(its problem or None, its size in bytes counted towards the entry's)``.

    ``total`` is the bytes of the files checked before it: once the entry is over its limit no more files
    are hashed (the limit is reported once, by the caller)."""
    problem = _record_problem(path, name, record)
    if problem:
        return problem, 0
    file = path / name
    if file.is_symlink() or file.parent.is_symlink():
        return f"{file}: a link; submissions hold regular files only", 0
    if not file.is_file():
        return f"{file}: listed but missing", 0
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        return f"{file}: {size} bytes, more than the {MAX_FILE_BYTES} allowed per file", size
    if total + size > MAX_ENTRY_BYTES:
        return None, size                     # reported by the caller; hashing more would only cost time
    if size != record["bytes"] or file_digest(file) != record["sha256"]:
        return f"{file}: content does not match the sha256 in submission.json", size
    return None, size


def _unlisted_files(listed: dict, path: Path) -> list[str]:
    """A problem for every file in the entry's folder that ``submission.json`` does not list."""
    return [f"{found}: not listed in submission.json (remove it)"
            for found in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
            if (rel := found.relative_to(path).as_posix()) != "submission.json" and rel not in listed]


def file_record(path: Path) -> dict:
    return {"sha256": file_digest(path), "bytes": path.stat().st_size}
