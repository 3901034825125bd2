"""Class-count-matched scoring (issue 26 part 1): every level also scored on N of its test classes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from oodml import OodmlError
from oodml.evaluation import EvalConfig, evaluate
from oodml.matched import (
    MatchedRecords,
    class_sums,
    draw_classes,
    episode_classes,
    matched_count,
    matched_episode,
    matched_interval,
    matched_per_query,
    paired_matched_draws,
    search_depth,
)
from oodml.metrics import per_query_and_neighbours, per_query_metrics
from oodml.models import load_model
from oodml.plot import curves
from oodml.results import Results, read_run
from oodml.splits import load
from oodml.stats import paired_ratio_draws, with_draw_spread

SMALLEST = 132   # glyphs@v1: 165 test classes at levels 1-6, 148 at 7, 132 at 8


@pytest.fixture(scope="module")
def split_set():
    return load("glyphs", "v1")


@pytest.fixture(scope="module")
def model():
    return load_model("glyph-cnn", embed_dim=8, seed=1)


@pytest.fixture(scope="module")
def run(glyphs, model, split_set, tmp_path_factory):
    """Levels 1 and 8 with three matched draws and one 2-shot episode, saved."""
    results = evaluate(model, glyphs, split_set, EvalConfig.of(levels=[1, 8], clustering=False, device="cpu",
                                                                match_draws=3, fewshot=(2,), episodes=1))
    out = tmp_path_factory.mktemp("matched") / "run"
    results.save(out)
    return results, out


@pytest.mark.parametrize("ties", [False, True])
def test_a_draw_scores_exactly_as_a_search_among_its_images(ties):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 600)
    emb = rng.normal(size=(600, 8)).astype(np.float32)
    if ties:  # eight signed unit vectors: every score is exactly -1, 0 or 1, so ties everywhere, broken by row
        emb = (np.eye(4, dtype=np.float32)[rng.integers(0, 4, 600)] * rng.choice([-1, 1], (600, 1))).astype(np.float32)
    subsets = [np.sort(rng.choice(30, 20, replace=False)) for _ in range(4)] + [np.arange(30), np.array([3, 7])]
    for subset, got in zip(subsets, matched_per_query(emb, labels, subsets, (1, 2, 4, 8)), strict=True):
        keep = np.isin(labels, subset)
        expected = per_query_metrics(emb[keep], labels[keep], ks=(1, 2, 4, 8), map_depth=None)
        np.testing.assert_array_equal(np.flatnonzero(keep)[expected.pop("query")], got.pop("query"))
        assert expected.keys() == got.keys()
        for name, values in expected.items():
            np.testing.assert_array_equal(values, got[name], err_msg=name)


@pytest.mark.parametrize("ties", [False, True])
def test_the_full_metrics_search_serves_the_draws_bit_for_bit(ties):
    """evaluate searches a level once, map@1000 deep, and the draws restrict its neighbour lists: the same
    values as the draws' own search, and the same full-set values as per_query_metrics."""
    rng = np.random.default_rng(1)   # more rows than a block (2048): the searches multiply different shapes
    labels = rng.integers(0, 100, 2600)
    emb = rng.normal(size=(2600, 8)).astype(np.float32)
    if ties:
        emb = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 2600)] * rng.choice([-1, 1], (2600, 1)).astype(np.float32)
    ks = (1, 2, 4, 8)
    subsets = [np.arange(100)] + [np.sort(rng.choice(100, n, replace=False)) for n in (60, 60, 6)]
    per_query, neighbours = per_query_and_neighbours(emb, labels, ks=ks, keep=search_depth(labels, ks))
    assert neighbours.shape == (2600, search_depth(labels, ks))
    for name, values in per_query_metrics(emb, labels, ks=ks).items():
        np.testing.assert_array_equal(values, per_query[name], err_msg=name)
    shared = matched_per_query(emb, labels, subsets, ks, neighbours)
    for own, got in zip(matched_per_query(emb, labels, subsets, ks), shared, strict=True):
        assert own.keys() == got.keys()
        for name, values in own.items():
            np.testing.assert_array_equal(values, got[name], err_msg=name)


