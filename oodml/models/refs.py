"""What a model reference names: the one place where a text becomes a registered name, a model spec, a
per-level model or a file.

Every command and the API (``oodml evaluate MODEL``, ``train --arch``, ``make-splits --extractor``,
:func:`oodml.models.load_model`, :func:`oodml.models.create_model`, :func:`oodml.features.get_extractor`,
:func:`oodml.evaluate`) reads a reference with :func:`resolve_model_ref`, which tries these forms in this
order and takes the first that fits:

1. **model spec** ``SOURCE:REFERENCE[?options]`` with a registered source (``timm:``, ``open_clip:``, ``hf:``,
   ``torchhub:``; :mod:`oodml.models.sources`);
2. **registered name**, optionally with options ``NAME?key=value,...`` (``resnet50?pretrained=false``;
   ``oodml models list``);
3. **per-level template**: a text holding ``{level}`` (``runs/ms/level{level}.pt``), one checkpoint per level;
4. **per-level directory**: an existing directory, holding ``level<N>.pt``;
5. **file**: an existing file (an oodml checkpoint, TorchScript, ``.pt2``).

What the text says decides, never what the current directory happens to hold (the rule of issue 25 for
local folders): a file or directory named like a registered model (``./resnet50``) or like a spec
(``./timm:resnet18``) is reached by writing it as a path, starting with ``./`` or ``/``, which no name or spec
matches.  A :class:`~pathlib.Path` object is always a path (forms 3-5).  A registered name that is written
like a spec can never be reached, so :func:`oodml.models.register_model` refuses one.

Nothing here imports torch or loads anything; loading is the caller's (:func:`oodml.models.load_model`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OodmlError, brief
from ..registry import Registry

#: the forms a reference can take, in the order :func:`resolve_model_ref` tries them
PRECEDENCE = ("spec", "registered", "per-level", "file")
_PATH_CHARACTERS = "/\\."  # a text holding one of these that names nothing is reported as a missing file


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference.

    Attributes:
        kind: ``"spec"``, ``"registered"``, ``"per-level"`` (a ``{level}`` template or a directory) or ``"file"``.
        text: the reference as given (a :class:`~pathlib.Path` as its string).
        name: the registered name (``registered``), else None.
        options: the ``?key=value`` options of a registered name, values read as in specs, else empty.
        path: the file, the directory or the template (``file``, ``per-level``), else None.
    """

    kind: str
    text: str
    name: str | None = None
    options: dict = field(default_factory=dict)
    path: Path | None = None

    def describe(self) -> str:
        """What the reference names, in words: ``model spec``, ``registered model``, ``per-level model``,
        ``model file``."""
        return {"spec": "model spec", "registered": "registered model", "per-level": "per-level model",
                "file": "model file"}[self.kind]

    def level_path(self, level: int) -> Path:
        """Level ``level``'s checkpoint of a per-level reference: the template with the level number in place
        of ``{level}``, or ``DIR/level<N>.pt``.

        Raises:
            OodmlError: the reference is not per-level, or its template is malformed (:func:`expand_level_template`).
        """
        if self.kind != "per-level":
            raise OodmlError(f"{self.text!r} names a {self.describe()}, not one checkpoint per level")
        if "{level}" in self.text:
            return Path(expand_level_template(str(self.path), level))
        return self.path / f"level{level}.pt"

    def refuse_per_level(self, what: str) -> None:
        """Raise the one-line error of a per-level reference where ``what`` takes one model."""
        if self.kind == "per-level":
            example = self.level_path(1)
            raise OodmlError(f"{self.text} names one checkpoint per level, but {what} takes one model; name one "
                             f"of them, e.g. {example}")


def resolve_model_ref(ref: str | Path, *, registry: Registry | None = None, kind: str = "model") -> ModelRef:
    """Read a model reference, trying the forms in the order of :data:`PRECEDENCE` (see the module docstring).

    Args:
        ref: the reference; a :class:`~pathlib.Path` is always a path.
        registry: the names that count as registered (default the models, :data:`oodml.models.registry.MODELS`;
            :func:`oodml.features.get_extractor` passes the extractors).
        kind: what the caller calls the reference, for messages (``"model"``, ``"extractor"``).

    Returns:
        The :class:`ModelRef`; nothing is loaded or checked beyond the form (a spec is not parsed, so its own
        errors come from :func:`oodml.models.sources.parse_spec` when it is used).

    Raises:
        OodmlError: a registered name with malformed options; a template with a placeholder other than
            ``{level}``; a text that is none of the forms (an unknown name, with close matches, or a missing file).
    """
    from .sources import is_spec

    if registry is None:
        from .registry import MODELS as registry
    text = str(ref)
    if not text.strip():
        raise OodmlError(f"empty {kind} reference; name a registered {kind}, a model spec or a file")
    if not isinstance(ref, Path):
        if is_spec(text):
            return ModelRef("spec", text)
        name = text.partition("?")[0]
        if name and name in registry:
            from .registry import split_options

            return ModelRef("registered", text, name, split_options(text)[1])
    path = Path(text).expanduser()
    if "{level}" in text:
        expand_level_template(text, 1)  # a malformed template is refused before anything is loaded
        return ModelRef("per-level", text, path=path)
    if path.is_dir():
        return ModelRef("per-level", text, path=path)
    if path.exists():
        return ModelRef("file", text, path=path)
    raise OodmlError(_not_found(text, path, registry, kind, written_as_path=isinstance(ref, Path)))


def _not_found(text: str, path: Path, registry: Registry, kind: str, *, written_as_path: bool) -> str:
    """The one line for a reference that names nothing: a missing file when it looks like a path, else an
    unknown name with the close matches and the other forms."""
    if written_as_path or any(ch in text for ch in _PATH_CHARACTERS):
        return (f"{kind} file {path} does not exist (and {text!r} is not a registered {kind} or a model spec; see "
                "`oodml models list`)")
    return registry.unknown(text.partition("?")[0], also=", a model spec such as 'timm:resnet18' (see `oodml models "
                            "list`), or the path of a model file")


def expand_level_template(template: str, level: int) -> str:
    """``runs/ms/level{level}.pt`` with the level number in place of ``{level}``: the one placeholder a
    per-level model template may hold (``{{`` and ``}}`` write literal braces).

    Raises:
        OodmlError: another placeholder (``{seed}``, ``{}``, ``{level:02d}``, ``{level.real}``) or an unpaired
            brace, named in one line before anything is loaded.
    """
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError:  # a '{' or '}' without its pair
        problem = "a brace in it is unpaired"
    else:
        others = ["{" + name + ("!" + conversion if conversion else "") + (":" + spec if spec else "") + "}"
                  for name, spec, conversion in fields if (name, spec, conversion) != ("level", "", None)]
        problem = f"it holds {others[0]}" if others else None
    if problem is not None:
        raise OodmlError(f"per-level model template {brief(template, 200)}: {problem}; the only placeholder "
                         "allowed is {level} (the level number): write the rest of the path out, e.g. "
                         "'runs/seed0/level{level}.pt', and any literal brace as {{ or }}")
    return template.format(level=level)
