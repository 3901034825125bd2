"""Identity is what ran: every model route (evaluate, extractors, train, references, per-level templates) over
every source (registered names, checkpoints, model specs, files) either loads the weights it names and records
them in ``model_identity`` (weights sha256, pretraining), or refuses in one line; random weights are chosen
explicitly, warned about and recorded; pretraining declarations travel with checkpoints and ``verify`` holds
an entry's declaration to its own training data."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from oodml import OodmlError
from oodml._fs import file_digest
from oodml.evaluation import evaluate
from oodml.features import get_extractor
from oodml.leaderboard.submission import pretraining_problems, schema_problems
from oodml.leaderboard.submit import _pretraining, _with_model_declaration
from oodml.models import create_model, load_model, save
from oodml.models import sources as model_sources
from oodml.models.digest import weights_sha256
from oodml.models.identity import IDENTITY_KEYS, entry_pretraining
from oodml.reference import References
from oodml.splits import read_split_set
from oodml.training import TrainConfig, initial_model
from oodml.weights import RESNET50_FILE

SPLITS = Path(__file__).resolve().parents[1] / "splits" / "glyphs" / "v1"
TIMM_RANDOM = "timm:test_vit?pretrained=false,size=16"   # 1 patch: fast on a CPU
TIMM_PRETRAINED = "timm:test_vit?size=16"                  # "pretrained" by the stand-in below
TAG = "test_in1k"                                          # the pretraining the stand-in declares


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def imagenet_file(tmp_path, monkeypatch) -> Path:
    """torchvision's ResNet-50 file in a private torch hub cache, as a download leaves it (random values
    suffice: oodml must load these exact bytes and say so)."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "torch" / "hub" / "checkpoints" / RESNET50_FILE
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


@pytest.fixture
def timm_pretrained(monkeypatch):
    """timm as if it had downloaded pretrained weights tagged ``TAG`` (no network here): the spec's model with
    the library's declaration, built from a fixed seed so it is the same weights every time."""
    real = model_sources.SOURCES["timm"]

    def build(spec, timm):
        random = dataclasses.replace(spec, options={**spec.options, "pretrained": False})
        with torch.random.fork_rng():
            torch.manual_seed(123)
            module, preprocessing, _ = real.build(random, timm)
        return module, preprocessing, TAG if spec.pretrained else None

    monkeypatch.setitem(model_sources.SOURCES, "timm", dataclasses.replace(real, build=build))


def assert_identity(identity: dict, *, weights_sha256: str | None, pretraining: str | None, random: bool,
                    weights_file: str | None = None, declared: bool = True) -> None:
    """Every identity key is present, and the weights, pretraining and randomness are the ones that ran."""
    assert set(IDENTITY_KEYS) <= set(identity), sorted(set(IDENTITY_KEYS) - set(identity))
    assert identity["weights_sha256"] == weights_sha256 and identity["weights_file"] == weights_file
    assert identity["pretraining"] == pretraining and identity["pretraining_declared"] is declared
    assert identity["random_weights"] is random
    json.dumps(identity)                                       # recorded in results and summaries


# --- registered names ---------------------------------------------------------------------------------------

def test_resnet50_means_imagenet_weights_and_says_so(imagenet_file):
    loaded = load_model("resnet50", embed_dim=8)
    assert_identity(loaded.identity, weights_sha256=file_digest(imagenet_file), pretraining="imagenet-1k",
                    random=False, weights_file=RESNET50_FILE)
    expected = torch.load(imagenet_file, weights_only=True)["conv1.weight"]
    assert torch.equal(loaded.module.backbone.resnet.conv1.weight, expected)


def test_resnet50_offline_is_refused_in_one_line_never_random(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))     # no weights cached, and no server (conftest)
    with pytest.raises(OodmlError, match=r"resnet50: cannot download .*resnet50-0676ba61.pth") as info:
        load_model("resnet50", embed_dim=8)
    assert "\n" not in str(info.value)
    with pytest.raises(OodmlError, match="resnet50: cannot download"):
        evaluate("resnet50", "glyphs", read_split_set(SPLITS), levels=[1], device="cpu")


