import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting for work (the default) cost several-fold on a shared 2-core machine
# (tools/bench_metrics.py measured 2.5x on the kNN); set before torch is imported, inherited by subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _threads_per_worker() -> int | None:
    """Cores per pytest-xdist worker (at least 1); None outside xdist.  `make test` runs one worker per core,
    so a worker's second BLAS/OpenMP/torch thread only competes with the other worker for its core."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers) if workers else None


# Read by numpy's BLAS and torch when first imported, which is after this (tests that compare thread counts set
# them explicitly); inherited by the CLI subprocesses the tests start.  An explicit setting wins.
if (_threads := _threads_per_worker()) is not None:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_threads))
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
    prototypes and finetune-last (one episode); returns its folder, ``<base>/leaderboard/submissions/glyphs/v1/
    tiny``, beside the evaluation it was made from (``<base>/results``).

    Built once per test run (about a minute), shared read-only by every test and every xdist worker: tests that
    change an entry change a copy.  Matched at the default N in ``fixtures.ENTRY_MATCH_DRAWS`` draws."""
    with shared_once(tmp_path_factory, "board") as (base, built):
        if not built:
            _submit_tiny_entry(glyphs, base)
    return base / "leaderboard" / "submissions" / "glyphs" / "v1" / "tiny"


def _submit_tiny_entry(glyphs, base: Path) -> None:
    from fixtures import ENTRY_MATCH_DRAWS

    from oodml.evaluation import evaluate
    from oodml.leaderboard import EntryInfo, submit
    from oodml.models import load_model

    results = evaluate(load_model("glyph-cnn", embed_dim=8, seed=1), glyphs, "v1", fewshot=(2,), episodes=1,
                       adapt=["prototypes", "finetune-last"], adapt_iterations=2, clustering=False, device="cpu",
                       save_embeddings=True, match_draws=ENTRY_MATCH_DRAWS)
    results.save(base / "results")
    submit([base / "results"], EntryInfo("tiny", description="untrained 8-d CNN", authors=["tests"],
                                         training_data="none"), root=base / "leaderboard")


@contextlib.contextmanager
def shared_once(tmp_path_factory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder ``name`` shared by every xdist worker of this run (made under the run's common temporary
    folder; one's own under a run without workers), held under an exclusive lock: yields (folder, whether a
    worker already filled it).  A worker that fails while filling it leaves it unfilled for the next to retry
    (see pytest-xdist's "Making session-scoped fixtures execute only once")."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
        yield folder, done.exists()
        done.touch()


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1 (tests/local_server.py), started for the test and stopped after it."""
    from local_server import serving

    with serving() as s:
        yield s


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: thousands of calls on small batches, where a second thread only
    adds synchronisation (8x slower here).  Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
