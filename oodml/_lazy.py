"""Names of a package that load their module on first use, so that importing the package stays cheap."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_attributes(package: str, table: dict[str, str], namespace: dict | None = None) -> Callable[[str], object]:
    """A module-level ``__getattr__`` (PEP 562) for ``package``.

    Args:
        package: the package's ``__name__``.
        table: public name -> the submodule defining it (relative to ``package``).
        namespace: the package's ``globals()``, to keep each name once looked up; None to look it up every time.

    Returns:
        ``__getattr__(name)``: the named object, imported from its submodule; AttributeError for other names.
    """

    def __getattr__(name: str) -> object:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f".{table[name]}", package), name)
        if namespace is not None:
            namespace[name] = value
        return value

    return __getattr__
