"""Pretraining overlap: which test classes of a split set a model may have seen in its pretraining data.

:func:`pretraining_overlap` counts, per level, the test classes (and images)
that have a counterpart among the classes of a model's pretraining data.
oodml ships one class list, ImageNet-1k (``data/imagenet-1k.json``), and two
maps into it: ``cub200`` (class overlap, species or WordNet-lemma match,
checked by hand) and ``cars196`` (category overlap: the ImageNet-1k classes of
the same kind of vehicle).  Each file states its rule.  Pretraining data
without a class list, or a dataset without a map, gives ``"unknown"``, never
zero.  ``oodml splits audit --pretraining`` reports it
(:mod:`oodml.splits.audit`), ``oodml evaluate`` records it for the evaluated
weights' declared pretraining (:func:`pretraining_meta`), and the leaderboard
board shows it per entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import cache
from importlib import resources

from .manifest import SplitSet


@dataclass(frozen=True)
class LevelOverlap:
    """Test classes and images of one level with a counterpart in the pretraining classes (None: unknown)."""

    level: int
    test_classes: int
    test_classes_with_counterpart: int | None
    test_images: int | None
    test_images_with_counterpart: int | None
    classes_with_counterpart: tuple[str, ...] | None

    def as_dict(self) -> dict:
        """JSON-able: the record's fields, the class names as a list."""
        record = asdict(self)
        if self.classes_with_counterpart is not None:
            record["classes_with_counterpart"] = list(self.classes_with_counterpart)
        return record


@dataclass(frozen=True)
class PretrainingOverlap:
    """Overlap of a split set's test classes with a model's pretraining data.

    Attributes:
        pretraining: the declaration audited (``imagenet-1k``, a timm tag such as ``a1_in1k``, ...).
        status: ``"known"`` (every pretraining source has a class list and the dataset a map),
            ``"lower bound"`` (ImageNet-1k is one of several sources: the counts cover it alone) or
            ``"unknown"`` (nothing can be counted; ``levels`` hold None counts).
        class_list: the pretraining class list used (``"imagenet-1k"``) or None.
        overlap: ``"class"`` (same species) or ``"category"`` (same kind of object), None when unknown.
        reason: one line saying why the status is what it is.
        levels: per level counts.
    """

    pretraining: str
    status: str
    class_list: str | None
    overlap: str | None
    reason: str
    levels: tuple[LevelOverlap, ...]

    def as_dict(self, levels: Collection[int] | None = None) -> dict:
        """JSON-able: the record's fields, ``levels`` a list of :meth:`LevelOverlap.as_dict` (only the levels
        numbered in ``levels`` when given)."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "levels"}
        record["levels"] = [lv.as_dict() for lv in self.levels if levels is None or lv.level in levels]
        return record


#: pretraining data whose class list ships with oodml -> pattern of a declaration naming it
CLASS_LISTS = {"imagenet-1k": re.compile(r"(?<![a-z0-9])(in1k|imagenet-?1k|ilsvrc-?(2012)?)(?![a-z0-9])")}
#: pretraining data beyond ImageNet-1k that a declaration may add (their classes are not known here)
_OTHER_DATA = re.compile(r"in(12|21|22)k|imagenet-?(12|21|22)k|ig\d|yfcc|laion|lvd|openai|jft|datacomp|webli|"
                         r"cc12m|cc3m|merged|metaclip|dfn|commonpool|mim|swag|sw?sl")


@cache
def _data(name: str) -> dict:
    return json.loads(resources.files("oodml.splits").joinpath("data", name).read_text(encoding="utf-8"))


def imagenet_classes() -> dict[str, str]:
    """ImageNet-1k's classes, WordNet id -> short name, in class-index order (``data/imagenet-1k.json``)."""
    return {wnid: name for _, wnid, name in _data("imagenet-1k.json")["classes"]}


def overlap_map(dataset: str, class_list: str = "imagenet-1k") -> dict | None:
    """The shipped map from ``dataset``'s classes to ``class_list``'s (its rule, overlap kind and matches:
    class name -> counterparts), or None when oodml has none."""
    try:
        return _data(f"{dataset}-{class_list}.json")
    except FileNotFoundError:
        return None


