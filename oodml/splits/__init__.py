"""Train/test class splits of graded distribution shift.

>>> from oodml import splits
>>> s = splits.load("glyphs")            # latest published version, verified
>>> lv = s.levels[-1]                    # hardest level
>>> lv.distance, lv.train_classes, lv.test_classes, lv.val_classes
>>> lv.episodes(5)[0].support            # {test class: (5 support sample ids)}
>>> splits.compare(s, "build/demo-splits/glyphs/v1").reproduces   # same classes, episodes, distances
>>> splits.audit(s, ["pixels"], pretraining="imagenet-1k")        # levels under other features; overlap
"""

from .audit import Audit, audit
from .build import ALGORITHMS, SplitConfig, build_levels
from .compare import SplitComparison, compare
from .levels import Episode, Level
from .make import make_splits
from .manifest import (
    SplitSet,
    iter_published,
    load,
    open_split_set,
    read_split_set,
    resolve,
    verify_split_sets,
    write_split_set,
)
from .search import SplitState, greedy_levels, removal_continuation, swap_progression

__all__ = ["ALGORITHMS", "Audit", "Episode", "Level", "SplitComparison", "SplitConfig", "SplitSet", "SplitState",
           "audit", "build_levels", "compare", "greedy_levels", "iter_published", "load", "make_splits",
           "open_split_set", "read_split_set", "removal_continuation", "resolve", "swap_progression",
           "verify_split_sets", "write_split_set"]