def test_draws_are_seeded_by_digest_level_and_draw_only(split_set):
    classes = split_set.level(1).test_classes
    first = draw_classes(split_set.digest, 1, 0, classes, SMALLEST)
    assert first == draw_classes(split_set.digest, 1, 0, list(classes), SMALLEST)
    assert len(set(first)) == SMALLEST and set(first) <= set(classes)
    assert first == [c for c in classes if c in set(first)]                          # the level's order
    assert first != draw_classes(split_set.digest, 1, 1, classes, SMALLEST)
    assert first != draw_classes(split_set.digest, 2, 0, classes, SMALLEST)
    assert first != draw_classes("0" * 64, 1, 0, classes, SMALLEST)
    assert episode_classes(split_set.digest, 1, 2, 0, range(5), 8) == [0, 1, 2, 3, 4]  # fewer ways: all


def test_n_is_the_fewest_test_classes_of_any_level(split_set):
    assert matched_count(split_set, "min") == SMALLEST
    assert matched_count(split_set, 50) == 50 and matched_count(split_set, None) is None
    for wrong in (SMALLEST + 1, 1, True, 2.5, "all"):
        with pytest.raises(OodmlError, match=f"give a whole number from 2 to {SMALLEST} "):
            matched_count(split_set, wrong)


def test_the_interval_holds_the_mean_and_widens_with_the_draws_spread():
    rng = np.random.default_rng(1)
    queries = rng.integers(1, 10, size=40).astype(float)
    draws = [(np.sort(rng.choice(40, 30, replace=False)),) for _ in range(5)]
    steady = [(p, queries[p] * 0.5, queries[p]) for (p,) in draws]
    spread = [(p, queries[p] * (0.3 + 0.1 * d), queries[p]) for d, (p,) in enumerate(draws)]
    mean, low, high = matched_interval(steady, 40)
    assert mean == pytest.approx(0.5) and low == pytest.approx(0.5) == pytest.approx(high)  # every class 0.5
    mean, low, high = matched_interval(spread, 40)
    assert low < mean < high and high - low > 2 * 1.96 * 0.1 * np.sqrt(2.5) / np.sqrt(5) * 0.99
    assert matched_interval(spread, 40) == (mean, low, high)                           # seeded
    assert np.isnan(matched_interval([(np.array([0]), np.array([1.0]), np.array([2.0]))], 1)[1])


def _records(rng: np.random.Generator, classes: int = 12, n: int = 8, draws: int = 4) -> MatchedRecords:
    """Random matched records: each draw keeps n of the classes (queries and sums 0 for the others)."""
    subsets = np.array([np.sort(rng.choice(classes, n, replace=False)) for _ in range(draws)])
    queries = np.zeros((draws, classes))
    for d, keep in enumerate(subsets):
        queries[d, keep] = rng.integers(1, 6, n)
    hits = queries * rng.random((draws, classes))
    return MatchedRecords(n, draws, {1: subsets}, {1: queries}, {"recall@1": {1: hits}})


def test_a_runs_records_give_its_draws_its_mean_and_the_interval_of_one_run():
    records = _records(np.random.default_rng(0))
    per_draw = [(p, records.sums["recall@1"][1][d][p], records.queries[1][d][p])
                for d, p in enumerate(records.subsets[1])]
    assert records.interval("recall@1", 1) == matched_interval(per_draw, 12)
    assert records.value("recall@1", 1) == pytest.approx(np.mean([s.sum() / q.sum() for _, s, q in per_draw]),
                                                         abs=1e-15)
    order = {1: np.arange(12)[::-1]}                                  # the classes in another order
    again = records.reordered(order)
    assert again.interval("recall@1", 1)[0] == pytest.approx(records.value("recall@1", 1), abs=1e-15)
    assert (again.queries[1][:, ::-1] == records.queries[1]).all()
    assert (np.sort(11 - records.subsets[1], axis=1) == again.subsets[1]).all()


