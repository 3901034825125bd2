"""Identity is what ran: every model route (evaluate, extractors, train, references, per-level templates) over
every source (registered names, checkpoints, model specs, files) either loads the weights it names and records
them in ``model_identity`` (weights sha256, pretraining), or refuses in one line; random weights are chosen
explicitly, warned about and recorded; pretraining declarations travel with checkpoints and ``verify`` holds
an entry's declaration to its own training data."""

import dataclasses
import json
import shutil
import warnings
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


@pytest.fixture(scope="module")
def imagenet_cache(tmp_path_factory) -> Path:
    """A torch hub folder holding torchvision's ResNet-50 file as a download leaves it (random values suffice:
    oodml must load these exact bytes and say so); made once, it is 100 MB."""
    import torchvision

    torch_home = tmp_path_factory.mktemp("torch")
    path = torch_home / "hub" / "checkpoints" / RESNET50_FILE
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return torch_home


@pytest.fixture
def imagenet_file(imagenet_cache, monkeypatch) -> Path:
    """The ImageNet file, in the torch hub cache of this test."""
    monkeypatch.setenv("TORCH_HOME", str(imagenet_cache))
    return imagenet_cache / "hub" / "checkpoints" / RESNET50_FILE


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


# --- every route x every source ------------------------------------------------------------------------------

SOURCE_NAMES = ("resnet50", "resnet50?pretrained=false", "glyph-cnn", "timm-random", "timm-pretrained",
                "timm-checkpoint-path", "torchscript-file")
#: source -> what ran when it is evaluated or used as an extractor: (weights hashed, pretraining, pretraining
#: declared, random weights); weights "imagenet" (torchvision's file), "own file" (the source's file) or "state"
#: (the state dict of the module that ran)
RAN = {"resnet50": ("imagenet", "imagenet-1k", True, False),
       "resnet50?pretrained=false": ("state", None, True, True),
       "glyph-cnn": ("state", None, True, True),
       "timm-random": ("state", None, True, True),
       "timm-pretrained": ("state", TAG, True, False),
       "timm-checkpoint-path": ("own file", None, False, False),
       "torchscript-file": ("own file", None, False, False)}
#: source -> (pretraining, pretraining declared) of the checkpoint `oodml train --arch SOURCE` writes; None: refused
TRAINED = {"resnet50": ("imagenet-1k", True), "resnet50?pretrained=false": (None, True), "glyph-cnn": (None, True),
           "timm-random": (None, True), "timm-pretrained": (TAG, True), "timm-checkpoint-path": (None, False),
           "torchscript-file": None}
#: sources that are not extractors: refused as one
NOT_EXTRACTORS = {"resnet50?pretrained=false", "glyph-cnn"}


@pytest.fixture
def named(tmp_path, imagenet_file, timm_pretrained) -> dict[str, tuple[str, Path | None]]:
    """source -> (the text that names it, its own weights file or None)."""
    import timm

    torch.save(timm.create_model("test_vit", num_classes=0, img_size=16).state_dict(), tmp_path / "mine.pth")
    script = tmp_path / "model.pt"
    glyph = create_model("glyph-cnn", embed_dim=8).eval()
    torch.jit.script(glyph).save(str(script), _extra_files={"preprocessing.json": json.dumps(
        glyph.preprocessing.as_dict())})
    return {"resnet50": ("resnet50", None), "resnet50?pretrained=false": ("resnet50?pretrained=false", None),
            "glyph-cnn": ("glyph-cnn", None), "timm-random": (TIMM_RANDOM, None),
            "timm-pretrained": (TIMM_PRETRAINED, None),
            "timm-checkpoint-path": (f"{TIMM_RANDOM},checkpoint_path={tmp_path}/mine.pth", tmp_path / "mine.pth"),
            "torchscript-file": (str(script), script)}


def _train_config(text: str) -> TrainConfig:
    """What `oodml train --arch` makes of a source (random resnet50 weights are its --random-init)."""
    if text == "resnet50?pretrained=false":
        return TrainConfig(arch="resnet50", embed_dim=8, pretrained=False)
    return TrainConfig(arch=text, embed_dim=8)


def _run(route: str, source: str, text: str, tmp_path: Path) -> tuple[dict, torch.nn.Module | None, Path | None]:
    """(identity, module that ran, checkpoint written) of one route; raises OodmlError when it refuses."""
    if route == "evaluate":
        loaded = load_model(text)
        return loaded.identity, loaded.module, None
    if route == "extractor":
        extractor = get_extractor(text)
        return extractor.identity, extractor.build() if RAN[source][0] == "state" else None, None
    path = save(initial_model(_train_config(text).resolved()), tmp_path / "level1.pt")
    return load_model(path).identity, None, path


