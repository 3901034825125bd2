"""Leaderboard: submit, verify and build end to end; every kind of tampering fails verification."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import edit_json

from oodml.cli import main
from oodml.embedding import read_embedding_table, write_embedding_table
from oodml.evaluation import EvalConfig, evaluate
from oodml.leaderboard import EntryInfo, build, iter_entries, rank_entries, read_submission, submit, verify
from oodml.leaderboard.submission import file_record, parse_file_name
from oodml.models import load_model
from oodml.models.io import LoadedModel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def entry(leaderboard_entry):
    return leaderboard_entry


def copy_of(entry: Path, tmp_path: Path, name: str = "tiny") -> Path:
    dest = tmp_path / "leaderboard" / "submissions" / "glyphs" / "v1" / name
    shutil.copytree(entry, dest)
    if name != "tiny":
        edit_json(dest, entry=name, method=name)
    return dest


def rewrite(path: Path, name: str, ids, values) -> None:
    """Replace one embedding file and fix its recorded hash, as a careful cheat would."""
    write_embedding_table(path / name, ids, values, dtype=np.float16)
    meta = json.loads((path / "submission.json").read_text())
    meta["files"][name] = file_record(path / name)
    (path / "submission.json").write_text(json.dumps(meta))


def test_submit_verify_build_end_to_end(entry, tmp_path, capsys):
    result = verify(entry)
    assert result.ok, result.problems
    meta = result.submission.meta
    assert meta["adaptations"] == ["prototypes", "finetune-last"] and meta["embedding_dim"] == 8
    assert set(result.scores.fewshot["2-shot"]) == {"none", "prototypes", "finetune-last"}
    assert len(result.scores.levels) == 8 and meta["claimed"] == result.scores.claims()
    assert main(["leaderboard", "verify", str(entry)]) == 0
    root = copy_of(entry, tmp_path).parents[3]                # the shared entry's own board is never written
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    readme = (root / "README.md").read_text()
    assert "| 1 | tiny |" in readme and "## cars196 @ oodml-v1" in readme and "No entry yet" in readme
    page = (root / "index.html").read_text()
    assert page.count("<polyline") == 2 and "board-glyphs-v1-zero-shot" in page    # the matched and full curves
    assert page.count('class="curve"') == 1 and page.count('class="curve-full" fill="none"') == 1
    assert "stroke-dasharray" in page.split('class="curve-full"')[1].split("/>")[0]   # the full one dashed
    header = next(line for line in readme.splitlines() if line.startswith("| rank |"))
    assert "| mean R@1 N=132 [95% CI] |" in header and "| full-set mean R@1 |" in header
    cells = dict(zip(header.split(" | "), next(line for line in readme.splitlines()
                                               if line.startswith("| 1 | tiny |")).split(" | "), strict=True))
    assert cells["mean R@1 N=132 [95% CI]"].startswith(f"{result.scores.curve('recall@1', 'matched')['mean']:.4f} [")
    assert cells["full-set mean R@1"] == f"{result.scores.curve('recall@1')['mean']:.4f}"


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda p: edit_json(p, claimed={"levels": {"3": {"recall@1": 0.99}}}),
     r"claims levels/3/recall@1 = 0.99, but its embeddings give"),
    (lambda p: edit_json(p, claimed={"levels": {"3": {"nmi": 0.5}}}), "claims levels/3/nmi, which oodml does not"),
    (lambda p: edit_json(p, split_digest="0" * 64), "is not that of the published glyphs@v1"),
    (lambda p: edit_json(p, schema_version=3), "schema version 3 is newer than this oodml reads"),
    (lambda p: edit_json(p, schema_version=1), "unknown field 'pretraining' .schema version 1 has none; it came"),
    (lambda p: edit_json(p, pretraining="in1k\u202e"), "pretraining holds the control character U\\+202E"),
    (lambda p: edit_json(p, pretraining=["imagenet-1k"]), "field 'pretraining' must be str"),
    (lambda p: edit_json(p, protocol="transductive"), "protocol 'transductive' is not one of"),
    (lambda p: edit_json(p, entry="other"), "declares glyphs/v1/other but lives in glyphs/v1/tiny"),
    (lambda p: edit_json(p, embedding_dim="8"), "field 'embedding_dim' must be int"),
    (lambda p: (p / "embeddings" / "level2.parquet").write_bytes(b"junk"), "does not match the sha256"),
    (lambda p: (p / "notes.txt").write_text("hi"), "notes.txt: not listed in submission.json"),
    (lambda p: edit_json(p, files={**json.loads((p / "submission.json").read_text())["files"],
                                   "../../escape.parquet": {"sha256": "0", "bytes": 1}}),
     "file name '../../escape.parquet' is not allowed"),
])
def test_tampered_metadata_fails(entry, tmp_path, tamper, message):
    path = copy_of(entry, tmp_path)
    tamper(path)
    result = verify(path)
    assert not result.ok
    assert any(__import__("re").search(message, p) for p in result.problems), result.problems


@pytest.mark.parametrize(("edit", "message"), [
    (lambda ids, v: (ids[1:], v[1:]), "1 expected images missing"),
    (lambda ids, v: (ids + ids[:1], np.vstack([v, v[:1]])), "1 duplicate sample ids"),
    (lambda ids, v: (ids + ["../../etc/passwd"], np.vstack([v, v[:1]])), "1 sample ids that do not belong here"),
    (lambda ids, v: (ids, np.where(np.arange(len(v))[:, None] == 5, np.nan, v)), "1 rows hold NaN or inf"),
    (lambda ids, v: (ids, v[:, :4]), "embeddings are 4-d, but embedding_dim is 8"),
])
def test_tampered_embeddings_fail(entry, tmp_path, edit, message):
    path = copy_of(entry, tmp_path)
    ids, values = read_embedding_table(path / "embeddings" / "level3.parquet")
    rewrite(path, "embeddings/level3.parquet", *edit(ids, values))
    result = verify(path)
    assert not result.ok and any(message in p for p in result.problems), result.problems


def test_better_embeddings_without_new_claims_are_caught(entry, tmp_path, glyphs):
    """Swapping in better embeddings (a perfect oracle) contradicts the claimed numbers."""
    path = copy_of(entry, tmp_path)
    ids, _ = read_embedding_table(path / "embeddings" / "level4.parquet")
    labels = glyphs.labels[[glyphs.sample_ids.index(s) for s in ids]]
    oracle = np.eye(8)[labels % 8] + 0.01 * np.eye(8)[(labels // 8) % 8]
    rewrite(path, "embeddings/level4.parquet", ids, oracle)
    assert any("claims levels/4/recall@1" in p for p in verify(path).problems)


def test_links_and_oversized_files_are_refused(entry, tmp_path, monkeypatch):
    import oodml.leaderboard.submission as submission

    path = copy_of(entry, tmp_path)
    target = path / "embeddings" / "level2.parquet"
    moved = tmp_path / "elsewhere.parquet"
    target.rename(moved)
    target.symlink_to(moved)
    assert any("a link; submissions hold regular files only" in p for p in read_submission(path)[1])
    monkeypatch.setattr(submission, "MAX_FILE_BYTES", 1000)
    assert any("more than the 1000 allowed per file" in p for p in read_submission(copy_of(entry, tmp_path, "b"))[1])


def test_schema_1_entries_without_pretraining_still_verify(entry, tmp_path):
    path = copy_of(entry, tmp_path)
    meta = json.loads((path / "submission.json").read_text())
    del meta["pretraining"]
    (path / "submission.json").write_text(json.dumps({**meta, "schema_version": 1}))
    assert verify(path).ok
    (path / "submission.json").write_text(json.dumps(meta))           # version 2 needs the field
    assert "field 'pretraining' is missing" in verify(path).problems[0]


def test_the_board_shows_what_each_entry_saw_in_pretraining(entry, tmp_path):
    declared = {"scratch": "none", "in1k": "imagenet-1k", "silent": ""}
    for name, pretraining in declared.items():
        edit_json(copy_of(entry, tmp_path, name), pretraining=pretraining)
    root = tmp_path / "leaderboard"
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    rows = {line.split(" | ")[1]: line for line in (root / "README.md").read_text().splitlines()
            if line.startswith("| ") and " | " in line and line.split(" | ")[1] in declared}
    assert rows["scratch"].endswith("| none (no pretraining) |")
    assert rows["in1k"].endswith("| unknown (imagenet-1k) |")        # glyphs has no map into ImageNet classes
    assert rows["silent"].endswith("| not declared |")
    assert "pretraining: imagenet-1k (unknown: no map from glyphs classes" in (root / "index.html").read_text()


@pytest.mark.parametrize("pretraining, cell, share", [
    # every car model has an ImageNet-1k class of its body type (sports car, convertible, ...)
    ("a1_in1k", "all test classes (category overlap with imagenet-1k)", 1.0),
    ("in21k_ft_in1k", "all test classes (category overlap with imagenet-1k)", 1.0),
    ("laion2b_s34b_b79k", "unknown (laion2b_s34b_b79k)", "unknown"),
    ("none", "none (no pretraining)", 0.0), ("", "not declared", "not declared"),
])
def test_overlap_cell_counts_the_published_cars196_levels(pretraining, cell, share):
    from oodml.leaderboard.board import overlap_cell
    from oodml.splits import load

    assert overlap_cell({"pretraining": pretraining}, load("cars196", "oodml-v1")) == (cell, share)


def test_build_renders_only_verified_entries(entry, tmp_path, capsys):
    good = copy_of(entry, tmp_path, "good")
    bad = copy_of(entry, tmp_path, "bad")
    edit_json(bad, claimed={"levels": {"1": {"recall@1": 1.0}}})
    root = tmp_path / "leaderboard"
    assert [p.name for p in iter_entries(root)] == ["bad", "good"]
    assert main(["leaderboard", "build", "--root", str(root)]) == 2
    readme = (root / "README.md").read_text()
    assert "| 1 | good |" in readme and "| bad |" not in readme
    assert "- bad: claims levels/1/recall@1 = 1.0" in readme
    assert "not shown: " in capsys.readouterr().err
    assert good.exists()
    assert main(["leaderboard", "verify", "--root", str(root)]) == 2
    out = capsys.readouterr().out
    assert "ok      " in out and "FAILED  " in out and "claims levels/1/recall@1 = 1.0" in out


def test_identical_entries_tie_and_a_clearly_better_one_ranks_alone(entry, tmp_path, glyphs):
    a, b = verify(copy_of(entry, tmp_path, "a")), verify(copy_of(entry, tmp_path, "b"))
    better = verify(copy_of(entry, tmp_path, "c"))
    matched = better.scores.matched
    for level, queries in matched.queries.items():
        matched.sums["recall@1"][level][:] = queries      # every query of every draw right: far above the others
    ranked = rank_entries([a, b, better])
    assert [r.meta["entry"] for r in ranked] == ["c", "a", "b"]
    assert [r.rank for r in ranked] == [1, 2, 2]         # a and b are the same model: a tie
    assert ranked[0].mean == 1.0 and ranked[1].gap_ci[0] > 0 and ranked[2].gap_ci == (0.0, 0.0)
    assert ranked[1].mean == pytest.approx(np.mean(a.scores.per_level("recall@1", "matched")), abs=1e-12)
    # the ranking is on the matched curve: better full-set numbers alone do not move an entry
    for level in a.scores.levels:
        level["recall@1"] = 1.0
    assert [r.meta["entry"] for r in rank_entries([a, b])] == ["a", "b"]
    assert rank_entries([a, b])[1].rank == 1


class Float16Exact(torch.nn.Module):
    """Rounds its input to float16: a model whose float32 embeddings an entry's float16 files hold exactly."""

    def forward(self, x):
        return x.half().float()


