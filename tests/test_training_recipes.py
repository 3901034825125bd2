"""Training recipes (oodml.models.recipes): every architecture trains with its own recipe or a library's stated
fine-tuning recipe; one without a recipe is refused until --lr, --iterations and --embed-dim are given, never
given the glyph CNN's."""

import dataclasses

import pytest
import torch
from cli_run import one_line_error, run

import oodml.training
from oodml import OodmlError
from oodml.cli import main
from oodml.models.recipes import RECIPES, WITHOUT_RECIPE, Recipe, recipe_for, register_recipe
from oodml.models.registry import MODELS
from oodml.training import TrainConfig

TIMM_TINY = "timm:test_vit?pretrained=false,size=16"


@pytest.fixture
def recipe_less(monkeypatch) -> str:
    """A plugin's architecture that registered no recipe."""
    monkeypatch.setitem(MODELS._entries, "recipe-less", MODELS.entry("glyph-cnn"))
    return "recipe-less"


def numbers(cfg: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k in WITHOUT_RECIPE.defaults()}


def test_built_in_models_keep_their_recipes():
    # the values the glyphs demo and ooDML's resnet50 runs were trained with: changing them changes checkpoints
    assert numbers(TrainConfig().resolved()) == {
        "embed_dim": 32, "iterations": 400, "batch_size": 128, "samples_per_class": 4, "lr": 1e-3,
        "weight_decay": 1e-4, "eval_every": 150, "pretrained": None}
    assert numbers(TrainConfig(arch="resnet50").resolved()) == {
        "embed_dim": 512, "iterations": 10_000, "batch_size": 112, "samples_per_class": 2, "lr": 1e-5,
        "weight_decay": 4e-4, "eval_every": 500, "pretrained": True}
    assert TrainConfig().recipe_statement() is None and TrainConfig(arch="resnet50").recipe_statement() is None


@pytest.mark.parametrize("spec", [TIMM_TINY, "open_clip:RN50/openai", "hf:facebook/dinov2-small"])
def test_a_spec_gets_its_librarys_fine_tuning_recipe_and_says_so(spec):
    resolved = TrainConfig(arch=spec).resolved()
    assert (resolved.lr, resolved.iterations, resolved.embed_dim) == (1e-5, 10_000, 512)
    assert resolved.lr != RECIPES["glyph-cnn"].lr
    source = spec.partition(":")[0]
    assert recipe_for(spec) is RECIPES[f"{source}:"]
    statement = TrainConfig(arch=spec, lr=3e-4, embed_dim=64).recipe_statement()
    assert statement.startswith(f"{spec}: the fine-tuning recipe of {source}: backbones")
    assert "lr 0.0003, 10000 iterations, embed_dim 64, batch 112 (2 per class)" in statement
    assert "change them with --lr, --iterations, --embed-dim" in statement


def test_an_architecture_without_a_recipe_is_refused_naming_what_to_give(recipe_less):
    with pytest.raises(OodmlError, match=r"^recipe-less has no training recipe; give --lr, --iterations, --embed-dim "
                                         r"\(--lr, --iterations or --epochs, and --embed-dim\), or register one in "
                                         r"oodml\.models\.recipes$"):
        TrainConfig(arch=recipe_less).resolved()
    with pytest.raises(OodmlError, match="has no training recipe; give --embed-dim "):
        TrainConfig(arch=recipe_less, lr=1e-4, epochs=2.0).resolved()


def test_given_the_three_numbers_the_rest_are_stated_never_the_glyph_cnns(recipe_less):
    cfg = TrainConfig(arch=recipe_less, lr=1e-4, iterations=50, embed_dim=16)
    resolved = cfg.resolved()
    assert (resolved.lr, resolved.iterations, resolved.embed_dim) == (1e-4, 50, 16)
    assert (resolved.batch_size, resolved.samples_per_class) == (112, 2) != (128, 4)
    assert cfg.recipe_statement().startswith("recipe-less: no recipe: ")


def test_a_registered_recipe_is_used(recipe_less, monkeypatch):
    monkeypatch.setitem(RECIPES._entries, recipe_less, RECIPES.entry("glyph-cnn"))
    mine = Recipe(embed_dim=24, iterations=7, batch_size=8, samples_per_class=2, lr=2e-3, weight_decay=0.0,
                  eval_every=7, description="mine")
    with pytest.warns(UserWarning, match="training recipe 'recipe-less' was already registered; replacing it"):
        register_recipe(recipe_less, mine)
    assert numbers(TrainConfig(arch=recipe_less).resolved())["iterations"] == 7


@pytest.mark.parametrize(("arch", "message"), [
    ("torchhub:someone/hub:entry", "cannot be a training backbone: a torch hub repository is code"),
    ("no-such-arch", "unknown model 'no-such-arch'"),
])
def test_what_is_no_architecture_is_refused_before_any_recipe(arch, message):
    with pytest.raises(OodmlError, match=message):
        TrainConfig(arch=arch, lr=1e-4, iterations=5, embed_dim=8).resolved()


def test_a_checkpoint_is_no_architecture(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"format": "oodml-checkpoint"}, path)
    with pytest.raises(OodmlError, match="names a model file, not an architecture"):
        TrainConfig(arch=str(path)).resolved()


def test_train_prints_the_fine_tuning_recipe_and_refuses_a_recipe_less_arch(recipe_less, tmp_path, monkeypatch,
                                                                            capsys):
    ran = []
    monkeypatch.setattr(oodml.training, "train_levels", lambda *args, **kwargs: ran.append(args[3]))
    assert main(["train", "--dataset", "glyphs", "--splits", "v1", "--level", "1", "--arch", TIMM_TINY,
                 "--iterations", "3", "--out", str(tmp_path / "spec")]) == 0
    assert ran and ran[0].iterations == 3 and ran[0].resolved().lr == 1e-5
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{TIMM_TINY}: the fine-tuning recipe of timm: backbones") and "lr 1e-05, 3 iterations"
               in line for line in lines), lines
    code, lines = run("train", "--dataset", "glyphs", "--splits", "v1", "--arch", recipe_less,
                      "--out", str(tmp_path / "plugin"))
    assert "recipe-less has no training recipe; give --lr, --iterations, --embed-dim" in one_line_error(code, lines)
    assert not (tmp_path / "plugin").exists() or not any((tmp_path / "plugin").iterdir())
