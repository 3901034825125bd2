"""One registry for every named thing users pick: models, datasets, extractors, losses, distances,
augmentations, adaptations and search algorithms.

Modelled on timm's ``_registry.py``: a name maps to a factory (or a value) with a
one-line description; registering a name twice replaces the earlier entry with
a warning; an unknown name gets one error shape everywhere, with the closest
names suggested; the listing that ``oodml ... list`` and the docs print comes
from here.  Registries that take plugins name an entry-point group (for
example ``oodml.models``), loaded on the first lookup: the entry point's
object is registered under its name, unless importing it registered that
name already (a loader decorated with ``@register_dataset``).  A broken plugin
warns and is skipped instead of breaking oodml.
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Generic, TypeVar, overload

from .errors import OodmlError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered name: its value (usually a factory) and one line saying what it is."""

    name: str
    value: T
    description: str = ""


class Registry(Generic[T]):
    """Named values of one kind.

    Args:
        kind: what the names are, singular, for messages (``"loss"``, ``"dataset"``).
        entry_points: the entry-point group plugins register under, or None.

    A registry iterates over its names in sorted order, supports ``name in
    registry`` and ``registry[name]`` (an unknown name raises
    :class:`~oodml.errors.OodmlError` naming close matches), and, for tests,
    ``registry[name] = value`` and ``del registry[name]`` (so ``monkeypatch.setitem`` works).
    """

    def __init__(self, kind: str, *, entry_points: str | None = None):
        self.kind = kind
        self.group = entry_points
        self._entries: dict[str, Entry[T]] = {}
        self._deferred: dict[str, tuple[str, str]] = {}  # name -> ("module:attribute", description)
        self._plugins_loaded = entry_points is None

    def defer(self, name: str, target: str, *, description: str) -> None:
        """Register ``name`` as ``target`` (``"package.module:attribute"``) without importing it yet.

        Listing the names (:meth:`names`, :meth:`listing`, ``in``) shows it with ``description`` and imports
        nothing, so ``oodml models list`` does not wait for torch; the first lookup of any name imports the
        deferred modules (whose decorators may register the names themselves, as ``@register_model`` does).
        """
        self._deferred[name] = (target, description)

    def _load_deferred(self) -> None:
        deferred, self._deferred = self._deferred, {}
        for name, (target, description) in deferred.items():
            module, _, attribute = target.partition(":")
            loaded = import_module(module)
            if name not in self._entries:  # the module's own registration, if any, stands
                self.register(name, getattr(loaded, attribute), description=description)

    @overload
    def register(self, name: str, value: T, *, description: str = "") -> T: ...

    @overload
    def register(self, name: str, *, description: str = "") -> Callable[[T], T]: ...

    def register(self, name, value=None, *, description=""):
        """Register ``value`` under ``name``; without ``value``, a decorator that registers what it decorates.

        The description defaults to the value's ``description`` attribute, else
        the first line of its docstring.
        Registering a name twice replaces the earlier entry with a warning.
        """

        def add(obj: T) -> T:
            if not isinstance(name, str) or not name:
                raise OodmlError(f"a {self.kind} needs a non-empty string name, got {name!r}")
            if name in self._deferred:
                if getattr(obj, "__module__", None) == self._deferred[name][0].partition(":")[0]:
                    del self._deferred[name]  # the deferred module registering its own, as it loads
                else:  # the built-in first, so that this replaces it (with a warning)
                    self._load_deferred()
            if name in self._entries and self._entries[name].value is not obj:
                warnings.warn(f"{self.kind} {name!r} was already registered; replacing it", stacklevel=3)
            own = getattr(obj, "description", None)
            doc = description or (own if isinstance(own, str) else (obj.__doc__ or "").strip().split("\n")[0])
            self._entries[name] = Entry(name, obj, doc)
            return obj

        return add if value is None else add(value)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            try:
                value = ep.load()
            except Exception as exc:  # a broken plugin must not break oodml
                warnings.warn(f"could not load {self.kind} entry point {ep.name!r} ({ep.value}): {exc}",
                              stacklevel=2)
                continue
            # A plugin whose import registered the name itself (a decorated loader) keeps that entry.
            if ep.name not in self._entries:
                self.register(ep.name, value)

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name``.

        Raises:
            OodmlError: ``unknown <kind> 'x'; did you mean ...?`` (or the known names when none is close).
        """
        self._load_plugins()
        self._load_deferred()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise OodmlError(self.unknown(name)) from None

    def unknown(self, name: object, *, also: str = "") -> str:
        """The one-line message for a name that is not registered; ``also`` names other accepted forms."""
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5) if isinstance(name, str) else []
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(names)}"
        return f"unknown {self.kind} {name!r}; {hint}{also}"

    def __getitem__(self, name: str) -> T:
        return self.entry(name).value

    def get(self, name: str, default: T | None = None) -> T | None:
        """The value registered under ``name``, or ``default`` (as ``dict.get``)."""
        return self.entry(name).value if name in self else default

    def __setitem__(self, name: str, value: T) -> None:
        self.register(name, value)

    def __delitem__(self, name: str) -> None:
        self._load_deferred()
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return isinstance(name, str) and (name in self._entries or name in self._deferred)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted (deferred ones included, not imported)."""
        self._load_plugins()
        return sorted(n for n in {*self._entries, *self._deferred} if fnmatch.fnmatch(n, pattern))

    def listing(self, pattern: str = "*") -> list[tuple[str, str]]:
        """``(name, description)`` for every name matching ``pattern``, sorted: what ``list`` commands print."""
        return [(n, self._entries[n].description if n in self._entries else self._deferred[n][1])
                for n in self.names(pattern)]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries) + len(self._deferred)} entries)"
