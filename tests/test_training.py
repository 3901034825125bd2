"""Per-level training: every loss trains, SEC and L2 regularisers, selection on val, provenance."""

from pathlib import Path

import pytest
import torch

from oodml import OodmlError
from oodml.losses import LOSSES, l2_reg_loss, sec_loss
from oodml.models import load_model
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