@pytest.fixture(scope="module")
def exact(glyphs, tmp_path_factory):
    """An evaluation of 4x4 average-pooled pixels (48-d, float16-exact) on every level, one 2-shot episode,
    saved with embeddings, and the entry submitted from it (verified)."""
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), Float16Exact())
    model = LoadedModel(net, load_model("glyph-cnn", embed_dim=8, seed=1).preprocessing, "e1" * 32, "pixels-4x4")
    base = tmp_path_factory.mktemp("exact")
    evaluate(model, glyphs, "v1", EvalConfig.of(clustering=False, fewshot=(2,), episodes=1, device="cpu",
                                                save_embeddings=True)).save(base / "run")
    path = submit([base / "run"], EntryInfo("pixels", training_data="none"), root=base / "leaderboard")
    return json.loads((base / "run" / "summary.json").read_text()), verify(path, dataset=glyphs)


def test_an_entry_rescores_the_matched_curve_of_the_run_it_came_from(exact, entry, glyphs):
    """The verifier's matched section is evaluate's: per level, value and interval, and the N-way episodes."""
    summary, verified = exact
    assert verified.ok, verified.problems
    matched, scores = summary["matched"], verified.scores
    assert (scores.matched.n_classes, scores.matched.draws) == (matched["n_classes"], matched["draws"]) == (132, 20)
    for metric in ("recall@1", "map@r"):
        ours = [scores.matched.interval(metric, lv["level"]) for lv in scores.levels]   # levels by distance here
        for i, key in enumerate(("per_level", "ci_low", "ci_high")):
            # embeddings identical (float16-exact), so only the order of float sums differs
            assert [o[i] for o in ours] == pytest.approx(matched["metrics"][metric][key], abs=1e-9), (metric, key)
        assert scores.per_level(metric, "matched") == pytest.approx(matched["metrics"][metric]["per_level"],
                                                                    abs=1e-9)
    n_way = {r["level"]: r["mean"] for r in matched["fewshot"]["2-shot"]["none"]["accuracy"]}
    assert scores.matched_fewshot["2-shot"]["none"] == pytest.approx(n_way, abs=1e-9)
    full = {r["level"]: r["mean"] for r in summary["fewshot"]["2-shot"]["none"]["accuracy"]}
    assert scores.fewshot["2-shot"]["none"] == pytest.approx(full, abs=1e-9)
    assert scores.matched_fewshot != scores.fewshot                  # N ways are not all of an episode's ways
    # the per-class sums of every compared metric add up to the levels' values
    for lv in scores.levels:
        queries, sums = scores.class_sums[lv["level"]]
        assert {m: sums[m].sum() / queries.sum() for m in ("recall@1", "map@r")} == pytest.approx(
            {m: lv[m] for m in ("recall@1", "map@r")}, abs=1e-12)


