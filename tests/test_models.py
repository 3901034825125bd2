"""Model registry and safe loading: names, checkpoints, TorchScript, torch.export; pickles refused."""

import pytest
import torch

from oodml import OodmlError
from oodml._fs import file_digest
from oodml.models import EmbeddingModel, create_model, list_models, load_model, register_model, save


def test_registry_lists_builtins_and_suggests_close_names():
    assert {"resnet50", "glyph-cnn"} <= set(list_models())
    assert list_models("glyph*") == ["glyph-cnn"]
    with pytest.raises(OodmlError, match="unknown model 'glyph_cnn'; did you mean glyph-cnn"):
        create_model("glyph_cnn")


def test_glyph_cnn_embeds_normalised_and_exposes_raw_and_head():
    model = create_model("glyph-cnn", embed_dim=16).eval()
    x = torch.randn(3, 3, 32, 32)
    out, raw = model(x), model(x, normalize=False)
    assert out.shape == (3, 16) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=1), out, atol=1e-6)
    assert model.head.out_features == 16 and model.preprocessing.crop == 32


def test_creation_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = create_model("glyph-cnn", seed=1), create_model("glyph-cnn", seed=1)
    assert torch.rand(1) == before
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_resnet50_with_imagenet_weights_declares_imagenet_pretraining(tmp_path):
    import torchvision

    weights = tmp_path / "resnet50-0676ba61.pth"       # torchvision's file name; random values suffice here
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    pretrained = load_model("resnet50", embed_dim=8, weights=str(weights))
    assert pretrained.identity["pretraining"] == "imagenet-1k" and not pretrained.identity["random_weights"]
    assert pretrained.identity["weights_file"] == "resnet50-0676ba61.pth"
    assert pretrained.identity["weights_sha256"] == file_digest(weights)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        random = load_model("resnet50?pretrained=false", embed_dim=8)
    assert random.identity["random_weights"] and random.identity["pretraining"] is None


def test_resnet50_batch_norm_stays_frozen_in_training_mode():
    model = create_model("resnet50", embed_dim=8, pretrained=False).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())


def test_checkpoint_round_trip_keeps_weights_preprocessing_and_provenance(tmp_path):
    model = create_model("glyph-cnn", embed_dim=8, seed=3)
    save(model, tmp_path / "m.pt", provenance={"level": 2, "split_digest": "abc"})
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.provenance == {"level": 2, "split_digest": "abc"}
    assert loaded.preprocessing == model.preprocessing
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.module.eval()(x), model.eval()(x))


def test_a_checkpoint_keeps_its_models_pretraining_declaration(tmp_path):
    declared = create_model("glyph-cnn", embed_dim=8)
    declared.pretraining = "imagenet-1k"         # as resnet50 built from ImageNet weights declares
    save(declared, tmp_path / "declared.pt")
    save(create_model("glyph-cnn", embed_dim=8), tmp_path / "scratch.pt")
    declaration = ("pretraining", "pretraining_declared", "random_weights")
    assert [load_model(tmp_path / "declared.pt").identity[k] for k in declaration] == ["imagenet-1k", True, False]
    assert [load_model(tmp_path / "scratch.pt").identity[k] for k in declaration] == [None, True, False]
    payload = torch.load(tmp_path / "declared.pt", weights_only=True)
    torch.save({k: v for k, v in payload.items() if k != "pretraining"}, tmp_path / "older.pt")
    # written before checkpoints kept it: no pretraining known, not "none"
    assert [load_model(tmp_path / "older.pt").identity[k] for k in declaration] == [None, False, False]
    torch.save(payload | {"pretraining": "imagenet\n<script>"}, tmp_path / "forged.pt")
    with pytest.raises(OodmlError, match="checkpoint 'pretraining' must name the pretraining data in one line"):
        load_model(tmp_path / "forged.pt")


def test_torchscript_and_export_load_with_digests_of_their_own_code(tmp_path):
    model = create_model("glyph-cnn", embed_dim=8).eval()
    torch.jit.script(model).save(str(tmp_path / "ts.pt"))
    program = torch.export.export(model, (torch.zeros(2, 3, 32, 32),))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    with pytest.warns(UserWarning, match="no preprocessing.json; assuming ImageNet preprocessing"):
        scripted = load_model(tmp_path / "ts.pt")
    with pytest.warns(UserWarning, match="no preprocessing.json"):
        exported = load_model(tmp_path / "m.pt2")
    assert exported.module(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
    # the same weights run by other code (and here other preprocessing) never share an embedding cache
    assert len({load_model("glyph-cnn", embed_dim=8).digest, scripted.digest, exported.digest}) == 3


def test_full_pickles_are_refused_without_running_them(tmp_path, capsys):
    torch.save(create_model("glyph-cnn", embed_dim=4), tmp_path / "full.pt")
    with pytest.raises(OodmlError, match="refused to load .*pickle of Python objects"):
        load_model(tmp_path / "full.pt")


@pytest.mark.parametrize("payload, message", [
    ({"conv.weight": torch.zeros(1)}, "not an oodml checkpoint"),
    ({"format": "oodml-checkpoint", "version": 99}, "newer than this oodml"),
])
def test_wrong_checkpoints(tmp_path, payload, message):
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(OodmlError, match=message):
        load_model(tmp_path / "x.pt")


def test_missing_file_and_registration(tmp_path):
    with pytest.raises(OodmlError, match="does not exist"):
        load_model(tmp_path / "nope.pt")

    @register_model("test-tiny")
    def tiny(embed_dim: int = 4, seed: int = 0) -> EmbeddingModel:
        backbone = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        return EmbeddingModel(backbone, 3, embed_dim, arch="test-tiny", config={"embed_dim": embed_dim},
                              preprocessing=create_model("glyph-cnn").preprocessing)

    assert "test-tiny" in list_models()
    assert load_model("test-tiny").module(torch.zeros(1, 3, 8, 8)).shape == (1, 4)
