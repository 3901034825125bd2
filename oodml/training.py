"""Per-level DML training: train on a level's tuning-train classes, select on its val classes, save with provenance.

``train(dataset, splits, level, TrainConfig(loss=...), out=DIR)`` trains one model on the classes
of one level's tuning split (``train`` minus ``val``), with a class-balanced
sampler (P classes x K images), evaluates Recall@1 on the ``val`` classes
periodically, keeps the best state, and writes an oodml checkpoint whose
provenance (split digest, level, train classes, loss, hyper-parameters,
seed, oodml version) lets the evaluation harness score it in the per-level
protocol and refuse it on levels whose test classes it saw.  Test classes are
never touched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from ._fs import atomic_path
from .augmentations import AUGMENTATIONS
from .datasets import ImageDataset, load_dataset
from .distributed import barrier, rank_world
from .embedding import PRECISIONS, EmbedSettings, embed, resolve_device
from .errors import OodmlError
from .losses import REGULARISERS, get_loss
from .metrics import retrieval_metrics
from .models import EmbeddingModel, create_model, save
from .models.identity import warn_random_weights
from .models.recipes import WITHOUT_RECIPE, Recipe, recipe_for
from .models.refs import resolve_model_ref
from .models.sources import checkpoint_spec_problem, is_spec, parse_spec
from .progress import progress
from .splits import Level, SplitSet


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (recorded in the checkpoint's provenance).

    ``None`` fields take the architecture's training recipe (:mod:`oodml.models.recipes`, the table where a
    model's recipe goes): a registered model's own, or its spec's library's fine-tuning recipe.
    """

    loss: str = "multi-similarity"
    arch: str = "glyph-cnn"
    embed_dim: int | None = None
    iterations: int | None = None
    epochs: float | None = None         # alternative to iterations: passes over the training images
    batch_size: int | None = None
    samples_per_class: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    regulariser: str | None = None      # "sec" or "l2"
    eta: float = 0.0                    # weight of the regulariser
    eval_every: int | None = None
    precision: str = "fp32"             # bf16 / fp16: autocast for the model's forward pass (fp16 needs a GPU)
    seed: int = 0
    pretrained: bool | None = None      # start from the architecture's pretrained weights (resnet50: ImageNet)
    weights: str | None = None          # the pretrained weights file (default: torchvision's, downloaded once)

    def resolved(self) -> TrainConfig:
        """This config with the architecture's defaults filled in, its numbers checked.

        Raises:
            OodmlError: an architecture without a recipe and without ``lr``, ``iterations`` (or ``epochs``) and
                ``embed_dim`` (:meth:`recipe`), both ``iterations`` and ``epochs``, a number out of range (see
                :meth:`check_numbers`), or a start the architecture cannot take (see :meth:`check_start`).
        """
        defaults = self.recipe().defaults()
        values = {k: (defaults.get(k) if v is None else v) for k, v in dataclasses.asdict(self).items()}
        if self.epochs is not None and self.iterations is not None:
            raise OodmlError("give --iterations or --epochs, not both")
        resolved = TrainConfig(**values)
        resolved.check_numbers()
        resolved.check_start()
        return resolved

    def recipe(self) -> Recipe:
        """The recipe this run's unset fields come from: the architecture's (:func:`oodml.models.recipes.recipe_for`),
        else, when the run gives ``lr``, ``iterations`` (or ``epochs``) and ``embed_dim`` itself,
        :data:`~oodml.models.recipes.WITHOUT_RECIPE` for the rest.

        Raises:
            OodmlError: ``arch`` is no architecture (a model file, a per-level model, a torch hub spec), or has no
                recipe and one of those three is not given (named as options).
        """
        ref = resolve_model_ref(self.arch)
        if ref.kind in ("file", "per-level"):
            raise OodmlError(f"{self.arch!r} names a {ref.describe()}, not an architecture; train a registered "
                             "architecture (see `oodml models list`) or a model spec such as 'timm:resnet18'")
        problem = checkpoint_spec_problem(parse_spec(self.arch)) if ref.kind == "spec" else None
        if problem:
            raise OodmlError(f"{self.arch} cannot be a training backbone: {problem}")
        recipe = recipe_for(self.arch)
        if recipe is not None:
            return recipe
        missing = [option for option, given in (("--lr", self.lr), ("--iterations", self.iterations or self.epochs),
                                                ("--embed-dim", self.embed_dim)) if given is None]
        if missing:
            raise OodmlError(f"{self.arch} has no training recipe; give {', '.join(missing)} (--lr, --iterations or "
                             "--epochs, and --embed-dim), or register one in oodml.models.recipes")
        return WITHOUT_RECIPE

    def recipe_statement(self) -> str | None:
        """One line saying which recipe this run takes its unset numbers from, when that recipe was fitted to no
        one model (a library's fine-tuning recipe, or :data:`~oodml.models.recipes.WITHOUT_RECIPE`), so that the
        output states it; None for a model's own recipe.  ``oodml train`` prints it."""
        recipe = self.recipe()
        if not recipe.stated:
            return None
        numbers = dataclasses.replace(recipe, **{k: v for k, v in self.resolved().__dict__.items()
                                                 if k in recipe.defaults()}).summary()
        return f"{self.arch}: {recipe.description}: {numbers}; change them with --lr, --iterations, --embed-dim"

    def check_start(self) -> None:
        """Refuse a weights file with random initialisation, and a choice of pretrained weights for an
        architecture that has none to choose here (glyph-cnn; a model spec says it in the spec:
        ``?pretrained=false``).  Called on a resolved config, before any data is read."""
        if self.weights is not None and self.pretrained is False:
            raise OodmlError("--weights gives pretrained weights; drop it or --random-init")
        chosen = self.pretrained is not None or self.weights is not None
        # resolved, pretrained is None only for an architecture without pretrained weights and no --random-init
        if (is_spec(self.arch) and chosen) or (self.pretrained is None and self.weights is not None):
            raise OodmlError(f"{self.arch} has no pretrained weights to choose here; drop --weights/--random-init"
                             + (" and add ?pretrained=false to the spec for random weights" if is_spec(self.arch)
                                else ""))

    def check_numbers(self) -> None:
        """Refuse nonsense: counts below 1, a learning rate or epochs not above 0, negative weights, a seed
        outside [0, 2**63).  The CLI's argument types refuse these first; this guards the Python API."""
        for name in ("embed_dim", "iterations", "batch_size", "samples_per_class", "eval_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise OodmlError(f"{name}={value!r}: must be a whole number of at least 1")
        for name, above_zero in (("epochs", True), ("lr", True), ("weight_decay", False), ("eta", False)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float, np.number)) and math.isfinite(value)
                                          and (value > 0 if above_zero else value >= 0)):
                bound = "above 0" if above_zero else "of at least 0"
                raise OodmlError(f"{name}={value!r}: must be a finite number {bound}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise OodmlError(f"seed={self.seed!r}: must be a whole number from 0 to 2**63 - 1")


def initial_model(cfg: TrainConfig) -> torch.nn.Module:
    """The model a run of the resolved ``cfg`` starts from: ``cfg.arch`` with its pretrained weights when
    ``cfg.pretrained`` (ooDML fine-tunes an ImageNet ResNet-50), freshly initialised from ``cfg.seed`` when
    ``cfg.pretrained`` is False (``--random-init``, warned about) or None (an architecture without pretrained
    weights, such as glyph-cnn).  A model spec's backbone comes as its spec says.  The model declares its
    pretraining (``model.pretraining``), which its checkpoint keeps.

    Raises:
        OodmlError: the weights cannot be read or downloaded (the message says where to put them).
    """
    if cfg.pretrained:
        return create_model(cfg.arch, embed_dim=cfg.embed_dim, seed=cfg.seed, pretrained=True,
                            weights=cfg.weights)
    if cfg.pretrained is False:
        warn_random_weights(f"training {cfg.arch} (seed {cfg.seed})", "--random-init")
        return create_model(cfg.arch, embed_dim=cfg.embed_dim, seed=cfg.seed, pretrained=False)
    return create_model(cfg.arch, embed_dim=cfg.embed_dim, seed=cfg.seed)


class _Train(torch.utils.data.Dataset):
    def __init__(self, ds: ImageDataset, indices: np.ndarray, transform: Callable):
        self.ds, self.indices, self.transform = ds, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.ds[int(self.indices[i])]
        return self.transform(image), label


def validation_recall(model: EmbeddingModel, ds: ImageDataset, indices: np.ndarray, device: str) -> float:
    emb = embed(ds, model, model.preprocessing, indices=indices, settings=EmbedSettings(device), desc="validate")
    return retrieval_metrics(emb, ds.labels[indices], ks=(1,), clustering=False)["recall@1"]


def train(dataset: str | ImageDataset, splits: SplitSet, level: int, config: TrainConfig | None = None, *,
          out: str | Path | None = None, root: str | Path | None = None, device: str = "auto",
          workers: int = 0) -> tuple[EmbeddingModel, dict]:
    """Train one model on one level; return it (best validation state) and its provenance.

    With ``out``, also writes ``out/level{level}.pt``, and at every evaluation
    point ``out/level{level}.state.pt`` (model, optimiser, loss parameters, best
    state, random state), from which a killed run of the same configuration
    resumes and ends with the same weights; the state file is removed at the end.
    """
    cfg = (config or TrainConfig()).resolved()
    _check_run_arguments(cfg, device, workers)
    ds = dataset if isinstance(dataset, ImageDataset) else load_dataset(dataset, root=root)
    splits.check_dataset(ds.fingerprint, ds.root)
    lv: Level = splits.level(level)
    train_idx = ds.indices_of_classes(lv.tuning_train_classes)
    cfg = with_iterations(cfg, len(train_idx))
    identity = {"config": dataclasses.asdict(cfg), "split_digest": splits.digest, "level": level}
    if out is not None:
        finished = finished_checkpoint(Path(out) / f"level{level}.pt", identity)
        if finished is not None:
            return finished
    state_path = Path(out) / f"level{level}.state.pt" if out is not None else None
    rows = TrainingRows(lv.tuning_train_classes, train_idx, ds.indices_of_classes(lv.val_classes))
    model, fitted = train_on(ds, rows, cfg, name=f"level {level}", device=device, workers=workers,
                             state_path=state_path, identity=identity)
    provenance = {
        "dataset": ds.name, "dataset_fingerprint": ds.fingerprint, "splits": f"{splits.dataset}@{splits.version}",
        "split_digest": splits.digest, "level": level, "train_classes": list(lv.tuning_train_classes),
        "val_classes": list(lv.val_classes), "selected_on": "val recall@1", **fitted,
        "config": dataclasses.asdict(cfg), "oodml_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if out is not None and rank_world()[0] == 0:
        save(model, Path(out) / f"level{level}.pt", provenance=provenance)
        state_path.unlink(missing_ok=True)
    barrier()
    return model, provenance


def with_iterations(config: TrainConfig, n_images: int) -> TrainConfig:
    """A resolved ``config`` with its ``epochs`` (passes over ``n_images`` training images) turned into
    iterations; unchanged when it counts iterations."""
    if config.epochs is None:
        return config
    iterations = max(1, int(np.ceil(config.epochs * n_images / config.batch_size)))
    return dataclasses.replace(config, iterations=iterations, eval_every=min(config.eval_every, iterations))


@dataclass(frozen=True)
class TrainingRows:
    """The images one training run uses.

    Attributes:
        classes: the training classes, in the order that numbers them inside the loss (its proxies).
        train: dataset rows to train on, each of one of ``classes``.
        val: dataset rows whose Recall@1 selects the best state.
    """

    classes: Sequence[str]
    train: np.ndarray
    val: np.ndarray


def train_on(ds: ImageDataset, rows: TrainingRows, config: TrainConfig, *, name: str, device: str = "auto",
             workers: int = 0, state_path: Path | None = None, identity: dict | None = None
             ) -> tuple[EmbeddingModel, dict]:
    """Train on the images ``rows.train`` of ``rows.classes``, keeping the state with the best Recall@1 on the
    images ``rows.val``: the training steps of :func:`train`, for any set of images.

    Args:
        rows: the classes and the dataset rows to train and to select on.
        config: resolved, counting iterations (:meth:`TrainConfig.resolved`, :func:`with_iterations`).
        name: the run's name in progress bars and errors (``"level 3"``).
        state_path, identity: where a resumable state is written at each validation, and the fields it must
            match to be resumed (a killed run of the same identity continues and ends with the same weights).

    Returns:
        The model at its best validation state (CPU, eval mode) and ``{"best_val_recall@1", "history"}``.

    Raises:
        OodmlError: a setting no run can use, an image outside ``classes``, a P x K batch they cannot fill,
            fp16 without CUDA, divergence.
    """
    _check_run_arguments(config, device, workers)
    classes, train_idx, val_idx = rows.classes, rows.train, rows.val
    outside = np.setdiff1d(ds.labels[train_idx], [ds.class_index[c] for c in classes])
    if len(outside):
        raise OodmlError(f"{name}: training images of class {ds.classes[int(outside[0])]!r}, which is not "
                         "among the training classes")
    rank, world = rank_world()
    _check_batches(config, ds.labels[train_idx], len(classes), world)
    dev = resolve_device(device)
    if config.precision == "fp16" and dev.type != "cuda":
        raise OodmlError("fp16 training needs a CUDA device; use --precision bf16 or fp32 here")
    run = _Run.start(config, ds, classes, dev, world, name)
    # Resume a killed run of the same configuration from its last evaluation point.
    state = _read_state(state_path, identity or {})
    done = state["step"] if state else 0
    batches = run.batches(ds, train_idx, done, rank, world, workers)  # draws the loader's seed, now
    if state:  # after the loader has drawn its seed, so the random stream continues exactly where it stopped
        run.restore(state)
    run.fit(batches, ds, val_idx, start=done, rank=rank, world=world, state_path=state_path, identity=identity or {})
    return run.best_model(), {"best_val_recall@1": run.best, "history": run.history}


def train_levels(dataset: ImageDataset, splits: SplitSet, levels: Sequence[int] | None = None,
                 config: TrainConfig | None = None, *, out: str | Path, device: str = "auto", workers: int = 0,
                 report: Callable[[int, dict], None] | None = None) -> dict[int, dict]:
    """Train one model per level (every level of ``splits`` when ``levels`` is None), each written to
    ``out/level{N}.pt`` (finished levels of the same configuration are kept, killed ones resume).

    ``report(level, provenance)`` is called as each level finishes (the CLI prints a line).

    Returns:
        level -> provenance of its model.
    """
    done = {}
    for level in levels if levels is not None else [lv.index for lv in splits.levels]:
        _, done[level] = train(dataset, splits, level, config, out=out, device=device, workers=workers)
        if report is not None:
            report(level, done[level])
    return done


def _check_run_arguments(cfg: TrainConfig, device: str, workers: int) -> None:
    """Refuse a loss, regulariser, precision, device or worker count no run can use, before any data is read."""
    get_loss(cfg.loss)
    if cfg.regulariser is not None:
        REGULARISERS[cfg.regulariser]
    if cfg.precision not in PRECISIONS:
        raise OodmlError(f"unknown precision {cfg.precision!r}; use {', '.join(PRECISIONS)}")
    resolve_device(device)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise OodmlError(f"workers={workers!r}: must be a whole number of at least 0")


class _Run:
    """One level's training run: model, loss (with its parameters), optimiser and the best state so far.

    Its steps are named for what they do: :meth:`start` builds everything from the seed,
    :meth:`batches` draws the class-balanced batches, :meth:`restore` resumes from a saved
    state, :meth:`fit` runs the iterations with periodic validation, and
    :meth:`best_model` returns the model at its best validation Recall@1.
    """

    def __init__(self, cfg: TrainConfig, model: EmbeddingModel, loss_fn: torch.nn.Module,
                 objective: torch.nn.Module, optimiser: torch.optim.Optimizer, label_map: torch.Tensor,
                 dev: torch.device, name: str):
        """``label_map``: (dataset classes,) int64, each dataset label's number inside the loss (-1: not a
        training class)."""
        self.name = name
        self.cfg, self.model, self.loss_fn, self.objective = cfg, model, loss_fn, objective
        self.optimiser, self.label_map, self.dev = optimiser, label_map, dev
        self.scaler = torch.amp.GradScaler(dev.type, enabled=cfg.precision == "fp16")
        self.best, self.best_state, self.history = -1.0, None, []

    @classmethod
    def start(cls, cfg: TrainConfig, ds: ImageDataset, classes: Sequence[str], dev: torch.device, world: int,
              name: str) -> _Run:
        """Seed, build the model and the loss, and the optimiser over both (the loss's proxies at 100x the lr)."""
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        model = initial_model(cfg).to(dev)
        spec = get_loss(cfg.loss)
        # Labels inside the loss are the positions of the training classes.
        remap = {ds.class_index[c]: k for k, c in enumerate(classes)}
        loss_fn, miner = spec.build(len(remap), cfg.embed_dim)
        loss_fn = loss_fn.to(dev)
        params = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr}]
        if spec.has_params:
            params.append({"params": loss_fn.parameters(), "lr": cfg.lr * 100})  # proxies learn faster, as usual
        optimiser = torch.optim.Adam(params, weight_decay=cfg.weight_decay)
        regulariser = REGULARISERS[cfg.regulariser] if cfg.regulariser is not None and cfg.eta else None
        objective = _Objective(model, loss_fn, miner, regulariser, cfg.eta, PRECISIONS[cfg.precision])
        if world > 1:  # synchronises the gradients of the model and of the loss's own parameters
            objective = torch.nn.parallel.DistributedDataParallel(
                objective, device_ids=[dev.index] if dev.type == "cuda" and dev.index is not None else None)
        label_map = torch.full((len(ds.classes),), -1, dtype=torch.long)
        for original, k in remap.items():
            label_map[original] = k
        return cls(cfg, model, loss_fn, objective, optimiser, label_map, dev, name)

    def batches(self, ds: ImageDataset, train_idx: np.ndarray, done: int, rank: int, world: int,
                workers: int) -> Iterator:
        """The remaining (images, labels) batches: every process draws the same global P x K batches (same
        seed) and trains on its own slice of each; the first ``done`` batches are skipped."""
        from pytorch_metric_learning.samplers import MPerClassSampler

        cfg = self.cfg
        train_labels = self.label_map[torch.as_tensor(ds.labels[train_idx], dtype=torch.long)].numpy()
        sampler = MPerClassSampler(train_labels, m=cfg.samples_per_class, batch_size=cfg.batch_size,
                                   length_before_new_iter=cfg.iterations * cfg.batch_size)
        sampler = _RankSlice(_Skip(sampler, done * cfg.batch_size), cfg.batch_size, rank, world)
        augment = AUGMENTATIONS[self.model.augmentation](self.model.preprocessing)
        loader = torch.utils.data.DataLoader(_Train(ds, train_idx, augment), batch_size=cfg.batch_size // world,
                                             sampler=sampler, num_workers=workers, drop_last=True,
                                             pin_memory=self.dev.type == "cuda")
        self.model.train()
        loader_iter = iter(loader)  # draws the loader's seed from the global generator
        return progress(loader_iter, f"train {self.name} {cfg.loss}", total=cfg.iterations - done, unit="it")

    def restore(self, state: dict) -> None:
        """Continue from a state written by :meth:`state` (weights, optimiser, best so far, random state)."""
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.best, self.best_state, self.history = state["best"], state["best_state"], state["history"]
        torch.set_rng_state(state["torch_rng"])

    def state(self, step: int) -> dict:
        """Everything a killed run needs to resume after ``step`` and end with the same weights."""
        return {"step": step, "model": self.model.state_dict(), "loss": self.loss_fn.state_dict(),
                "optimiser": self.optimiser.state_dict(), "best": self.best, "best_state": self.best_state,
                "history": self.history, "torch_rng": torch.get_rng_state()}

    def fit(self, batches: Iterator, ds: ImageDataset, val_idx: np.ndarray, *, start: int, rank: int, world: int,
            state_path: Path | None, identity: dict) -> None:
        """Iterations ``start + 1 .. cfg.iterations``; every ``eval_every`` (and at the end) rank 0 validates,
        keeps the best state and writes a resumable state (with ``identity``) to ``state_path``.  A non-finite
        loss on any process stops all of them."""
        cfg = self.cfg
        for step, (images, labels) in enumerate(batches, start=start + 1):
            loss = self.objective(images.to(self.dev), self.label_map[labels].to(self.dev))
            if not _finite_everywhere(loss, world):
                last = f"the last good state (iteration {self.history[-1]['iteration']}) is in {state_path}" \
                    if self.history and state_path is not None else "no checkpoint was written"
                raise OodmlError(f"training diverged on {self.name}: the loss is {float(loss.detach())} at "
                                 f"iteration {step}; {last}. Lower --lr or the regulariser's weight")
            self.optimiser.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimiser)
            self.scaler.update()
            if rank == 0 and (step % cfg.eval_every == 0 or step == cfg.iterations):
                self._validate(ds, val_idx, step, float(loss.detach()))
                if state_path is not None and step < cfg.iterations:
                    _write_state(state_path, {**identity, **self.state(step)})
            if step >= cfg.iterations:
                break

    def _validate(self, ds: ImageDataset, val_idx: np.ndarray, step: int, loss: float) -> None:
        recall = validation_recall(self.model, ds, val_idx, str(self.dev))
        self.history.append({"iteration": step, "val_recall@1": recall, "loss": loss})
        if recall > self.best:
            self.best = recall
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        self.model.train()

    def best_model(self) -> EmbeddingModel:
        """The model at its best validation state, on the CPU, in eval mode."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.model.cpu().eval()


class _Objective(torch.nn.Module):
    """Model, metric loss (with its proxies or margins) and regulariser as one module, so that
    DistributedDataParallel synchronises every trained parameter.  ``forward(images, labels)`` returns
    the batch loss; the model runs under autocast at ``dtype`` (None: fp32), the loss in fp32."""

    def __init__(self, model: EmbeddingModel, loss_fn: torch.nn.Module, miner: torch.nn.Module | None,
                 regulariser: Callable | None, eta: float, dtype: torch.dtype | None):
        super().__init__()
        self.model, self.loss_fn, self.miner = model, loss_fn, miner
        self.regulariser, self.eta, self.dtype = regulariser, eta, dtype

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            raw = self.model(images, normalize=False)
        raw = raw.float()
        pairs = self.miner(raw, labels) if self.miner is not None else None
        loss = self.loss_fn(raw, labels, pairs) if pairs is not None else self.loss_fn(raw, labels)
        if self.regulariser is not None:
            loss = loss + self.eta * self.regulariser(raw)
        return loss


def _finite_everywhere(loss: torch.Tensor, world: int) -> bool:
    """Whether the loss is finite on every process (all stop together, none waits forever)."""
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if world > 1:
        import torch.distributed as dist

        finite = finite.to(loss.device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


class _RankSlice(torch.utils.data.Sampler):
    """This process's share of every global batch: the ``rank``-th of ``world`` contiguous slices.

    The class-balanced sampler emits K images of a class in a row, so slices of a
    multiple of K images keep every class whole inside one process.
    """

    def __init__(self, sampler: torch.utils.data.Sampler, batch_size: int, rank: int, world: int):
        self.sampler, self.batch_size, self.rank, self.world = sampler, batch_size, rank, world

    def __iter__(self):
        share = self.batch_size // self.world
        it = iter(self.sampler)
        while batch := list(itertools.islice(it, self.batch_size)):
            yield from batch[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        return len(self.sampler) // self.world


def _check_batches(cfg: TrainConfig, labels: np.ndarray, num_classes: int, world: int = 1) -> None:
    """Refuse a P x K batch layout that the training classes (and ``world`` processes) cannot fill."""
    k, batch = cfg.samples_per_class, cfg.batch_size
    if k < 1 or batch < 2 * k * world or batch % (k * world):
        per = f" x {world} processes" if world > 1 else ""
        raise OodmlError(f"--batch-size {batch} must be a multiple of --samples-per-class {k}{per} and give every "
                         "process at least two classes")
    if batch // k > num_classes:
        raise OodmlError(f"a batch of {batch} images with {k} per class needs {batch // k} classes, but this level "
                         f"trains on {num_classes}; lower --batch-size")
    smallest = int(np.unique(labels, return_counts=True)[1].min())
    if k > smallest:
        raise OodmlError(f"--samples-per-class {k} exceeds the smallest training class ({smallest} images); "
                         f"use at most {smallest}")


def finished_checkpoint(path: Path, identity: dict) -> tuple[EmbeddingModel, dict] | None:
    """The model and provenance at ``path`` if it is the finished result of this very run, else ``None``.

    Raises:
        OodmlError: ``path`` holds a checkpoint of another split set or configuration (it is never overwritten).
    """
    if not path.exists():
        return None
    from .models import load_model

    loaded = load_model(path)
    prov = loaded.provenance
    if prov.get("split_digest") != identity["split_digest"]:
        raise OodmlError(f"{path} was trained on split digest {str(prov.get('split_digest'))[:12]}, not "
                         f"{identity['split_digest'][:12]}; choose another --out")
    # A field an older checkpoint does not record had its default value then.
    recorded = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | (prov.get("config") or {})
    changed = sorted(k for k, v in identity["config"].items() if recorded.get(k) != v)
    if changed or prov.get("level") != identity["level"]:
        raise OodmlError(f"{path} holds a model trained with other settings ({', '.join(changed) or 'level'}); "
                         "choose another --out or delete it")
    return loaded.module, prov


class _Skip(torch.utils.data.Sampler):
    """A sampler without its first ``skip`` indices (the batches a resumed run already trained on)."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def _read_state(path: Path | None, identity: dict) -> dict | None:
    """The saved training state at ``path`` if it belongs to this very run (same config, split set, level)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged state file only costs the restart
        return None
    if not isinstance(state, dict) or any(state.get(k) != v for k, v in identity.items()):
        return None
    return state


def _write_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
