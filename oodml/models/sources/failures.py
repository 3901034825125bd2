"""The one-line errors every source gives for weights or code it cannot fetch, and for a model its library
cannot build."""

from __future__ import annotations

from ...errors import OodmlError, first_line
from .spec import ModelSpec


def fetch_error(spec: ModelSpec, exc: BaseException, what: str, how: str) -> OodmlError:
    """The one-line error for weights or code that could not be fetched (offline, or a wrong name)."""
    return OodmlError(f"{spec.text()}: cannot load {what} ({type(exc).__name__}: {first_line(exc)[:200]}); if this "
                      f"machine is offline, fetch it on one that is online with {how} and copy the cache over, "
                      "or add ?pretrained=false for random weights")


def offline(exc: BaseException) -> bool:
    """Whether a library's exception means that something could not be downloaded."""
    names = {type(e).__name__ for e in _chain(exc)}
    text = " ".join(str(e) for e in _chain(exc)).lower()
    return bool(names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "URLError",
                         "HTTPError", "ConnectError", "MaxRetryError", "gaierror", "RepositoryNotFoundError",
                         "EntryNotFoundError", "HfHubHTTPError"}) or any(
        phrase in text for phrase in ("offline", "connect", "internet", "cannot find the requested files",
                                      "couldn't connect", "name or service not known", "not found in cache"))


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def build_error(spec: ModelSpec, exc: BaseException) -> OodmlError:
    return OodmlError(f"{spec.text()}: the library cannot build it ({type(exc).__name__}: {first_line(exc)[:300]})")
