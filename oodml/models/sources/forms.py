"""The forms a model spec takes (``timm:NAME``, ``hf:ORG/NAME``, ...), as a plain table without torch.

:data:`oodml.models.sources.SOURCES` registers each form, its loader deferred to the library's own module;
``oodml models list`` prints the table from here and so starts without importing torch.
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple


class SpecForm(NamedTuple):
    """One library model specs can name.

    Attributes:
        name: the spec prefix (``timm`` in ``timm:resnet18``).
        grammar: the reference's form, for messages and ``oodml models list``.
        library: the module to import; ``extra``: the oodml extra that installs it.
        description: one line on what is built.
    """

    name: str
    grammar: str
    library: str
    extra: str
    description: str


SPEC_FORMS: dict[str, SpecForm] = {form.name: form for form in (
    SpecForm("timm", "timm:NAME", "timm", "timm", "timm.create_model(NAME, num_classes=0): pooled features"),
    SpecForm("open_clip", "open_clip:ARCH/PRETRAINED", "open_clip", "clip",
             "the image tower of open_clip.create_model_and_transforms(ARCH, PRETRAINED)"),
    SpecForm("hf", "hf:ORG/NAME[@REVISION]", "transformers", "hf",
             "transformers AutoModel + AutoImageProcessor; ?pool=cls|mean"),
    SpecForm("torchhub", "torchhub:REPO:ENTRY", "torch", "all",
             "torch.hub.load(REPO, ENTRY); REPO is owner/name[@ref], or ./FOLDER (./, ../, / or ~) "
             "holding a hubconf.py; GitHub code runs only with your agreement (--trust-repo)"),
)}


def describe_sources() -> list[tuple[str, str, str]]:
    """``(grammar, description, install state)`` per spec form, for ``oodml models list``; whether a library is
    installed is looked up without importing it."""
    rows = []
    for form in SPEC_FORMS.values():
        installed = importlib.util.find_spec(form.library) is not None
        state = "installed" if installed else f"pip install 'oodml[{form.extra}]'"
        rows.append((form.grammar, form.description, state))
    return rows
