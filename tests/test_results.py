"""Runs as data: the evaluation config, oodml.results (load, load_many, class records) and oodml.plot."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from oodml import OodmlError
from oodml.evaluation import ComputeConfig, EvalConfig, FewShotConfig, MatchConfig, evaluate
from oodml.models import load_model
from oodml.plot import curves, save_curves
from oodml.results import FRAME_COLUMNS, class_bootstrap_interval, class_records, load, load_many, read_run

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def run(glyphs, tmp_path_factory) -> Path:
    """A saved tiny run: an untrained 8-d CNN on levels 1 and 8 of glyphs@v1, with one 2-shot episode."""
    config = EvalConfig(levels=[1, 8], clustering=False, fewshot=FewShotConfig(shots=(2,), episodes=1),
                        match=MatchConfig(draws=2), compute=ComputeConfig(device="cpu"))
    out = tmp_path_factory.mktemp("runs") / "tiny"
    evaluate(load_model("glyph-cnn", embed_dim=8, seed=1), glyphs, "v1", config).save(out)
    return out


def test_a_config_is_built_from_flat_options_and_refuses_unknown_ones():
    config = EvalConfig.of(levels=[1, 8], fewshot=(2,), device="cpu", dataset_options={"subset": "test"},
                           match_classes=50)
    assert config.levels == [1, 8] and config.fewshot.shots == (2,) and config.compute.device == "cpu"
    assert config.match.classes == 50 and config.match.draws == 20
    assert config.data.options == {"subset": "test"} and config.compute.batch_size == 128
    assert config.replace(batch_size=8).compute == ComputeConfig(device="cpu", batch_size=8)
    with pytest.raises(OodmlError, match="unknown evaluation option 'devise'; did you mean device"):
        EvalConfig.of(devise="cpu")
    with pytest.raises(OodmlError, match="unknown evaluation option 'levls'"):
        evaluate("glyph-cnn", "glyphs", "v1", levls=[1])


def test_a_run_loads_as_a_long_frame_with_class_bootstrap_intervals(run):
    frame = load(run)
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert set(frame.test_set) == {"full", "matched"}
    zero = frame[(frame.shots == 0) & (frame.test_set == "full")]
    assert set(zero.run) == {"tiny"} and set(zero.level) == {1, 8} and set(zero.adaptation) == {"none"}
    retrieval = zero[zero.metric != "map@1000"]   # not a per-query sum in classes.parquet: no interval
    assert ((retrieval.ci_low <= retrieval.value + 1e-12) & (retrieval.value <= retrieval.ci_high + 1e-12)).all()
    assert zero[zero.metric == "map@1000"].ci_low.isna().all()
    fewshot = frame[(frame.shots == 2) & (frame.test_set == "full")]
    assert set(fewshot.adaptation) == {"none", "prototypes"} and fewshot.ci_low.isna().all()  # one episode
    assert load(run, run="mine").run.unique().tolist() == ["mine"]


def test_class_records_add_up_to_each_level_metric(run):
    records = class_records(run)
    rows = read_run(run).rows
    for level in (1, 8):
        mine = [r for r in records if r["level"] == level and r["draw"] == -1]
        assert len({r["class"] for r in mine}) == len(mine) > 100
        for metric in ("recall@1", "recall@8", "map@r", "r_precision"):
            value = next(r["value"] for r in rows if r["level"] == level and r["metric"] == metric
                         and r["shots"] == 0 and r["test_set"] == "full")
            assert sum(r[metric] for r in mine) / sum(r["queries"] for r in mine) == pytest.approx(value, abs=1e-12)


def test_same_named_runs_are_told_apart_by_their_parent(run, tmp_path):
    for seed in ("seed0", "seed1"):
        shutil.copytree(run, tmp_path / seed / "margin")
    frame = load_many([tmp_path / "seed0" / "margin", tmp_path / "seed1" / "margin" / "results.parquet"])
    assert sorted(frame.run.unique()) == ["seed0/margin", "seed1/margin"]
    with pytest.raises(OodmlError, match="give at least one results folder"):
        load_many([])


def test_an_older_run_without_class_records_still_loads(run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "classes.parquet").unlink()
    frame = load(old)
    assert frame[frame.shots == 0].ci_low.isna().all()
    assert frame[frame.shots == 0].value.tolist() == load(run)[lambda f: f.shots == 0].value.tolist()
    assert len(frame[frame.test_set == "matched"]) > 0  # the matched means, without their intervals
    with pytest.raises(OodmlError, match=r"holds no classes\.parquet .*evaluate it again"):
        class_records(old)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(b"PAR1 not parquet"), "not readable as Parquet"),
    (lambda p: p.unlink() or shutil.copy(p.parent / "results.parquet", p), "lacks the column 'class'"),
])
def test_a_corrupt_class_file_is_refused_in_one_line(run, tmp_path, damage, message):
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    damage(bad / "classes.parquet")
    with pytest.raises(OodmlError, match=message):
        class_records(bad)


def test_a_folder_without_a_run_is_refused(tmp_path):
    with pytest.raises(OodmlError, match="no results.parquet there"):
        load(tmp_path)
    (tmp_path / "results.parquet").write_text("nope")
    with pytest.raises(OodmlError, match="not an oodml results file"):
        load(tmp_path)


def test_without_pandas_load_says_how_to_install_it(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)   # import pandas now raises ImportError
    with pytest.raises(OodmlError, match=r"need pandas: pip install pandas"):
        load(run)


def test_the_bootstrap_interval_is_seeded_and_needs_two_classes():
    sums, queries = np.array([3.0, 1.0, 4.0, 0.0]), np.array([4, 2, 5, 3])
    low, high = class_bootstrap_interval(sums, queries)
    assert (low, high) == class_bootstrap_interval(sums, queries)
    assert low < 8 / 14 < high
    assert all(np.isnan(class_bootstrap_interval(np.array([1.0, 0.0]), np.array([2, 0]))))


def test_curves_return_a_figure_of_every_run(run, tmp_path):
    fig = curves([run, read_run(run)], metric="map@r")
    (ax,) = fig.axes
    assert ax.get_ylabel() == "map@r" and len(ax.get_legend().get_texts()) == 4   # matched and full, each
    assert len(curves([run, read_run(run)], metric="map@r", test_set="full").axes[0].get_legend().get_texts()) == 2
    written = save_curves([run], tmp_path / "c")
    assert [p.name for p in written] == ["c.png", "c.svg"] and all(p.stat().st_size > 0 for p in written)
    with pytest.raises(OodmlError, match="has no zero-shot 'nmi'; available: "):
        curves(run, metric="nmi")
    with pytest.raises(OodmlError, match="give at least one run"):
        curves([])
