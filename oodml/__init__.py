"""oodml: an out-of-distribution benchmark suite for deep metric learning.

The public API, one page:

* ``oodml.datasets``: ``list_datasets()``, ``load_dataset(name, root=None, **options)``,
  ``register_dataset``, ``download_dataset``; every dataset is an ``ImageDataset``
  with ``sample_ids``, ``labels``, ``classes``, ``fingerprint`` and ``ds[i] -> (image, label)``.
* ``oodml.OodmlError``: the one user-facing error type.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import OodmlError

try:
    __version__ = version("oodml")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["OodmlError", "__version__"]
