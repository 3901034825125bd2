"""The model-spec grammar, without torch: ``SOURCE:REFERENCE[?key=value,...]`` read into a :class:`ModelSpec`.

Which sources exist, and what options each takes, is :data:`oodml.models.sources.SOURCES`'s (the registry);
this module reads and checks the text only, and says which specs a checkpoint may never name
(:func:`checkpoint_spec_problem`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import OodmlError
from .base import SOURCES, Source

COMMON_OPTIONS = ("pretrained", "seed")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec.

    Attributes:
        source: a registered source (:data:`SOURCES`) (``timm``, ``open_clip``, ``hf``, ``torchhub``).
        name: what the library calls the model (``resnet18``, ``ViT-B-32``, ``facebook/dinov2-small``,
            ``facebookresearch/dinov2:dinov2_vits14``).
        revision: the open_clip pretrained tag, the hub revision or the torch hub ref; None for the default.
        options: ``key -> value`` (bool, int, float or str), in the order given.
    """

    source: str
    name: str
    revision: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def pretrained(self) -> bool:
        return self.options.get("pretrained", True)

    @property
    def seed(self) -> int:
        return self.options.get("seed", 0)

    def text(self) -> str:
        """The canonical spec text: what results, manifests and leaderboard entries record."""
        separator = {"open_clip": "/", "hf": "@"}.get(self.source, "@")
        ref = self.name
        if self.revision is not None:
            if self.source == "torchhub":
                repo, entry = self.name.rsplit(":", 1)
                ref = f"{repo}@{self.revision}:{entry}"
            else:
                ref = f"{self.name}{separator}{self.revision}"
        options = ",".join(f"{k}={_option_text(v)}" for k, v in self.options.items())
        return f"{self.source}:{ref}" + (f"?{options}" if options else "")



_SPEC = re.compile(r"(?P<source>[a-z_]+):(?P<ref>[^?]*)(?:\?(?P<options>.*))?", re.S)
#: a GitHub repository (torch hub) or a Hugging Face hub id: ``owner/name`` (hf also takes a bare ``name``)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def is_local_reference(ref: str) -> bool:
    """Whether a spec's reference names a local folder: it starts with ``./``, ``../``, ``/`` or ``~`` (or is
    ``.`` or ``..``).  Any other reference is a hub id, even when a folder of that name exists in the current
    directory: oodml reads a folder, or runs the code in it, only when the spec says so."""
    return ref in (".", "..") or ref.startswith(_LOCAL_PREFIXES)


def is_spec(text: str | Path) -> bool:
    """Whether ``text`` is written as a spec (``SOURCE:...`` with a known source), not a name or a file; an empty
    reference (``timm:``) counts, so that :func:`parse_spec` says what is missing."""
    m = _SPEC.fullmatch(str(text))
    return m is not None and m.group("source") in SOURCES


def parse_spec(text: str) -> ModelSpec:
    """Read ``SOURCE:REFERENCE[?key=value,...]``.

    Raises:
        OodmlError: unknown source, empty or malformed reference, or an option the source does not take.
    """
    m = _SPEC.fullmatch(text.strip())
    if m is None or m.group("source") not in SOURCES:
        prefix = text.split(":", 1)[0] if ":" in text else text
        raise OodmlError(f"model spec {text!r}: unknown source {prefix!r}; write one of "
                         f"{', '.join(s.grammar for s in map(SOURCES.__getitem__, SOURCES))}")
    source = SOURCES[m.group("source")]
    options = _parse_options(text, m.group("options"), source)
    ref, revision = m.group("ref").strip(), None
    if source.name == "open_clip":
        ref, _, tag = ref.partition("/")
        revision = tag or None
        if revision is None and options.get("pretrained", True):
            raise OodmlError(f"model spec {text!r}: name the pretrained weights, {source.grammar} (see "
                             "open_clip.list_pretrained()), or add ?pretrained=false for random weights")
    elif source.name == "hf":
        if "@" in ref and not is_local_reference(ref):
            ref, revision = ref.rsplit("@", 1)
        _check_hub_id(text, ref, "hf:./FOLDER", bare_name=True)
    elif source.name == "torchhub":
        repo, sep, entry = ref.rpartition(":")
        if not sep or not repo or not entry:
            raise OodmlError(f"model spec {text!r}: write {source.grammar}, e.g. "
                             "torchhub:facebookresearch/dinov2:dinov2_vits14")
        if "@" in repo and not is_local_reference(repo):
            repo, revision = repo.rsplit("@", 1)
        _check_hub_id(text, repo, f"torchhub:./FOLDER:{entry}", bare_name=False)
        ref = f"{repo}:{entry}"
    if not ref or revision == "":
        raise OodmlError(f"model spec {text!r}: empty name; write {source.grammar}")
    return ModelSpec(source.name, ref, revision, options)


def _check_hub_id(text: str, ref: str, local_form: str, *, bare_name: bool) -> None:
    """Refuse a reference that is neither a local path (:func:`is_local_reference`) nor a hub id."""
    if not ref or is_local_reference(ref) or _HUB_ID.fullmatch(ref):
        return
    if bare_name and "/" not in ref and _HUB_ID.fullmatch(f"x/{ref}"):
        return
    raise OodmlError(f"model spec {text!r}: {ref!r} is not a hub id (OWNER/NAME); for a local folder start the "
                     f"path with ./, ../, / or ~, as in {local_form}")


def _parse_options(text: str, raw: str | None, source: Source) -> dict:
    options: dict = {}
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OodmlError(f"model spec {text!r}: option {item!r} must be written key=value "
                             "(e.g. ?pretrained=false,seed=1)")
        allowed = (*COMMON_OPTIONS, *(source.options or ()))
        if source.options is not None and key not in allowed:
            raise OodmlError(f"model spec {text!r}: {source.name} takes no option {key!r}; its options are "
                             f"{', '.join(allowed)}")
        options[key] = option_value(value.strip())
    if not isinstance(options.get("pretrained", True), bool):
        raise OodmlError(f"model spec {text!r}: pretrained must be true or false")
    seed = options.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise OodmlError(f"model spec {text!r}: seed must be a whole number from 0 to 2**63 - 1")
    if "size" in options and not (isinstance(options["size"], int) and 1 <= options["size"] <= 4096):
        raise OodmlError(f"model spec {text!r}: size must be a whole number of pixels from 1 to 4096")
    return options


def option_value(text: str) -> bool | int | float | str:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _option_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def checkpoint_spec_problem(spec: ModelSpec) -> str | None:
    """Why a checkpoint may not name ``spec`` as its architecture, else None.

    Loading a checkpoint must run no code and read nothing but the file and library caches, so it names a torch
    hub repository (code: its hubconf.py) or a local folder (whatever lies at that path wherever it is loaded)
    never; training on them is refused too, since it would write such checkpoints.
    """
    if spec.source == "torchhub":
        return "a torch hub repository is code (its hubconf.py) that loading a checkpoint naming it would run"
    if is_local_reference(spec.name) or spec.name.startswith("local-dir:"):  # timm's and open_clip's folder form
        return f"{spec.name} is a local folder, read wherever a checkpoint naming it is loaded"
    return None


def declared_training_on(pretraining: str | None, dataset: str) -> bool:
    """Whether a pretraining declaration names ``dataset`` (``cub200`` matches ``cub`` and ``cub200``)."""
    if not pretraining:
        return False
    tokens = set(re.split(r"[^a-z0-9]+", pretraining.lower()))
    name = dataset.lower()
    return name in tokens or re.sub(r"[0-9]+$", "", name) in tokens - {""}
