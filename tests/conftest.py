import os
import sys
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting for work (the default) cost several-fold on a shared 2-core machine
# (tools/bench_metrics.py measured 2.5x on the kNN); set before torch is imported, inherited by subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Never touch the network or the user's cache from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Weight downloads go to a closed local port: an online CI machine must not fetch 100 MB files.
os.environ.setdefault("OODML_WEIGHTS_URL", "http://127.0.0.1:9/")
os.environ["OODML_QUIET"] = "1"
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def oodml_home(tmp_path_factory):
    """A private $OODML_HOME (embedding caches) and $TORCH_HOME (weights) for the whole session, never the
    user's."""
    home = tmp_path_factory.mktemp("oodml_home")
    private = {"OODML_HOME": str(home), "TORCH_HOME": str(home / "torch")}
    old = {key: os.environ.get(key) for key in private}
    os.environ.update(private)
    yield home
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1 (tests/local_server.py), started for the test and stopped after it."""
    from local_server import serving

    with serving() as s:
        yield s