def test_the_paired_bootstrap_of_matched_draws_resamples_classes_once_for_every_draw_and_run():
    rng = np.random.default_rng(1)
    a, b = _records(rng), _records(rng)
    b.subsets, b.queries = a.subsets, a.queries                       # one draw layout, other hits
    per_draw, boot = paired_matched_draws([a, b], "recall@1", [1], 300, np.random.default_rng(5))
    assert per_draw.shape == (2, 4, 1) and boot.shape == (2, 1, 300)
    assert per_draw[1, :, 0] == pytest.approx(b.draw_values("recall@1", 1), abs=1e-15)
    units = [[(run.sums["recall@1"][1][d], run.queries[1][d]) for run in (a, b) for d in range(4)]]
    by_hand = paired_ratio_draws(units, 300, np.random.default_rng(5)).reshape(2, 4, 1, 300).mean(1)
    np.testing.assert_allclose(boot, by_hand, rtol=0, atol=1e-15)
    _, same = paired_matched_draws([a, a], "recall@1", [1], 300, np.random.default_rng(5))
    assert (same[0] == same[1]).all()                                 # a run against itself: exactly paired


def test_the_draw_spread_widens_an_interval_in_quadrature():
    assert with_draw_spread(0.5, (0.4, 0.7), np.full(5, 0.5)) == pytest.approx((0.4, 0.7), abs=1e-15)
    low, high = with_draw_spread(0.5, (0.4, 0.7), np.array([0.4, 0.6]))
    se = 1.959963984540054 * np.std([0.4, 0.6], ddof=1) / np.sqrt(2)
    assert (low, high) == pytest.approx((0.5 - np.hypot(0.1, se), 0.5 + np.hypot(0.2, se)), abs=1e-12)
    assert with_draw_spread(0.5, (0.4, 0.7), np.array([0.9])) == pytest.approx((0.4, 0.7), abs=1e-15)


def test_class_sums_and_an_n_way_episode_as_evaluate_uses_them():
    per_query = {"query": np.array([0, 1, 3, 4]), "recall@1": np.array([1.0, 0.0, 1.0, 1.0])}
    queries, sums = class_sums(per_query, np.array([7, 7, 9, 5, 5]), [5, 7, 9])
    assert queries.tolist() == [2, 2, 0] and sums["recall@1"].tolist() == [2.0, 1.0, 0.0]
    support, query = np.repeat(np.arange(6), 2), np.repeat(np.arange(6), 3)
    s_in, s_labels, q_in, q_labels = matched_episode(("d" * 64, 1, 2, 0), support, query, 4)
    keep = episode_classes("d" * 64, 1, 2, 0, range(6), 4)
    assert s_in.tolist() == np.isin(support, keep).tolist() and q_in.tolist() == np.isin(query, keep).tolist()
    assert s_labels.tolist() == np.repeat(np.arange(4), 2).tolist() and q_labels.max() == 3
    assert matched_episode(("d" * 64, 1, 2, 0), support, query, 6)[0].all()    # at least its ways: all kept


def test_every_level_is_also_scored_on_matched_draws(run):
    results, out = run
    matched = [r for r in results.rows if r["test_set"] == "matched" and r["shots"] == 0]
    assert {(r["level"], r["episode"]) for r in matched} == {(lv, d) for lv in (1, 8) for d in range(3)}
    assert {r["metric"] for r in matched} == {"recall@1", "recall@2", "recall@4", "recall@8", "r_precision",
                                               "map@r"}
    level8 = {r["metric"]: r["value"] for r in results.rows
              if r["level"] == 8 and r["test_set"] == "full" and r["shots"] == 0}
    for r in matched:
        if r["level"] == 8:   # N is level 8's own count: every draw is the whole level
            assert r["value"] == pytest.approx(level8[r["metric"]], abs=1e-12)
    summary = json.loads((out / "summary.json").read_text())
    assert [lv["n_test_classes"] for lv in summary["levels"]] == [165, SMALLEST]
    section = summary["matched"]
    assert set(section) == {"n_classes", "draws", "metrics", "fewshot"}
    assert (section["n_classes"], section["draws"]) == (SMALLEST, 3)
    recall = section["metrics"]["recall@1"]
    assert set(recall) == {"per_level", "ci_low", "ci_high"} and len(recall["per_level"]) == 2
    assert all(lo <= v <= hi for v, lo, hi in zip(recall["per_level"], recall["ci_low"], recall["ci_high"],
                                                  strict=True))
    assert summary["meta"]["protocol_card"]["matched"]["n_classes"] == SMALLEST
    assert summary["meta"]["protocol_card"]["matched"]["draws"] == 3   # an entry's card: test_protocol_card_board
    ways = {r["metric"] for r in results.rows if r["test_set"] == "matched" and r["shots"] == 2}
    assert "accuracy" in ways and set(section["fewshot"]["2-shot"]) == {"none", "prototypes"}


