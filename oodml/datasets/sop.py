"""Stanford Online Products in its official layout.

::

    <root>/Stanford_Online_Products/      (or <root> itself)
        Ebay_info.txt     image_id class_id super_class_id path   (all 120,053 images)
        Ebay_train.txt    same columns, classes 1..11318
        Ebay_test.txt     same columns, classes 11319..22634
        <super class>_final/<file>.JPG

A class is a product (``class_id``, named by its number); the super-class
(``bicycle``, ``chair``, ...) is kept per sample in ``metadata["super_class"]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._fs import safe_relative
from ..errors import OodmlError
from ._layout import find_layout, parse_int, read_rows, require
from .base import ImageDataset
from .registry import Download, register_dataset

LAYOUT = ("the official Stanford_Online_Products/ layout (Ebay_info.txt, Ebay_train.txt, Ebay_test.txt and the "
          "<super class>_final/ image folders) under the root, from Stanford_Online_Products.zip")
SUBSETS = {"all": "Ebay_info.txt", "train": "Ebay_train.txt", "test": "Ebay_test.txt"}


@register_dataset(
    "sop",
    description="Stanford Online Products: 22,634 products in 12 super-classes, 120,053 images",
    layout=LAYOUT,
    downloads=(Download("ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                        "Stanford_Online_Products.zip", "7f73d41a2f44250d4779881525aea32e"),),
)
def load_sop(root: Path, subset: str = "all") -> ImageDataset:
    """``subset``: ``all`` (Ebay_info.txt), ``train`` or ``test`` (the conventional class split)."""
    if subset not in SUBSETS:
        raise OodmlError(f"sop: unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    base, _ = find_layout("sop", root, [("Stanford_Online_Products", SUBSETS[subset]), (".", SUBSETS[subset]),
                                        ("Stanford_Online_Products", "Ebay_info.txt"), (".", "Ebay_info.txt")],
                          LAYOUT)
    table = require(base / SUBSETS[subset], "sop", LAYOUT)

    header = table.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].split()
    if header[:4] != ["image_id", "class_id", "super_class_id", "path"]:
        raise OodmlError(f"sop: {table} line 1: expected the header 'image_id class_id super_class_id path'")
    sample_ids, class_ids, super_names = [], [], []
    for where, (_, cid, _, rel) in read_rows(table, 4, "sop", header=True):
        class_ids.append(parse_int(cid, where, "sop", "class_id"))
        rel = safe_relative(rel.strip(), source=where)
        sample_ids.append(rel)
        super_names.append(rel.split("/", 1)[0].removesuffix("_final"))

    unique_ids = sorted(set(class_ids))
    index = {cid: k for k, cid in enumerate(unique_ids)}
    return ImageDataset(
        name="sop", root=base, layout=f"official Stanford_Online_Products ({SUBSETS[subset]})",
        sample_ids=sample_ids, labels=np.array([index[c] for c in class_ids]),
        classes=[str(c) for c in unique_ids], metadata={"super_class": np.array(super_names)},
    )