def test_float16_entries_match_their_float32_run_within_the_rounding(entry):
    """The shared tiny entry holds float16 copies of an untrained 8-d CNN's float32 embeddings: rounding moves
    near-tied neighbours, so its matched values differ from the run's summary by up to a few thousandths (a
    random 8-d model has many near ties; trained models far fewer); 0.01 bounds it here."""
    summary = json.loads((entry.parents[4] / "results" / "summary.json").read_text())["matched"]
    scores = verify(entry).scores
    got = scores.per_level("recall@1", "matched")
    assert got == pytest.approx(summary["metrics"]["recall@1"]["per_level"], abs=0.01)


def test_submit_refuses_results_without_embeddings(glyphs, tmp_path):
    from oodml import OodmlError

    results = evaluate(load_model("glyph-cnn", embed_dim=8), glyphs, "v1", levels=[1], clustering=False,
                       device="cpu")
    results.save(tmp_path / "r")
    with pytest.raises(OodmlError, match="holds no embeddings; rerun `oodml evaluate` with --save-embeddings"):
        submit([tmp_path / "r"], EntryInfo("x"), root=tmp_path / "lb")
    with pytest.raises(OodmlError, match="entry name '../x'"):
        submit([tmp_path / "r"], EntryInfo("../x"), root=tmp_path / "lb")


