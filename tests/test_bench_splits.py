"""tools/bench_splits.py section 8 (issue 27, item 4): make-splits' computation timed end to end, at a small size."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from oodml.shift import ClassFeatures
from oodml.splits import build

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_splits.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_splits", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_splits"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_splits"]


def test_the_synthetic_image_set_has_exactly_the_synthetic_class_means(bench):
    means = bench.sop_like_means(50, 8)
    dataset, features = bench.synthetic_dataset(means)
    assert len(dataset) == 100 and len(dataset.classes) == 50
    assert np.array_equal(ClassFeatures(features, dataset.labels).means, means)   # bit for bit: the same search


def test_make_splits_at_a_small_size_is_timed_by_part_and_compared_with_reference_levels(bench, capsys):
    bench.bench_sop_search(classes=120, dim=6, draws=20, reference="1,2,3,4,5,6,7,8")
    out = capsys.readouterr().out
    total = float(re.search(r"total: (\d+) s wall", out).group(1))
    parts = [float(v) for v in re.findall(r"    (?:search|adjacent-level comparison|intervals and episodes): "
                                          r"(\d+) s wall", out)]
    assert len(parts) == 3 and sum(parts) <= total + 3           # each rounded to a second
    assert len(re.search(r"levels ([\d., ]+);", out).group(1).split(", ")) == 8
    assert "largest level difference from --reference-levels:" in out
    assert build.greedy_levels.__name__ == "greedy_levels"        # the timing wrappers are taken off again


def test_reference_levels_of_another_count_are_not_compared(bench, capsys):
    bench.bench_sop_search(classes=120, dim=6, draws=0, reference="1,2,3")
    assert "--reference-levels gives 3 levels, this run made 8: not compared" in capsys.readouterr().out