def test_random_weights_only_when_asked_and_then_warned_and_recorded():
    with pytest.warns(UserWarning, match=r"resnet50\?pretrained=false \(seed 0\): RANDOM weights"):
        loaded = load_model("resnet50?pretrained=false", embed_dim=8)
    assert_identity(loaded.identity, weights_sha256=weights_sha256(loaded.module), pretraining=None, random=True)
    with pytest.warns(UserWarning, match="glyph-cnn has no pretrained weights"):
        glyph = load_model("glyph-cnn", embed_dim=8)
    assert_identity(glyph.identity, weights_sha256=weights_sha256(glyph.module), pretraining=None, random=True)


def test_registered_options_are_checked(tmp_path):
    with pytest.raises(OodmlError, match="must be written key=value"):
        load_model("resnet50?pretrained")
    with pytest.raises(OodmlError, match="given in the name and as an argument"):
        load_model("resnet50?pretrained=false", pretrained=False)
    with pytest.raises(OodmlError, match="weights=PATH gives pretrained weights"):
        load_model(f"resnet50?pretrained=false,weights={tmp_path}/w.pth")
    with pytest.raises(OodmlError, match="option 'pretrained' is given twice"):
        load_model("resnet50?pretrained=false,pretrained=true")


def test_train_says_random_weights_with_its_own_option(tmp_path, capsys):
    from oodml.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--dataset", "glyphs", "--arch", "resnet50?pretrained=false", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--arch takes a registered name without options; start from random weights with --random-init" in \
        capsys.readouterr().err


# --- checkpoints --------------------------------------------------------------------------------------------

def test_a_trained_glyph_cnn_is_not_random_and_declares_no_pretraining(tmp_path):
    path = save(create_model("glyph-cnn", embed_dim=8), tmp_path / "level1.pt")
    loaded = load_model(path)
    assert_identity(loaded.identity, weights_sha256=file_digest(path), pretraining=None, random=False,
                    weights_file="level1.pt")
    assert entry_pretraining(loaded.identity) == "none"