def test_committed_entries_verify_and_the_committed_board_is_current(glyphs, tmp_path):
    """CI re-scores every committed entry, and the committed board is exactly what they produce."""
    root = REPO / "leaderboard"
    entries = iter_entries(root)
    assert entries, "the glyphs baselines should be committed under leaderboard/submissions/"
    results = [verify(path, dataset=glyphs) for path in entries]
    assert [str(r.path) for r in results if not r.ok] == []
    shutil.copytree(root, tmp_path / "board", ignore=shutil.ignore_patterns("submissions"))
    (tmp_path / "board" / "submissions").symlink_to(root / "submissions")
    build(tmp_path / "board", verifications=results)
    for name in ("README.md", "index.html"):
        assert (tmp_path / "board" / name).read_text() == (root / name).read_text(), \
            f"leaderboard/{name} is stale: run `oodml leaderboard build`"
    sizes = sum(f.stat().st_size for f in (root / "submissions" / "glyphs").rglob("*") if f.is_file())
    assert sizes < 30e6


@pytest.mark.parametrize("name, key", [
    ("embeddings/level3.parquet", ("test", 3)),
    ("embeddings/level8-2shot-episode0-finetune-last.parquet", ("fewshot", 8, 2, 0, "finetune-last")),
    ("embeddings/level03.parquet", None),                                   # not the name evaluate writes
    ("embeddings/level\u0663.parquet", None),                               # an Arabic-Indic digit three
    ("embeddings/level1000.parquet", None), ("embeddings/level" + "9" * 5000 + ".parquet", None),
    ("embeddings/level1-2shot-episode0-prototypes.parquet", None),          # prototypes are recomputed
    ("embeddings/level1-2shot-episode10000-finetune-all.parquet", None),
    ("level3.parquet", None), ("embeddings/../level3.parquet", None), ("embeddings/level3.parquet/x", None),
])
def test_entry_files_are_the_names_evaluate_writes(name, key):
    assert parse_file_name(name) == key


