"""Model specs (timm, OpenCLIP, Hugging Face transformers, torch hub) with small randomly initialised models:
the grammar, preprocessing resolution, embedding shape, digest stability, the embedding cache, evaluation on
glyphs@v1 end to end, make-splits with a spec as extractor, and the one-line errors."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oodml import OodmlError
from oodml.cli import build_parser, main
from oodml.embedding import EmbedSettings, embed_cached, embedding_cache_dir
from oodml.evaluation import evaluate
from oodml.models import LoadedModel, create_model, load_model, save
from oodml.models.digest import weights_sha256
from oodml.models.sources import declared_training_on, parse_spec
from oodml.preprocessing import Preprocessing
from oodml.results import Results
from oodml.splits import read_split_set

SPLITS = Path(__file__).resolve().parents[1] / "splits" / "glyphs" / "v1"
TIMM_TINY = "timm:test_vit?pretrained=false,size=16"  # 1 patch: fast on a CPU


def quiet_load(spec: str) -> LoadedModel:
    """``load_model(spec)``, checking that random weights are warned about."""
    with pytest.warns(UserWarning, match="RANDOM weights"):
        return load_model(spec)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread runs them fastest, and on a shared CPU several threads can be 40x slower
    (measured: test_vit at 16 px, 1.6 s a batch on 2 threads against 0.04 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split_set():
    return read_split_set(SPLITS)


def evaluate_level_1(loaded: LoadedModel, glyphs, split_set) -> Results:
    """Zero-shot evaluation on level 1 of glyphs@v1 (5,280 test images), as the harness runs it."""
    return evaluate(loaded, glyphs, split_set, levels=[1], clustering=False, device="cpu", batch_size=256)


def check_results(results: Results, loaded: LoadedModel) -> None:
    recall = [r["value"] for r in results.rows if r["metric"] == "recall@1" and r["test_set"] == "full"]
    assert len(recall) == 1 and 0.0 <= recall[0] <= 1.0
    assert results.meta["model_digest"] == loaded.digest
    assert results.meta["model_identity"]["weights_sha256"] == weights_sha256(loaded.module)


# --- the grammar ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, source, name, revision, options", [
    ("timm:resnet18", "timm", "resnet18", None, {}),
    ("timm:resnet18?pretrained=false,seed=3", "timm", "resnet18", None, {"pretrained": False, "seed": 3}),
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", "open_clip", "ViT-B-32", "laion2b_s34b_b79k", {}),
    ("hf:facebook/dinov2-small@main?pool=mean", "hf", "facebook/dinov2-small", "main", {"pool": "mean"}),
    ("torchhub:facebookresearch/dinov2:dinov2_vits14", "torchhub", "facebookresearch/dinov2:dinov2_vits14", None,
     {}),
    ("torchhub:facebookresearch/dinov2@v1.0:dinov2_vits14", "torchhub", "facebookresearch/dinov2:dinov2_vits14",
     "v1.0", {}),
])
def test_specs_parse_and_print_back_the_same(text, source, name, revision, options):
    spec = parse_spec(text)
    assert (spec.source, spec.name, spec.revision, spec.options) == (source, name, revision, options)
    assert spec.text() == text


@pytest.mark.parametrize("text, message", [
    ("tfhub:resnet", "unknown source 'tfhub'"),
    ("open_clip:ViT-B-32", "name the pretrained weights"),
    ("hf:org/model?pool", "must be written key=value"),
    ("open_clip:ViT-B-32/openai?pool=cls", "open_clip takes no option 'pool'"),
    ("timm:resnet18?pretrained=maybe", "pretrained must be true or false"),
    ("torchhub:facebookresearch/dinov2", "write torchhub:REPO:ENTRY"),
])
def test_malformed_specs_are_one_line_errors(text, message):
    with pytest.raises(OodmlError, match=message):
        parse_spec(text)


# --- timm ----------------------------------------------------------------------------------------------

def test_timm_preprocessing_comes_from_its_data_config():
    import timm

    loaded = quiet_load("timm:test_resnet?pretrained=false")
    config = timm.data.resolve_model_data_config(timm.create_model("test_resnet", num_classes=0))
    assert config["input_size"] == (3, 160, 160) and config["crop_pct"] == 0.95
    assert loaded.preprocessing == Preprocessing(resize=168, crop=160, mean=config["mean"], std=config["std"],
                                                 interpolation=config["interpolation"])
    assert quiet_load(TIMM_TINY).preprocessing.interpolation == "bicubic"   # test_vit's own filter


def test_timm_embedding_shape_digest_and_identity():
    a, b = quiet_load(TIMM_TINY), quiet_load(TIMM_TINY)
    other_seed = quiet_load(TIMM_TINY + ",seed=1")
    out = a.module(torch.zeros(2, 3, 16, 16))
    assert out.shape == (2, 64)                      # num_classes=0: the pooled features
    assert a.digest == b.digest and len(a.digest) == 64
    assert other_seed.digest != a.digest
    assert other_seed.identity["weights_sha256"] != a.identity["weights_sha256"]
    assert a.identity["weights_sha256"] == weights_sha256(a.module)
    assert a.identity | {"weights_sha256": None, "library": None} == {
        "spec": TIMM_TINY, "source": "timm", "name": "test_vit", "revision": None,
        "options": {"pretrained": False, "size": 16}, "library": None, "weights_sha256": None,
        "arch": TIMM_TINY, "weights_file": None, "pretraining": None, "pretraining_declared": True,
        "random_weights": True}


def test_a_spec_without_its_weights_offline_names_what_to_fetch(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OodmlError, match=r"timm/test_vit\.r160_in1k.*timm\.create_model\('test_vit', pretrained=True\)"
                       ) as info:
        load_model("timm:test_vit")
    assert "\n" not in str(info.value)


def test_a_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(OodmlError, match=r"needs the open_clip package; install it with pip install 'oodml\[clip\]'"):
        load_model("open_clip:ViT-B-32/openai")


def test_embeddings_are_cached_under_the_spec_digest(glyphs):
    loaded = quiet_load(TIMM_TINY)
    calls = []
    loaded.module.register_forward_hook(lambda *_: calls.append(1))
    indices = range(40)
    cpu = EmbedSettings("cpu")
    first = embed_cached(glyphs, loaded.module, loaded.preprocessing, loaded.digest, indices, settings=cpu)
    again = embed_cached(glyphs, loaded.module, loaded.preprocessing, loaded.digest, indices, settings=cpu)
    assert len(calls) == 1 and first.shape == (40, 64)
    np.testing.assert_array_equal(first, again)
    assert embedding_cache_dir(glyphs, loaded.digest, loaded.preprocessing).is_dir()


def test_evaluate_cli_with_random_timm_weights_names_spec_and_digest(tmp_path, capsys):
    assert main(["-q", "evaluate", TIMM_TINY, "--dataset", "glyphs", "--splits", "v1", "--levels", "1",
                 "--no-clustering", "--device", "cpu", "--batch-size", "256", "--out", str(tmp_path / "r")]) == 0
    assert f"oodml: warning: {TIMM_TINY}: RANDOM weights" in capsys.readouterr().err
    meta = json.loads((tmp_path / "r" / "summary.json").read_text())["meta"]
    assert meta["model"] == TIMM_TINY and meta["model_identity"]["spec"] == TIMM_TINY
    assert meta["model_identity"]["random_weights"] is True and len(meta["model_digest"]) == 64
    assert meta["model_digest"] == quiet_load(TIMM_TINY).digest
    rows = Results.from_parquet(tmp_path / "r" / "results.parquet").rows
    assert {r["model_digest"] for r in rows} == {meta["model_digest"]}
    assert 0.0 <= next(r["value"] for r in rows if r["metric"] == "recall@1") <= 1.0


def test_make_splits_with_a_timm_extractor_records_spec_and_weights_hash(tmp_path, capsys):
    assert main(["-q", "make-splits", "glyphs", "--extractor", TIMM_TINY, "--levels", "2", "--removal-levels", "0",
                 "--bootstrap", "0", "--shots", "2", "--episodes", "1", "--device", "cpu", "--version", "spec-test",
                 "--out", str(tmp_path)]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
    metadata = json.loads((tmp_path / "glyphs" / "spec-test" / "metadata.json").read_text())
    assert metadata["extractor"] == TIMM_TINY
    assert metadata["weights_hash"] == quiet_load(TIMM_TINY).identity["weights_sha256"]


def test_a_spec_as_training_backbone_saves_and_reloads(tmp_path):
    assert build_parser().parse_args(["train", "--dataset", "glyphs", "--arch", TIMM_TINY, "--out", "x"]).arch \
        == TIMM_TINY
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = create_model(TIMM_TINY, embed_dim=8, seed=2)
    assert model.arch == TIMM_TINY and model.embed_dim == 8
    assert all(p.requires_grad for p in model.backbone.parameters())
    save(model, tmp_path / "m.pt")
    reloaded = load_model(tmp_path / "m.pt")
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(reloaded.module.eval()(x), model.eval()(x), rtol=0, atol=0)


# --- torch hub -------------------------------------------------------------------------------------------

HUBCONF = '''
import torch

dependencies = ["torch"]


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.preprocessing = {"resize": 16, "crop": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def tiny(pretrained=True):
    model = Tiny()
    if pretrained:
        import os
        path = os.path.join(os.path.dirname(__file__), "tiny.pt")
        model.load_state_dict(torch.load(path, weights_only=True))
    return model
'''


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory):
    """A local torch hub repository: hubconf.py with a ``tiny`` entry and its weights file."""
    repo = tmp_path_factory.mktemp("hubrepo")
    (repo / "hubconf.py").write_text(HUBCONF)
    sys.path.insert(0, str(repo))
    try:
        import hubconf

        torch.manual_seed(7)
        weights = hubconf.Tiny().state_dict()
    finally:
        sys.path.remove(str(repo))
        sys.modules.pop("hubconf", None)
    torch.save(weights, repo / "tiny.pt")
    return repo, weights


def test_torchhub_local_repository(hub_repo, glyphs, split_set):
    repo, weights = hub_repo
    loaded = load_model(f"torchhub:{repo}:tiny")
    assert loaded.preprocessing == Preprocessing(resize=16, crop=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert loaded.module(torch.zeros(2, 3, 16, 16)).shape == (2, 8)
    assert load_model(f"torchhub:{repo}:tiny").digest == loaded.digest
    reference = torch.nn.Module()          # the weights actually loaded are the file's
    reference.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
    reference.load_state_dict(weights)
    assert loaded.identity["weights_sha256"] == weights_sha256(reference)
    random = quiet_load(f"torchhub:{repo}:tiny?pretrained=false")
    assert random.identity["weights_sha256"] != loaded.identity["weights_sha256"]
    check_results(evaluate_level_1(loaded, glyphs, split_set), loaded)


# --- Hugging Face transformers ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """A tiny ViT and a tiny CLIP, saved with save_pretrained (random weights, as a hub download would be)."""
    import transformers as tf

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    vit = tf.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=8)
    tf.ViTModel(vit).save_pretrained(root / "vit")
    tf.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    clip = tf.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 100, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 16, "patch_size": 8}, projection_dim=12)
    tf.CLIPModel(clip).save_pretrained(root / "clip")
    tf.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
        root / "clip")
    return root


def test_hf_vit_with_cls_and_mean_pooling(hf_models, glyphs, split_set):
    import transformers as tf

    loaded = load_model(f"hf:{hf_models / 'vit'}")
    mean = load_model(f"hf:{hf_models / 'vit'}?pool=mean")
    assert loaded.preprocessing == Preprocessing(resize=16, crop=None, mean=(0.5,) * 3, std=(0.5,) * 3,
                                                 interpolation="bilinear", resize_mode="squash")
    x = torch.randn(2, 3, 16, 16)
    hidden = tf.ViTModel.from_pretrained(hf_models / "vit").eval()(pixel_values=x).last_hidden_state
    torch.testing.assert_close(loaded.module(x), hidden[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(mean.module(x), hidden[:, 1:].mean(1), rtol=0, atol=1e-6)
    assert mean.digest != loaded.digest and load_model(f"hf:{hf_models / 'vit'}").digest == loaded.digest
    random = quiet_load(f"hf:{hf_models / 'vit'}?pretrained=false,seed=1")
    assert random.identity["weights_sha256"] != loaded.identity["weights_sha256"]
    check_results(evaluate_level_1(loaded, glyphs, split_set), loaded)


def test_hf_clip_gives_its_image_embedding(hf_models):
    loaded = load_model(f"hf:{hf_models / 'clip'}")
    assert loaded.preprocessing == Preprocessing(resize=16, crop=16, mean=(0.48145466, 0.4578275, 0.40821073),
                                                 std=(0.26862954, 0.26130258, 0.27577711), interpolation="bicubic")
    assert loaded.module(torch.zeros(3, 3, 16, 16)).shape == (3, 12)   # projection_dim, not the hidden size


def test_hf_missing_model_offline_names_what_to_fetch():
    with pytest.raises(OodmlError, match="huggingface-cli download facebook/dinov2-small --revision main"):
        load_model("hf:facebook/dinov2-small@main")


# --- OpenCLIP ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip_arch(tmp_path_factory):
    """A 1-layer OpenCLIP architecture registered with open_clip.add_model_config."""
    import open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8,
                                              "head_width": 16},
              "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1}}
    path = tmp_path_factory.mktemp("openclip") / "oodml-tiny-clip.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return "oodml-tiny-clip"


def test_open_clip_image_tower(tiny_clip_arch, glyphs, split_set):
    import open_clip

    spec = f"open_clip:{tiny_clip_arch}?pretrained=false"
    loaded = quiet_load(spec)
    _, _, transform = open_clip.create_model_and_transforms(tiny_clip_arch)
    steps = {type(t).__name__: t for t in transform.transforms}
    assert loaded.preprocessing == Preprocessing(
        resize=steps["Resize"].size, crop=steps["CenterCrop"].size[0], mean=steps["Normalize"].mean,
        std=steps["Normalize"].std, interpolation=steps["Resize"].interpolation.value)
    assert loaded.module(torch.zeros(2, 3, 16, 16)).shape == (2, 16)
    assert quiet_load(spec).digest == loaded.digest
    assert quiet_load(spec + ",seed=1").digest != loaded.digest
    check_results(evaluate_level_1(loaded, glyphs, split_set), loaded)


# --- declarations ---------------------------------------------------------------------------------------------

def test_pretraining_on_the_benchmark_dataset_is_warned_about(glyphs, split_set):
    assert declared_training_on("lvd142m", "cub200") is False
    assert declared_training_on("cub_finetuned", "cub200") and declared_training_on("sop", "sop")

    class Grey(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    prep = Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    loaded = LoadedModel(Grey(), prep, "0" * 64, "hf:someone/glyph-model", identity={"pretraining": "glyphs"})
    with pytest.warns(UserWarning, match="declares training on glyphs"):
        evaluate_level_1(loaded, glyphs, split_set)


def test_leaderboard_training_data_carries_the_spec_declaration():
    from oodml.leaderboard.submit import _with_model_declaration

    identity = {"spec": "timm:resnet50.a1_in1k", "library": "timm 1.0.31", "pretraining": "a1_in1k",
                "random_weights": False}
    assert _with_model_declaration("", identity) == "timm:resnet50.a1_in1k (pretraining declared by timm 1.0.31: " \
        "a1_in1k)"
    assert _with_model_declaration("ImageNet-1k", identity).startswith("ImageNet-1k; timm:resnet50.a1_in1k")
    assert _with_model_declaration("x", {}) == "x"


def test_models_list_shows_builtins_and_spec_forms(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for form in ("glyph-cnn", "resnet50", "timm:NAME", "open_clip:ARCH/PRETRAINED", "hf:ORG/NAME[@REVISION]",
                 "torchhub:REPO:ENTRY", "pretrained=false"):
        assert form in out
