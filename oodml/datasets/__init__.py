"""Datasets: a registry of adapters, each loading one layout into an :class:`ImageDataset`.

>>> from oodml.datasets import load_dataset, list_datasets
>>> ds = load_dataset("glyphs")          # shipped inside oodml, no download
>>> image, label = ds[0]                  # RGB PIL image, int label
>>> ds.sample_ids[0], ds.classes[label], ds.fingerprint
"""

from . import cars196, cub200, glyphs, hf, imagefolder, sop  # noqa: F401  (registration)
from .base import ImageDataset, dataset_summary, fingerprint_of
from .download import download_dataset
from .registry import DataConfig, DatasetSpec, Download, dataset_spec, list_datasets, load_dataset, register_dataset

__all__ = ["DataConfig", "DatasetSpec", "Download", "ImageDataset", "dataset_spec", "dataset_summary",
           "download_dataset", "fingerprint_of", "list_datasets", "load_dataset", "register_dataset"]
