"""oodml compare: paired differences of runs and leaderboard entries with class-bootstrap intervals."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shutil
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fixtures import ENTRY_MATCH_DRAWS

import oodml
from oodml import OodmlError
from oodml.cli import main
from oodml.evaluation import EvalConfig, evaluate
from oodml.leaderboard import verify
from oodml.models import load_model
from oodml.models.io import LoadedModel


@pytest.fixture(scope="module")
def tiny(leaderboard_entry) -> Path:
    """The untrained 8-d CNN's run on every level of glyphs@v1 (2-shot, one episode) behind the shared entry."""
    return leaderboard_entry.parents[4] / "results"


@pytest.fixture(scope="module")
def pixels(glyphs, tmp_path_factory) -> Path:
    """A clearly better run than ``tiny``: 8x8 average-pooled pixels (192-d) on levels 1 and 8, 2-shot, one
    episode (the glyph classes are drawn shapes, which raw pixels tell apart far better than a random 8-d CNN),
    with the class-count-matched scores of the default N in ``tiny``'s draws (``ENTRY_MATCH_DRAWS``)."""
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten())
    model = LoadedModel(net, load_model("glyph-cnn", embed_dim=8, seed=1).preprocessing, "c0" * 32, "pixels-8x8")
    config = EvalConfig.of(levels=[1, 8], clustering=False, fewshot=(2,), episodes=1, device="cpu",
                           match_draws=ENTRY_MATCH_DRAWS)
    out = tmp_path_factory.mktemp("compare") / "pixels"
    evaluate(model, glyphs, "v1", config).save(out)
    return out


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``oodml -q ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["-q", *argv])
    return code, out.getvalue(), err.getvalue()


def _rows(result, **where) -> list[dict]:
    return [r for r in result.rows if all(r[k] == v for k, v in where.items())]


def test_a_run_compared_with_itself_differs_by_exactly_zero(tiny):
    result = oodml.compare([tiny, tiny], draws=200)
    assert result.rows and all(r["difference"] == 0 and r["ci_low"] == 0 == r["ci_high"] for r in result.rows)
    assert not any(r["excludes_zero"] for r in result.rows)
    assert {r["metric"] for r in result.rows} == {"recall@1", "map@r", "accuracy"}
    assert result.test_sets == ["matched", "full"] and {r["test_set"] for r in _rows(result, metric="map@r")} == {
        "matched", "full"}
    assert {(r["shots"], r["adaptation"]) for r in _rows(result, metric="accuracy")} == {
        (2, "none"), (2, "prototypes"), (2, "finetune-last")}
    assert any("compared with itself" in n for n in result.notes)


def test_a_clearly_better_run_has_an_interval_above_zero(tiny, pixels):
    result = oodml.compare([tiny, pixels], draws=500)
    assert result.levels == [1, 8] and any("level 2 is left out" in n for n in result.notes)
    for test_set in ("matched", "full"):
        mean = _rows(result, metric="recall@1", scope="mean", test_set=test_set)[0]
        assert mean["difference"] > 0.1 and mean["ci_low"] > 0 and mean["excludes_zero"]
        for row in _rows(result, metric="recall@1", scope="level", test_set=test_set):
            assert row["ci_low"] <= row["difference"] <= row["ci_high"]
    # the per-level values are the runs' own, from their results files
    own = {r["level"]: r["value"] for r in oodml.results.read_run(pixels).rows
           if r["metric"] == "recall@1" and r["shots"] == 0 and r.get("test_set", "full") == "full"}
    assert {r["level"]: r["b"] for r in _rows(result, metric="recall@1", scope="level", test_set="full")} == \
        pytest.approx(own, abs=1e-9)
    # finetune-last is only in tiny: few-shot is compared where both have it
    assert {r["adaptation"] for r in _rows(result, metric="accuracy", test_set="full")} == {"none", "prototypes"}
    assert result.to_json() == oodml.compare([tiny, pixels], draws=500).to_json()  # seeded
    assert "*" in result.format()


