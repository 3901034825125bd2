"""Stanford Cars (Cars196) in either of its two common layouts.

Official release (``cars_annos.mat`` and ``car_ims.tgz`` extracted)::

    <root>/cars_annos.mat         struct array 'annotations' (relative_im_path, class, ...),
                                  cell array 'class_names'
    <root>/car_ims/000001.jpg ...

Folder layout of the ooDML and "Revisiting DML" code bases::

    <root>/images/<class name>/<file name>     (or <root>/cars196/images/...)

Sample ids are ``car_ims/000001.jpg`` in the official layout and
``<class name>/<file name>`` in the folder layout; the two name files
differently and no mapping between them is published.  Class names are the
196 official names with ``/`` replaced by ``-`` (only ``Ram C/V Cargo Van
Minivan 2012`` has one), as the folder layout must, so names agree across layouts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._fs import safe_relative
from ..errors import OodmlError
from ._layout import find_layout, require
from .base import ImageDataset
from .imagefolder import scan_class_folders
from .registry import Download, register_dataset

LAYOUT = ("the official release (cars_annos.mat and car_ims/ from car_ims.tgz) directly under the root, "
          "or the ooDML folder layout images/<class name>/<file>")
_BASE = "http://imagenet.stanford.edu/internal/car196/"


def class_name(official: str) -> str:
    """The folder-safe class name used in every layout (``/`` becomes ``-``)."""
    return official.strip().replace("/", "-")


@register_dataset(
    "cars196",
    description="Stanford Cars: 196 car models, 16,185 images",
    layout=LAYOUT,
    downloads=(Download(_BASE + "car_ims.tgz", "car_ims.tgz", "d5c8f0aa497503f355e17dc7886c3f14"),
               Download(_BASE + "cars_annos.mat", "cars_annos.mat", "b407c6086d669747186bd1d764ff9dbc",
                        extract=False)),
)
def load_cars196(root: Path) -> ImageDataset:
    base, marker = find_layout("cars196", root, [(".", "cars_annos.mat"), (".", "images"),
                                                 ("cars196", "images")], LAYOUT)
    if marker == "images":
        sample_ids, labels, classes = scan_class_folders(base / "images", "cars196")
        return ImageDataset(name="cars196", root=base / "images", layout="ooDML folders images/<class>/<file>",
                            sample_ids=sample_ids, labels=labels, classes=classes)
    return _load_official(base)


def _load_official(base: Path) -> ImageDataset:
    import scipy.io  # only this layout needs it

    mat_path = base / "cars_annos.mat"
    require(base / "car_ims", "cars196", LAYOUT)
    try:
        mat = scipy.io.loadmat(mat_path, squeeze_me=True)
        annotations, names = mat["annotations"], mat["class_names"]
        rel_paths = [str(p) for p in np.atleast_1d(annotations["relative_im_path"])]
        class_ids = np.atleast_1d(annotations["class"]).astype(np.int64)
        classes = [class_name(str(n)) for n in np.atleast_1d(names)]
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise OodmlError(f"cars196: cannot read {mat_path}: {exc} (expected the official cars_annos.mat with "
                         "'annotations' (fields relative_im_path, class) and 'class_names')") from None
    bad = np.flatnonzero((class_ids < 1) | (class_ids > len(classes)))
    if bad.size:
        raise OodmlError(f"cars196: {mat_path}: annotation {bad[0] + 1} has class {class_ids[bad[0]]}, "
                         f"but class_names lists {len(classes)} classes (1-based)")
    sample_ids = [safe_relative(p, source=f"{mat_path} annotation {i + 1}") for i, p in enumerate(rel_paths)]
    return ImageDataset(name="cars196", root=base, layout="official cars_annos.mat + car_ims/",
                        sample_ids=sample_ids, labels=class_ids - 1, classes=classes)
