"""Caltech-UCSD Birds-200-2011 in its official layout.

::

    <root>/CUB_200_2011/          (or <root> itself)
        images.txt                <image id> <relative path>
        image_class_labels.txt    <image id> <class id>
        classes.txt               <class id> <class name>
        images/<class name>/<file>.jpg

Sample ids are the paths of ``images.txt`` (``001.Black_footed_Albatross/...jpg``),
relative to ``images/``; classes are ordered by class id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._fs import safe_relative
from ..errors import OodmlError
from ._layout import find_layout, parse_int, read_rows, require
from .base import ImageDataset
from .registry import Download, register_dataset

LAYOUT = ("the official CUB_200_2011/ layout (images.txt, image_class_labels.txt, classes.txt, images/) "
          "under the root, from CUB_200_2011.tgz")


@register_dataset(
    "cub200",
    description="Caltech-UCSD Birds-200-2011: 200 bird species, 11,788 images",
    layout=LAYOUT,
    downloads=(Download("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                        "CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78"),),
)
def load_cub200(root: Path) -> ImageDataset:
    base, _ = find_layout("cub200", root, [("CUB_200_2011", "images.txt"), (".", "images.txt")], LAYOUT)
    files = {f: require(base / f, "cub200", LAYOUT) for f in ("images.txt", "image_class_labels.txt", "classes.txt")}
    require(base / "images", "cub200", LAYOUT)

    class_ids, classes = [], []
    for where, (cid, cname) in read_rows(files["classes.txt"], 2, "cub200"):
        class_ids.append(parse_int(cid, where, "cub200", "class id"))
        classes.append(cname.strip())
    index_of_class = {cid: k for k, cid in enumerate(class_ids)}

    paths: dict[int, str] = {}
    for where, (iid, rel) in read_rows(files["images.txt"], 2, "cub200"):
        paths[parse_int(iid, where, "cub200", "image id")] = safe_relative(rel.strip(), source=where)

    labels: dict[int, int] = {}
    for where, (iid, cid) in read_rows(files["image_class_labels.txt"], 2, "cub200"):
        image_id = parse_int(iid, where, "cub200", "image id")
        class_id = parse_int(cid, where, "cub200", "class id")
        if image_id not in paths:
            raise OodmlError(f"cub200: {where}: image id {image_id} is not in images.txt")
        if class_id not in index_of_class:
            raise OodmlError(f"cub200: {where}: class id {class_id} is not in classes.txt")
        labels[image_id] = index_of_class[class_id]
    unlabelled = sorted(set(paths) - set(labels))
    if unlabelled:
        raise OodmlError(f"cub200: image id {unlabelled[0]} of images.txt has no line in image_class_labels.txt "
                         f"({len(unlabelled)} unlabelled in all)")

    order = sorted(paths)
    return ImageDataset(
        name="cub200", root=base / "images", layout="official CUB_200_2011",
        sample_ids=[paths[i] for i in order], labels=np.array([labels[i] for i in order]), classes=classes,
    )
