"""Per-level training: every loss trains, SEC and L2 regularisers, selection on val, provenance."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from oodml import OodmlError
from oodml.losses import LOSSES, l2_reg_loss, sec_loss
from oodml.models import load_model, save
from oodml.splits import read_split_set
from oodml.training import TrainConfig, train

SPLITS = Path(__file__).resolve().parents[1] / "splits" / "glyphs" / "v1"


def test_sec_penalises_the_spread_of_norms_only():
    same_norm = torch.nn.functional.normalize(torch.randn(8, 5), dim=1) * 3
    assert sec_loss(same_norm) == pytest.approx(0, abs=1e-10)
    spread = torch.tensor([[1.0, 0], [3.0, 0]])
    assert sec_loss(spread) == pytest.approx(1.0)          # norms 1, 3; mean 2; ((1)^2 + (1)^2) / 2
    assert l2_reg_loss(spread) == pytest.approx(5.0)       # (1 + 9) / 2
    raw = spread.clone().requires_grad_(True)
    sec_loss(raw).backward()                               # the mean norm is detached
    assert raw.grad[0, 0] == pytest.approx(-1.0) and raw.grad[1, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_and_records_provenance(glyphs, loss, tmp_path):
    split_set = read_split_set(SPLITS)
    cfg = TrainConfig(loss=loss, iterations=3, eval_every=3, batch_size=32, samples_per_class=4,
                      regulariser="sec", eta=0.1)
    model, provenance = train(glyphs, split_set, 2, cfg, out=tmp_path, device="cpu")
    level = split_set.level(2)
    assert provenance["level"] == 2 and provenance["split_digest"] == split_set.digest
    assert set(provenance["train_classes"]) == set(level.tuning_train_classes)
    assert set(provenance["train_classes"]).isdisjoint(level.test_classes)
    assert provenance["config"]["loss"] == loss and provenance["config"]["regulariser"] == "sec"
    assert 0 <= provenance["best_val_recall@1"] <= 1
    loaded = load_model(tmp_path / "level2.pt")
    assert loaded.provenance["history"][-1]["iteration"] == 3
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.module.eval()(x), model.eval()(x), atol=1e-6)


def test_training_is_reproducible_for_a_seed(glyphs, tmp_path):
    split_set = read_split_set(SPLITS)
    cfg = TrainConfig(iterations=3, eval_every=3, batch_size=32)
    a, _ = train(glyphs, split_set, 1, cfg, device="cpu")
    b, _ = train(glyphs, split_set, 1, cfg, device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_loss_and_regulariser(glyphs):
    split_set = read_split_set(SPLITS)
    with pytest.raises(OodmlError, match="unknown loss 'npair'"):
        train(glyphs, split_set, 1, TrainConfig(loss="npair"))
    with pytest.raises(OodmlError, match="unknown regulariser 'l1'"):
        train(glyphs, split_set, 1, TrainConfig(regulariser="l1"))


def test_resnet50_starts_from_imagenet_weights_as_in_oodml(tmp_path):
    import torchvision

    from oodml.training import initial_model

    assert TrainConfig(arch="resnet50").resolved().pretrained and TrainConfig().resolved().pretrained is None
    weights = tmp_path / "resnet50-0676ba61.pth"              # torchvision's layout; random values suffice here
    state = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(state, weights)
    model = initial_model(TrainConfig(arch="resnet50", embed_dim=8, weights=str(weights)).resolved())
    assert model.pretraining == "imagenet-1k" and torch.equal(model.backbone.resnet.conv1.weight, state["conv1.weight"])
    save(model, tmp_path / "level1.pt")                       # what train() writes keeps the declaration
    assert load_model(tmp_path / "level1.pt").identity["pretraining"] == "imagenet-1k"
    assert initial_model(TrainConfig(arch="resnet50", embed_dim=8, pretrained=False).resolved()).pretraining is None
    with pytest.raises(OodmlError, match="glyph-cnn has no pretrained weights to choose here; drop --weights"):
        initial_model(TrainConfig(weights=str(weights)).resolved())
    with pytest.raises(OodmlError, match=r"add \?pretrained=false to the spec"):
        initial_model(TrainConfig(arch="timm:resnet18", pretrained=False).resolved())


def test_offline_resnet50_training_says_where_the_weights_go(tmp_path, capsys):
    from oodml.cli import main

    assert main(["train", "--dataset", "glyphs", "--splits", "v1", "--level", "1", "--arch", "resnet50",
                 "--iterations", "1", "--device", "cpu", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "resnet50-0676ba61.pth" in err and "or name a local copy (--weights PATH" in err and "Traceback" not in err


def test_cli_trains_by_epochs(glyphs, tmp_path, capsys):
    from oodml.cli import main

    assert main(["-q", "train", "--dataset", "glyphs", "--splits", "v1", "--level", "1", "--epochs", "0.01",
                 "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "level 1: best val recall@1" in capsys.readouterr().out
    config = load_model(tmp_path / "level1.pt").provenance["config"]
    assert config["iterations"] == 2 and config["epochs"] == 0.01   # ceil(0.01 * 3968 / 32)


def test_killed_training_resumes_to_the_same_weights(glyphs, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    argv = [sys.executable, "-m", "oodml", "-q", "train", "--dataset", "glyphs", "--splits", "v1", "--level", "1",
            "--iterations", "8", "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path)]
    env = {**os.environ, "OODML_QUIET": "1"}
    state = tmp_path / "level1.state.pt"
    proc = subprocess.Popen([*argv, "--eval-every", "2"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (tmp_path / "level1.pt").exists()
    interrupted_at = torch.load(state, weights_only=True)["step"]
    assert interrupted_at in (2, 4, 6)
    assert subprocess.run([*argv, "--eval-every", "2"], env=env, capture_output=True).returncode == 0
    assert not state.exists()
    resumed = load_model(tmp_path / "level1.pt").module
    straight, _ = train(glyphs, read_split_set(SPLITS), 1,
                        TrainConfig(iterations=8, eval_every=2, batch_size=32), device="cpu")
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_each_process_trains_on_its_slice_of_the_global_batch_with_classes_whole():
    from pytorch_metric_learning.samplers import MPerClassSampler

    from oodml.training import _RankSlice

    labels = np.repeat(np.arange(10), 6)

    def batches(rank, world):
        np.random.seed(0)
        sampler = MPerClassSampler(labels, m=2, batch_size=8, length_before_new_iter=24)
        return np.array(list(_RankSlice(sampler, 8, rank, world))).reshape(-1, 8 // world)

    whole, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    np.testing.assert_array_equal(np.hstack([first, second]), whole)
    for part in (first, second):                     # 2 classes x 2 images per process and batch
        assert all(sorted(np.unique(labels[b], return_counts=True)[1]) == [2, 2] for b in part)


def test_bf16_autocast_trains(glyphs, tmp_path):
    cfg = TrainConfig(iterations=2, eval_every=2, batch_size=16, precision="bf16")
    _, provenance = train(glyphs, read_split_set(SPLITS), 1, cfg, device="cpu")
    assert provenance["config"]["precision"] == "bf16" and np.isfinite(provenance["history"][-1]["loss"])
    with pytest.raises(OodmlError, match="fp16 training needs a CUDA device"):
        train(glyphs, read_split_set(SPLITS), 1, TrainConfig(precision="fp16"), device="cpu")


@pytest.mark.parametrize(("batch", "k", "message"), [
    (30, 4, "must be a multiple of --samples-per-class 4"),
    (4, 4, "at least two classes"),
    (80, 40, "exceeds the smallest training class"),
    (4096, 4, "needs 1024 classes, but this level trains on"),
])
def test_batches_the_training_classes_cannot_fill_are_refused(glyphs, batch, k, message):
    with pytest.raises(OodmlError, match=message):
        train(glyphs, read_split_set(SPLITS), 1, TrainConfig(batch_size=batch, samples_per_class=k))


def test_a_finished_level_is_kept_and_a_foreign_one_refused(glyphs, tmp_path):
    split_set = read_split_set(SPLITS)
    cfg = TrainConfig(iterations=2, eval_every=2, batch_size=16)
    _, first = train(glyphs, split_set, 1, cfg, out=tmp_path, device="cpu")
    _, again = train(glyphs, split_set, 1, cfg, out=tmp_path, device="cpu")
    assert again["created_at"] == first["created_at"]              # not retrained
    with pytest.raises(OodmlError, match=r"level1.pt holds a model trained with other settings \(lr\)"):
        train(glyphs, split_set, 1, dataclasses.replace(cfg, lr=0.5), out=tmp_path, device="cpu")
    other = dataclasses.replace(split_set, digest="f" * 64)
    with pytest.raises(OodmlError, match="was trained on split digest .* not ffffffffffff; choose another --out"):
        train(glyphs, other, 1, cfg, out=tmp_path, device="cpu")


def test_a_diverging_run_stops_naming_the_iteration(glyphs, tmp_path, monkeypatch):
    from oodml.losses import LossSpec

    class ExplodesAtThree(torch.nn.Module):
        calls = 0

        def forward(self, raw, labels):
            ExplodesAtThree.calls += 1
            return raw.sum() * (float("nan") if ExplodesAtThree.calls == 3 else 0.0)

    monkeypatch.setitem(LOSSES, "explodes", LossSpec(lambda c, d: (ExplodesAtThree(), None), False, "test"))
    cfg = TrainConfig(loss="explodes", iterations=5, eval_every=2, batch_size=16)
    with pytest.raises(OodmlError, match=r"loss is nan at iteration 3; the last good state \(iteration 2\) is in"):
        train(glyphs, read_split_set(SPLITS), 1, cfg, out=tmp_path, device="cpu")
    assert (tmp_path / "level1.state.pt").exists() and not (tmp_path / "level1.pt").exists()
