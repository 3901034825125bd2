"""Dataset registry: names resolved to loaders, in the style of timm's model registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._fs import data_home, escaping_link
from ..errors import OodmlError
from ..registry import Registry
from .base import ImageDataset

Loader = Callable[..., ImageDataset]


@dataclass(frozen=True)
class Download:
    """An official archive: where it lives and how to check it.

    Attributes:
        url: where to fetch it.
        filename: name to save it under (inside the dataset root).
        md5: the checksum published with the dataset (hex).
        extract: whether to unpack it (tar or zip) into the root.
    """

    url: str
    filename: str
    md5: str
    extract: bool = True


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a dataset besides its loader.

    Attributes:
        name: registry name.
        loader: ``loader(root: Path, **options) -> ImageDataset``.
        description: one line for ``oodml datasets list``.
        layout: the on-disk layout expected under the root, in words (used in errors).
        downloads: official archives, empty when there is nothing to download.
        needs_root: False for datasets that ship inside oodml (glyphs).
        split_extractor: the feature extractor ``make-splits`` uses by default.
    """

    name: str
    loader: Loader
    description: str
    layout: str
    downloads: tuple[Download, ...] = ()
    needs_root: bool = True
    split_extractor: str = "resnet50"


#: dataset name -> :class:`DatasetSpec`; plugins add theirs through the entry-point group ``oodml.datasets``.
DATASETS: Registry[DatasetSpec] = Registry("dataset", entry_points="oodml.datasets")


def register_dataset(name: str, *, description: str, layout: str, downloads: tuple[Download, ...] = (),
                     needs_root: bool = True, split_extractor: str = "resnet50") -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(root, **options) -> ImageDataset`` under ``name``.

    Registering a name twice replaces the earlier loader with a warning, as timm does.
    """

    def wrap(loader: Loader) -> Loader:
        DATASETS.register(name, DatasetSpec(name, loader, description, layout, downloads, needs_root,
                                            split_extractor))
        return loader

    return wrap


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; a one-line error suggesting close names otherwise."""
    return DATASETS[name]


def default_root(name: str) -> Path:
    """Where ``name`` is looked for when no root is given: ``$OODML_DATA/<name>``."""
    return data_home() / name


def load_dataset(name: str, root: str | Path | None = None, *, follow_symlinks: bool = False,
                 **options) -> ImageDataset:
    """Load a registered dataset.

    Args:
        name: a name from :func:`list_datasets`.
        root: the dataset's directory (for ``hf`` also a hub id); defaults to
            :func:`default_root` for on-disk datasets and to the shipped data for ``glyphs``.
        follow_symlinks: read image files and folders that symbolic links place
            outside the dataset root; by default they are refused, like any path
            that escapes the root (CLI: ``-o follow_symlinks=true``).
        **options: adapter-specific options (e.g. ``subset="test"`` for ``sop``).

    Raises:
        OodmlError: unknown name or option, missing root or annotation, malformed
            annotation, or a sample that a symbolic link takes outside the root.
    """
    spec = dataset_spec(name)
    if not isinstance(follow_symlinks, bool):
        raise OodmlError(f"{name}: follow_symlinks must be true or false, got {follow_symlinks!r}")
    if root is None and spec.needs_root:
        root = default_root(name)
    root = None if root is None else Path(root)
    try:
        inspect.signature(spec.loader).bind(root, **options)
    except TypeError:
        accepted = [*list(inspect.signature(spec.loader).parameters)[1:], "follow_symlinks"]
        raise OodmlError(f"{name}: unknown option(s) {', '.join(sorted(options))}; "
                         f"accepted: {', '.join(accepted)}") from None
    ds = spec.loader(root, **options)
    if not follow_symlinks and reads_image_files(ds):
        check_inside_root(ds)
    return ds


@dataclass(frozen=True)
class DataConfig:
    """Where a dataset given by name is loaded from: ``root`` (its folder) and adapter ``options``
    (e.g. ``{"subset": "test"}``), as :func:`load_dataset` takes them; read by ``evaluate``, ``make_splits``
    and ``audit`` when they get a dataset by name."""

    root: str | Path | None = None
    options: Mapping[str, object] = field(default_factory=dict)

    def load(self, name: str) -> ImageDataset:
        """The registered dataset ``name`` loaded from here (:func:`load_dataset`)."""
        return load_dataset(name, root=self.root, **dict(self.options))


def reads_image_files(ds: ImageDataset) -> bool:
    """Whether ``ds`` reads its images from files under ``ds.root`` (rather than from memory or a table)."""
    return type(ds).load_image is ImageDataset.load_image


def check_inside_root(ds: ImageDataset) -> None:
    """Refuse a dataset whose image files, or folders on the way to them, are symbolic links leading outside
    ``ds.root``: the README promises that no path escapes the dataset root.

    Raises:
        OodmlError: naming the link, where it leads, and the option that reads such files anyway.
    """
    found = escaping_link(ds.root, ds.sample_ids)
    if found is not None:
        link, target = found
        raise OodmlError(f"{ds.name}: {link} is a symbolic link to {target}, outside the dataset root {ds.root}; "
                         "move the files into the root, or pass -o follow_symlinks=true to read them there")
