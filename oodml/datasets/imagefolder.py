"""Any ``root/<class name>/<image file>`` tree (torchvision's ImageFolder layout).

Classes are the sub-directory names in sorted order; sample ids are
``<class name>/<file name>``.  Files whose extension is not an image format
(``IMAGE_EXTENSIONS``) and hidden entries are not samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OodmlError
from ._layout import find_layout, utf8_name
from .base import ImageDataset
from .registry import register_dataset

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
LAYOUT = "one sub-directory per class holding its images: <root>/<class name>/<image file>"


def scan_class_folders(base: Path, name: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Scan ``base/<class>/<file>``.

    Returns:
        ``(sample_ids, labels, classes)``: ids ``"<class>/<file>"`` in sorted order,
        int64 labels indexing ``classes`` (sorted directory names).

    Raises:
        OodmlError: when there are no class directories, a class has no image, or a class folder or image
            file has a name that is not UTF-8.
    """
    classes = sorted(utf8_name(p.name, base, name, "class folder") for p in base.iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise OodmlError(f"{name}: no class directories under {base}; expected {LAYOUT}")
    sample_ids, labels = [], []
    for k, cname in enumerate(classes):
        files = sorted(utf8_name(p.name, base / cname, name, "image file") for p in (base / cname).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise OodmlError(f"{name}: class directory {base / cname} holds no image file "
                             f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
        sample_ids += [f"{cname}/{f}" for f in files]
        labels += [k] * len(files)
    return sample_ids, np.array(labels, dtype=np.int64), classes


@register_dataset("imagefolder", description="any root/<class>/<image> tree", layout=LAYOUT)
def load_imagefolder(root: Path) -> ImageDataset:
    base, _ = find_layout("imagefolder", root, [(".", ".")], LAYOUT)
    sample_ids, labels, classes = scan_class_folders(base, "imagefolder")
    return ImageDataset(name="imagefolder", root=base, layout="class folders",
                        sample_ids=sample_ids, labels=labels, classes=classes)
