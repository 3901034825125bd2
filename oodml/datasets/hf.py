"""A Hugging Face ``datasets`` dataset with an image column and a label column.

``root`` is a local folder (written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``,
or any folder of data files ``datasets.load_dataset`` understands) or a hub id
such as ``user/name``.  Sample ids are ``<split>/<row index>``; the fingerprint
hashes each row's encoded image size, so it agrees between copies of the same data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import OodmlError
from .base import ImageDataset, decode_image
from .registry import register_dataset

LAYOUT = ("a folder written by datasets' save_to_disk (or a folder of data files), or a hub id, "
          "with an image column and a label column")


class HFImageDataset(ImageDataset):
    """An :class:`ImageDataset` whose images live in an Arrow table instead of files."""

    table: object  # a datasets.Dataset with the image column left undecoded
    image_column: str

    def _encoded(self, index: int) -> dict:
        return self.table[int(index)][self.image_column]

    def load_image(self, index: int) -> Image.Image:
        cell = self._encoded(index)
        what = f"the image of row {self.sample_ids[index]!r} in {self.root}"
        try:
            data = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
        except (OSError, TypeError, ValueError) as exc:
            raise OodmlError(f"hf: cannot read {what}: {exc}") from None
        return decode_image(data, "hf", what)

    def sample_size(self, index: int) -> int:
        cell = self._encoded(index)
        if cell.get("bytes") is not None:
            return len(cell["bytes"])
        return Path(cell["path"]).stat().st_size


def _open(source: str, split: str):
    import datasets

    local = Path(source)
    try:
        if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
            data = datasets.load_from_disk(str(local))
        else:
            data = datasets.load_dataset(source)
    except Exception as exc:  # datasets raises many types for "not reachable / not found"
        if local.exists():
            raise OodmlError(f"hf: cannot load the dataset folder {local}: {type(exc).__name__}: {exc}") from None
        raise OodmlError(
            f"hf: cannot load {source!r} from the Hugging Face hub (the hub is unreachable offline, or the id is "
            f"wrong: {type(exc).__name__}); on a machine with internet run "
            f"`datasets.load_dataset({source!r}).save_to_disk(DIR)`, copy DIR here and pass --root DIR") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise OodmlError(f"hf: {source} has no split {split!r}; splits: {', '.join(data)} "
                             "(use --option split=NAME)")
        data = data[split]
    return data


@register_dataset("hf", description="a Hugging Face datasets dataset (local folder or hub id)", layout=LAYOUT)
def load_hf(root: Path, split: str = "train", image_column: str = "image", label_column: str = "label") -> ImageDataset:
    import datasets

    source = str(root)
    data = _open(source, split)
    for col in (image_column, label_column):
        if col not in data.column_names:
            raise OodmlError(f"hf: {source} has no column {col!r}; columns: {', '.join(data.column_names)} "
                             "(use --option image_column=NAME / label_column=NAME)")
    feature = data.features[label_column]
    raw = data[label_column]
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        labels = np.asarray(raw, dtype=np.int64)
    else:
        classes = sorted({str(x) for x in raw})
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[str(x)] for x in raw], dtype=np.int64)
    if isinstance(data.features[image_column], datasets.Image):
        data = data.cast_column(image_column, datasets.Image(decode=False))
    else:
        raise OodmlError(f"hf: column {image_column!r} of {source} is not an Image feature "
                         f"({type(data.features[image_column]).__name__})")
    ds = HFImageDataset(name="hf", root=Path(source), layout=f"Hugging Face datasets ({split} split)",
                        sample_ids=[f"{split}/{i}" for i in range(len(data))], labels=labels, classes=classes)
    ds.table, ds.image_column = data.select_columns([image_column]), image_column
    return ds
