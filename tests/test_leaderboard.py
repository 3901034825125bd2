"""Leaderboard: submit, verify and build end to end; every kind of tampering fails verification.  Boards and ranking
are in test_leaderboard_board.py, the committed entries in test_leaderboard_committed.py."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures import edit_json

from oodml.cli import main
from oodml.embedding import read_embedding_table, write_embedding_table
from oodml.evaluation import evaluate
from oodml.leaderboard import EntryInfo, read_submission, submit, verify
from oodml.leaderboard.submission import file_record, parse_file_name
from oodml.models import load_model


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



def test_submit_refuses_results_without_embeddings(glyphs, tmp_path):
    from oodml import OodmlError

    results = evaluate(load_model("glyph-cnn", embed_dim=8), glyphs, "v1", levels=[1], clustering=False,
                       device="cpu")
    results.save(tmp_path / "r")
    with pytest.raises(OodmlError, match="holds no embeddings; rerun `oodml evaluate` with --save-embeddings"):
        submit([tmp_path / "r"], EntryInfo("x"), root=tmp_path / "lb")
    with pytest.raises(OodmlError, match="entry name '../x'"):
        submit([tmp_path / "r"], EntryInfo("../x"), root=tmp_path / "lb")


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

