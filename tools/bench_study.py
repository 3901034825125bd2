"""Benchmark: one command's whole graded study of a CUB-sized image set, timed stage by stage (issue 27, item 3).

What a user does with a new image set, at the size of CUB-200-2011 (11,788 images of 200 classes, 500x375
JPEGs at quality 90):

1. synthetic JPEGs written once into a folder the ``imagefolder`` adapter reads (reused on the next run);
2. ``oodml make-splits imagefolder`` with 8 levels and 2- and 5-shot episodes (10 of each per level), the
   features from the first model;
3. ``oodml evaluate`` of each model (``timm:resnet50`` and ``timm:vit_base_patch16_224``, random weights:
   timing needs no download) with zero-shot retrieval and both shot counts adapted by prototypes and
   finetune-last.  finetune-last adapts an embedding head, so each model is evaluated as the oodml checkpoint
   ``oodml train --arch SPEC`` starts from (the spec's network and a 128-d linear head, untrained: written by
   :func:`oodml.training.initial_model` and :func:`oodml.models.save`, a second or two, timed as "model").

Each step runs through the public command line (``oodml.cli.main``), so whatever the harness does today is
what is timed.  Time inside ``evaluate`` is split into stages by timing the library's own functions where
they are called: decode + embed (``oodml.embedding``), kNN + metrics (``oodml.metrics``), clustering
(``oodml.clustering``), few-shot adaptation and scoring (``oodml.adapt``, ``oodml.adapt_batched``,
``oodml.protocol.score_episode``), plots (``oodml.plotting``, ``oodml.plot``); "other" is the rest (reading
the split set, the results, the protocol card).  Each second is counted once, in the innermost stage running.

``--scale S`` shrinks classes, images, image size and episodes for a CPU (1 is the full study); the table
names the size, the device and each stage's share of the total.

On a CPU shared with other work, set ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads cost several-fold
there; see tools/bench_metrics.py).

Run:  OMP_WAIT_POLICY=PASSIVE .venv/bin/python tools/bench_study.py --scale 0.01 --device cpu  # 2-core CPU
      .venv/bin/python tools/bench_study.py --device cuda                                     # full size, GPU
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import math
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODELS = ("timm:resnet50?pretrained=false", "timm:vit_base_patch16_224?pretrained=false")
#: stage -> the modules (all their functions) or module:function names whose time it is
STAGES = {
    "decode + embed": ("oodml.embedding",),
    "kNN + metrics": ("oodml.metrics", "oodml.knn"),
    "clustering": ("oodml.clustering",),
    "adaptation": ("oodml.adapt", "oodml.adapt_batched", "oodml.protocol:score_episode"),
    "plots": ("oodml.plotting", "oodml.plot"),
}
EMBED_DIM = 128
#: modules imported before the stage functions are wrapped, so the names they imported are wrapped too
USERS = ("oodml.cli", "oodml.evaluation", "oodml.results", "oodml.splits.make", "oodml.adapt", "oodml.adapt_batched",
         "oodml.plot", "oodml.plotting")


@dataclass(frozen=True)
class StudySize:
    """The image set and its episodes: ``classes`` classes holding ``images`` JPEGs of ``width`` x ``height``
    pixels between them, ``episodes`` episodes per level and shot count."""

    classes: int
    images: int
    width: int
    height: int
    episodes: int

    @classmethod
    def scaled(cls, scale: float) -> StudySize:
        """CUB-200-2011's size at ``scale`` (1: 200 classes, 11,788 images, 500x375, 10 episodes): classes,
        images and episodes in proportion, each image side by sqrt(scale); at least 12 classes of 12 images
        (5-shot support and queries at every level), 64x48 pixels and 2 episodes."""
        if not 0 < scale <= 1:
            raise SystemExit(f"bench_study: --scale {scale} must be in (0, 1]")
        classes = max(12, round(200 * scale))
        side = math.sqrt(scale)
        return cls(classes, max(12 * classes, round(11_788 * scale)), max(64, round(500 * side)),
                   max(48, round(375 * side)), max(2, round(10 * scale)))

    @property
    def name(self) -> str:
        return f"{self.images} images, {self.classes} classes, {self.width}x{self.height}, {self.episodes} episodes"


def write_images(root: Path, size: StudySize) -> float:
    """Write the image set under ``root/<class>/<image>.jpg`` unless a complete one is there; returns the
    seconds spent (0 when reused).  Each image is a smooth random colour field (a few cells, upscaled) with
    fine noise, so it compresses about as a photograph does, seeded by its class and index."""
    from PIL import Image

    done = root / ".complete"
    if done.is_file() and done.read_text() == size.name:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    per_class = np.full(size.classes, size.images // size.classes)
    per_class[: size.images % size.classes] += 1
    for k, count in enumerate(per_class):
        folder = root / f"{k + 1:03d}.class_{k + 1:03d}"
        folder.mkdir(parents=True)
        tint = np.random.default_rng(k).uniform(40, 215, size=3)
        for j in range(count):
            rng = np.random.default_rng((k, j))
            cells = np.clip(tint + rng.normal(0, 40, size=(6, 8, 3)), 0, 255).astype(np.uint8)
            image = np.asarray(Image.fromarray(cells).resize((size.width, size.height), Image.BICUBIC), np.int16)
            image = np.clip(image + rng.integers(-12, 13, size=image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"img_{j:04d}.jpg", format="JPEG", quality=90)
    done.write_text(size.name)
    return time.perf_counter() - start


class StageClock:
    """Wall time split into stages: each second goes to the innermost timed function running (``other`` when
    none).  On CUDA the device is synchronised at each boundary, so queued kernels count where they were
    queued."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack, self._mark, self._sync = ["other"], time.perf_counter(), sync

    def _charge(self) -> None:
        if self._sync is not None:
            self._sync()
        now = time.perf_counter()
        self.seconds[self._stack[-1]] += now - self._mark
        self._mark = now

    def timed(self, stage: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with self.stage(stage):
                return fn(*args, **kwargs)

        return run

    @contextlib.contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """Count the time of the ``with`` block as ``stage``'s."""
        self._charge()
        self._stack.append(stage)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def reset(self) -> None:
        self._charge()
        self.seconds.clear()


def _stage_functions() -> Iterator[tuple[str, Callable]]:
    """(stage, function) for every function :data:`STAGES` names that this oodml has."""
    for stage, names in STAGES.items():
        for name in names:
            module_name, _, function = name.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for attr, value in vars(module).items():
                if inspect.isfunction(value) and value.__module__ == module_name and (not function or attr == function):
                    yield stage, value


@contextlib.contextmanager
def timing_stages(clock: StageClock) -> Iterator[None]:
    """Wrap every stage function in every loaded oodml module that holds it (its own and those that imported
    it by name) for the duration; restored after."""
    for name in USERS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    originals = dict((fn, stage) for stage, fn in _stage_functions())
    replaced = []
    for module in [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "oodml" and m is not None]:
        for attr, value in list(vars(module).items()):
            if inspect.isfunction(value) and value in originals:
                setattr(module, attr, clock.timed(originals[value], value))
                replaced.append((module, attr, value))
    try:
        yield
    finally:
        for module, attr, value in replaced:
            setattr(module, attr, value)


def run_cli(argv: list[str]) -> None:
    from oodml.cli import main

    code = main(argv)
    if code:
        raise SystemExit(f"bench_study: `oodml {' '.join(argv)}` exited {code}")


def make_splits(images: Path, out: Path, size: StudySize, model: str, device: str) -> None:
    run_cli(["make-splits", "imagefolder", "--root", str(images), "--extractor", model, "--levels", "8",
             "--shots", "2", "5", "--episodes", str(size.episodes), "--version", "study", "--out", str(out),
             "--device", device])


def untrained_checkpoint(spec: str, path: Path) -> Path:
    """The checkpoint ``oodml train --arch spec`` starts from: the spec's network and an untrained
    ``EMBED_DIM``-d linear head."""
    from oodml.models import save
    from oodml.training import TrainConfig, initial_model

    return save(initial_model(TrainConfig(arch=spec, embed_dim=EMBED_DIM).resolved()), path)


def evaluate(images: Path, splits: Path, out: Path, model: Path, device: str, iterations: int | None) -> None:
    argv = ["evaluate", str(model), "--dataset", "imagefolder", "--root", str(images), "--splits", str(splits),
            "--fewshot", "2,5", "--adapt", "prototypes", "finetune-last", "--device", device, "--out", str(out)]
    run_cli(argv + (["--adapt-iterations", str(iterations)] if iterations else []))


def device_name(device: str) -> str:
    import torch

    from oodml.embedding import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({dev})"
    return f"{dev.type} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def print_table(rows: dict[str, dict[str, float]], cpu: dict[str, float], order: list[str]) -> None:
    """One row per stage (wall seconds), one column per step, then the total; last the process's CPU seconds
    (all threads), which a machine shared with other work changes less than the wall time.  A stage a step
    never entered shows ``-`` (one it entered briefly shows ``0.0s``)."""
    steps = list(rows)
    print(f"{'stage':<16}" + "".join(f"{s[:26]:>28}" for s in steps) + f"{'total':>10}")
    for stage, cells in [*((st, [rows[s].get(st) for s in steps]) for st in order),
                         ("total (wall)", [sum(rows[s].values()) for s in steps]),
                         ("process CPU", [cpu[s] for s in steps])]:
        shown = "".join(f"{'-':>28}" if c is None else f"{c:>27.1f}s" for c in cells)
        print(f"{stage:<16}" + shown + f"{sum(c or 0.0 for c in cells):>9.1f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="size of the study, 1 = CUB-200-2011's (default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="model specs (default: %(default)s)")
    parser.add_argument("--extractor", help="make-splits' feature extractor (default: the first model)")
    parser.add_argument("--adapt-iterations", type=int, help="fine-tuning iterations (default: evaluate's)")
    parser.add_argument("--work", type=Path, help="folder for the images (kept for the next run), the split set "
                        "and results (default: a temporary folder, images kept in ~/.cache/oodml-bench-study)")
    args = parser.parse_args(argv)
    size = StudySize.scaled(args.scale)
    os.environ.setdefault("OODML_QUIET", "1")
    images = (args.work or Path.home() / ".cache" / "oodml-bench-study") / f"images-{args.scale:g}"
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        print(f"study: {size.name}; device: {device_name(args.device)}; OMP_WAIT_POLICY "
              f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}")
        wrote = write_images(images, size)
        print(f"images: {f'written in {wrote:.1f} s' if wrote else 'reused'} ({images})")
        rows, cpu = study(images, work, size, args)
    print_table(rows, cpu, ["model", *STAGES, "other"])
    total = sum(sum(r.values()) for r in rows.values())
    print(f"total: {total:.1f} s for make-splits and {len(args.models)} evaluations ({size.name}) on "
          f"{device_name(args.device)}")


def study(images: Path, work: Path, size: StudySize,
          args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """make-splits, then evaluate each model; returns (step -> stage -> wall seconds, step -> CPU seconds)."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() and args.device != "cpu" else None
    clock, rows, cpu = StageClock(sync), {}, {}
    splits = work / "splits"
    shutil.rmtree(splits, ignore_errors=True)
    with timing_stages(clock):
        clock.reset()
        started = time.process_time()
        make_splits(images, splits, size, args.extractor or args.models[0], args.device)
        rows["make-splits"], cpu["make-splits"] = dict(clock.seconds), time.process_time() - started
        for k, spec in enumerate(args.models):
            clock.reset()
            started = time.process_time()
            with clock.stage("model"):
                model = untrained_checkpoint(spec, work / f"model-{k}.pt")
            evaluate(images, splits / "imagefolder" / "study", work / f"results-{k}", model, args.device,
                     args.adapt_iterations)
            step = f"evaluate {spec.split('?')[0]}"
            rows[step], cpu[step] = dict(clock.seconds), time.process_time() - started
    return rows, cpu


if __name__ == "__main__":
    main()
