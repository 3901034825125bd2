"""`oodml make-splits` and `oodml splits ...` end to end, and the ooDML importer's restricted unpickler."""

import copy
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oodml import OodmlError
from oodml.cli import main
from oodml.splits import read_split_set
from oodml.splits.oodml_import import import_oodml, read_oodml_pickle

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "oodml_cars196_splits.pkl"


PUBLISHED = Path(__file__).resolve().parents[1] / "splits"


@pytest.fixture(scope="module")
def searched() -> list[tuple]:
    """The searches ``glyph_splits`` ran: (features, config, what build_levels returned)."""
    return []


@pytest.fixture(scope="module")
def glyph_splits(glyphs, searched, tmp_path_factory):
    """``oodml make-splits glyphs`` into a fresh folder (glyphs@v1), its search recorded in ``searched``."""
    from oodml.splits import make

    def recording(ds, features, config):
        result = real(ds, features, config)
        searched.append((features.copy(), config, copy.deepcopy(result)))
        return result

    real, out = make.build_levels, tmp_path_factory.mktemp("splits")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(make, "build_levels", recording)
        assert main(["-q", "make-splits", "glyphs", "--out", str(out)]) == 0
    assert len(searched) == 1
    return out


def test_make_splits_reproduces_the_published_glyphs_v1(glyph_splits):
    from oodml.splits import compare

    ours = read_split_set(glyph_splits / "glyphs" / "v1")
    published = read_split_set(PUBLISHED / "glyphs" / "v1")
    diff = compare(ours, published)
    assert diff.reproduces, diff.format()
    assert published.metadata["dataset_fingerprint"] == ours.metadata["dataset_fingerprint"]
    # A rebuild that reproduces a published name keeps its files: one name, one digest, everywhere
    assert ours.digest == published.digest and ours.schema_version == published.schema_version == 1


def test_make_splits_publishes_a_verified_manifest(glyph_splits, capsys, monkeypatch):
    split_set = read_split_set(glyph_splits / "glyphs" / "v1")
    assert len(split_set.levels) == 8
    assert split_set.metadata["extractor"] == "pixels-16" and split_set.metadata["parameters"]["bootstrap"] == 200
    monkeypatch.setenv("OODML_SPLITS", str(glyph_splits))
    capsys.readouterr()
    assert main(["splits", "show", "glyphs@v1"]) == 0
    out = capsys.readouterr().out
    assert "glyphs@v1" in out and "removal" in out and "default (seeded random) split distance" in out
    assert main(["splits", "verify"]) == 0
    assert main(["splits", "list"]) == 0
    assert "glyphs@v1" in capsys.readouterr().out


def test_make_splits_again_is_a_no_op_that_says_it_reproduces(glyph_splits, searched, capsys, monkeypatch):
    """Publishing the same content again.  The search is the first run's, replayed for the same features and
    settings (checked): it is deterministic, which test_reproducibility proves by rerunning it."""
    features, config, result = searched[0]

    def replay(ds, again, cfg):
        np.testing.assert_array_equal(again, features)
        assert cfg == config
        return copy.deepcopy(result)

    before = (glyph_splits / "glyphs" / "v1" / "checksums.json").read_bytes()
    monkeypatch.setattr("oodml.splits.make.build_levels", replay)
    monkeypatch.setenv("OODML_SPLITS", str(PUBLISHED))
    capsys.readouterr()
    assert main(["-q", "make-splits", "glyphs", "--out", str(glyph_splits)]) == 0
    assert (glyph_splits / "glyphs" / "v1" / "checksums.json").read_bytes() == before
    assert "reproduces the published glyphs@v1" in capsys.readouterr().out


def test_plot_writes_png_and_svg(glyph_splits, tmp_path):
    assert main(["splits", "plot", str(glyph_splits / "glyphs" / "v1"), "--out", str(tmp_path / "curve")]) == 0
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "curve.svg").read_bytes()[:400]


