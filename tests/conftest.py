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
    """A private $OODML_HOME for the whole session (embedding caches live here), never the user's."""
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
    """The embedded dataset (shipped PNG bytes), loaded once per test session."""
    from oodml.datasets import load_dataset

    return load_dataset("glyphs")


@pytest.fixture(scope="session")
def leaderboard_entry(glyphs, tmp_path_factory):
    """A small real leaderboard entry: an untrained 8-d glyph-cnn on glyphs@v1, zero-shot, with 2-shot
    prototypes and finetune-last (one episode); returns its folder."""
    from oodml.evaluation import evaluate
    from oodml.leaderboard import submit
    from oodml.models import load_model

    base = tmp_path_factory.mktemp("board")
    results = evaluate(load_model("glyph-cnn", embed_dim=8, seed=1), glyphs, "v1", fewshot=(2,), episodes=1,
                       adapt=["prototypes", "finetune-last"], adapt_iterations=2, clustering=False, device="cpu",
                       save_embeddings=True)
    results.save(base / "results")
    return submit([base / "results"], name="tiny", description="untrained 8-d CNN", authors=["tests"],
                  training_data="none", root=base / "leaderboard")