def test_a_leaderboard_entry_is_compared_like_a_run(tiny, leaderboard_entry):
    """An entry is rescored from its embeddings and compared on the matched curve, on MAP@R and on few-shot
    accuracies paired by episode, as runs are."""
    result = oodml.compare([tiny, leaderboard_entry], draws=200)
    assert [r["kind"] for r in result.runs] == ["run", "entry"]
    scores = verify(leaderboard_entry).scores
    assert result.test_sets == ["matched", "full"] and result.matched == {"n_classes": 132, "draws": ENTRY_MATCH_DRAWS}
    for metric in ("recall@1", "map@r"):
        full = {lv["level"]: lv[metric] for lv in scores.levels}
        matched = {lv["level"]: scores.matched.value(metric, lv["level"]) for lv in scores.levels}
        for test_set, expected in (("full", full), ("matched", matched)):
            got = {r["level"]: r["b"] for r in _rows(result, metric=metric, scope="level", test_set=test_set)}
            assert got == pytest.approx(expected, abs=1e-12), (metric, test_set)
    for test_set, means in (("full", scores.fewshot), ("matched", scores.matched_fewshot)):
        rows = _rows(result, metric="accuracy", scope="level", test_set=test_set)
        assert {r["adaptation"] for r in rows} == {"none", "prototypes", "finetune-last"}
        assert {r["level"]: r["b"] for r in rows if r["adaptation"] == "prototypes"} == pytest.approx(
            means["2-shot"]["prototypes"], abs=1e-12)
        assert {r["units"] for r in rows} == {"episodes"}
    assert not any("not compared" in n or "full test sets only" in n for n in result.notes), result.notes
    assert any("scored from their float16 embeddings" in n for n in result.notes)   # a run against an entry
    itself = oodml.compare([leaderboard_entry, leaderboard_entry], draws=200)
    assert not any("float16" in n for n in itself.notes)                           # entries alone: no mixing
    assert itself.test_sets == ["matched", "full"] and {r["metric"] for r in itself.rows} == {
        "recall@1", "map@r", "accuracy"}
    assert all(r["difference"] == 0 == r["ci_low"] == r["ci_high"] for r in itself.rows)


