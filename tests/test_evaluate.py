"""The evaluation harness end to end on glyphs: protocols, one embedding per image, checks, resume, CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from oodml import OodmlError
from oodml.cli import main
from oodml.embedding import embedding_cache_dir
from oodml.evaluation import evaluate, zero_shot_metrics
from oodml.models import EmbeddingModel, create_model, load_model, save
from oodml.protocol import curve_summary
from oodml.results import Results, t_interval
from oodml.splits import read_split_set
from oodml.splits.selection import parse_levels

SPLITS = Path(__file__).resolve().parents[1] / "splits" / "glyphs" / "v1"
#: class-count-matched draws per level: none of these tests reads the matched numbers (tests/test_matched.py and
#: test_compare.py do, at the default), but every run still computes, saves and reloads them
DRAWS = 2


@pytest.fixture(scope="module")
def split_set():
    return read_split_set(SPLITS)


def test_zero_shot_on_two_levels_with_fewshot(glyphs, split_set, tmp_path):
    results = evaluate("glyph-cnn", glyphs, split_set, levels=[1, 8], fewshot=(2,), episodes=2, clustering=False,
                       device="cpu", match_draws=DRAWS)
    metrics = {r["metric"] for r in results.rows if r["shots"] == 0}
    assert {"recall@1", "recall@8", "map@r", "r_precision", "map@1000"} <= metrics
    assert metrics == set(zero_shot_metrics(clustering=False))   # what --metric is checked against up front
    assert {r["level"] for r in results.rows} == {1, 8}
    assert {r["protocol"] for r in results.rows} == {"zero-shot"}
    fewshot = [r for r in results.rows if r["shots"] == 2]
    assert {(r["adaptation"], r["metric"]) for r in fewshot} >= {("prototypes", "accuracy"), ("none", "accuracy")}
    assert {r["episode"] for r in fewshot} == {0, 1}
    summary = results.summary()
    assert set(summary["metrics"]["recall@1"]) == {"per_level", "mean", "auc", "slope", "relative_drop"}
    entry = summary["fewshot"]["2-shot"]["prototypes"]["accuracy"][0]
    assert entry["episodes"] == 2 and entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
    written = results.save(tmp_path)
    assert {p.name for p in written} == {"results.parquet", "summary.json", "classes.parquet",
                                         "curve-recall_at_1.png", "curve-recall_at_1.svg"}
    again = Results.from_parquet(tmp_path / "results.parquet")
    assert again.rows == results.rows and again.meta["split_digest"] == split_set.digest
    assert json.loads((tmp_path / "summary.json").read_text())["meta"]["protocol"] == "zero-shot"


class Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.inner(x)


def test_each_image_is_embedded_once_for_all_levels(glyphs, split_set):
    inner = create_model("glyph-cnn", embed_dim=8)
    counting = Counting(inner)
    loaded = load_model("glyph-cnn", embed_dim=8)
    loaded.module = counting
    results = evaluate(loaded, glyphs, split_set, clustering=False, device="cpu", use_cache=False, match_draws=DRAWS)
    distinct = len(set().union(*(lv.test_classes for lv in split_set.levels)))
    assert counting.images == distinct * 32 == results.meta["images_embedded"]
    per_level = sum(len(lv.test_classes) * 32 for lv in split_set.levels)
    assert counting.images < per_level / 4


def test_per_level_checkpoints_and_leak_refusal(glyphs, split_set, tmp_path):
    from oodml.training import TrainConfig, train

    cfg = TrainConfig(iterations=4, eval_every=4, batch_size=32)
    for level in (1, 2):
        train(glyphs, split_set, level, cfg, out=tmp_path, device="cpu")
    results = evaluate(str(tmp_path / "level{level}.pt"), glyphs, split_set, levels=[1, 2], clustering=False,
                       device="cpu", match_draws=DRAWS)
    assert {r["protocol"] for r in results.rows} == {"per-level"}
    assert len({r["model_digest"] for r in results.rows}) == 2
    identity = results.meta["model_identity"]                      # from scratch: no pretraining, not random
    assert (identity["pretraining"], identity["random_weights"]) == (None, False)
    assert "pretraining_overlap" not in results.meta
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    (leaky / "level2.pt").write_bytes((tmp_path / "level1.pt").read_bytes())
    with pytest.raises(OodmlError, match="trained on .* of level 2's test classes"):
        evaluate(str(leaky), glyphs, split_set, levels=[2], clustering=False, device="cpu")


def test_per_level_checkpoints_that_declare_pretraining_record_its_overlap(glyphs, split_set, tmp_path):
    """As the checkpoints of `oodml train --arch resnet50` (from ImageNet weights) declare imagenet-1k."""
    for level in (1, 2):
        save(create_model("glyph-cnn", embed_dim=8, seed=level), tmp_path / f"level{level}.pt")
        payload = torch.load(tmp_path / f"level{level}.pt", weights_only=True)
        torch.save(payload | {"pretraining": "imagenet-1k"}, tmp_path / f"level{level}.pt")
    options = dict(levels=[1, 2], clustering=False, device="cpu", match_draws=DRAWS)
    results = evaluate(str(tmp_path / "level{level}.pt"), glyphs, split_set, **options)
    identity = results.meta["model_identity"]
    assert (identity["arch"], identity["pretraining"], sorted(identity["levels"])) == ("glyph-cnn", "imagenet-1k",
                                                                                      ["1", "2"])
    assert [lv["level"] for lv in results.meta["pretraining_overlap"]["levels"]] == [1, 2]
    torch.save(payload | {"pretraining": "laion2b"}, tmp_path / "level2.pt")  # levels that disagree: nothing
    mixed = evaluate(str(tmp_path / "level{level}.pt"), glyphs, split_set, **options)
    assert mixed.meta["model_identity"]["pretraining"] is None and "pretraining_overlap" not in mixed.meta


def test_fingerprint_mismatch_is_named(split_set, tmp_path):
    from fixtures import build_imagefolder

    from oodml.datasets import load_dataset

    build_imagefolder(tmp_path)
    with pytest.raises(OodmlError, match="were made from data with fingerprint [0-9a-f]{16}; yours is"):
        evaluate("glyph-cnn", load_dataset("imagefolder", root=tmp_path), split_set)


def test_a_model_returning_nan_is_refused(glyphs, split_set, tmp_path):
    class Broken(EmbeddingModel):
        def forward(self, x, normalize=True):
            return torch.full((x.shape[0], 4), float("nan"))

    model = Broken(torch.nn.Flatten(), 1, 4, arch="broken", config={}, preprocessing=create_model(
        "glyph-cnn").preprocessing)
    loaded = load_model("glyph-cnn")
    loaded.module = model
    with pytest.raises(OodmlError, match="NaN or inf embeddings for 128 of 128 images"):
        evaluate(loaded, glyphs, split_set, levels=[1], device="cpu", use_cache=False)


class _RaisesOnBigBatches(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise RuntimeError("boom: this model only takes one image at a time")
        return x.flatten(1)[:, :8]


@pytest.mark.parametrize("shape_model", [False, True])
def test_a_torchscript_model_that_raises_or_returns_a_wrong_shape(glyphs, tmp_path, capsys, shape_model):
    scripted = torch.jit.script(_RaisesOnBigBatches() if not shape_model else torch.nn.Flatten(0))
    prep = json.dumps(create_model("glyph-cnn").preprocessing.as_dict())
    scripted.save(str(tmp_path / "model.pt"), _extra_files={"preprocessing.json": prep})
    code = main(["-q", "evaluate", str(tmp_path / "model.pt"), "--dataset", "glyphs", "--levels", "1",
                 "--no-clustering", "--device", "cpu", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    expected = r"returned \(393216,\) for a batch of 128 images" if shape_model else \
        "model.pt raised .*Error on a batch of shape \\(128, 3, 32, 32\\): .*boom: this model only takes one image"
    assert __import__("re").search(expected, err), err


def test_killed_run_resumes_from_its_cache(glyphs, split_set, tmp_path):
    env = {**os.environ, "OODML_QUIET": "1"}
    model_path = tmp_path / "m.pt"
    save(create_model("glyph-cnn", embed_dim=8, seed=5), model_path)
    loaded = load_model(model_path)
    cache = embedding_cache_dir(glyphs, loaded.digest, loaded.preprocessing)
    argv = [sys.executable, "-m", "oodml", "evaluate", str(model_path), "--dataset", "glyphs", "--levels", "1",
            "--no-clustering", "--shard-size", "256", "--batch-size", "64", "--device", "cpu",
            "--match-draws", str(DRAWS), "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(cache.glob("shard-*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(cache.glob("shard-*.parquet")))
    assert 2 <= done_before < 5280 / 256
    assert not (tmp_path / "out" / "results.parquet").exists()
    stale, live = cache / ".shard-dead.parquet.x1.tmp", cache / ".shard-busy.parquet.x2.tmp"
    for leftover in (stale, live):                      # what killed and running writers leave
        leftover.mkdir()
    os.utime(stale, (time.time() - 86400, time.time() - 86400))
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
    assert not stale.exists() and live.exists()
    shards = list(cache.glob("shard-*.parquet"))
    assert len(shards) == int(np.ceil((5280 - 256 * done_before) / 256)) + done_before
    resumed = Results.from_parquet(tmp_path / "out" / "results.parquet")
    fresh = evaluate(load_model(model_path), glyphs, split_set, levels=[1], clustering=False, device="cpu",
                     use_cache=False, match_draws=DRAWS)
    assert {(r["metric"], r["test_set"]): r["value"] for r in resumed.rows} == pytest.approx(
        {(r["metric"], r["test_set"]): r["value"] for r in fresh.rows}, abs=1e-6)


def test_cli_evaluate_and_plot(glyphs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["-q", "evaluate", "glyph-cnn", "--dataset", "glyphs", "--levels", "1,8", "--no-clustering",
            "--device", "cpu", "--match-draws", str(DRAWS), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "recall@1" in printed and "distinct images embedded once for 2 levels" in printed
    assert main(argv) == 0   # the same run again: replaced, and said so
    assert f"replaced the earlier run in {out} (glyph-cnn, " in capsys.readouterr().out
    assert main(["plot", str(out), str(out / "results.parquet"), "--out", str(tmp_path / "both")]) == 0
    assert (tmp_path / "both.svg").exists()
    assert main(["-q", "evaluate", "no-such-model", "--dataset", "glyphs"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_curve_summary_and_intervals_by_hand(split_set):
    s = curve_summary([0.0, 1.0, 3.0], [0.9, 0.7, 0.3])
    # x = 0, 1/3, 1: trapezoids (1/3)(0.8) + (2/3)(0.5) = 0.6
    assert s["auc"] == pytest.approx(0.6) and s["mean"] == pytest.approx(0.6333333)
    assert s["relative_drop"] == pytest.approx(2 / 3) and s["slope"] < 0
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2 and hi - mean == pytest.approx(4.302652729911275 * 1 / np.sqrt(3))
    assert parse_levels("all", split_set) is None and parse_levels("1,3-5", split_set) == [1, 3, 4, 5]
    with pytest.raises(OodmlError, match="--levels 'x'"):
        parse_levels("x", split_set)


@pytest.mark.parametrize("adapt", ["finetune-last", "finetune-all"])
def test_finetune_adaptations_report_beside_the_unadapted_model(glyphs, split_set, adapt):
    results = evaluate("glyph-cnn", glyphs, split_set, levels=[3], fewshot=(2,), episodes=1, adapt=adapt,
                       adapt_iterations=5, clustering=False, device="cpu", match_draws=DRAWS)
    values = {(r["adaptation"], r["metric"]): r["value"] for r in results.rows
              if r["shots"] == 2 and r["test_set"] == "full"}
    assert set(values) == {("none", "accuracy"), ("none", "recall@1"), ("none", "map@r"),
                           (adapt, "accuracy"), (adapt, "recall@1"), (adapt, "map@r")}
    assert all(0 <= v <= 1 for v in values.values())
    assert values[(adapt, "recall@1")] != values[("none", "recall@1")] or values[(adapt, "map@r")] != values[
        ("none", "map@r")]  # the model really changed


def test_finetuning_needs_a_head(glyphs, split_set, tmp_path):
    model = create_model("glyph-cnn", embed_dim=8).eval()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "ts.pt"),
                   _extra_files={"preprocessing.json": json.dumps(model.preprocessing.as_dict())})
    with pytest.raises(OodmlError, match="finetune-last needs a model with a backbone and an embedding head"):
        evaluate(str(tmp_path / "ts.pt"), glyphs, split_set, levels=[1], fewshot=(2,), adapt="finetune-last",
                 clustering=False, device="cpu")


def test_several_adaptations_in_one_run_and_saved_embeddings(glyphs, split_set, tmp_path):
    from oodml.results import read_saved_embeddings

    results = evaluate("glyph-cnn", glyphs, split_set, levels=[2], fewshot=(2,), episodes=1, clustering=False,
                       adapt=["prototypes", "finetune-last"], adapt_iterations=3, device="cpu",
                       save_embeddings=True, match_draws=DRAWS)
    assert {r["adaptation"] for r in results.rows if r["shots"] == 2} == {"none", "prototypes", "finetune-last"}
    test_ids = [glyphs.sample_ids[i] for i in glyphs.indices_of_classes(split_set.level(2).test_classes)]
    assert results.embeddings[("test", 2)][0] == test_ids
    ids, adapted = results.embeddings[("fewshot", 2, 2, 0, "finetune-last")]
    assert sorted(ids) == sorted(test_ids) and adapted.shape == (len(test_ids), 64)  # support first, then queries
    assert ("fewshot", 2, 2, 0, "prototypes") not in results.embeddings              # nothing new to save
    results.save(tmp_path)
    again = read_saved_embeddings(tmp_path)
    assert again.keys() == results.embeddings.keys()
    np.testing.assert_array_equal(again[("test", 2)][1], results.embeddings[("test", 2)][1])
