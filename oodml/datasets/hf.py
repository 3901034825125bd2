"""A Hugging Face ``datasets`` dataset with an image column and a label column.

``root`` is a local folder (written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``,
or any folder of data files ``datasets.load_dataset`` understands) or a hub id
such as ``user/name``.

A metric-learning benchmark splits by class and needs every image of every
class, so the default selection is every split (``split="all"``, the name
``datasets`` itself gives that selection); the classification train/test
partition of a hub copy means nothing to it.  ``split`` takes the ``datasets``
split syntax: one split (``train``, the old default), several joined with
``+`` (``train+test``), and row slices (``train[:50%]``, ``test[10:20]``),
resolved by ``datasets.ReadInstruction`` exactly as ``load_dataset`` would.

Sample ids are ``<split>/<row index within that split>`` -- not the index in the
concatenation -- so a sample keeps its id whichever splits are selected and in
every copy of the same data.  The fingerprint hashes (sample id, class name,
encoded image size): the split selection is in it through the ids, and two
copies of the same revision (the hub, or a ``save_to_disk`` folder of it)
agree.  The revision itself is *not* hashed: the fingerprint says which data
a split set needs, and equal data under another name is still that data.

``revision`` (a branch, tag or commit of a hub id) is passed to
``datasets.load_dataset``.  A local folder has no revision of its own; one
given with it is recorded as the label of the hub revision the folder was
saved from, unchecked -- whoever loads that revision from the hub gets a
fingerprint mismatch if the label was wrong.  The hub id, revision and
selection are kept in ``ImageDataset.source``, which ``make-splits`` writes to
the split set's ``metadata["dataset_source"]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import OodmlError
from .base import ImageDataset, decode_image
from .registry import register_dataset

LAYOUT = ("a folder written by datasets' save_to_disk (or a folder of data files), or a hub id, "
          "with an image column and a label column")
ALL = "all"  # datasets.Split.ALL: every split
SPLIT_HINT = "use -o split=NAME, NAME+NAME, NAME[:50%] or all"


class HFImageDataset(ImageDataset):
    """An :class:`ImageDataset` whose images live in an Arrow table instead of files."""

    table: object  # a datasets.Dataset with the image column left undecoded, one row per sample
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

    def load_encoded(self, index: int) -> bytes | None:
        """The stored encoded bytes of row ``index`` (for decoding on the device), None when only a path is kept."""
        cell = self._encoded(index)
        return cell["bytes"] if cell.get("bytes") is not None else None

    def sample_size(self, index: int) -> int:
        cell = self._encoded(index)
        if cell.get("bytes") is not None:
            return len(cell["bytes"])
        return Path(cell["path"]).stat().st_size


def _check_revision(revision: object) -> str | None:
    if revision is None:
        return None
    if isinstance(revision, int) and not isinstance(revision, bool):
        revision = str(revision)  # `-o revision=1234567` arrives parsed as a JSON number
    if not isinstance(revision, str) or not revision or any(ch.isspace() for ch in revision):
        raise OodmlError(f"hf: revision must be a hub branch, tag or commit id, got {revision!r}")
    return revision


def _open(source: str, revision: str | None) -> dict:
    """The splits of ``source`` by name, in the dataset's own order (a lone ``Dataset`` counts as one split)."""
    import datasets

    local = Path(source)
    try:
        if (local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists():
            data = datasets.load_from_disk(str(local))
        elif local.exists():
            data = datasets.load_dataset(str(local))
        else:
            data = datasets.load_dataset(source, revision=revision)
    except Exception as exc:  # datasets raises many types for "not reachable / not found"
        if local.exists():
            raise OodmlError(f"hf: cannot load the dataset folder {local}: {type(exc).__name__}: {exc}") from None
        pinned = "" if revision is None else f", revision={revision!r}"
        raise OodmlError(
            f"hf: cannot load {source!r}{pinned} from the Hugging Face hub (the hub is unreachable offline, or the "
            f"id or revision is wrong: {type(exc).__name__}); on a machine with internet run "
            f"`datasets.load_dataset({source!r}{pinned}).save_to_disk(DIR)`, copy DIR here and pass --root DIR"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        return dict(data)
    return {str(data.split) if data.split else "train": data}


def select_rows(spec: str, lengths: dict[str, int], source: str = "the dataset") -> list[tuple[str, int, int]]:
    """Resolve a ``datasets`` split selection to ``(split, first row, end row)`` ranges, in the order given.

    Args:
        spec: ``"all"`` (every split, in the dataset's order), or the ``datasets`` split syntax:
            ``"train"``, ``"train+test"``, ``"train[:50%]+test[10:20]"``.
        lengths: rows per split, in the dataset's order.
        source: named in errors.

    Raises:
        OodmlError: one line, for an unknown split (naming the available ones), a malformed
            selection, rows taken twice, or a selection of no rows.
    """
    from datasets import ReadInstruction

    if not isinstance(spec, str):
        raise OodmlError(f"hf: split must be text such as train+test, got {spec!r} ({SPLIT_HINT})")
    if spec == ALL:
        ranges = [(name, 0, n) for name, n in lengths.items()]
    else:
        unknown = [n for n in (part.split("[")[0].strip() for part in spec.split("+")) if n not in lengths]
        if unknown:
            raise OodmlError(f"hf: {source} has no split {unknown[0]!r}; splits: {', '.join(lengths)} ({SPLIT_HINT})")
        try:
            ranges = [(i.splitname, i.from_, i.to) for i in ReadInstruction.from_spec(spec).to_absolute(lengths)]
        except (ValueError, AssertionError) as exc:
            raise OodmlError(f"hf: cannot read the split selection {spec!r}: {exc} ({SPLIT_HINT})") from None
    for k, (name, first, end) in enumerate(ranges):
        if any(other == name and first < e and f < end for other, f, e in ranges[:k]):
            raise OodmlError(f"hf: the split selection {spec!r} takes rows of {name!r} twice; select each row once")
    if sum(end - first for _, first, end in ranges) == 0:
        raise OodmlError(f"hf: the split selection {spec!r} of {source} selects no rows ({SPLIT_HINT})")
    return ranges


def _check_columns(parts: dict, image_column: str, label_column: str, source: str) -> None:
    """Every selected split has both columns, an ``Image`` image column and the same label feature."""
    import datasets

    for name, data in parts.items():
        for col in (image_column, label_column):
            if col not in data.column_names:
                raise OodmlError(f"hf: split {name!r} of {source} has no column {col!r}; columns: "
                                 f"{', '.join(data.column_names)} (use -o image_column=NAME / label_column=NAME)")
        if not isinstance(data.features[image_column], datasets.Image):
            raise OodmlError(f"hf: column {image_column!r} of {source} is not an Image feature "
                             f"({type(data.features[image_column]).__name__})")
    (first, reference), *others = ((name, data.features[label_column]) for name, data in parts.items())
    for name, feature in others:
        if isinstance(reference, datasets.ClassLabel) and isinstance(feature, datasets.ClassLabel):
            if list(feature.names) != list(reference.names):
                k = next(k for k in range(max(len(reference.names), len(feature.names)))
                         if _name_at(reference.names, k) != _name_at(feature.names, k))
                raise OodmlError(f"hf: splits {first!r} and {name!r} of {source} name their classes differently "
                                 f"(label {k} is {_name_at(reference.names, k)} in {first!r} but "
                                 f"{_name_at(feature.names, k)} in {name!r}); select splits that agree with "
                                 "-o split=NAME")
        elif feature != reference:
            raise OodmlError(f"hf: the label column {label_column!r} of {source} is {_describe(reference)} in split "
                             f"{first!r} but {_describe(feature)} in {name!r}; select splits that agree with "
                             "-o split=NAME")


def _name_at(names: list[str], k: int) -> str:
    return repr(names[k]) if k < len(names) else "absent"


def _describe(feature: object) -> str:
    """``Value('string')``, ``ClassLabel``, ...: a label feature in a few words."""
    import datasets

    return f"Value({feature.dtype!r})" if isinstance(feature, datasets.Value) else type(feature).__name__


@register_dataset("hf", description="a Hugging Face datasets dataset (local folder or hub id)", layout=LAYOUT)
def load_hf(root: Path, split: str = ALL, revision: str | None = None, image_column: str = "image",
            label_column: str = "label") -> ImageDataset:
    """Load the rows that ``split`` selects (default every split) of a local folder or hub id.

    Args:
        root: a ``save_to_disk`` folder, a folder of data files, or a hub id ``user/name``.
        split: ``"all"`` or the ``datasets`` split syntax (see :func:`select_rows`).
        revision: hub branch, tag or commit passed to ``datasets.load_dataset``; with a local
            folder, recorded as a label (see the module docstring).
        image_column, label_column: column names.

    Returns:
        An ``HFImageDataset`` whose ``sample_ids`` are ``<split>/<row index>`` and whose ``source``
        is ``{"hub_id": id or None, "revision": revision or None, "split": the selection}``, with
        ``"all"`` resolved to the split names joined by ``+``.

    Raises:
        OodmlError: one line, for an unreachable or unknown source, an unknown split or column,
            or selected splits whose label columns disagree.
    """
    import datasets

    source = str(root)
    revision = _check_revision(revision)
    hub_id = None if Path(source).exists() else source
    splits = _open(source, revision)
    if hub_id is not None and revision is None:
        warnings.warn(f"hf: {hub_id} is not pinned to a revision, so the data may change under the same id; "
                      "pass -o revision=COMMIT", stacklevel=2)
    ranges = select_rows(split, {name: len(data) for name, data in splits.items()}, source)
    parts = {name: splits[name] for name, _, _ in ranges}
    _check_columns(parts, image_column, label_column, source)

    undecoded = {name: data.cast_column(image_column, datasets.Image(decode=False)).select_columns([image_column])
                 for name, data in parts.items()}
    table = datasets.concatenate_datasets([undecoded[name].select(range(first, end)) for name, first, end in ranges])
    raw = [x for name, first, end in ranges for x in parts[name].select(range(first, end))[label_column]]
    feature = next(iter(parts.values())).features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        labels = np.asarray(raw, dtype=np.int64)
    else:
        classes = sorted({str(x) for x in raw})
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[str(x)] for x in raw], dtype=np.int64)
    selection = "+".join(splits) if split == ALL else split
    ds = HFImageDataset(name="hf", root=Path(source), layout=f"Hugging Face datasets ({selection})",
                        sample_ids=[f"{name}/{i}" for name, first, end in ranges for i in range(first, end)],
                        labels=labels, classes=classes,
                        source={"hub_id": hub_id, "revision": revision, "split": selection})
    ds.table, ds.image_column = table, image_column
    return ds
