"""The ``oodml`` command: a thin argparse layer over the public API.

Every user-facing failure is an :class:`~oodml.errors.OodmlError`, printed as
one line on stderr with exit status 2 (argparse's own usage errors also exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import OodmlError
from .progress import set_quiet


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


class _Names:
    """argparse ``choices`` read from a table of oodml (a registry or a tuple) on first use, not when the parser
    is built: most tables live in modules that import torch, which takes seconds, and ``oodml --help`` or
    ``oodml --version`` need none of them.  An option using it names its ``metavar`` (argparse would list the
    choices while building the parser otherwise); its help lists them through ``%(choices)s``."""

    def __init__(self, module: str, table: str) -> None:
        self.module, self.table = module, table

    def _names(self) -> list[str]:
        from importlib import import_module

        return list(getattr(import_module(self.module, __package__), self.table))

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="a registered dataset (see `oodml datasets list`)")
    p.add_argument("--root", help="dataset directory (for hf: a local folder or a hub id)")
    p.add_argument("-o", "--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                   help="adapter option, e.g. -o subset=test for sop; repeatable")


TRUST_REPO_HELP = ("agree to run the code (hubconf.py) of the torch hub repositories that torchhub: specs name, "
                   "without torch's y/N question; also OODML_TRUST_REPO=1. torch's trusted list is left as it is")


def _add_trust_repo(p: argparse.ArgumentParser) -> None:
    """``--trust-repo`` after a command that loads model specs; the same flag before the command sets it for all."""
    p.add_argument("--trust-repo", dest="trust_repo_after", action="store_true", help=TRUST_REPO_HELP)


def _load(args: argparse.Namespace):
    from .datasets import load_dataset

    return load_dataset(args.name, root=args.root, **dict(args.option))


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from .datasets.registry import DATASETS

    _print_listing(DATASETS.listing())
    return 0


def _print_listing(rows: list[tuple[str, str]], indent: str = "") -> None:
    """A registry's ``(name, description)`` rows, names aligned."""
    width = max((len(name) for name, _ in rows), default=0)
    for name, description in rows:
        print(f"{indent}{name:<{width}}  {description}".rstrip())


def cmd_datasets_info(args: argparse.Namespace) -> int:
    from .datasets import dataset_summary

    summary = dataset_summary(_load(args))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        if key == "images_per_class":
            key, value = "per class", f"min {value['min']} / median {value['median']:g} / max {value['max']}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {n}" for k, n in value["counts"].items()) + f" ({value['unit']})"
        print(f"{key:<12} {value}")
    return 0


def cmd_datasets_verify(args: argparse.Namespace) -> int:
    ds = _load(args)
    problems = ds.verify_images()
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        raise OodmlError(f"{ds.name}: {len(problems)} of {len(ds)} images are unreadable (listed above)")
    print(f"{ds.name}: all {len(ds)} images decode")
    return 0


def cmd_datasets_download(args: argparse.Namespace) -> int:
    from .datasets import download_dataset

    root = download_dataset(args.name, args.root)
    print(f"{args.name}: downloaded and verified into {root}")
    return 0


def _split_config(args: argparse.Namespace):
    from .splits import SplitConfig

    removal = args.removal_levels
    if removal is None:
        removal = 0 if args.keep_classes else SplitConfig.removal_levels
    return SplitConfig(levels=args.levels, removal_levels=removal, distance=args.distance,
                       mode=args.mode, algorithm=args.algorithm, seed=args.seed, shots=tuple(args.shots),
                       episodes=args.episodes, bootstrap=args.bootstrap)


def cmd_make_splits(args: argparse.Namespace) -> int:
    from .datasets import DataConfig
    from .splits import FeatureConfig, make_splits
    from .splits.report import format_levels

    built: dict = {}
    split_set = make_splits(args.name, config=_split_config(args), data=DataConfig(args.root, dict(args.option)),
                            features=FeatureConfig(args.extractor, args.weights, args.device, args.batch_size),
                            version=args.version, out=args.out, keep_classes=args.keep_classes, built=built.update)
    print(format_levels(split_set, built.get("adjacent_levels")))
    print(f"published {split_set.path}")
    _compare_with_published(split_set)
    return 0


def _compare_with_published(split_set) -> None:
    """Say whether a freshly built split set reproduces the one published under the same name elsewhere,
    and what differs when it does not (:func:`oodml.splits.compare`); every other place on the search paths
    that holds the name is compared, also those the new one now shadows."""
    from .splits import compare, read_split_set
    from .splits.catalogue import split_set_copies

    for copy in split_set_copies(split_set.dataset, split_set.version):
        if copy.path.resolve() != split_set.path.resolve():
            diff = compare(split_set, read_split_set(copy.path))
            verdict = "reproduces" if diff.reproduces else "DIFFERS from"
            print(f"{verdict} the published {split_set.dataset}@{split_set.version} at {copy.path} "
                  f"({copy.location.source})")
            if not diff.reproduces:
                print(diff.format())


def _load_split_set(ref: str):
    from .splits import open_split_set

    return open_split_set(ref)


def cmd_splits_list(args: argparse.Namespace) -> int:
    from .splits.catalogue import published_split_sets

    found = published_split_sets()
    if not found:
        print("no published split sets (run `oodml make-splits DATASET`, or set $OODML_SPLITS)")
    width = max((len(f"{p.dataset}@{p.version}") for p in found), default=0)
    for p in found:
        print(f"{p.dataset + '@' + p.version:<{width}}  {p.location.source:<13}  {p.path}")
    return 0


