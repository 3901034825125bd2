"""Tiny datasets in the official on-disk layouts, built from generated JPEGs.

Each builder writes into ``root`` and returns what a correct loader must find:
``{"classes": [...], "per_class": n, "images": N}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_jpeg(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def build_cub(root: Path, per_class: int = 3, classes: list[str] = CUB_CLASSES) -> dict:
    """The official CUB_200_2011/ layout under ``root`` with ``per_class`` JPEGs of each of ``classes``."""
    base = root / "CUB_200_2011"
    images, labels = [], []
    for k, cname in enumerate(classes):
        for j in range(per_class):
            rel = f"{cname}/{cname.split('.')[1]}_{j:04d}.jpg"
            write_jpeg(base / "images" / rel, seed=100 * k + j)
            images.append(rel)
            labels.append(k + 1)
    (base / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))
    (base / "images.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(images)))
    (base / "image_class_labels.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(labels)))
    return {"classes": classes, "per_class": per_class, "images": len(images)}


CARS_CLASSES = ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012", "smart fortwo Convertible 2012"]


def build_cars_official(root: Path, per_class: int = 3) -> dict:
    import scipy.io

    records = []
    n = 0
    for k in range(len(CARS_CLASSES)):
        for _ in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_jpeg(root / rel, seed=n)
            records.append((rel, 1, 2, 30, 40, k + 1, n % 2))
    dtype = [("relative_im_path", object), ("bbox_x1", object), ("bbox_y1", object), ("bbox_x2", object),
             ("bbox_y2", object), ("class", object), ("test", object)]
    annotations = np.array([tuple(np.array([v]) for v in r) for r in records], dtype=dtype).reshape(1, -1)
    names = np.empty((1, len(CARS_CLASSES)), dtype=object)
    for k, c in enumerate(CARS_CLASSES):
        names[0, k] = np.array([c])
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": names})
    return {"classes": [c.replace("/", "-") for c in CARS_CLASSES], "per_class": per_class, "images": n}


def build_cars_folders(root: Path, per_class: int = 3) -> dict:
    classes = sorted(c.replace("/", "-") for c in CARS_CLASSES)
    n = 0
    for cname in classes:
        for _ in range(per_class):
            n += 1
            write_jpeg(root / "images" / cname / f"{n:05d}.jpg", seed=n)
    return {"classes": classes, "per_class": per_class, "images": n}


def build_sop(root: Path, per_class: int = 2) -> dict:
    base = root / "Stanford_Online_Products"
    rows, n = [], 0
    products = [(1, 1, "bicycle"), (2, 1, "bicycle"), (11319, 3, "chair"), (11320, 3, "chair")]
    for cid, sid, sname in products:
        for j in range(per_class):
            n += 1
            rel = f"{sname}_final/{cid}{j:03d}_{j}.JPG"
            write_jpeg(base / rel, seed=n)
            rows.append(f"{n} {cid} {sid} {rel}\n")
    header = "image_id class_id super_class_id path\n"
    (base / "Ebay_info.txt").write_text(header + "".join(rows))
    (base / "Ebay_train.txt").write_text(header + "".join(rows[: 2 * per_class]))
    (base / "Ebay_test.txt").write_text(header + "".join(rows[2 * per_class:]))
    return {"classes": [str(p[0]) for p in products], "per_class": per_class, "images": n}


def build_imagefolder(root: Path, per_class: int = 3) -> dict:
    classes = ["cat", "dog", "zebra"]
    for k, cname in enumerate(classes):
        for j in range(per_class):
            write_jpeg(root / cname / f"img{j}.jpg", seed=10 * k + j)
    (root / "dog" / "notes.txt").write_text("not an image")
    return {"classes": classes, "per_class": per_class, "images": len(classes) * per_class}


def build_hf(root: Path, per_class: int = 3, splits: dict[str, list[str]] | None = None) -> dict:
    """A ``Dataset`` of two classes; with ``splits`` (split name -> its ClassLabel names) a ``DatasetDict``
    whose every split has ``per_class`` 8x8 images of each of its classes (``classes`` is the first split's)."""
    import datasets

    def table(classes: list[str], seed: int) -> datasets.Dataset:
        images, labels = [], []
        for k in range(len(classes)):
            for j in range(per_class):
                pixels = np.random.default_rng(seed + 10 * k + j).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                images.append(Image.fromarray(pixels))
                labels.append(k)
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    if splits is None:
        table(classes := ["circle", "square"], 0).save_to_disk(str(root))
        return {"classes": classes, "per_class": per_class, "images": 2 * per_class}
    tables = {name: table(names, 1000 * s) for s, (name, names) in enumerate(splits.items())}
    datasets.DatasetDict(tables).save_to_disk(str(root))
    return {"classes": next(iter(splits.values())), "per_class": per_class, "images": sum(map(len, tables.values()))}


#: dataset name -> (builder, path of one image file relative to root, or None)
BUILDERS = {
    "cub200": build_cub,
    "cars196-official": build_cars_official,
    "cars196-folders": build_cars_folders,
    "sop": build_sop,
    "imagefolder": build_imagefolder,
    "hf": build_hf,
}


def adapter_of(fixture: str) -> str:
    return fixture.split("-")[0]


#: matched draws of the session-shared leaderboard entry (conftest's leaderboard_entry) and of the runs compared
#: with it: fewer than evaluate's default 20, since the entry is re-scored in dozens of tests and each draw costs
#: every one of them; at least 6, since test_compare damages draws 3 and 5.  The default is exercised by
#: test_leaderboard_board's exact entry.
ENTRY_MATCH_DRAWS = 6


def edit_json(folder: Path, /, **changes) -> None:
    """Change fields of the leaderboard entry in ``folder`` (its ``submission.json``) in place."""
    spec = folder / "submission.json"
    meta = json.loads(spec.read_text())
    meta.update(changes)
    spec.write_text(json.dumps(meta))
