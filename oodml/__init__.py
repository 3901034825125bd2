"""oodml: an out-of-distribution benchmark suite for deep metric learning.

The public API, one page:

* ``oodml.datasets``: ``list_datasets()``, ``load_dataset(name, root=None, **options)``,
  ``register_dataset``, ``download_dataset``; every dataset is an ``ImageDataset``
  with ``sample_ids``, ``labels``, ``classes``, ``fingerprint`` and ``ds[i] -> (image, label)``.
* ``oodml.shift``: ``frechet_distance``, ``frechet_distance_from_stats``, ``wasserstein_distance``.
* ``oodml.splits``: ``make_splits``, ``load(dataset, version=None) -> SplitSet``,
  ``swap_progression``, ``greedy_levels``, ``import_oodml`` (in ``oodml.splits.oodml_import``).
* ``oodml.metrics``: ``retrieval_metrics(embeddings, labels) -> dict``.
* ``oodml.models``: ``register_model``, ``list_models``, ``create_model``, ``load_model``, ``save``.
* ``oodml.evaluate(model, dataset, splits, EvalConfig(levels=[1, 8])) -> Results`` (``.save(dir)``,
  ``.summary()``, ``.frame()``); ``oodml.results.load(dir)`` / ``load_many(dirs)`` -> pandas DataFrame;
  ``oodml.plot.curves(runs, metric=...)`` -> matplotlib Figure.
* ``oodml.compare([A, B, ...], draws=2000, seed=0) -> Comparison`` (``.format()``, ``.to_json()``): paired
  differences of runs or leaderboard entries on one split set, with class-bootstrap intervals.
* ``oodml.train(dataset, splits, level, TrainConfig(...), out=DIR)`` -> (model, provenance).
* ``oodml.OodmlError``: the one user-facing error type.

Heavy modules load on first use, so ``import oodml`` stays fast.
"""

from importlib.metadata import PackageNotFoundError, version

from ._lazy import lazy_attributes
from .errors import OodmlError

try:
    __version__ = version("oodml")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["EvalConfig", "OodmlError", "TrainConfig", "__version__", "compare", "evaluate", "train"]

#: Public names that import torch, loaded on first use: name -> defining module.
_LAZY = {"evaluate": "evaluation", "EvalConfig": "evaluation", "train": "training", "TrainConfig": "training",
         "compare": "comparison"}


__getattr__ = lazy_attributes(__name__, _LAZY)