def cmd_splits_show(args: argparse.Namespace) -> int:
    from .splits.adjacent import measure_adjacent, not_distinct_note
    from .splits.report import format_levels, recorded_adjacent

    split_set = _load_split_set(args.ref)
    pairs, source = recorded_adjacent(split_set), ""
    if args.adjacent:
        pairs, extractor = measure_adjacent(split_set, root=args.root, options=dict(args.option),
                                            extractor=args.extractor, weights=args.weights, draws=args.bootstrap,
                                            device=args.device, batch_size=args.batch_size)
        source = f" (computed now in {extractor} features)"
    print(format_levels(split_set, pairs, source))
    note = not_distinct_note(pairs or ())
    if note:
        warnings.warn(note, stacklevel=1)
    return 0


def cmd_splits_verify(args: argparse.Namespace) -> int:
    from .splits import verify_split_sets

    checks = verify_split_sets([args.ref] if args.ref else None)
    for ref, split_set, problem in checks:
        if problem is None:
            print(f"ok  {split_set.dataset}@{split_set.version}  digest {split_set.digest}")
        else:
            print(f"FAIL  {ref}: {problem}", file=sys.stderr)
    failures = sum(problem is not None for _, _, problem in checks)
    if failures:
        raise OodmlError(f"{failures} of {len(checks)} split sets failed verification")
    return 0


def cmd_splits_diff(args: argparse.Namespace) -> int:
    from .splits import compare

    diff = compare(_load_split_set(args.a), _load_split_set(args.b))
    print(diff.format())
    return 0 if diff.reproduces else 1


def cmd_splits_plot(args: argparse.Namespace) -> int:
    from .splits.report import plot_levels

    split_set = _load_split_set(args.ref)
    prefix = args.out or f"{split_set.dataset}-{split_set.version}-levels"
    for path in plot_levels(split_set, prefix):
        print(f"wrote {path}")
    return 0


def cmd_splits_import(args: argparse.Namespace) -> int:
    from .splits.oodml_import import import_oodml
    from .splits.report import format_levels

    split_set = import_oodml(args.pickle, dataset=args.dataset, version=args.version, out=args.out)
    print(format_levels(split_set))
    print(f"published {split_set.path}")
    return 0


def cmd_splits_audit(args: argparse.Namespace) -> int:
    from .datasets import DataConfig
    from .splits.audit import audit, audit_destinations, format_audit, store_audit, write_audit

    split_set = _load_split_set(args.ref)
    out = args.out or f"{split_set.dataset}-{split_set.version}-audit"
    with audit_destinations(split_set, out, extractors=args.extractor, pretraining=args.pretraining,
                            store=args.store, replace=args.replace):  # claimed and checked before any work
        result = audit(split_set, args.extractor, pretraining=args.pretraining,
                       data=DataConfig(args.root, dict(args.option)), draws=args.bootstrap, seed=args.seed,
                       device=args.device, batch_size=args.batch_size)
        written = write_audit(result, out, replace=args.replace)
        stored = store_audit(result, split_set, replace=args.replace) if args.store else []
    print(format_audit(result))
    for path in written:
        print(f"wrote {path}")
    for path in stored:
        print(f"stored {path}")
    return 0


def _add_make_splits(commands) -> None:
    p = commands.add_parser("make-splits", help="build and publish graded train/test class splits")
    _add_dataset_args(p)
    p.add_argument("--extractor", help="feature extractor (default: the dataset's, resnet50 or pixels for glyphs), "
                   "a model spec such as 'timm:resnet50' (see `oodml models list`), or a TorchScript file")
    _add_trust_repo(p)
    p.add_argument("--weights", help="weights file for the extractor (default for resnet50: torchvision's ImageNet "
                   "file, downloaded once into the torch hub cache, $TORCH_HOME/hub/checkpoints)")
    p.add_argument("--levels", type=level_count, default=8,
                   help="shift levels to publish, easiest to hardest (default 8; at least 2), or 'auto': the most "
                   "(up to 8) whose adjacent levels are all distinct by a paired bootstrap over classes")
    p.add_argument("--removal-levels", type=non_negative_int, default=None,
                   help="levels beyond what swaps reach, made by removing classes (default 2; 0 with --keep-classes)")
    p.add_argument("--keep-classes", action="store_true",
                   help="swap levels only: every level keeps the same number of train and test classes (no "
                   "removal levels), so class count does not move the curve")
    p.add_argument("--distance", choices=_Names(".shift", "DISTANCES"), default="fid", metavar="NAME",
                   help="distance between the train and test classes' features: %(choices)s (default fid)")
    p.add_argument("--mode", choices=_Names(".shift", "MODES"), default="class-mean", metavar="MODE",
                   help="what the distance compares: %(choices)s (default class-mean: one mean feature per class)")
    p.add_argument("--algorithm", choices=_Names(".splits.build", "ALGORITHMS"), default="greedy", metavar="NAME",
                   help="split search: %(choices)s (default greedy, which scores every balanced split instead when "
                   "the classes are few enough, recorded as exhaustive; oodml: the ooDML paper's procedure)")
    p.add_argument("--seed", type=random_seed, default=0,
                   help="seed of the search, the validation classes and the episodes (default 0)")
    p.add_argument("--shots", type=positive_int, nargs="+", default=[2, 5, 10], metavar="K",
                   help="few-shot episodes to draw with K support images per test class (default 2 5 10)")
    p.add_argument("--episodes", type=non_negative_int, default=10,
                   help="episodes drawn per level and shot (default 10; 0: none)")
    p.add_argument("--bootstrap", type=non_negative_int, default=200,
                   help="bootstrap draws for the distance CIs and the adjacent-level comparison (0: neither)")
    p.add_argument("--version", default="v1", help="name of the published split set (default v1)")
    p.add_argument("--out", default="splits", help="publish under OUT/<dataset>/<version>/ (default ./splits)")
    p.add_argument("--device", default="auto", help="where features are extracted: auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per feature batch (default 128)")
    p.set_defaults(func=cmd_make_splits)