def test_cli_prints_a_table_and_json(tiny, pixels):
    code, out, err = run_cli(["compare", str(tiny), str(pixels), "--draws", "200"])
    assert code == 0, err
    assert "pixels - results" in out and "recall@1" in out
    code, out, err = run_cli(["compare", str(tiny), str(pixels), "--draws", "200", "--json"])
    parsed = json.loads(out)
    assert code == 0 and parsed["draws"] == 200 and parsed["runs"][1]["name"] == "pixels"
    assert {"difference", "ci_low", "ci_high", "excludes_zero"} <= set(parsed["rows"][0])


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def _rewrite_classes(run: Path, change) -> None:
    table = pq.read_table(run / "classes.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist(change(table)), run / "classes.parquet")


def _double_first(records: list[dict], draw: int = -1) -> list[dict]:
    first = next(r for r in records if r["draw"] == draw)
    first["recall@1"] = first["queries"] + 1.0
    return records


def _edit_meta(run: Path, change) -> None:
    table = pq.read_table(run / "results.parquet")
    extra = json.loads(table.schema.metadata[b"oodml"])
    change(extra["meta"])
    pq.write_table(table.replace_schema_metadata({"oodml": json.dumps(extra)}), run / "results.parquet")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda r: (r / "classes.parquet").unlink(), r"holds no classes\.parquet .*evaluate it again"),
    (lambda r: (r / "classes.parquet").write_bytes(b"PAR1 garbage"), "not readable as Parquet"),
    (lambda r: _rewrite_classes(r, _double_first), "recall@1 records of level .* corrupt"),
    (lambda r: _rewrite_classes(r, lambda t: _double_first(t, draw=3)), "class-count-matched records of level .* "
                                                                         "corrupt"),
    (lambda r: _rewrite_classes(r, lambda t: [c for c in t if c["draw"] != 5]), "class-count-matched records"),
    (lambda r: _rewrite_classes(r, lambda t: [*t, next(r for r in t if r["draw"] == -1)]), "lists class .* twice"),
    (lambda r: (r / "results.parquet").write_bytes(b"not parquet"), "not an oodml results file"),
])
def test_missing_or_corrupt_records_are_refused_in_one_line(tiny, tmp_path, damage, message):
    bad = _copy(tiny, tmp_path / "bad")
    damage(bad)
    with pytest.raises(OodmlError, match=message):
        oodml.compare([tiny, bad], draws=100)
    code, out, err = run_cli(["compare", str(tiny), str(bad), "--draws", "100"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_other_split_sets_datasets_folders_and_counts_are_refused(tiny, tmp_path):
    with pytest.raises(OodmlError, match="at least two runs"):
        oodml.compare([tiny])
    with pytest.raises(OodmlError, match="neither an evaluation run .* nor a leaderboard entry"):
        oodml.compare([tiny, tmp_path])
    with pytest.raises(OodmlError, match="at least 100 bootstrap draws"):
        oodml.compare([tiny, tiny], draws=10)
    for field, value, message in [("split_digest", "f" * 64, "compare runs on the same split set"),
                                  ("dataset", "cub200", "compare runs on one dataset")]:
        other = _copy(tiny, tmp_path / field)
        _edit_meta(other, lambda meta, field=field, value=value: meta.update({field: value}))
        with pytest.raises(OodmlError, match=message):
            oodml.compare([tiny, other], draws=100)


def test_an_entry_that_does_not_verify_is_refused(tiny, leaderboard_entry, tmp_path):
    entry = _copy(leaderboard_entry, tmp_path / "entry")
    meta = json.loads((entry / "submission.json").read_text())
    meta["claimed"]["levels"]["1"]["recall@1"] = 0.99
    (entry / "submission.json").write_text(json.dumps(meta))
    with pytest.raises(OodmlError, match="does not verify .*oodml leaderboard verify"):
        oodml.compare([tiny, entry], draws=100)


def test_the_boards_gap_is_the_comparisons_matched_mean_difference(leaderboard_entry):
    """The board ranks with the comparison's bootstrap: an entry's gap to the one above is compare's interval
    of their matched mean Recall@1 difference (same draws and seed)."""
    from oodml.leaderboard import rank_entries

    entry = verify(leaderboard_entry)
    better = copy.deepcopy(entry)
    better.submission.meta["entry"] = "better"
    matched = better.scores.matched
    for level, queries in matched.queries.items():                 # a better model, in memory
        matched.sums["recall@1"][level] = np.minimum(queries, matched.sums["recall@1"][level] + 0.3 * queries)
    ranked = rank_entries([entry, better], draws=500)
    assert [r.meta["entry"] for r in ranked] == ["better", "tiny"]
    a = oodml.comparison.read_scored(leaderboard_entry)
    b = copy.deepcopy(a)
    order = {lv.index: np.argsort(np.array(lv.test_classes, dtype=object), kind="stable")
             for lv in oodml.splits.load("glyphs", "v1").levels}  # compare's order of classes: sorted names
    b.name, b.matched = "better", matched.reordered(order)
    rows = oodml.comparison._retrieval_rows(a, b, sorted(a.classes), "matched", (500, 0, 0.95), [])
    mean = next(r for r in rows if r["metric"] == "recall@1" and r["scope"] == "mean")
    assert mean["difference"] > 0.1 and ranked[1].gap_ci[0] > 0
    assert ranked[1].gap_ci == pytest.approx((mean["ci_low"], mean["ci_high"]), abs=1e-12)


def test_the_matched_curve_is_the_headline_and_the_json_carries_it(tiny, pixels):
    result = oodml.compare([tiny, pixels], draws=300)
    matched = oodml.results.read_run(pixels).summary()["matched"]
    assert result.matched == {"n_classes": matched["n_classes"], "draws": matched["draws"]} and matched["draws"] > 1
    # the matched values are the runs' own matched curve (the mean over the draws), levels by distance
    rows = _rows(result, metric="recall@1", scope="level", test_set="matched")
    assert [r["b"] for r in rows] == pytest.approx(matched["metrics"]["recall@1"]["per_level"], abs=1e-9)
    # each side of a matched interval holds at least the draws' spread: z times the standard error of the
    # paired per-draw differences (added in quadrature to the class bootstrap's side)
    per_draw = [{(r["level"], r["episode"]): r["value"] for r in oodml.results.read_run(run).rows
                 if r["metric"] == "recall@1" and r["shots"] == 0 and r["test_set"] == "matched"}
                for run in (tiny, pixels)]
    floors = []
    for r in rows:
        d = np.array([per_draw[1][k] - per_draw[0][k] for k in per_draw[1] if k[0] == r["level"]])
        floors.append(NormalDist().inv_cdf(0.975) * d.std(ddof=1) / np.sqrt(len(d)))
        assert r["difference"] - r["ci_low"] >= floors[-1] - 1e-12 <= r["ci_high"] - r["difference"]
    assert floors[0] > 0  # level 1 has more than N classes, so its draws differ (level 8 has exactly N)
    assert {r["shots"] for r in _rows(result, test_set="matched")} == {0, 2}
    text = result.format()
    assert "test set matched: " in text and text.index(" matched ") < text.index(" full ")
    parsed = json.loads(oodml.compare([tiny, pixels], draws=300).to_json())
    assert parsed["test_sets"] == ["matched", "full"] and parsed["matched"] == result.matched
    assert {r["test_set"] for r in parsed["rows"]} == {"matched", "full"}
    full = oodml.compare([tiny, pixels], draws=300, test_set="full")
    assert full.test_sets == ["full"] and full.matched is None and {r["test_set"] for r in full.rows} == {"full"}
    assert [r for r in result.rows if r["test_set"] == "full"] == full.rows
    with pytest.raises(OodmlError, match="--test-set 'curve': give one of both, matched, full"):
        oodml.compare([tiny, pixels], draws=100, test_set="curve")


def _other_draw_classes(records: list[dict]) -> list[dict]:
    """Move draw 0 of level 1 onto a class it did not draw (its sums unchanged, so the records still add up)."""
    drawn = {r["class"] for r in records if r["level"] == 1 and r["draw"] == 0}
    spare = next(r["class"] for r in records if r["level"] == 1 and r["draw"] == -1 and r["class"] not in drawn)
    next(r for r in records if r["level"] == 1 and r["draw"] == 0)["class"] = spare
    return records


@pytest.mark.parametrize(("damage", "message"), [
    (lambda r: _edit_meta(r, lambda m: m["matched"].update(n_classes=m["matched"]["n_classes"] - 1)),
     r"is matched at \d+ classes in \d+ draws, other at \d+ in .*same --match-classes"),
    (lambda r: _edit_meta(r, lambda m: m.update(matched=None)), "other has no class-count-matched records "
                                                                 r"\(evaluated with --match-classes off"),
    (lambda r: _rewrite_classes(r, _other_draw_classes), "matched draws of other at level 1 hold other classes"),
])
def test_runs_without_the_same_matched_curve_compare_on_the_full_test_sets(pixels, tmp_path, damage, message):
    other = _copy(pixels, tmp_path / "other")
    damage(other)
    result = oodml.compare([pixels, other], draws=100)
    assert result.test_sets == ["full"] and {r["test_set"] for r in result.rows} == {"full"}
    assert any(n.startswith("compared on the full test sets only") and re.search(message, n) for n in result.notes)
    code, out, err = run_cli(["compare", str(pixels), str(other), "--draws", "100", "--test-set", "matched"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--test-set full" in err