@pytest.mark.parametrize("source", SOURCE_NAMES)
@pytest.mark.parametrize("route", ["evaluate", "extractor", "train"])
def test_every_route_loads_what_each_source_names_or_refuses(route, source, named, imagenet_file, tmp_path):
    text, own_file = named[source]
    refused = (route == "extractor" and source in NOT_EXTRACTORS) or (route == "train" and TRAINED[source] is None)
    if refused:
        with pytest.raises(OodmlError) as info:
            _run(route, source, text, tmp_path)
        assert "\n" not in str(info.value)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        identity, module, checkpoint = _run(route, source, text, tmp_path)
    if route == "train":                        # a trained checkpoint: its own file; never random
        pretraining, declared = TRAINED[source]
        assert_identity(identity, weights_sha256=file_digest(checkpoint), weights_file="level1.pt",
                        pretraining=pretraining, declared=declared, random=False)
        return
    weights, pretraining, declared, random = RAN[source]
    file = {"imagenet": imagenet_file, "own file": own_file}.get(weights)
    expected = file_digest(file) if file is not None else weights_sha256(module)
    assert_identity(identity, weights_sha256=expected, weights_file=file.name if file is not None else None,
                    pretraining=pretraining, declared=declared, random=random)
    warned = any("RANDOM weights" in str(w.message) for w in caught)
    assert warned is random                      # random weights are always warned about, and only they


def test_resnet50_loads_the_imagenet_files_bytes(imagenet_file):
    expected = torch.load(imagenet_file, weights_only=True)["conv1.weight"]
    assert torch.equal(load_model("resnet50", embed_dim=8).module.backbone.resnet.conv1.weight, expected)


def test_resnet50_offline_is_refused_in_one_line_never_random(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))     # no weights cached, and no server (conftest)
    with pytest.raises(OodmlError, match=r"resnet50: cannot download .*resnet50-0676ba61.pth") as info:
        load_model("resnet50", embed_dim=8)
    assert "\n" not in str(info.value)
    with pytest.raises(OodmlError, match="resnet50: cannot download"):
        evaluate("resnet50", "glyphs", read_split_set(SPLITS), levels=[1], device="cpu")


def test_random_weights_are_named_in_the_warning():
    with pytest.warns(UserWarning, match=r"resnet50\?pretrained=false \(seed 0\): RANDOM weights \(pretrained=false\)"):
        load_model("resnet50?pretrained=false", embed_dim=8)
    with pytest.warns(UserWarning, match=r"glyph-cnn \(seed 0\): RANDOM weights \(glyph-cnn has no pretrained"):
        load_model("glyph-cnn", embed_dim=8)
    with pytest.warns(UserWarning, match=r"RANDOM weights \(--random-init\)"):
        initial_model(TrainConfig(arch="resnet50", embed_dim=8, pretrained=False).resolved())


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


# --- checkpoints ------------------------------------------------------------------------------------------------

def test_a_resnet50_checkpoint_loads_without_the_imagenet_file(imagenet_file, tmp_path, monkeypatch):
    path = save(initial_model(TrainConfig(arch="resnet50", embed_dim=8).resolved()), tmp_path / "level1.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))     # loading must not need the ImageNet file
    assert load_model(path).identity["pretraining"] == "imagenet-1k"
    assert not (tmp_path / "empty").exists()


def test_a_hostile_checkpoint_config_cannot_make_loading_fetch_weights(tmp_path, monkeypatch):
    path = save(create_model("resnet50", embed_dim=8, pretrained=False), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"] = {**payload["config"], "pretrained": True, "weights": "/etc/passwd"}
    torch.save(payload, tmp_path / "forged.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    loaded = load_model(tmp_path / "forged.pt")               # built untrained, then given the file's weights
    assert not (tmp_path / "empty").exists()
    assert loaded.identity["weights_sha256"] == file_digest(tmp_path / "forged.pt")


def test_a_pretrained_specs_declaration_refuses_a_contradicting_submission(timm_pretrained, tmp_path):
    path = save(initial_model(TrainConfig(arch=TIMM_PRETRAINED, embed_dim=8).resolved()), tmp_path / "level1.pt")
    identity = load_model(path).identity
    with pytest.raises(OodmlError, match=f"--pretraining 'none' contradicts the model, which declares '{TAG}'"):
        _pretraining("none", identity)
    assert _pretraining(None, identity) == TAG
    assert _with_model_declaration("", identity) == f"{TIMM_PRETRAINED} (pretraining declared by " \
        f"{identity['library']}: {TAG})"


def test_a_spec_checkpoint_of_an_older_oodml_does_not_claim_no_pretraining(timm_pretrained, tmp_path):
    path = save(initial_model(TrainConfig(arch=TIMM_PRETRAINED, embed_dim=8).resolved()), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    torch.save(payload | {"pretraining": None}, tmp_path / "older.pt")   # as oodml stored it before
    identity = load_model(tmp_path / "older.pt").identity
    assert identity["pretraining"] is None and identity["pretraining_declared"] is False
    assert entry_pretraining(identity) is None                           # not declared, not "none"


# --- model specs ------------------------------------------------------------------------------------------------

def test_timm_checkpoint_path_loads_that_file(tmp_path, recwarn):
    import timm

    source = timm.create_model("test_vit", num_classes=0, img_size=16)
    torch.save(source.state_dict(), tmp_path / "mine.pth")
    loaded = load_model(f"{TIMM_RANDOM},checkpoint_path={tmp_path}/mine.pth")
    assert all(torch.equal(a, b) for a, b in zip(loaded.module.state_dict().values(),
                                                 source.state_dict().values(), strict=True))
    with pytest.raises(OodmlError, match="checkpoint_path .*missing.pth is not a file"):
        load_model(f"{TIMM_RANDOM},checkpoint_path={tmp_path}/missing.pth")


def test_the_pixels_extractor_has_no_weights():
    assert_identity(get_extractor("pixels").identity, weights_sha256=None, pretraining=None, random=False)


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
