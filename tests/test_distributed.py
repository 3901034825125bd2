"""torch.distributed (gloo, 2 CPU processes): the embedding work is shared and the result equals one process's."""

import os

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from fixtures import build_cub

from oodml.datasets import load_dataset
from oodml.embedding import EmbedSettings, embed, embed_cached, embedding_cache_dir
from oodml.models import load_model


def _worker(rank: int, world: int, root: str, home: str, rendezvous: str, out: str) -> None:
    os.environ["OODML_HOME"] = home
    os.environ["OODML_QUIET"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        ds = load_dataset("cub200", root=root)
        loaded = load_model("glyph-cnn", embed_dim=8)
        values = embed_cached(ds, loaded.module, loaded.preprocessing, loaded.digest, range(len(ds)),
                              shard_size=2, settings=EmbedSettings("cpu", batch_size=2))
        np.save(f"{out}/rank{rank}.npy", values)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_share_the_work_and_agree_with_one(tmp_path, monkeypatch):
    build_cub(tmp_path / "data")
    home = tmp_path / "home"
    mp.spawn(_worker, args=(2, str(tmp_path / "data"), str(home), str(tmp_path / "rdzv"), str(tmp_path)),
             nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"rank{r}.npy") for r in (0, 1)]
    np.testing.assert_array_equal(ranks[0], ranks[1])          # every rank ends with the complete result
    monkeypatch.setenv("OODML_HOME", str(home))
    ds = load_dataset("cub200", root=tmp_path / "data")
    loaded = load_model("glyph-cnn", embed_dim=8)
    single = embed(ds, loaded.module, loaded.preprocessing, settings=EmbedSettings("cpu", batch_size=2))
    np.testing.assert_allclose(ranks[0], single, atol=1e-5)
    shards = list(embedding_cache_dir(ds, loaded.digest, loaded.preprocessing).glob("shard-*.parquet"))
    assert len(shards) == 5                                     # 9 images in shards of 2, none embedded twice


def test_torchrun_evaluate_matches_a_single_process(glyphs, tmp_path):
    import subprocess
    import sys

    from oodml.evaluation import evaluate
    from oodml.results import Results

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "oodml",
            "-q", "evaluate", "glyph-cnn", "--dataset", "glyphs", "--levels", "1", "--no-clustering", "--device",
            "cpu", "--shard-size", "512", "--match-draws", "2", "--out", str(tmp_path / "two")]
    run = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    two = {(r["metric"], r["test_set"]): r["value"]
           for r in Results.from_parquet(tmp_path / "two" / "results.parquet").rows}
    single = evaluate("glyph-cnn", glyphs, "v1", levels=[1], clustering=False, device="cpu", use_cache=False,
                      match_draws=2)   # the matched rows compared too, at 2 draws (the default 20 adds only time)
    assert two == pytest.approx({(r["metric"], r["test_set"]): r["value"] for r in single.rows}, abs=1e-6)


def test_torchrun_trains_with_distributed_data_parallel(glyphs, tmp_path):
    import subprocess
    import sys

    from oodml.models import load_model as load

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "oodml",
            "-q", "train", "--dataset", "glyphs", "--splits", "v1", "--level", "1", "--iterations", "4",
            "--eval-every", "2", "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path)]
    run = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("level 1: best val recall@1") == 1         # one voice
    assert sorted(p.name for p in tmp_path.iterdir()) == ["level1.pt"]  # one writer, no state left
    assert [h["iteration"] for h in load(tmp_path / "level1.pt").provenance["history"]] == [2, 4]
    # 32 images per global batch is 16 per process: 2 processes x 4 classes x 4 images
    bad = subprocess.run(argv[:-6] + ["--batch-size", "20", "--device", "cpu", "--out", str(tmp_path / "bad")],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "multiple of --samples-per-class 4 x 2 processes" in bad.stderr
