"""Train/test class splits of graded distribution shift.

>>> from oodml import splits
>>> s = splits.load("glyphs")            # latest published version, verified
>>> lv = s.levels[-1]                    # hardest level
>>> lv.distance, lv.train_classes, lv.test_classes, lv.val_classes
>>> lv.episodes(5)[0].support            # {test class: (5 support sample ids)}
"""

from .build import ALGORITHMS, SplitConfig, build_levels
from .levels import Episode, Level
from .make import make_splits
from .manifest import SplitSet, iter_published, load, read_split_set, resolve, write_split_set
from .search import SplitState, greedy_levels, removal_continuation, swap_progression

__all__ = ["ALGORITHMS", "Episode", "Level", "SplitConfig", "SplitSet", "SplitState", "build_levels",
           "greedy_levels", "iter_published", "load", "make_splits", "read_split_set", "removal_continuation",
           "resolve", "swap_progression", "write_split_set"]