def test_a_resnet50_checkpoint_declares_imagenet_and_loads_without_downloading(imagenet_file, tmp_path,
                                                                               monkeypatch):
    model = initial_model(TrainConfig(arch="resnet50", embed_dim=8).resolved())
    path = save(model, tmp_path / "level1.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))     # loading must not need the ImageNet file
    loaded = load_model(path)
    assert_identity(loaded.identity, weights_sha256=file_digest(path), pretraining="imagenet-1k", random=False,
                    weights_file="level1.pt")


def test_a_hostile_checkpoint_config_cannot_make_loading_fetch_weights(tmp_path, monkeypatch):
    path = save(create_model("resnet50", embed_dim=8, pretrained=False), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"] = {**payload["config"], "pretrained": True, "weights": "/etc/passwd"}
    torch.save(payload, tmp_path / "forged.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    loaded = load_model(tmp_path / "forged.pt")               # built untrained, then given the file's weights
    assert not (tmp_path / "empty").exists()
    assert loaded.identity["weights_sha256"] == file_digest(tmp_path / "forged.pt")


def test_random_init_training_is_warned_and_its_checkpoint_declares_no_pretraining(tmp_path):
    with pytest.warns(UserWarning, match=r"RANDOM weights \(--random-init\)"):
        model = initial_model(TrainConfig(arch="resnet50", embed_dim=8, pretrained=False).resolved())
    loaded = load_model(save(model, tmp_path / "level1.pt"))
    assert loaded.identity["pretraining"] is None and loaded.identity["random_weights"] is False


# --- model specs ----------------------------------------------------------------------------------------------

def test_a_spec_with_random_weights_is_warned_and_recorded():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        loaded = load_model(TIMM_RANDOM)
    assert_identity(loaded.identity, weights_sha256=weights_sha256(loaded.module), pretraining=None, random=True)


def test_timm_checkpoint_path_is_the_weights_that_ran(tmp_path, recwarn):
    import timm

    source = timm.create_model("test_vit", num_classes=0, img_size=16)
    torch.save(source.state_dict(), tmp_path / "mine.pth")
    loaded = load_model(f"{TIMM_RANDOM},checkpoint_path={tmp_path}/mine.pth")
    assert not [w for w in recwarn if "RANDOM" in str(w.message)]   # these weights are not random
    assert_identity(loaded.identity, weights_sha256=file_digest(tmp_path / "mine.pth"), pretraining=None,
                    random=False, weights_file="mine.pth", declared=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.module.state_dict().values(),
                                                 source.state_dict().values(), strict=True))
    with pytest.raises(OodmlError, match="checkpoint_path .*missing.pth is not a file"):
        load_model(f"{TIMM_RANDOM},checkpoint_path={tmp_path}/missing.pth")


def test_a_pretrained_specs_declaration_travels_with_its_checkpoints(timm_pretrained, tmp_path):
    spec = load_model(TIMM_PRETRAINED)
    assert_identity(spec.identity, weights_sha256=weights_sha256(spec.module), pretraining=TAG, random=False)
    model = initial_model(TrainConfig(arch=TIMM_PRETRAINED, embed_dim=8).resolved())   # oodml train --arch
    path = save(model, tmp_path / "level1.pt")
    loaded = load_model(path)
    assert_identity(loaded.identity, weights_sha256=file_digest(path), pretraining=TAG, random=False,
                    weights_file="level1.pt")
    with pytest.raises(OodmlError, match=f"--pretraining 'none' contradicts the model, which declares '{TAG}'"):
        _pretraining("none", loaded.identity)
    assert _with_model_declaration("", loaded.identity).endswith(f": {TAG})")


def test_a_spec_checkpoint_of_an_older_oodml_does_not_claim_no_pretraining(timm_pretrained, tmp_path):
    path = save(initial_model(TrainConfig(arch=TIMM_PRETRAINED, embed_dim=8).resolved()), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    torch.save(payload | {"pretraining": None}, tmp_path / "older.pt")   # as oodml stored it before
    identity = load_model(tmp_path / "older.pt").identity
    assert identity["pretraining"] is None and identity["pretraining_declared"] is False
    assert entry_pretraining(identity) is None                           # not declared, not "none"


# --- foreign files ----------------------------------------------------------------------------------------------

def test_a_torchscript_file_records_its_sha256_and_no_declared_pretraining(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.script(create_model("glyph-cnn", embed_dim=8).eval()).save(str(path), _extra_files={
        "preprocessing.json": json.dumps(create_model("glyph-cnn").preprocessing.as_dict())})
    assert_identity(load_model(path).identity, weights_sha256=file_digest(path), pretraining=None, random=False,
                    weights_file="model.pt", declared=False)
    assert_identity(get_extractor(str(path)).identity, weights_sha256=file_digest(path), pretraining=None,
                    random=False, weights_file="model.pt", declared=False)


# --- extractors -------------------------------------------------------------------------------------------------

def test_every_extractor_source_records_what_runs(imagenet_file):
    resnet = get_extractor("resnet50")
    assert_identity(resnet.identity, weights_sha256=file_digest(imagenet_file), pretraining="imagenet-1k",
                    random=False, weights_file=RESNET50_FILE)
    assert resnet.weights_hash == file_digest(imagenet_file)
    assert_identity(get_extractor("pixels").identity, weights_sha256=None, pretraining=None, random=False)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        spec = get_extractor(TIMM_RANDOM)
    assert_identity(spec.identity, weights_sha256=spec.weights_hash, pretraining=None, random=True)


# --- evaluate, per-level templates, references ---------------------------------------------------------------------

def test_evaluate_records_what_ran_zero_shot_and_per_level(glyphs, tmp_path):
    split_set = read_split_set(SPLITS)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        shared = evaluate("glyph-cnn?embed_dim=8", glyphs, split_set, levels=[1], clustering=False, device="cpu")
    assert shared.meta["model_identity"]["random_weights"] is True
    for level in (1, 2):
        save(create_model("glyph-cnn", embed_dim=8, seed=level), tmp_path / f"level{level}.pt")
    per_level = evaluate(str(tmp_path / "level{level}.pt"), glyphs, split_set, levels=[1, 2], clustering=False,
                         device="cpu").meta["model_identity"]
    assert per_level["pretraining"] is None and per_level["pretraining_declared"] is True
    assert per_level["random_weights"] is False and set(per_level) >= set(IDENTITY_KEYS)
    for level in (1, 2):
        assert_identity(per_level["levels"][str(level)], weights_sha256=file_digest(tmp_path / f"level{level}.pt"),
                        pretraining=None, random=False, weights_file=f"level{level}.pt")


def test_per_level_checkpoints_that_disagree_declare_nothing(glyphs, tmp_path):
    split_set = read_split_set(SPLITS)
    declared = create_model("glyph-cnn", embed_dim=8)
    declared.pretraining = "imagenet-1k"
    save(declared, tmp_path / "level1.pt")
    save(create_model("glyph-cnn", embed_dim=8), tmp_path / "level2.pt")
    identity = evaluate(str(tmp_path), glyphs, split_set, levels=[1, 2], clustering=False,
                        device="cpu").meta["model_identity"]
    assert identity["pretraining"] is None and identity["pretraining_declared"] is False
    assert entry_pretraining(identity) is None


def test_references_record_their_identities(tmp_path):
    split_set = read_split_set(SPLITS)
    level = split_set.level(1)
    for fold in (0, 1):
        save(create_model("glyph-cnn", embed_dim=8, seed=fold), tmp_path / f"level1-fold{fold}.pt",
             provenance={"split_digest": split_set.digest, "level": 1, "reference": {"fold": fold}})
    references = References.open(tmp_path, split_set, [level])
    for fold in (0, 1):
        assert_identity(references.models[(1, fold)].identity, weights_file=f"level1-fold{fold}.pt",
                        weights_sha256=file_digest(tmp_path / f"level1-fold{fold}.pt"), pretraining=None,
                        random=False)


# --- leaderboard declarations -------------------------------------------------------------------------------------

def test_verify_holds_an_entrys_pretraining_to_its_own_training_data():
    declared = "mine; timm:resnet50.a1_in1k (pretraining declared by timm 1.0.31: a1_in1k)"
    assert pretraining_problems({"pretraining": "a1_in1k", "training_data": declared}) == []
    assert pretraining_problems({"pretraining": "none", "training_data": declared}) == [
        "pretraining 'none' contradicts training_data, which declares 'a1_in1k' for 'timm:resnet50.a1_in1k'; "
        "set pretraining to 'a1_in1k'"]
    assert pretraining_problems({"pretraining": "", "training_data": declared})       # empty is not a1_in1k
    named = {"pretraining": "none", "training_data": "fine-tuned from timm:resnet50.a1_in1k"}
    assert "names the pretrained model 'timm:resnet50.a1_in1k'" in pretraining_problems(named)[0]
    random = "timm:x?pretrained=false,seed=1 (pretraining declared by timm 1.0.31: random weights)"
    assert pretraining_problems({"pretraining": "none", "training_data": random}) == []
    assert pretraining_problems({"training_data": declared}) == []                    # schema 1: no field


def test_a_published_entry_that_contradicts_its_training_data_fails_verify(leaderboard_entry, tmp_path):
    from oodml.leaderboard import verify

    entry = tmp_path / "glyphs" / "v1" / "tiny"
    shutil.copytree(leaderboard_entry, entry)
    meta = json.loads((entry / "submission.json").read_text())
    assert meta["pretraining"] == "none" and verify(entry).ok        # an untrained CNN: random weights, none
    meta["training_data"] = "timm:resnet18 (pretraining declared by timm 1.0.31: a1_in1k)"
    (entry / "submission.json").write_text(json.dumps(meta))
    result = verify(entry)
    assert not result.ok and "contradicts training_data, which declares 'a1_in1k'" in result.problems[0]
    assert schema_problems(meta)
