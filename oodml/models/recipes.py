"""Training recipes: the hyper-parameters ``oodml train`` uses for an architecture when the command line does
not give them.  **This table is where a new model's recipe goes** (as DomainBed's ``hparams_registry``).

A recipe is registered under a registered model's name (``glyph-cnn``, ``resnet50``) or under a source family,
``SOURCE:`` (``timm:``, ``open_clip:``, ``hf:``), whose recipe every spec of that library gets
(``--arch timm:vit_small_patch16_224``).  :func:`recipe_for` finds an architecture's recipe;
:meth:`oodml.training.TrainConfig.resolved` fills the fields a run leaves unset from it.  An architecture
without one (a plugin's model that registered none) is refused until ``--lr``, ``--iterations`` (or
``--epochs``) and ``--embed-dim`` are given; never silently another model's.

Add one here, or from a plugin (entry-point group ``oodml.recipes``, or
``register_recipe("my-net", Recipe(...))`` next to its ``@register_model``)::

    register_recipe("my-net", Recipe(embed_dim=128, iterations=5_000, batch_size=112, samples_per_class=2,
                                     lr=1e-4, weight_decay=4e-4, eval_every=500, description="..."))

Torch-free, so ``oodml train --help`` and the docs can list the recipes without loading a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..registry import Registry


@dataclass(frozen=True)
class Recipe:
    """How an architecture trains by default: the fields of :class:`~oodml.training.TrainConfig` it fills.

    Attributes:
        embed_dim: embedding size (dimensions).
        iterations: training steps per level.
        batch_size: images per batch; ``samples_per_class``: images of each class in it (batch_size / K classes).
        lr: Adam's learning rate; ``weight_decay``: its L2 weight decay.
        eval_every: iterations between validations on the level's val classes (and resumable states).
        pretrained: start from the architecture's pretrained weights (resnet50: ImageNet); None where the
            architecture has none to choose here (glyph-cnn; a spec says it in the spec, ``?pretrained=false``).
        description: one line: whose recipe it is and why, printed when ``train`` uses a family's recipe.
        stated: print the recipe when ``train`` uses it (a family's recipe, fitted to no single model).
    """

    embed_dim: int | None
    iterations: int | None
    batch_size: int
    samples_per_class: int
    lr: float | None
    weight_decay: float
    eval_every: int
    pretrained: bool | None = None
    description: str = ""
    stated: bool = False

    def defaults(self) -> dict:
        """The :class:`~oodml.training.TrainConfig` fields this recipe fills (None: the run must give it)."""
        return {k: v for k, v in asdict(self).items() if k not in ("description", "stated")}

    def summary(self) -> str:
        """The numbers in one line: ``lr 1e-05, 10000 iterations, embed_dim 512, batch 112 (2 per class), ...``."""
        return (f"lr {self.lr}, {self.iterations} iterations, embed_dim {self.embed_dim}, batch {self.batch_size} "
                f"({self.samples_per_class} per class), weight decay {self.weight_decay}, validation every "
                f"{self.eval_every} iterations")


#: architecture name, or ``SOURCE:`` for every spec of a library -> :class:`Recipe`
RECIPES: Registry[Recipe] = Registry("training recipe", entry_points="oodml.recipes")


def register_recipe(name: str, recipe: Recipe) -> Recipe:
    """Register ``recipe`` for the registered model ``name``, or for every spec of a library as ``SOURCE:``
    (a second registration of a name replaces the first, with a warning)."""
    return RECIPES.register(name, recipe)


# --- the table ------------------------------------------------------------------------------------------

register_recipe("resnet50", Recipe(
    embed_dim=512, iterations=10_000, batch_size=112, samples_per_class=2, lr=1e-5, weight_decay=4e-4,
    eval_every=500, pretrained=True, description="ooDML's: fine-tune the ImageNet ResNet-50"))
register_recipe("glyph-cnn", Recipe(
    embed_dim=32, iterations=400, batch_size=128, samples_per_class=4, lr=1e-3, weight_decay=1e-4,
    eval_every=150, description="CPU-sized, for the glyphs demo (the CNN starts from random weights)"))
for _source in ("timm", "open_clip", "hf"):  # torchhub: never a training backbone (a checkpoint would name code)
    register_recipe(f"{_source}:", Recipe(
        embed_dim=512, iterations=10_000, batch_size=112, samples_per_class=2, lr=1e-5, weight_decay=4e-4,
        eval_every=500, stated=True,
        description=f"the fine-tuning recipe of {_source}: backbones (ooDML's ResNet-50 recipe: a small lr "
                    "for pretrained weights), fitted to no one model"))

#: what a run of an architecture without a recipe takes for the fields it need not give (it must give
#: --lr, --iterations or --epochs, and --embed-dim): ooDML's sampler, decay and validation interval
WITHOUT_RECIPE = Recipe(embed_dim=None, iterations=None, batch_size=112, samples_per_class=2, lr=None,
                        weight_decay=4e-4, eval_every=500, stated=True,
                        description="no recipe: the given --lr, --iterations and --embed-dim, with ooDML's batch "
                                    "(112, 2 per class), weight decay and validation interval")


def recipe_key(arch: str) -> str | None:
    """The :data:`RECIPES` name that holds ``arch``'s recipe: ``arch`` itself for a registered model, ``SOURCE:``
    for a model spec, None for anything else (read by :func:`~oodml.models.refs.resolve_model_ref`).

    Raises:
        OodmlError: ``arch`` names nothing (an unknown name, with close matches).
    """
    from .refs import resolve_model_ref

    ref = resolve_model_ref(arch)
    if ref.kind == "spec":
        return arch.partition(":")[0] + ":"
    return ref.name if ref.kind == "registered" else None


def recipe_for(arch: str) -> Recipe | None:
    """``arch``'s recipe (a registered name's own, or its spec's library's), or None when it has none."""
    key = recipe_key(arch)
    return RECIPES.get(key) if key is not None and key in RECIPES else None
