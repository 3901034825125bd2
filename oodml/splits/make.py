"""``make_splits``: dataset -> features -> levels -> published manifest (the I/O edge of split generation)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..datasets import DataConfig, ImageDataset, dataset_spec
from ..distributed import barrier, is_main_process
from ..errors import OodmlError, brief
from ..features import Extractor, extract_features, get_extractor
from .adjacent import METADATA_KEY as ADJACENT_LEVELS
from .build import AUTO, MOST_LEVELS, SplitConfig, build_levels
from .catalogue import published_copy
from .manifest import SplitSet, check_version_name, read_split_set
from .publish import name_taken, write_split_set

#: Generation records known before the search: a published name recording others cannot be reproduced.
KNOWN_BEFORE_SEARCH = ("dataset_fingerprint", "extractor", "weights_hash", "distance", "mode", "algorithm", "seed")


def check_name_free(dataset: str, version: str, out: str | Path, record: dict) -> None:
    """Refuse, before any search, to make ``dataset@version`` when it is published (at ``out`` or on the
    search paths) with generation records other than ``record``'s (:data:`KNOWN_BEFORE_SEARCH`): the split
    set could not reproduce it, and published names are immutable (:func:`write_split_set` checks the rest)."""
    published = published_copy(dataset, version, Path(out) / dataset / version)
    if published is None:
        return
    for key in KNOWN_BEFORE_SEARCH:
        if record[key] != _asked(published.metadata, key):
            raise name_taken(published, f"{key} {brief(record[key])} vs {brief(_asked(published.metadata, key))}")


def _asked(metadata: dict, key: str) -> object:
    """What a split set's generation asked for: the ``algorithm`` option is in ``parameters`` (the top-level
    ``algorithm`` records the search that ran: ``exhaustive`` for a greedy option that scored every split)."""
    if key == "algorithm" and isinstance(metadata.get("parameters"), dict) and "algorithm" in metadata["parameters"]:
        return metadata["parameters"]["algorithm"]
    return metadata.get(key)


def keep_classes_config(config: SplitConfig | None) -> SplitConfig:
    """``config`` (default :class:`SplitConfig`) for ``keep_classes``: no removal levels, so every level has
    the same class counts; a config asking for removal levels is refused in one line."""
    if config is None:
        return SplitConfig(removal_levels=0)
    if config.removal_levels != 0:
        raise OodmlError(f"--keep-classes builds swap levels only, at a constant class count; it cannot make "
                         f"{config.removal_levels} removal levels: drop --removal-levels (or give 0)")
    return config


def _metadata(ds: ImageDataset, ext: Extractor, feature_dim: int, info: dict, *, keep_classes: bool,
              auto: bool) -> dict:
    """The generation record of a split set built from ``ds`` with ``ext``'s features (``build_levels``'
    ``info``); keys that only some split sets have are added only then, so the others keep their digest."""
    config = info["config"]  # --levels capped to what the class count allows (or chosen by auto)
    metadata = {
        "dataset_fingerprint": ds.fingerprint,
        "dataset_layout": ds.layout,
        "num_classes": len(ds.classes),
        "num_images": len(ds),
        "extractor": ext.id,
        "weights_hash": ext.weights_hash,
        "feature_dim": int(feature_dim),
        "mode": config.mode,
        "distance": config.distance,
        "algorithm": info["algorithm"],
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
    # Only when asked, so that the split sets of the default options keep their metadata and digest:
    if keep_classes:
        metadata["keep_classes"] = True
    if auto:
        metadata["levels_auto"] = {"most": MOST_LEVELS, "tried": info["levels_tried"]}
    if info["adjacent_levels"]:
        metadata[ADJACENT_LEVELS] = [pair.as_dict() for pair in info["adjacent_levels"]]
    return metadata


@dataclass(frozen=True)
class FeatureConfig:
    """The features the levels are measured in: ``extractor`` (default: the dataset's registered split
    extractor, ``resnet50``; ``pixels`` for glyphs; or a model spec or file) with its ``weights`` file, computed
    on ``device`` in batches of ``batch_size`` images (neither changes the split set)."""

    extractor: str | None = None
    weights: str | None = None
    device: str = "auto"
    batch_size: int = 128


def make_splits(dataset: str, *, config: SplitConfig | None = None, data: DataConfig | None = None,
                features: FeatureConfig | None = None, version: str = "v1", out: str | Path = "splits",
                keep_classes: bool = False, built: Callable[[dict], None] | None = None) -> SplitSet:
    """Build and publish ``out/<dataset>/<version>/``; returns the verified :class:`SplitSet`.

    ``dataset`` is loaded from ``data`` (default: its default root, no
    options); ``features`` says which features (:class:`FeatureConfig`; default
    the dataset's split extractor).  Publishing identical content again
    is a no-op; different content under a published ``dataset@version`` (at
    ``out`` or on the search paths) is refused, before the search when the
    dataset, extractor or search settings already differ (:func:`check_name_free`).
    With few classes the levels are chosen among every balanced split and
    ``metadata["search"]`` says so (``build_levels``); ``levels`` is capped at
    what the class count allows, with a warning, and ``parameters`` records
    the levels made.  ``config.levels`` ``"auto"`` makes the most levels (up to
    8) whose adjacent levels are all distinct; ``keep_classes`` makes swap
    levels only (``removal_levels`` 0), so every level has the same class
    counts.  ``metadata["algorithm"]`` is the search that ran (``exhaustive``,
    ``greedy`` or ``oodml``; ``parameters.algorithm`` the option given) and
    ``metadata["adjacent_levels"]`` compares each adjacent pair of levels
    (:mod:`oodml.splits.adjacent`; outside the content digest).  ``built``, when
    given, is called with ``build_levels``' facts before publishing (the CLI
    prints the adjacent levels from them: a rebuild that reproduces a published
    name keeps the published files, which may not record them).
    """
    check_version_name(version)
    config = keep_classes_config(config) if keep_classes else (config or SplitConfig())
    features = features or FeatureConfig()
    ds = (data or DataConfig()).load(dataset)
    ext = get_extractor(features.extractor or dataset_spec(dataset).split_extractor, features.weights)
    check_name_free(dataset, version, out, {
        "dataset_fingerprint": ds.fingerprint, "extractor": ext.id, "weights_hash": ext.weights_hash,
        "distance": config.distance, "mode": config.mode, "algorithm": config.algorithm, "seed": config.seed})
    values = extract_features(ds, ext, device=features.device, batch_size=features.batch_size)
    asked_levels = config.levels
    levels, info = build_levels(ds, values, config)
    if built is not None:
        built(info)
    metadata = _metadata(ds, ext, values.shape[1], info, keep_classes=keep_classes, auto=asked_levels == AUTO)
    if is_main_process():
        split_set = write_split_set(Path(out), dataset, version, levels, metadata)
    barrier()  # under torchrun, the other ranks read what rank 0 published
    return split_set if is_main_process() else read_split_set(Path(out) / dataset / version)
