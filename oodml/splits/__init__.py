"""Train/test class splits of graded distribution shift.

>>> from oodml import splits
>>> s = splits.load("glyphs")            # latest published version, verified
>>> lv = s.levels[-1]                    # hardest level
>>> lv.distance, lv.train_classes, lv.test_classes, lv.val_classes
>>> lv.episodes(5)[0].support            # {test class: (5 support sample ids)}
>>> splits.compare(s, "build/demo-splits/glyphs/v1").reproduces   # same classes, episodes, distances
>>> splits.audit(s, ["pixels"], pretraining="imagenet-1k")        # levels under other features; overlap
"""

import sys
import types
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:  # the names below load on first use (see __getattr__); these imports are for type checkers
    from .audit import Audit, audit
    from .build import ALGORITHMS, SplitConfig, build_levels
    from .catalogue import iter_published, load, open_split_set, resolve, verify_split_sets
    from .compare import SplitComparison, compare
    from .levels import Episode, Level
    from .make import FeatureConfig, make_splits
    from .manifest import SplitSet, read_split_set
    from .publish import write_split_set
    from .search import SplitState, greedy_levels, removal_continuation, swap_progression

#: public name -> the submodule defining it.  They load on first use: `oodml --version` and `oodml splits list`
#: read a few paths and manifests, and should not wait for numpy, pyarrow or (make_splits) torch.
_LAZY = {"Audit": "audit", "audit": "audit", "ALGORITHMS": "build", "SplitConfig": "build",
         "build_levels": "build", "iter_published": "catalogue", "load": "catalogue", "open_split_set": "catalogue",
         "resolve": "catalogue", "verify_split_sets": "catalogue", "SplitComparison": "compare",
         "compare": "compare", "Episode": "levels", "Level": "levels", "FeatureConfig": "make",
         "make_splits": "make", "SplitSet": "manifest", "read_split_set": "manifest", "write_split_set": "publish",
         "SplitState": "search", "greedy_levels": "search", "removal_continuation": "search",
         "swap_progression": "search"}

__all__ = ["ALGORITHMS", "Audit", "Episode", "FeatureConfig", "Level", "SplitComparison", "SplitConfig", "SplitSet",
           "SplitState", "audit", "build_levels", "compare", "greedy_levels", "iter_published", "load", "make_splits",
           "open_split_set", "read_split_set", "removal_continuation", "resolve", "swap_progression",
           "verify_split_sets", "write_split_set"]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())  # each name looked up once


class _Package(types.ModuleType):
    """This package, whose ``compare`` and ``audit`` stay the functions once their submodules (of the same
    names) load: importing a submodule sets it as an attribute of its package, which would hide them."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
