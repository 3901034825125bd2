"""The dataset record every adapter returns.

An :class:`ImageDataset` is a list of samples, each a stable relative ``sample
id`` (the key used by splits, caches and submissions), an integer label
indexing ``classes``, and an image.  Adapters only parse annotations; reading
images, fingerprinting and checking live here, once.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import OodmlError
from ..progress import progress


def fingerprint_of(sample_ids: Sequence[str], class_names: Sequence[str], sizes: Sequence[int]) -> str:
    """sha256 (hex) over the sorted ``(sample id, class name, size in bytes)`` triples.

    Sorting makes the fingerprint independent of annotation order, and using
    sizes rather than contents keeps it cheap (a ``stat`` per file) while still
    changing when a file is added, removed, relabelled or rewritten at another size.
    """
    h = hashlib.sha256()
    for sid, cname, size in sorted(zip(sample_ids, class_names, sizes, strict=True)):
        h.update(f"{sid}\t{cname}\t{int(size)}\n".encode())
    return h.hexdigest()


def decode_image(source: str | Path | bytes, dataset: str, what: str, hint: str = "") -> Image.Image:
    """Decode an image file (a path, or the file's bytes) as RGB: the one image edge every dataset reads through.

    Errors read ``"<dataset>: cannot read <what>: <reason><hint>"``, e.g. ``what="image /data/x.jpg"``.
    Images of more than PIL's ``Image.MAX_IMAGE_PIXELS`` pixels are refused before decoding.

    Raises:
        OodmlError: one line, when the image has too many pixels or cannot be decoded.
        FileNotFoundError: when ``source`` is a path that does not exist (the caller knows what listed it).
    """
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            # PIL only warns between its pixel limit and twice that; both are refused here, before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                img.load()
                return img.convert("RGB")
    except FileNotFoundError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise OodmlError(f"{dataset}: {what} has more pixels than the {Image.MAX_IMAGE_PIXELS:,} decoded safely "
                         f"({str(exc).rstrip('.')}); shrink it or remove it from the dataset") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise OodmlError(f"{dataset}: cannot read {what}: {exc}{hint}") from None


@dataclass(eq=False)
class ImageDataset:
    """Images with class labels, loaded from one root in one layout.

    Attributes:
        name: registry name of the adapter that loaded it (``"cub200"``, ...).
        root: the directory the relative sample ids resolve against.
        layout: which on-disk layout was found, in words.
        sample_ids: one stable relative path per sample (POSIX separators).
        labels: int64 array, shape ``(N,)``, indices into ``classes``.
        classes: class names; ``classes[labels[i]]`` names sample ``i``'s class.
        metadata: extra per-sample columns (e.g. SOP's super-class), each of length N.
        source: what picked these samples besides the root, as JSON values (``hf``: hub id, revision
            and split selection); ``make-splits`` records it as ``metadata["dataset_source"]`` when not empty.
    """

    name: str
    root: Path
    layout: str
    sample_ids: list[str]
    labels: np.ndarray
    classes: list[str]
    metadata: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.sample_ids)
        if self.labels.shape != (n,):
            raise ValueError(f"labels shape {self.labels.shape} does not match {n} sample ids")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError("labels must index classes")
        if len(set(self.sample_ids)) != n:
            dup = next(s for s, c in Counter(self.sample_ids).items() if c > 1)
            raise OodmlError(f"{self.name}: sample id {dup!r} appears more than once in the annotations")
        for key, col in self.metadata.items():
            if len(col) != n:
                raise ValueError(f"metadata column {key!r} has {len(col)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        """Return sample ``index`` as ``(RGB PIL image, label)``.

        Raises:
            OodmlError: naming the file when it is missing, unreadable or truncated.
        """
        return self.load_image(index), int(self.labels[index])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, root='{self.root}', "
                f"images={len(self)}, classes={len(self.classes)})")

    # --- per-sample storage: overridden by datasets that are not files on disk -------
    def path(self, index: int) -> Path:
        """Absolute path of sample ``index``'s image file."""
        return self.root / self.sample_ids[index]

    def load_image(self, index: int) -> Image.Image:
        path = self.path(index)
        try:
            return decode_image(path, self.name, f"image {path}",
                                " (the file is corrupt or truncated; re-extract it from the archive)")
        except FileNotFoundError:
            raise OodmlError(f"{self.name}: image file {path} is missing "
                             f"(listed as {self.sample_ids[index]!r} in the annotations)") from None

    def load_encoded(self, index: int) -> bytes | None:
        """The stored file of sample ``index`` (the bytes :meth:`load_image` decodes), for decoders other
        than PIL; None when this dataset keeps no such file (then only :meth:`load_image` reads it).

        A subclass that overrides :meth:`load_image` answers None unless it overrides this too.

        Raises:
            OodmlError: naming the file when it is missing.
        """
        if type(self).load_image is not ImageDataset.load_image:
            return None
        path = self.path(index)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise OodmlError(f"{self.name}: image file {path} is missing "
                             f"(listed as {self.sample_ids[index]!r} in the annotations)") from None

    def sample_size(self, index: int) -> int:
        """Size of the stored sample in bytes (what the fingerprint hashes)."""
        path = self.path(index)
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            raise OodmlError(f"{self.name}: image file {path} is missing "
                             f"(listed as {self.sample_ids[index]!r} in the annotations)") from None

    # --- derived ----------------------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex over sorted (sample id, class name, size); see :func:`fingerprint_of`."""
        sizes = [self.sample_size(i) for i in progress(range(len(self)), f"fingerprint {self.name}",
                                                       total=len(self), unit="file")]
        return fingerprint_of(self.sample_ids, [self.classes[k] for k in self.labels], sizes)

    @cached_property
    def class_index(self) -> dict[str, int]:
        """Class name -> label."""
        return {c: k for k, c in enumerate(self.classes)}

    def indices_of_classes(self, names: Sequence[str]) -> np.ndarray:
        """Sample indices (ascending) of every image of the named classes.

        Raises:
            OodmlError: naming the first class that this dataset does not have.
        """
        missing = [c for c in names if c not in self.class_index]
        if missing:
            raise OodmlError(f"{self.name}: class {missing[0]!r} is not in this dataset ({len(missing)} missing); "
                             "the split set or checkpoint belongs to other data")
        return np.flatnonzero(np.isin(self.labels, [self.class_index[c] for c in names]))

    def class_counts(self) -> np.ndarray:
        """Images per class, int64 array of shape ``(len(classes),)``."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def verify_images(self) -> list[str]:
        """Decode every image; return one message per unreadable sample (empty when all are fine)."""
        problems = []
        for i in progress(range(len(self)), f"verify {self.name}", total=len(self), unit="img"):
            try:
                self.load_image(i)
            except OodmlError as exc:
                problems.append(str(exc))
        return problems


def dataset_summary(ds: ImageDataset) -> dict:
    """What ``oodml datasets info`` reports, as a JSON-friendly dict.

    Metadata columns with at most 20 values are tallied: by classes when the
    value is constant within every class (glyphs' script group), else by images.
    """
    counts = ds.class_counts()
    summary = {
        "dataset": ds.name, "root": str(ds.root), "layout": ds.layout,
        "classes": len(ds.classes), "images": len(ds),
        "images_per_class": {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())},
        "fingerprint": ds.fingerprint,
    }
    for key, column in ds.metadata.items():
        column = np.asarray(column)
        values, inverse = np.unique(column, return_inverse=True)
        if len(values) > 20:
            summary[key] = f"{len(values)} distinct values"
            continue
        class_value = np.full(len(ds.classes), -1)
        class_value[ds.labels] = inverse
        per_class = np.array_equal(class_value[ds.labels], inverse)
        unit = "classes" if per_class else "images"
        tally = np.bincount(class_value[class_value >= 0] if per_class else inverse, minlength=len(values))
        summary[key] = {"unit": unit, "counts": {str(v): int(c) for v, c in zip(values, tally, strict=True)}}
    return summary