def test_matched_numbers_do_not_depend_on_the_levels_asked(run, glyphs, model, split_set):
    results, _ = run
    alone = evaluate(model, glyphs, split_set, EvalConfig.of(levels=[1], clustering=False, device="cpu",
                                                             match_draws=3))
    def matched_at_1(res):
        return sorted((r["episode"], r["metric"], r["value"]) for r in res.rows
                      if r["test_set"] == "matched" and r["level"] == 1 and r["shots"] == 0)
    assert matched_at_1(alone) == matched_at_1(results)


def test_the_table_frame_and_plot_show_both_curves(run):
    results, out = run
    table = results.format_table()
    assert f"recall@1 N={SMALLEST}" in table.splitlines()[0] and "classes" in table.splitlines()[0]
    frame = read_run(out).frame()
    matched = frame[(frame.test_set == "matched") & (frame.metric == "recall@1") & (frame.shots == 0)]
    assert list(matched.level) == [1, 8] and (matched.ci_low <= matched.value).all()
    fig = curves(out)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(f"N={SMALLEST}" in t for t in labels) and any("all test classes" in t for t in labels)
    assert len(curves(out, test_set="full").axes[0].get_legend().get_texts()) == 1


def test_matching_off_leaves_the_old_outputs(glyphs, model, split_set, tmp_path):
    results = evaluate(model, glyphs, split_set, levels=[8], clustering=False, device="cpu", match_classes=None)
    assert {r["test_set"] for r in results.rows} == {"full"}
    assert results.summary()["matched"] is None and results.meta["protocol_card"]["matched"] is None
    results.save(tmp_path / "off")
    with pytest.raises(OodmlError, match="has no class-count-matched scores"):
        curves(tmp_path / "off", test_set="matched")


def test_a_results_file_written_before_matching_still_loads(run, tmp_path):
    _, out = run
    table = pq.read_table(out / "results.parquet")
    old = table.filter(pq.read_table(out / "results.parquet").column("test_set").to_numpy() == "full")
    old = old.drop_columns(["test_set"])
    meta = json.loads(old.schema.metadata[b"oodml"])
    meta["meta"].pop("matched")
    pq.write_table(old.replace_schema_metadata({"oodml": json.dumps(meta)}), tmp_path / "results.parquet")
    again = Results.from_parquet(tmp_path / "results.parquet")
    assert {r["test_set"] for r in again.rows} == {"full"} and again.summary()["matched"] is None
    assert curves(tmp_path).axes[0].get_ylabel() == "recall@1"


@pytest.mark.parametrize(("options", "message"), [
    ({"match_classes": 500}, "--match-classes 500: give a whole number from 2 to 132"),
    ({"match_classes": "most"}, "--match-classes 'most'"),
    ({"match_draws": 0}, "match_draws=0: must be a whole number of at least 1"),
])
def test_wrong_matching_options_are_refused_before_any_work(options, message):
    with pytest.raises(OodmlError, match=message):
        evaluate("glyph-cnn", "glyphs", "v1", levels=[1], device="cpu", **options)


@pytest.mark.parametrize(("option", "message"), [
    (["--match-classes", "1"], "--match-classes: expected min, off or a whole number of classes (at least 2)"),
    (["--match-classes", "500"], "--match-classes 500: give a whole number from 2 to 132"),
    (["--match-draws", "0"], "--match-draws: expected a whole number of at least 1"),
])
def test_the_command_refuses_wrong_matching_in_one_line(option, message, tmp_path):
    from cli_run import one_line_error, run

    line = one_line_error(*run("evaluate", "glyph-cnn", "--dataset", "glyphs", "--levels", "1", "--device", "cpu",
                               "--out", str(tmp_path / "out"), *option))
    assert message in line
    assert not (tmp_path / "out").exists()