def parse_pretraining(declaration: str) -> tuple[str | None, bool]:
    """``(class list, complete)`` of a pretraining declaration: the shipped class list it names (or None), and
    whether that is all of its data (``a1_in1k``: yes; ``in21k_ft_in1k``, ``laion2b``: no)."""
    text = declaration.lower()
    for name, pattern in CLASS_LISTS.items():
        if pattern.search(text):
            return name, not _OTHER_DATA.search(text)
    return None, False


def pretraining_overlap(split_set: SplitSet, pretraining: str,
                        image_counts: Mapping[str, int] | None = None) -> PretrainingOverlap:
    """Per level, the test classes (and images, when ``image_counts`` gives class -> images) with a counterpart
    in the classes of ``pretraining`` (module docstring).

    Returns:
        :class:`PretrainingOverlap`; status ``"unknown"`` with None counts when the pretraining data has no
        shipped class list or the dataset no map into it.
    """
    class_list, complete = parse_pretraining(pretraining)
    mapping = overlap_map(split_set.dataset, class_list) if class_list else None
    if class_list is None:
        reason = f"no class list of {pretraining!r} ships with oodml (known: {', '.join(CLASS_LISTS)})"
    elif mapping is None:
        reason = f"no map from {split_set.dataset} classes to {class_list} classes ships with oodml"
    else:
        reason = mapping["rule"].split(".  ")[0]
        if not complete:
            reason = (f"{pretraining!r} names data besides {class_list}, whose classes are unknown: the counts "
                      f"cover {class_list} only")
    if mapping is None:
        levels = tuple(LevelOverlap(lv.index, len(lv.test_classes), None, _images(lv.test_classes, image_counts),
                                    None, None) for lv in split_set.levels)
        return PretrainingOverlap(pretraining, "unknown", class_list, None, reason, levels)
    matched = {c for c, targets in mapping["matches"].items() if _counterparts(targets)}
    levels = []
    for lv in split_set.levels:
        hits = tuple(sorted(c for c in lv.test_classes if c in matched))
        levels.append(LevelOverlap(lv.index, len(lv.test_classes), len(hits), _images(lv.test_classes, image_counts),
                                   _images(hits, image_counts), hits))
    return PretrainingOverlap(pretraining, "known" if complete else "lower bound", class_list, mapping["overlap"],
                              reason, tuple(levels))


def _counterparts(targets: object) -> list[str]:
    """WordNet ids of one map entry (a list of matches for cub200, a body-type record for cars196)."""
    if isinstance(targets, dict):
        return list(targets.get("wnids", []))
    return [t["wnid"] for t in targets]  # type: ignore[union-attr]


def _images(classes: Sequence[str], counts: Mapping[str, int] | None) -> int | None:
    return None if counts is None else int(sum(counts.get(c, 0) for c in classes))


def model_overlap(identity: Mapping | None, split_set: SplitSet, levels: Sequence[int],
                  image_counts: Mapping[str, int] | None = None) -> dict | None:
    """What ``oodml evaluate`` records in ``summary.json``: the overlap of the evaluated levels' test classes
    with the model's declared pretraining data (:func:`pretraining_overlap`), or None when the model
    declares none (random weights, an oodml checkpoint trained from scratch)."""
    declared = (identity or {}).get("pretraining")
    if not declared:
        return None
    return pretraining_overlap(split_set, str(declared), image_counts).as_dict(set(levels))


def pretraining_meta(identity: Mapping | None, split_set: SplitSet, levels: Sequence, dataset: object) -> dict:
    """``{"pretraining_overlap": ...}`` for the ``meta`` of :func:`oodml.evaluation.evaluate`: the overlap of the
    evaluated levels' test classes and images with the pretraining data the evaluated weights' ``identity``
    declares (:func:`model_overlap`); empty when it declares none."""
    counts = dict(zip(dataset.classes, (int(n) for n in dataset.class_counts()), strict=True))
    overlap = model_overlap(identity, split_set, [lv.index for lv in levels], counts)
    return {} if overlap is None else {"pretraining_overlap": overlap}