def _matched_card(path: Path, **matched) -> None:
    card = json.loads((path / "submission.json").read_text())["protocol_card"]
    edit_json(path, protocol_card={**card, "matched": {**card["matched"], **matched}})


@pytest.mark.parametrize(("matched", "message"), [
    ({"n_classes": 133}, "matched n_classes 133 is not a class count every level of glyphs@v1 has .2 to 132."),
    ({"n_classes": 1}, "matched n_classes 1 is not a class count"),
    ({"draws": 100_000}, "matched draws 100000: the verifier scores at most 200"),
])
def test_a_card_asking_for_impossible_or_costly_matching_is_refused_in_one_line(entry, tmp_path, matched, message):
    path = copy_of(entry, tmp_path)
    _matched_card(path, **matched)
    result = verify(path)
    assert not result.ok and any(__import__("re").search(message, p) for p in result.problems), result.problems
    assert all("\n" not in p for p in result.problems)


def test_an_entry_matched_otherwise_is_rescored_so_and_ranked_on_its_own_board(entry, tmp_path):
    """The card's N and D are the entry's matched curve; entries are ranked only against entries matched alike."""
    _matched_card(copy_of(entry, tmp_path, "fifty"), n_classes=50, draws=3)
    root = tmp_path / "leaderboard"
    fifty, default = verify(root / "submissions" / "glyphs" / "v1" / "fifty"), verify(copy_of(entry, tmp_path,
                                                                                             "default"))
    assert fifty.ok and (fifty.scores.matched.n_classes, fifty.scores.matched.draws) == (50, 3)
    assert fifty.scores.matched.subsets[1].shape == (3, 50)
    build(root, verifications=[default, fifty])
    readme = (root / "README.md").read_text()
    assert "## glyphs @ v1, zero-shot protocol\n" in readme
    assert "## glyphs @ v1, zero-shot protocol, matched at 50 classes in 3 draws" in readme
    assert readme.count("| 1 | fifty |") == 1 and readme.count("| 1 | default |") == 1   # one board each
    assert "mean R@1 N=50 [95% CI]" in readme and "mean R@1 N=132 [95% CI]" in readme
    from oodml import OodmlError
    with pytest.raises(OodmlError, match="matched at different class counts or draws .132 x 20, 50 x 3."):
        rank_entries([default, fifty])
