import os
import sys
from pathlib import Path

import pytest

# Never touch the network or the user's cache from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["OODML_QUIET"] = "1"
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def oodml_home(tmp_path_factory):
    """A private $OODML_HOME for the whole session (the glyphs cache lives here)."""
    home = tmp_path_factory.mktemp("oodml_home")
    old = os.environ.get("OODML_HOME")
    os.environ["OODML_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("OODML_HOME", None)
    else:
        os.environ["OODML_HOME"] = old


@pytest.fixture(scope="session")
def glyphs():
    """The embedded dataset, generated once per test session."""
    from oodml.datasets import load_dataset

    return load_dataset("glyphs")
