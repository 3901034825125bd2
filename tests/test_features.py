"""Feature extractors and the embedding engine: registry, TorchScript, offline weights, cache, bad models."""

import json

import numpy as np
import pytest
import torch
from fixtures import build_cub

from oodml import OodmlError
from oodml.datasets import load_dataset
from oodml.embedding import EmbedSettings, embed, resolve_device
from oodml.features import cache_dir, extract_features, get_extractor, list_extractors
from oodml.preprocessing import IMAGENET, Preprocessing

CPU = EmbedSettings("cpu")


@pytest.fixture
def cub(tmp_path):
    build_cub(tmp_path)
    return load_dataset("cub200", root=tmp_path)


def test_registry_has_the_split_extractors():
    assert {"resnet50", "pixels"} <= set(list_extractors())
    with pytest.raises(OodmlError, match="unknown extractor 'vgg'"):
        get_extractor("vgg")


def test_pixels_extractor_and_cache(cub):
    ext = get_extractor("pixels")
    feats = extract_features(cub, ext, device="cpu")
    assert feats.shape == (9, 256) and feats.dtype == np.float32
    assert feats.min() >= 0 and feats.max() <= 1
    shards = sorted(cache_dir(cub, ext).glob("shard-*.parquet"))
    assert len(shards) == 1
    np.testing.assert_array_equal(extract_features(cub, ext, device="cpu"), feats)
    assert sorted(cache_dir(cub, ext).glob("shard-*.parquet")) == shards  # served from the cache


def test_resnet50_offline_error_names_the_file_and_place(tmp_path, monkeypatch):
    from local_server import closed_port_url

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("OODML_WEIGHTS_URL", closed_port_url())  # as offline; downloads: test_weights_download.py
    with pytest.raises(OodmlError, match=r"cannot download http://127.0.0.1:\d+/resnet50-0676ba61.pth .*put it at "
                                         r".*torch/hub/checkpoints/resnet50-0676ba61.pth, or name a local "
                                         r"copy \(--weights PATH"):
        get_extractor("resnet50")


def test_resnet50_from_a_weights_file(cub, tmp_path):
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    ext = get_extractor("resnet50", weights=str(weights))
    assert ext.preprocessing == IMAGENET and len(ext.weights_hash) == 64
    feats = embed(cub, ext.build(), ext.preprocessing, indices=[0, 5], settings=CPU)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()


def test_resnet50_with_a_wrong_weights_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(OodmlError, match="cannot load weights"):
        get_extractor("resnet50", weights=str(bad)).build()


def test_torchscript_extractor_with_its_preprocessing(cub, tmp_path):
    model = torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()))
    path = tmp_path / "tiny.pt"
    prep = {"resize": 20, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    torch.jit.save(model, str(path), _extra_files={"preprocessing.json": json.dumps(prep)})
    ext = get_extractor(str(path))
    assert ext.id == "torchscript:tiny.pt" and ext.preprocessing == Preprocessing(20, 16, (0.5,) * 3, (0.5,) * 3)
    assert extract_features(cub, ext, device="cpu", use_cache=False).shape == (9, 12)


def test_a_file_that_is_not_torchscript(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(OodmlError, match="not an oodml checkpoint"):
        get_extractor(str(path))


@pytest.mark.parametrize("model, message", [
    (lambda x: x.mean(), "returned \\(\\) for a batch"),
    (lambda x: torch.full((x.shape[0], 3), float("nan")), "NaN or inf"),
])
def test_models_with_bad_outputs_are_reported(cub, model, message):
    class Wrap(torch.nn.Module):
        def forward(self, x):
            return model(x)

    with pytest.raises(OodmlError, match=message):
        embed(cub, Wrap(), Preprocessing(resize=8, crop=8), settings=CPU)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(OodmlError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(OodmlError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_bf16_request_runs_fp32_on_cpu(cub):
    out = embed(cub, torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
                Preprocessing(resize=8, crop=8), settings=EmbedSettings("cpu", precision="bf16"))
    assert out.dtype == np.float32 and out.shape == (9, 3)
    with pytest.raises(OodmlError, match="unknown precision 'int4'"):
        embed(cub, torch.nn.Flatten(), Preprocessing(resize=8, crop=8), settings=EmbedSettings("cpu", precision="int4"))
