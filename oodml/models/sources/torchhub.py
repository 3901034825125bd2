"""``torchhub:REPO:ENTRY``: ``torch.hub.load(REPO, ENTRY)``; REPO is ``owner/name[@ref]`` on GitHub, whose
hubconf.py runs only with the user's agreement, or a local folder named as a path (``torchhub:./FOLDER:ENTRY``)."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import torch

from ...errors import OodmlError
from ...preprocessing import IMAGENET, Preprocessing
from .base import Source
from .failures import build_error, fetch_error, offline
from .forms import SPEC_FORMS
from .spec import ModelSpec, is_local_reference

#: pretraining data of well-known torch hub repositories, which torch.hub itself does not record
HUB_PRETRAINING = {"facebookresearch/dinov2": "lvd142m", "facebookresearch/dino": "imagenet-1k (self-supervised)"}
#: their test-time preprocessing, for repositories whose models carry none
HUB_PREPROCESSING = {"facebookresearch/dinov2": Preprocessing(interpolation="bicubic")}


#: the environment variable that agrees beforehand to run the code of the torch hub repositories a spec names
TRUST_REPO_ENV = "OODML_TRUST_REPO"


def trust_repo_given() -> bool:
    """Whether the user agreed beforehand to run torch hub repositories' code: ``OODML_TRUST_REPO`` is 1, true
    or yes (``oodml --trust-repo`` sets it)."""
    return os.environ.get(TRUST_REPO_ENV, "").strip().lower() in ("1", "true", "yes")


def _build_torchhub(spec: ModelSpec, _torch) -> tuple[torch.nn.Module, Preprocessing, str | None]:
    repo, entry = spec.name.rsplit(":", 1)
    kwargs = {"pretrained": spec.pretrained}
    try:
        if is_local_reference(repo):
            local = Path(repo).expanduser()
            if not (local / "hubconf.py").is_file():
                raise OodmlError(f"{spec.text()}: no hubconf.py in {local}; name a folder holding one")
            model = torch.hub.load(str(local), entry, source="local", **kwargs)
        else:
            model = _load_hub_repo(spec, repo, entry, kwargs)
    except OodmlError:
        raise
    except Exception as exc:
        if offline(exc):
            raise fetch_error(spec, exc, f"{repo} from GitHub and its weights",
                               f"python -c \"import torch; torch.hub.load('{repo}', '{entry}')\"") from None
        raise build_error(spec, exc) from None
    if not isinstance(model, torch.nn.Module):
        raise OodmlError(f"{spec.text()}: entry {entry!r} returned {type(model).__name__}, not a torch.nn.Module; "
                         "name an entry of the repository's hubconf.py that returns a model")
    carried = getattr(model, "preprocessing", None)
    if isinstance(carried, dict):
        carried = Preprocessing.from_dict(carried)
    if not isinstance(carried, Preprocessing):
        carried = HUB_PREPROCESSING.get(repo)
        if carried is None:
            warnings.warn(f"{spec.text()} declares no preprocessing; assuming ImageNet's (resize 256, crop 224)",
                          stacklevel=3)
            carried = IMAGENET
    return model, carried, HUB_PRETRAINING.get(repo)


def _load_hub_repo(spec: ModelSpec, repo: str, entry: str, kwargs: dict) -> object:
    """``torch.hub.load`` of a GitHub repository, once the user has agreed to run its hubconf.py.

    Agreement is given beforehand (:func:`trust_repo_given`: nothing is asked, and torch's trusted list is left
    as it is), or on a terminal by answering torch's own y/N question (``trust_repo="check"``: asked for a
    repository torch does not trust yet; on yes torch adds it to its trusted list, the user's own choice).
    Without either nothing is downloaded or run.  torch's check that the ref is not from a fork stays on.
    """
    ref = f"{repo}:{spec.revision}" if spec.revision else repo
    if trust_repo_given():
        with _trusted_without_listing():
            return torch.hub.load(ref, entry, source="github", trust_repo=True, skip_validation=False, **kwargs)
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise OodmlError(f"{spec.text()}: running {repo}'s hubconf.py needs your agreement and there is no terminal "
                         f"to ask on; if you trust {repo}, pass oodml --trust-repo or set {TRUST_REPO_ENV}=1")
    try:
        return torch.hub.load(ref, entry, source="github", trust_repo="check", skip_validation=False, **kwargs)
    except Exception as exc:
        if "Untrusted repository" in str(exc) or "Unrecognized response" in str(exc):
            raise OodmlError(f"{spec.text()}: {repo} not trusted, so nothing was downloaded or run; answer y to run "
                             f"its hubconf.py, or pass oodml --trust-repo") from None
        raise


@contextlib.contextmanager
def _trusted_without_listing():
    """torch.hub without its trust check: with ``trust_repo=True`` torch would add the repository to its trusted
    list, a record that only the user's own answer to its question should write.  (torch has no value of
    ``trust_repo`` that trusts without listing.)  Process-wide while it lasts."""
    hub = torch.hub
    check = getattr(hub, "_check_repo_is_trusted", None)
    if check is None:
        raise OodmlError(f"torch {torch.__version__} cannot be told to trust a repository without adding it to its "
                         "trusted list; run oodml on a terminal and answer torch's question instead")
    hub._check_repo_is_trusted = lambda *args, **kwargs: None
    try:
        yield
    finally:
        hub._check_repo_is_trusted = check


#: the ``torchhub`` source: no options besides pretrained and seed; never a checkpoint's or a training backbone
SOURCE = Source(*SPEC_FORMS["torchhub"], (), _build_torchhub)