def _add_splits_show(sub) -> None:
    show = sub.add_parser("show", help="the level table of DATASET[@VERSION] (or a directory)")
    show.add_argument("ref", help="DATASET[@VERSION] or a manifest directory")
    show.add_argument("--adjacent", action="store_true",
                      help="compare adjacent levels now, on the data (paired bootstrap over classes), as make-splits "
                      "records them; needs the dataset (--root)")
    show.add_argument("--root", help="dataset root for --adjacent (default: the dataset's own default)")
    show.add_argument("-o", "--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                      help="adapter option for --adjacent, e.g. -o subset=test for sop; repeatable")
    show.add_argument("--extractor", help="features for --adjacent (default: the dataset's split extractor, as "
                      "make-splits)")
    show.add_argument("--weights", help="weights file of that extractor")
    show.add_argument("--bootstrap", type=positive_int, default=None,
                      help="draws for --adjacent (default: the split set's own, else 200)")
    show.add_argument("--device", default="auto", help="where --adjacent extracts features: auto, cpu, cuda, "
                      "cuda:N or mps")
    show.add_argument("--batch-size", type=positive_int, default=128, help="images per feature batch (default 128)")
    show.set_defaults(func=cmd_splits_show)


def _add_splits(commands) -> None:
    splits = commands.add_parser("splits", help="list, show, verify, diff, plot, audit and import published split "
                                 "sets")
    sub = splits.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="published split sets").set_defaults(func=cmd_splits_list)
    _add_splits_show(sub)
    verify = sub.add_parser("verify", help="check every hash of one or all published split sets")
    verify.add_argument("ref", nargs="?", help="DATASET[@VERSION] or a manifest directory (default: all published)")
    verify.set_defaults(func=cmd_splits_verify)
    diff = sub.add_parser("diff", help="compare two split sets by content, level by level (exit 0 when A "
                          "reproduces B, 1 when they differ)")
    diff.add_argument("a", help="DATASET[@VERSION] or a manifest directory")
    diff.add_argument("b", help="DATASET[@VERSION] or a manifest directory")
    diff.set_defaults(func=cmd_splits_diff)
    plot = sub.add_parser("plot", help="distance per level with CIs, as PNG and SVG")
    plot.add_argument("ref", help="DATASET[@VERSION] or a manifest directory")
    plot.add_argument("--out", help="output prefix (default DATASET-VERSION-levels)")
    plot.set_defaults(func=cmd_splits_plot)
    aud = sub.add_parser("audit", help="re-measure the levels under other extractors (rank agreement with "
                         "intervals) and count test classes seen in pretraining data")
    aud.add_argument("ref", help="DATASET[@VERSION] or a manifest directory")
    aud.add_argument("--extractor", action="append", default=[], metavar="SPEC",
                     help="an extractor (pixels, resnet50), a model spec ('timm:resnet18?pretrained=false') or a "
                     "model file; repeatable")
    _add_trust_repo(aud)
    aud.add_argument("--pretraining", metavar="NAME",
                     help="pretraining data to count overlap with, e.g. imagenet-1k (others report 'unknown')")
    aud.add_argument("--root", help="dataset directory (default: where `oodml datasets download` puts it)")
    aud.add_argument("-o", "--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                     help="dataset adapter option; repeatable")
    aud.add_argument("--bootstrap", type=non_negative_int, default=200,
                     help="bootstrap draws over classes for the intervals (default 200; 0: none)")
    aud.add_argument("--seed", type=random_seed, help="bootstrap seed (default: the split set's)")
    aud.add_argument("--out", help="folder for audit.json and audit.png/.svg (default DATASET-VERSION-audit)")
    aud.add_argument("--store", action="store_true",
                     help="also keep the audit beside the split set, in its audits/ folder (digest unchanged)")
    aud.add_argument("--replace", action="store_true",
                     help="replace stored audits of the same extractors (with --store) and an audit.json of "
                     "another split set in --out")
    aud.add_argument("--device", default="auto", help="where features are extracted: auto, cpu, cuda, cuda:N or mps")
    aud.add_argument("--batch-size", type=positive_int, default=128, help="images per feature batch (default 128)")
    aud.set_defaults(func=cmd_splits_audit)
    imp = sub.add_parser("import-oodml", help="convert an ooDML split pickle (restricted unpickler)")
    imp.add_argument("pickle", help="the ooDML split pickle (read with a restricted unpickler, no code runs)")
    imp.add_argument("--dataset", required=True, help="the registered dataset the pickle splits")
    imp.add_argument("--version", required=True, help="name to publish the split set under")
    imp.add_argument("--out", default="splits", help="publish under OUT/<dataset>/<version>/ (default ./splits)")
    imp.set_defaults(func=cmd_splits_import)


def _number(text: str, kind: type, minimum: float, *, strict: bool, what: str,
            below: float = math.inf) -> int | float:
    """``text`` as an ``int`` or finite ``float`` at least (``strict``: above) ``minimum`` and below ``below``;
    else argparse's one-line usage error saying what was expected."""
    try:
        value = kind(text)
    except ValueError:  # also ints of more than 4,300 digits
        value = None
    if value is None or (kind is float and not math.isfinite(value)) or not minimum <= value < below \
            or (strict and value == minimum):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (batch sizes, iterations, episodes, ...)."""
    return _number(text, int, 1, strict=False, what="a whole number of at least 1")


def match_classes(text: str) -> int | str | None:
    """argparse type for ``--match-classes``: ``min``, ``off`` (None) or a whole number >= 2 (its upper bound,
    the split set's fewest test classes, is checked by :func:`oodml.matched.matched_count`)."""
    if text in ("min", "off"):
        return None if text == "off" else text
    return _number(text, int, 2, strict=False, what="min, off or a whole number of classes (at least 2)")


def level_count(text: str) -> int | str:
    """argparse type for make-splits ``--levels``: ``auto`` or a whole number (at least 2: checked with the other
    split parameters, :meth:`oodml.splits.SplitConfig.validate`)."""
    if text == "auto":
        return text
    return _number(text, int, 1, strict=False, what="'auto' or a whole number of levels (at least 2)")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (episodes, bootstrap draws, ...)."""
    return _number(text, int, 0, strict=False, what="a whole number of at least 0")


#: the most loader processes ``--workers`` may start: each holds a copy of the dataset index and a prefetch queue
MAX_WORKERS = 256


def worker_count(text: str) -> int:
    """argparse type: loader processes, 0 (load in the main process) to :data:`MAX_WORKERS`."""
    return _number(text, int, 0, strict=False, below=MAX_WORKERS + 1,
                   what=f"a number of loader processes from 0 to {MAX_WORKERS} (about one per CPU core)")


def random_seed(text: str) -> int:
    """argparse type: a random seed, a whole number in [0, 2**63) (what torch's generators take)."""
    return _number(text, int, 0, strict=False, below=2**63, what="a whole number from 0 to 2**63 - 1")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, epochs)."""
    return _number(text, float, 0, strict=True, what="a number above 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (regulariser weights)."""
    return _number(text, float, 0, strict=False, what="a number of at least 0")


def _int_list(text: str) -> list[int]:
    """argparse type for ``--fewshot 2,5``: distinct whole numbers >= 1, in the order given."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of at least 1 such as 2,5, "
                                          f"got {text!r}")
    return list(dict.fromkeys(values))


def _level_selection(text: str) -> str:
    """argparse type for ``--levels``/``--level``: checks the syntax (``all``, ``1,3,5``, ``2-4``) without expanding
    ranges; the levels themselves are checked against the split set (:func:`oodml.splits.selection.parse_levels`)."""
    from .splits.selection import level_ranges

    try:
        level_ranges(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return text


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Check every argument (device, metric, split set and levels, --out) before loading a model or data, then
    evaluate and save the run's files together."""
    from .datasets import dataset_spec
    from .distributed import is_main_process
    from .embedding import resolve_device
    from .evaluation import zero_shot_metrics
    from .reference import format_gaps
    from .results import check_output_dir, claim_output_dir
    from .splits import resolve
    from .splits.selection import parse_levels

    resolve_device(args.device)
    metrics = zero_shot_metrics(clustering=not args.no_clustering)
    if args.metric not in metrics:
        fix = "drop --no-clustering" if args.metric in zero_shot_metrics() else f"choose one of {', '.join(metrics)}"
        raise OodmlError(f"--metric {args.metric!r} is not a metric of this run; {fix}")
    split_set = resolve(dataset_spec(args.dataset).name, args.splits)
    levels = parse_levels(args.levels, split_set)
    run = {"model": args.model, "dataset": args.dataset, "split_digest": split_set.digest}
    if not is_main_process():
        _evaluate_with(args, split_set, levels)
        return 0
    with claim_output_dir(args.out):  # held from the check to the save: a second run into --out is refused
        replaced = check_output_dir(args.out, run, overwrite=args.overwrite)
        results = _evaluate_with(args, split_set, levels)
        written = results.save(args.out, metric=args.metric, overwrite=args.overwrite)
    print(results.format_table())
    if "reference" in results.meta:
        print(f"\nagainst the in-distribution references in {args.reference} (Recall@1 on the same halves):")
        print(format_gaps(results.meta["reference"]))
    embedded = results.meta.get("images_embedded")
    if embedded is not None:
        print(f"{embedded} distinct images embedded once for {len(results.levels)} levels")
    if replaced is not None:
        print(f"replaced the earlier run in {args.out} ({replaced.get('model', 'unreadable')}, "
              f"{replaced.get('created_at', 'undated')}); none of its files were kept")
    for path in written:
        print(f"wrote {path}")
    return 0


def _evaluate_with(args: argparse.Namespace, split_set, levels: list[int] | None):
    """:func:`oodml.evaluation.evaluate` with the command's arguments."""
    from .evaluation import ComputeConfig, DataConfig, EvalConfig, FewShotConfig, MatchConfig, ReportConfig, evaluate

    config = EvalConfig(
        levels=levels, clustering=not args.no_clustering,
        fewshot=FewShotConfig(shots=args.fewshot or (), adapt=args.adapt, episodes=args.episodes,
                              adapt_iterations=args.adapt_iterations),
        compute=ComputeConfig(device=args.device, precision=args.precision, batch_size=args.batch_size,
                              workers=args.workers, decode=args.decode, shard_size=args.shard_size),
        match=MatchConfig(classes=args.match_classes, draws=args.match_draws),
        data=DataConfig(root=args.root, options=dict(args.option)),
        report=ReportConfig(label=args.label, save_embeddings=args.save_embeddings, reference=args.reference))
    return evaluate(args.model, args.dataset, split_set, config)


def cmd_models_list(args: argparse.Namespace) -> int:
    from .models.registry import MODELS
    from .models.sources import describe_sources

    _print_listing(MODELS.listing(args.pattern))
    if args.pattern == "*":
        print("\nmodel specs (options: ?pretrained=false,seed=N for random weights; quote them in a shell):")
        _print_listing([(grammar, f"{description} [{state}]") for grammar, description, state in describe_sources()],
                       indent="  ")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ._fs import check_writable
    from .plot import save_curves
    from .results import read_run

    check_writable(Path(args.out).parent, option="--out")  # before reading the runs
    runs = [read_run(path) for path in args.results]
    for written in save_curves(runs, args.out, metric=args.metric, test_set=args.test_set):
        print(f"wrote {written}")
    return 0


def _checkpoint_times(folder: str) -> dict[str, int]:
    """``{file name: modification time in ns}`` of the checkpoints in ``folder`` (empty when there is none)."""
    path = Path(folder)
    return {p.name: p.stat().st_mtime_ns for p in path.glob("*.pt")} if path.is_dir() else {}


def cmd_train(args: argparse.Namespace) -> int:
    """Check every argument (device, split set and levels, --out, hyper-parameters) before loading data, then
    train one model per level."""
    from ._fs import check_writable
    from .datasets import dataset_spec, load_dataset
    from .embedding import resolve_device
    from .reference import checkpoint_name, train_references
    from .splits import resolve
    from .splits.selection import parse_levels
    from .training import TrainConfig, train_levels

    resolve_device(args.device)
    if args.sec is not None and args.l2_reg is not None:
        raise OodmlError("--sec and --l2-reg are alternatives; give one")
    split_set = resolve(dataset_spec(args.dataset).name, args.splits)
    levels = parse_levels(args.level, split_set, option="--level") or None
    check_writable(args.out)
    regulariser, eta = ("sec", args.sec) if args.sec is not None else ("l2", args.l2_reg) \
        if args.l2_reg is not None else (None, 0.0)
    config = TrainConfig(loss=args.loss, arch=args.arch, embed_dim=args.embed_dim, iterations=args.iterations,
                         epochs=args.epochs, eval_every=args.eval_every,
                         batch_size=args.batch_size, samples_per_class=args.samples_per_class, lr=args.lr,
                         regulariser=regulariser, eta=eta, precision=args.precision, seed=args.seed,
                         pretrained=False if args.random_init else None, weights=args.weights)
    config.resolved()  # the hyper-parameters, before any data is read
    if config.recipe_statement():  # a library's fine-tuning recipe, fitted to no one model: say so
        print(config.recipe_statement())
    ds = load_dataset(args.dataset, root=args.root, **dict(args.option))
    before = _checkpoint_times(args.out)

    def report(level: int, provenance: dict) -> None:
        fold = provenance.get("reference", {}).get("fold")
        name = f"level{level}.pt" if fold is None else checkpoint_name(level, fold)
        recall = f"best val recall@1 {provenance['best_val_recall@1']:.4f}"
        if name in before and before[name] == _checkpoint_times(args.out).get(name):  # a rerun: say what was kept
            print(f"level {level}: kept {args.out}/{name}, trained earlier with this configuration ({recall})")
        else:
            print(f"level {level}: {recall} -> {args.out}/{name}")

    trainer = train_references if args.reference else train_levels
    trainer(ds, split_set, levels, config, out=args.out, device=args.device, workers=args.workers, report=report)
    return 0


def _architecture(text: str) -> str:
    """``--arch``: a registered architecture or a model spec, as :func:`oodml.models.refs.resolve_model_ref`
    reads it, checked for its form only (nothing is loaded)."""
    from .models import list_models
    from .models.refs import resolve_model_ref
    from .models.sources import checkpoint_spec_problem, parse_spec

    try:
        ref = resolve_model_ref(text)
        spec = parse_spec(text) if ref.kind == "spec" else None
    except OodmlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if ref.kind == "registered" and ref.text != ref.name:  # resnet50?pretrained=false: train has its own options
        raise argparse.ArgumentTypeError(f"{text!r}: --arch takes a registered name without options; start from "
                                         "random weights with --random-init, or give --weights PATH, --embed-dim N")
    if ref.kind == "registered":
        return text
    if spec is not None:
        problem = checkpoint_spec_problem(spec)
        if problem:  # refused before anything is trained or written
            raise argparse.ArgumentTypeError(f"{spec.text()} cannot be a training backbone: {problem}")
        return spec.text()
    raise argparse.ArgumentTypeError(f"{text!r} names a {ref.describe()}, not an architecture; choose one of "
                                     f"{', '.join(list_models())} or a model spec such as 'timm:resnet18'")


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train a DML model per split level (selected on the val classes)")
    p.add_argument("--dataset", required=True, help="a registered dataset (see `oodml datasets list`)")
    p.add_argument("--root", help="dataset directory (default: where `oodml datasets download` puts it)")
    p.add_argument("--splits", help="split set version or manifest directory (default: latest published)")
    p.add_argument("-o", "--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                   help="dataset adapter option, e.g. -o follow_symlinks=true; repeatable")
    p.add_argument("--level", type=_level_selection, default="all", help="all, 1,3,5 or 2-4")
    p.add_argument("--loss", choices=_Names(".losses", "LOSSES"), default="multi-similarity", metavar="NAME",
                   help="metric learning loss: %(choices)s (default multi-similarity)")
    p.add_argument("--sec", type=non_negative_float, metavar="ETA",
                   help="spherical embedding constraint with weight ETA")
    p.add_argument("--l2-reg", type=non_negative_float, metavar="ETA", help="L2 norm regularisation with weight ETA")
    p.add_argument("--arch", type=_architecture, default="glyph-cnn",
                   help="a registered architecture (see `oodml models list`; default glyph-cnn) or a model spec "
                        "as the backbone, e.g. 'timm:resnet18'")
    p.add_argument("--embed-dim", type=positive_int,
                   help="embedding size (default: the architecture's, 512 for resnet50, 32 for glyph-cnn)")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--weights", metavar="PATH", help="resnet50's ImageNet weights file to start from (default: "
                      "torchvision's resnet50-0676ba61.pth from the torch hub cache, downloaded once)")
    init.add_argument("--random-init", action="store_true",
                      help="start resnet50 from random weights instead of ImageNet's, warned about and recorded in "
                           "the checkpoints (glyph-cnn always starts so; a model spec says ?pretrained=false)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--iterations", type=positive_int,
                       help="training steps per level (default: the architecture's, 10000 resnet50, 400 glyph-cnn)")
    group.add_argument("--epochs", type=positive_float, help="passes over the level's training images")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per training batch (default: the architecture's, 112 resnet50, 128 glyph-cnn)")
    p.add_argument("--samples-per-class", type=positive_int,
                   help="images of each class in a batch (default: the architecture's, 2 resnet50, 4 glyph-cnn)")
    p.add_argument("--eval-every", type=positive_int, help="iterations between validations (and resumable states)")
    p.add_argument("--lr", type=positive_float,
                   help="learning rate (default: the architecture's, 1e-5 resnet50, 1e-3 glyph-cnn)")
    p.add_argument("--seed", type=random_seed, default=0,
                   help="seed of the initial weights and the batch sampling (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast for the forward pass (fp16 with loss scaling, GPU only)")
    p.add_argument("--workers", type=worker_count, default=0,
                   help="image loader processes (default 0: load in the main process)")
    p.add_argument("--reference", action="store_true",
                   help="train each level's in-distribution references instead: the same recipe on the level's test "
                        "classes, 2-fold cross-fitted over their images (writes level<N>-fold<F>.pt)")
    p.add_argument("--out", required=True, help="directory for level<N>.pt checkpoints")
    p.set_defaults(func=cmd_train)


def _add_matching(p: argparse.ArgumentParser) -> None:
    """evaluate's comparisons: the in-distribution references and the class-count-matched scores
    (:mod:`oodml.matched`)."""
    p.add_argument("--reference", metavar="DIR",
                   help="in-distribution references (`oodml train --reference`): also report per level the model's "
                        "and the references' Recall@1 on the same halves and the gap, with a class-bootstrap interval")
    p.add_argument("--match-classes", type=match_classes, default="min", metavar="N|min|off",
                   help="also score every level on N of its test classes, N the same at every level (default min: "
                        "the fewest test classes of any level of the split set); off: no matched scores")
    p.add_argument("--match-draws", type=positive_int, default=20,
                   help="seeded class draws per level for the matched scores, averaged (default 20)")


def _add_evaluate(commands) -> None:
    p = commands.add_parser("evaluate", help="score a model on every level of a split set")
    p.add_argument("model", help="registered model ('resnet50': torchvision's ImageNet weights, downloaded once; "
                   "'resnet50?weights=PATH' reads them from PATH; ?pretrained=false for random weights, always "
                   "warned and recorded), model spec ('timm:NAME', 'open_clip:ARCH/TAG', "
                   "'hf:ORG/NAME[@REV]', 'torchhub:REPO:ENTRY'; add ?pretrained=false for random weights; a local "
                   "folder starts with ./, ../, / or ~), model "
                   "file (.pt checkpoint / TorchScript, .pt2), or per-level template 'runs/level{level}.pt' / "
                   "directory of level<N>.pt")
    _add_trust_repo(p)
    p.add_argument("--dataset", required=True, help="a registered dataset (see `oodml datasets list`)")
    p.add_argument("--root", help="dataset directory")
    p.add_argument("--splits", help="split set version or manifest directory (default: latest published)")
    p.add_argument("-o", "--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                   help="dataset adapter option, e.g. -o follow_symlinks=true; repeatable")
    p.add_argument("--levels", type=_level_selection, default="all", help="all, 1,3,5 or 2-4")
    p.add_argument("--fewshot", type=_int_list, help="shots to evaluate with the manifest's episodes, e.g. 2,5")
    p.add_argument("--adapt", choices=_Names(".adapt", "ADAPTATIONS"), nargs="+", default=["prototypes"],
                   metavar="NAME", help="few-shot adaptation(s): %(choices)s (default prototypes), e.g. "
                   "--adapt prototypes finetune-last")
    p.add_argument("--episodes", type=positive_int, help="use only the first N episodes")
    p.add_argument("--adapt-iterations", type=positive_int,
                   help="fine-tuning iterations (default 1000 2-shot, 1500 5-shot)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast for the forward pass (default fp32)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="images per embedding batch (default 128)")
    p.add_argument("--workers", type=worker_count, default=0,
                   help="image loader processes (default 0: load in the main process)")
    p.add_argument("--decode", choices=_Names(".decode", "DECODES"), default="loader", metavar="WHERE",
                   help="where JPEGs are decoded and images resized: loader (PIL on the workers), device (on the "
                        "GPU), auto (device on CUDA for JPEG datasets)")
    p.add_argument("--no-clustering", action="store_true", help="skip NMI/AMI (k-means)")
    p.add_argument("--shard-size", type=positive_int, default=2048,
                   help="images per embedding-cache shard (resume unit)")
    p.add_argument("--metric", default="recall@1", help="metric of the degradation curve plot")
    p.add_argument("--label", help="name of this run in plots")
    p.add_argument("--save-embeddings", action="store_true",
                   help="also write the embeddings (OUT/embeddings/), for `oodml leaderboard submit`")
    p.add_argument("--out", default="results", help="output directory (default ./results): new, empty, or an "
                   "earlier run of the same model, dataset and split set, which is replaced whole")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run of another model in --out")
    _add_matching(p)
    p.set_defaults(func=cmd_evaluate)

    models = commands.add_parser("models", help="registered embedding models")
    sub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = sub.add_parser("list", help="registered model names and the model spec forms")
    lst.add_argument("pattern", nargs="?", default="*", help="shell-style pattern of the names to list (default *)")
    lst.set_defaults(func=cmd_models_list)

    plot = commands.add_parser("plot", help="overlay the degradation curves of several evaluation runs")
    plot.add_argument("results", nargs="+", help="results directories or results.parquet files")
    plot.add_argument("--metric", default="recall@1", help="metric of the curves (default recall@1)")
    plot.add_argument("--out", default="curves", help="output prefix (PNG and SVG)")
    plot.add_argument("--test-set", choices=["auto", "matched", "full"], default="auto",
                      help="curve of the class-count-matched test sets, of the full ones, or auto (default): the "
                           "matched curve as the headline with the full one dashed, where a run has both")
    plot.set_defaults(func=cmd_plot)


def cmd_compare(args: argparse.Namespace) -> int:
    from .comparison import compare

    result = compare(args.runs, draws=args.draws, seed=args.seed, data_root=args.data_root, test_set=args.test_set)
    print(result.to_json() if args.json else result.format())
    return 0


def _add_compare(commands) -> None:
    p = commands.add_parser("compare", help="paired differences of runs on one split set, with class-bootstrap "
                                            "intervals (each run against the first)")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="results folders (oodml evaluate --out) or leaderboard entries; the first is the reference")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--data-root", help="dataset folder, for rescoring entries of datasets that need one")
    p.add_argument("--test-set", choices=("both", "matched", "full"), default="both",
                   help="compare on the class-count-matched curve (the headline), each level's full test set, or "
                        "both (default; matched where every run has the same matched draws)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=cmd_compare)


def cmd_leaderboard_submit(args: argparse.Namespace) -> int:
    from .leaderboard import EntryInfo, submit

    info = EntryInfo(name=args.name, method=args.method, description=args.description or "",
                     authors=args.authors or [], paper=args.paper, code=args.code,
                     training_data=args.training_data or "", pretraining=args.pretraining, baseline=args.baseline)
    out = submit(args.results, info, adaptations=args.adapt, episodes=args.episodes, root=args.root,
                 data_root=args.data_root, replace=args.replace)
    print(f"wrote {out}; check it with `oodml leaderboard verify {out}`")
    return 0


def cmd_leaderboard_verify(args: argparse.Namespace) -> int:
    from .leaderboard import iter_entries, verify_entries

    paths = [Path(p) for p in args.paths] or iter_entries(args.root)
    if not paths:
        print(f"no entries under {args.root}/submissions")
        return 0
    failed = []
    for path, result in zip(paths, verify_entries(paths, data_root=args.data_root), strict=True):
        if result.ok:
            curve = result.scores.curve("recall@1")
            print(f"ok      {path}: mean recall@1 {curve['mean']:.4f}, AUC {curve['auc']:.4f}")
        else:
            failed.append(str(path))
            first, *more = result.reasons
            print(f"FAILED  {path}: {first}")
            for reason in more:
                print(f"  {reason}")
    if failed:
        raise OodmlError(f"{len(failed)} of {len(paths)} entries did not verify: {', '.join(failed)} "
                         "(problems above)")
    return 0


def cmd_leaderboard_build(args: argparse.Namespace) -> int:
    from .leaderboard import build

    written, rejected = build(args.root, data_root=args.data_root)
    for path in written:
        print(f"wrote {path}")
    if rejected:
        for v in rejected:
            print(f"not shown: {v.path}: {v.reasons[0]}", file=sys.stderr)
        raise OodmlError(f"not shown, as they did not verify: {', '.join(str(v.path) for v in rejected)} "
                         "(problems above, also listed on the board); the board was written from the others")
    return 0


def _add_leaderboard(commands) -> None:
    board = commands.add_parser("leaderboard", help="package, verify and render leaderboard entries")
    sub = board.add_subparsers(dest="action", required=True, metavar="ACTION")
    submit = sub.add_parser("submit", help="package evaluation runs (--save-embeddings) as an entry")
    submit.add_argument("results", nargs="+", help="results folders: the submitted run first, then other seeds")
    submit.add_argument("--name", required=True, help="entry name (folder), e.g. my-method")
    submit.add_argument("--method", help="display name (default: --name)")
    submit.add_argument("--description", help="one paragraph on the method, shown on the board")
    submit.add_argument("--authors", nargs="+", metavar="NAME", help="author names, e.g. --authors 'A. Lee' 'B. Ng'")
    submit.add_argument("--paper", help="paper URL")
    submit.add_argument("--code", help="code URL")
    submit.add_argument("--training-data", help="what the model was trained on")
    submit.add_argument("--pretraining", metavar="DATA",
                        help="what the model was pretrained on, for the board's overlap column: imagenet-1k, a "
                             "library tag (a1_in1k, laion2b_s34b_b79k), or none when trained from scratch "
                             "(default: what a model spec declares, else not declared)")
    submit.add_argument("--baseline", action="store_true", help="mark as a reference baseline")
    submit.add_argument("--adapt", nargs="+", choices=_Names(".adapt", "ADAPTATIONS"), metavar="NAME",
                        help="few-shot adaptations to include: %(choices)s (default: those evaluated)")
    submit.add_argument("--episodes", type=positive_int, help="episodes per shot to score (default: as evaluated)")
    submit.add_argument("--replace", action="store_true", help="overwrite an existing entry of that name")
    submit.set_defaults(func=cmd_leaderboard_submit)
    verify = sub.add_parser("verify", help="check entries and recompute every number from their embeddings")
    verify.add_argument("paths", nargs="*", help="entry folders (default: all under --root)")
    verify.set_defaults(func=cmd_leaderboard_verify)
    build = sub.add_parser("build", help="verify all entries and write README.md and index.html")
    build.set_defaults(func=cmd_leaderboard_build)
    for p in (submit, verify, build):
        p.add_argument("--root", default="leaderboard", help="leaderboard folder (default ./leaderboard)")
        p.add_argument("--data-root", help="dataset folder, for datasets that need one")


def version_report() -> str:
    """What ``oodml --version`` prints: the version, where oodml is installed and where split sets are
    looked for, in search order."""
    from .splits.locations import split_locations

    lines = [f"oodml {__version__}", f"installed at {Path(__file__).resolve().parent}",
             "split sets, first match wins:"]
    lines += [f"  {location.source:<13}  {location.path}" for location in split_locations()] or ["  (none)"]
    return "\n".join(lines)


class _ShowVersion(argparse.Action):
    """``--version``: print :func:`version_report` and exit (argparse's own action would rewrap the lines)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        print(version_report())
        parser.exit(0)


class OneLineParser(argparse.ArgumentParser):
    """argparse with oodml's error style: one line naming the problem and where the usage is, exit status 2.
    Subcommands inherit it (``add_subparsers`` uses the parser's own class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"oodml: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="oodml", description="Out-of-distribution benchmark for deep metric learning.")
    parser.add_argument("--version", action=_ShowVersion, help="version, install location and split set search paths")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress (bars on a terminal, one line per stage elsewhere)")
    parser.add_argument("--trust-repo", action="store_true", help=TRUST_REPO_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    datasets = commands.add_parser("datasets", help="list, inspect, verify and download datasets")
    sub = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="registered datasets").set_defaults(func=cmd_datasets_list)
    info = sub.add_parser("info", help="classes, images, fingerprint and layout found")
    _add_dataset_args(info)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=cmd_datasets_info)
    verify = sub.add_parser("verify", help="decode every image and list the unreadable ones")
    _add_dataset_args(verify)
    verify.set_defaults(func=cmd_datasets_verify)
    download = sub.add_parser("download", help="fetch and checksum-verify the official archives")
    download.add_argument("name", help="a registered dataset with official archives (see `oodml datasets list`)")
    download.add_argument("--root", required=True, help="directory to download and unpack into")
    download.set_defaults(func=cmd_datasets_download)
    _add_make_splits(commands)
    _add_splits(commands)
    _add_evaluate(commands)
    _add_compare(commands)
    _add_train(commands)
    _add_leaderboard(commands)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"oodml: warning: {message}", file=sys.stderr)


def _under_torchrun() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` > 1); only then is
    torch.distributed imported, which takes seconds."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        set_quiet(True)
    if args.trust_repo or getattr(args, "trust_repo_after", False):  # model loading reads OODML_TRUST_REPO
        os.environ["OODML_TRUST_REPO"] = "1"
    if _under_torchrun():
        from .distributed import init_from_env, is_main_process

        if init_from_env() and not is_main_process():  # torchrun: one voice, one writer
            set_quiet(True)
            args.quiet, sys.stdout = True, open(os.devnull, "w")  # noqa: SIM115
    warnings.showwarning = _one_line_warning
    try:
        return args.func(args)
    except OodmlError as exc:
        print(f"oodml: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("oodml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `oodml ... | head`: the reader left; stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 141


if __name__ == "__main__":
    sys.exit(main())
