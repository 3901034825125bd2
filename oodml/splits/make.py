"""``make_splits``: dataset -> features -> levels -> published manifest (the I/O edge of split generation)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from .. import __version__
from ..datasets import dataset_spec, load_dataset
from ..distributed import barrier, is_main_process
from ..errors import brief
from ..features import extract_features, get_extractor
from .build import SplitConfig, build_levels
from .manifest import SplitSet, check_version_name, name_taken, published_copy, read_split_set, write_split_set

#: Generation records known before the search: a published name recording others cannot be reproduced.
KNOWN_BEFORE_SEARCH = ("dataset_fingerprint", "extractor", "weights_hash", "distance", "mode", "algorithm", "seed")


def check_name_free(dataset: str, version: str, out: str | Path, record: dict) -> None:
    """Refuse, before any search, to make ``dataset@version`` when it is published (at ``out`` or on the
    search paths) with generation records other than ``record``'s (:data:`KNOWN_BEFORE_SEARCH`): the split
    set could not reproduce it, and published names are immutable (:func:`write_split_set` checks the rest)."""
    reference = published_copy(dataset, version, Path(out) / dataset / version)
    if reference is None:
        return
    for key in KNOWN_BEFORE_SEARCH:
        if record[key] != reference.metadata.get(key):
            raise name_taken(reference, f"{key} {brief(record[key])} vs {brief(reference.metadata.get(key))}")


def make_splits(dataset: str, *, root: str | Path | None = None, options: dict | None = None,
                extractor: str | None = None, weights: str | None = None, config: SplitConfig | None = None,
                version: str = "v1", out: str | Path = "splits", device: str = "auto",
                batch_size: int = 128) -> SplitSet:
    """Build and publish ``out/<dataset>/<version>/``; returns the verified :class:`SplitSet`.

    ``extractor`` defaults to the dataset's registered split extractor
    (``resnet50``; ``pixels`` for glyphs).  Publishing identical content again
    is a no-op; different content under a published ``dataset@version`` (at
    ``out`` or on the search paths) is refused, before the search when the
    dataset, extractor or search settings already differ (:func:`check_name_free`).
    With few classes the levels are chosen among every balanced split and
    ``metadata["search"]`` says so (``build_levels``); ``levels`` is capped at
    what the class count allows, with a warning, and ``parameters`` records
    the levels made.
    """
    check_version_name(version)
    config = config or SplitConfig()
    ds = load_dataset(dataset, root=root, **(options or {}))
    ext = get_extractor(extractor or dataset_spec(dataset).split_extractor, weights)
    check_name_free(dataset, version, out, {
        "dataset_fingerprint": ds.fingerprint, "extractor": ext.id, "weights_hash": ext.weights_hash,
        "distance": config.distance, "mode": config.mode, "algorithm": config.algorithm, "seed": config.seed})
    features = extract_features(ds, ext, device=device, batch_size=batch_size)
    levels, info = build_levels(ds, features, config)
    config = info["config"]  # --levels capped to what the class count allows
    metadata = {
        "dataset_fingerprint": ds.fingerprint,
        "dataset_layout": ds.layout,
        "num_classes": len(ds.classes),
        "num_images": len(ds),
        "extractor": ext.id,
        "weights_hash": ext.weights_hash,
        "feature_dim": int(features.shape[1]),
        "mode": config.mode,
        "distance": config.distance,
        "algorithm": config.algorithm,
        "parameters": dataclasses.asdict(config),
        "seed": config.seed,
        "default_distance": info["default_distance"],
        "oodml_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if ds.source:
        # Only when the adapter has one (hf): the split sets of other datasets keep their metadata and digest.
        metadata["dataset_source"] = dict(ds.source)
    if info["search"]["method"] == "exhaustive":
        # Only for the exhaustive search: greedy-built split sets (glyphs@v1, every larger one) keep their metadata.
        metadata["search"] = info["search"]
    if is_main_process():
        split_set = write_split_set(Path(out), dataset, version, levels, metadata)
    barrier()  # under torchrun, the other ranks read what rank 0 published
    return split_set if is_main_process() else read_split_set(Path(out) / dataset / version)