def test_verify_reports_a_tampered_manifest(glyph_splits, tmp_path, capsys):
    import shutil

    copy = tmp_path / "glyphs" / "v1"
    shutil.copytree(glyph_splits / "glyphs" / "v1", copy)
    data = bytearray((copy / "classes.parquet").read_bytes())
    data[100] ^= 0xFF
    (copy / "classes.parquet").write_bytes(bytes(data))
    assert main(["splits", "verify", str(copy)]) == 2
    assert "classes.parquet does not match its sha256" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["make-splits", "glyphs", "--extractor", "nope"], "unknown extractor 'nope'"),
    (["make-splits", "glyphs", "--levels", "1"], "--levels must be at least 2 (got 1)"),
    (["make-splits", "glyphs", "--bootstrap", "-1"], "--bootstrap"),
    (["make-splits", "glyphs", "--version", "../x"], "version name '../x'"),
    (["splits", "show", "glyphs@v404"], "no published split set glyphs@v404"),
])
def test_bad_input_one_line_exit_2_and_no_output_dir(argv, message, tmp_path):
    env_out = tmp_path / "out"
    argv = [*argv, "--out", str(env_out)] if argv[0] == "make-splits" else argv
    proc = subprocess.run([sys.executable, "-m", "oodml", "-q", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not env_out.exists() or not any(env_out.rglob("*"))


def test_unknown_distance_is_an_argparse_error():
    proc = subprocess.run([sys.executable, "-m", "oodml", "make-splits", "glyphs", "--distance", "kl"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'kl'" in proc.stderr


@pytest.mark.skipif(not REFERENCE.exists(), reason="the ooDML reference pickle lives in ../shared/reference/")
def test_import_the_published_cars196_splits(tmp_path):
    split_set = import_oodml(REFERENCE, dataset="cars196", version="oodml-v1", out=tmp_path)
    fids = [round(lv.distance, 2) for lv in split_set.levels]
    assert fids == [8.59, 14.33, 32.18, 43.58, 63.29, 86.12, 101.17, 123.03]
    assert [len(lv.train_classes) for lv in split_set.levels] == [98] * 5 + [86, 74, 62]
    assert [lv.kind for lv in split_set.levels] == ["swap"] * 5 + ["removal"] * 3
    lv = split_set.level(1)
    assert set(lv.val_classes) < set(lv.train_classes) and set(lv.train_classes).isdisjoint(lv.test_classes)
    support = lv.episodes(5)[0].support
    assert set(support) == set(lv.test_classes)
    name, ids = next(iter(support.items()))
    assert len(ids) == 5 and all(i.startswith(name + "/") and i.endswith(".jpg") for i in ids)
    assert "folder layout" in split_set.metadata["episode_layout"]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload, message", [
    ({1: Evil()}, "forbidden global builtins.print"),
    ({1: {"train": [np.int64(3)]}}, "numpy scalar of dtype dtype\\('int64'\\)"),
    ({1: {"train": ["a"], "test": ["b"]}}, "lacks"),
    (["not", "a", "dict"], "expected a dict keyed by split id"),
])
def test_hostile_or_malformed_pickles_are_refused(payload, message, tmp_path, capsys):
    path = tmp_path / "splits.pkl"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(OodmlError, match=message):
        read_oodml_pickle(path)
    assert "pwned" not in capsys.readouterr().out


def test_truncated_pickle_is_refused(tmp_path):
    path = tmp_path / "splits.pkl"
    path.write_bytes(pickle.dumps({1: {"train": ["a"]}})[:-5])
    with pytest.raises(OodmlError, match="refused as an ooDML split pickle"):
        read_oodml_pickle(path)


def test_make_splits_on_an_imagefolder_fixture(tmp_path, capsys):
    from fixtures import write_jpeg

    root = tmp_path / "data"
    for k in range(16):
        for j in range(4):
            write_jpeg(root / f"class{k:02d}" / f"{j}.jpg", seed=100 * k + j)
    out = tmp_path / "splits"
    argv = ["-q", "make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels", "--levels", "4",
            "--removal-levels", "1", "--shots", "1", "2", "--episodes", "3", "--version", "toy", "--out", str(out)]
    assert main(argv) == 0
    split_set = read_split_set(out / "imagefolder" / "toy")
    assert len(split_set.levels) == 4 and split_set.metadata["num_classes"] == 16
    assert [len(lv.train_classes) for lv in split_set.levels][:3] == [8, 8, 8]
    assert len(split_set.level(2).episodes(2)) == 3
    argv[argv.index("2")] = "4"  # 4 shots leave no query image in 4-image classes
    assert main([*argv[:-4], "--version", "toy2", "--out", str(out)]) == 2
    assert "need more than 4 images per test class" in capsys.readouterr().err
    assert not (out / "imagefolder" / "toy2").exists()


def test_killed_feature_extraction_resumes(glyphs, tmp_path):
    import json
    import os
    import signal
    import time

    import torch

    from oodml.features import cache_dir, get_extractor
    from oodml.models import create_model

    model = create_model("glyph-cnn", embed_dim=16, seed=9).eval()
    path = tmp_path / "extractor.pt"
    torch.jit.save(torch.jit.script(model), str(path),
                   _extra_files={"preprocessing.json": json.dumps(model.preprocessing.as_dict())})
    shards = cache_dir(glyphs, get_extractor(str(path)))
    argv = [sys.executable, "-m", "oodml", "-q", "make-splits", "glyphs", "--extractor", str(path), "--bootstrap",
            "5", "--episodes", "1", "--device", "cpu", "--version", "cnn", "--out", str(tmp_path / "out")]
    env = {**os.environ, "OODML_QUIET": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(shards.glob("shard-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(list(shards.glob("shard-*.parquet")))
    assert 1 <= before < 6 and not (tmp_path / "out" / "glyphs").exists()
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
    assert len(list(shards.glob("shard-*.parquet"))) == 6        # 10,560 images in shards of 2,048, none twice
    split_set = read_split_set(tmp_path / "out" / "glyphs" / "cnn")
    assert split_set.metadata["extractor"] == "torchscript:extractor.pt"
