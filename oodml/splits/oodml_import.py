"""Import the split pickles published with the ooDML benchmark, without trusting them.

The pickle is a dict keyed by split id (1 = easiest) whose values hold
``train``/``test`` class names, the published ``fid``, a tuning partition
``split_train``/``split_val``, and ``test_episodes[shots][episode][class]``
(support image file names).  It is read with an unpickler that resolves only
numpy's scalar reconstructor and ``numpy.dtype``, and the scalars it builds
may only be strings (class names) or floats (the FIDs); anything else is
refused before it is built.
"""

from __future__ import annotations

import datetime as dt
import io
import pickle
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import OodmlError
from ..features import file_sha256
from .levels import Episode, Level
from .manifest import SplitSet
from .publish import write_split_set

_ALLOWED_KINDS = {"U": "string", "S": "string", "f": "float"}
EPISODE_LAYOUT = ("ooDML folder layout images/<class name>/<file name>; sample ids are '<class name>/<file name>' "
                  "as the cars196 adapter gives for that layout, and cannot be matched to the official car_ims/ names")


def _checked_scalar(dtype: np.dtype, data: bytes | None = None) -> np.generic:
    import numpy._core.multiarray as multiarray

    if not isinstance(dtype, np.dtype) or dtype.kind not in _ALLOWED_KINDS:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} (only strings and floats are allowed)")
    return multiarray.scalar(dtype, data) if data is not None else multiarray.scalar(dtype)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves exactly numpy's scalar reconstructor (numpy 1 and 2 names) and ``numpy.dtype``."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _checked_scalar
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def read_oodml_pickle(path: str | Path) -> dict:
    """Load an ooDML split pickle with the restricted unpickler and check its structure."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise OodmlError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = _RestrictedUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:  # nothing but our own reconstructors can run, so any failure means a bad file
        raise OodmlError(f"{path}: refused as an ooDML split pickle: {exc}; only numpy string scalars (and float "
                         "FIDs) may appear in it") from None
    if not isinstance(data, dict) or not data or not all(isinstance(k, int) for k in data):
        raise OodmlError(f"{path}: expected a dict keyed by split id 1..N")
    needed = {"train", "test", "fid", "split_train", "split_val", "test_episodes"}
    for key, value in data.items():
        if not isinstance(value, dict) or not needed <= set(value):
            raise OodmlError(f"{path}: split {key} lacks {sorted(needed - set(value or {}))}")
        for field in ("train", "test", "split_train", "split_val"):
            if not all(isinstance(c, str) for c in value[field]):
                raise OodmlError(f"{path}: split {key} field {field!r} holds something other than class names")
        if not isinstance(value["fid"], (float, np.floating)):
            raise OodmlError(f"{path}: split {key} has a non-numeric fid")
    return data


def levels_from_oodml(data: dict) -> tuple[Level, ...]:
    full = len(data[min(data)]["train"])
    levels = []
    for key in sorted(data):
        split = data[key]
        train, test = tuple(map(str, split["train"])), tuple(map(str, split["test"]))
        episodes = {}
        for shots, by_episode in sorted(split["test_episodes"].items()):
            episodes[int(shots)] = tuple(
                Episode(int(shots), int(e), {str(c): tuple(sorted(f"{c}/{name}" for name in names))
                                             for c, names in sorted(support.items())})
                for e, support in sorted(by_episode.items()))
        levels.append(Level(int(key), float(split["fid"]), float("nan"), float("nan"),
                            "swap" if len(train) == full else "removal", tuple(sorted(train)), tuple(sorted(test)),
                            tuple(sorted(map(str, split["split_val"]))), -1, -1, episodes))
    return tuple(levels)


def import_oodml(pickle_path: str | Path, *, dataset: str, version: str, out: str | Path = "splits") -> SplitSet:
    """Convert an ooDML split pickle into a published manifest, keeping the published FIDs as distances.

    Image counts are unknown without the images and are stored as -1; the
    bootstrap intervals are NaN (the class features were not published).
    """
    path = Path(pickle_path)
    levels = levels_from_oodml(read_oodml_pickle(path))
    metadata = {
        "source": "ooDML benchmark release (Milbich et al., Characterizing Generalization under "
                  "Out-Of-Distribution Shifts in Deep Metric Learning)",
        "source_file": path.name,
        "source_sha256": file_sha256(path),
        "extractor": "resnet50 (ImageNet), as published by ooDML",
        "weights_hash": "unknown",
        "mode": "class-mean",
        "distance": "fid",
        "distance_source": "published",
        "algorithm": "oodml (imported)",
        "parameters": {},
        "seed": None,
        "episode_layout": EPISODE_LAYOUT,
        "oodml_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return write_split_set(Path(out), dataset, version, levels, metadata)
