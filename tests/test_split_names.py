"""Published split-set names are immutable (issue 25): one ``DATASET@VERSION``, one digest, wherever it is
read from; and malformed manifests, misleading notes and order-only differences that used to confuse."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from oodml import OodmlError
from oodml._fs import file_digest
from oodml.cli import main
from oodml.splits import Episode, Level, catalogue, compare, load, manifest, read_split_set, write_split_set

REPO = Path(__file__).resolve().parents[1]
GLYPHS_V1 = REPO / "splits" / "glyphs" / "v1"
GLYPHS_V1_DIGEST = "0579614cfe49f21da33814429363bb15ef6addd582498fd1ef2c8a51eec518b9"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory with no ./splits and no $OODML_SPLITS: only the installed split sets are published."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OODML_SPLITS", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def glyphs_v1():
    """The published glyphs@v1, read once."""
    return read_split_set(GLYPHS_V1)


def published_metadata(published) -> dict:
    """``published``'s generation record, as a writer passes it (the writer adds schema, dataset and version)."""
    return {k: v for k, v in published.metadata.items() if k not in ("schema_version", "dataset", "version")}


def tipped_levels(published) -> tuple[Level, ...]:
    """``published``'s levels with one train and one test class of level 3 swapped, as a greedy step tipped
    the other way (or another --seed) would give."""
    levels = list(published.levels)
    lv = levels[2]
    a, b = lv.tuning_train_classes[0], lv.test_classes[0]
    levels[2] = Level(lv.index, lv.distance * 1.05, lv.ci_low, lv.ci_high, lv.kind,
                      tuple(sorted({*lv.train_classes} - {a} | {b})), tuple(sorted({*lv.test_classes} - {b} | {a})),
                      lv.val_classes, lv.n_train_images, lv.n_test_images, {})
    return tuple(levels)


def written_before_names_were_checked(out: Path, published, monkeypatch) -> Path:
    """A different glyphs@v1 at ``out``, as an oodml that did not check published names wrote it."""
    with monkeypatch.context() as patch:
        patch.setattr(catalogue, "split_set_copies", lambda dataset, version: [], raising=False)
        return write_split_set(out, "glyphs", "v1", tipped_levels(published), published_metadata(published)).path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("oodml: error: "), err
    return err[0]


# --- write time ------------------------------------------------------------------------------------

def test_make_splits_with_another_seed_is_refused_before_the_search(elsewhere, capsys):
    assert main(["-q", "make-splits", "glyphs", "--seed", "1"]) == 2     # default --out splits, --version v1
    line = one_line_error(capsys)
    assert f"glyphs@v1 is already published at {GLYPHS_V1} with different content (seed 1 vs 0)" in line
    assert "choose a new --version" in line
    assert not (elsewhere / "splits").exists()                          # nothing half-written
    assert load("glyphs", "v1").digest == GLYPHS_V1_DIGEST


def test_other_content_under_a_published_name_is_refused_naming_what_differs(elsewhere, glyphs_v1):
    with pytest.raises(OodmlError, match=r"^glyphs@v1 is already published at \S+ with different content \(level 3: "
                       r"2 classes moved, 30 episodes differ.*choose a new --version"):
        write_split_set(elsewhere / "anywhere", "glyphs", "v1", tipped_levels(glyphs_v1), published_metadata(glyphs_v1))
    assert not (elsewhere / "anywhere").exists()
    other = write_split_set(elsewhere / "anywhere", "glyphs", "tipped", tipped_levels(glyphs_v1),
                            published_metadata(glyphs_v1))
    assert not compare(other, "glyphs@v1").reproduces                   # a new name is free


@pytest.mark.parametrize("out", ["splits", "build/demo-splits"])
def test_an_identical_rebuild_keeps_the_published_files_in_any_folder(elsewhere, glyphs_v1, out):
    rebuilt = write_split_set(Path(out), "glyphs", "v1", glyphs_v1.levels, published_metadata(glyphs_v1))
    assert rebuilt.digest == GLYPHS_V1_DIGEST and rebuilt.path == Path(out) / "glyphs" / "v1"
    for name in (*manifest.FILES, manifest.CHECKSUMS):
        assert (rebuilt.path / name).read_bytes() == (GLYPHS_V1 / name).read_bytes()
    assert not (rebuilt.path / manifest.AUDITS).exists()                # the published audits stay behind
    assert load("glyphs", "v1").digest == GLYPHS_V1_DIGEST              # ./splits now holds it too: one digest
    assert compare(rebuilt, "glyphs@v1").reproduces


def test_a_rebuild_into_the_project_folder_says_it_reproduces_the_installed_set(elsewhere, glyphs_v1, monkeypatch,
                                                                                capsys):
    def rebuild(dataset, *, out, version, **options):   # the search's result, stood in for by the published levels
        return write_split_set(Path(out), dataset, version, glyphs_v1.levels, published_metadata(glyphs_v1))

    monkeypatch.setattr("oodml.splits.make_splits", rebuild)
    assert main(["-q", "make-splits", "glyphs"]) == 0                   # into ./splits, which now shadows it
    assert f"reproduces the published glyphs@v1 at {GLYPHS_V1} (installed)" in capsys.readouterr().out


HOLD = """import sys, time
from oodml._fs import claim
with claim(sys.argv[1], what="a test", fix="wait"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_split_set_another_process_is_writing_is_refused_and_nothing_is_left(tmp_path):
    dest = tmp_path / "toy" / "v1"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(dest)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OodmlError, match=r"^split set toy@v1 at \S+ is being written by another process "
                           r"\(pid \d+ .*choose another --version or --out$"):
            write_split_set(tmp_path, "toy", "v1", toy_levels(), {})
        assert not dest.exists()
    finally:
        holder.kill()
        holder.wait()
    assert write_split_set(tmp_path, "toy", "v1", toy_levels(), {}).path == dest   # free again once it died


def test_a_refused_split_set_leaves_no_empty_folders(elsewhere, glyphs_v1):
    with pytest.raises(OodmlError, match="already published"):
        write_split_set(elsewhere / "a" / "b", "glyphs", "v1", tipped_levels(glyphs_v1), published_metadata(glyphs_v1))
    assert list(elsewhere.iterdir()) == []


# --- read time -------------------------------------------------------------------------------------

def test_a_different_copy_in_the_project_folder_is_refused_naming_both_paths(elsewhere, glyphs_v1, monkeypatch,
                                                                             capsys):
    stray = written_before_names_were_checked(elsewhere / "splits", glyphs_v1, monkeypatch)
    expected = (f"glyphs@v1 has two different contents on the split-set search path: digest "
                f"{read_split_set(stray).digest[:12]} at {elsewhere / 'splits' / 'glyphs' / 'v1'} (project) and "
                f"{GLYPHS_V1_DIGEST[:12]} at {GLYPHS_V1} (installed); a published name is immutable: keep the "
                f"installed one and delete {elsewhere / 'splits' / 'glyphs' / 'v1'}, or remake that one with "
                "another --version")
    with pytest.raises(OodmlError) as refused:
        load("glyphs", "v1")
    assert str(refused.value) == expected
    assert main(["splits", "show", "glyphs@v1"]) == 2
    assert one_line_error(capsys) == f"oodml: error: {expected}"
    assert main(["splits", "verify"]) == 2                              # it said "ok" before
    assert f"FAIL  glyphs@v1: {expected}" in capsys.readouterr().err
    assert main(["-q", "make-splits", "glyphs"]) == 2                   # nor can it be "rebuilt" over
    assert one_line_error(capsys).endswith("or remake that one with another --version")


def test_a_different_copy_on_oodml_splits_is_refused_from_any_folder(tmp_path, glyphs_v1, monkeypatch):
    stray = written_before_names_were_checked(tmp_path / "mine", glyphs_v1, monkeypatch)
    monkeypatch.setenv("OODML_SPLITS", str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OodmlError, match=f"at {stray} \\(\\$OODML_SPLITS\\) and {GLYPHS_V1_DIGEST[:12]} at "):
        load("glyphs", "v1")
    with pytest.raises(OodmlError, match="two different contents"):
        load("glyphs")                                                 # the latest version too


@pytest.mark.parametrize("where", ["project", "$OODML_SPLITS", "installed only"])
def test_load_gives_the_published_digest_wherever_it_is_called_from(elsewhere, glyphs_v1, monkeypatch, where):
    if where != "installed only":
        copy = write_split_set(elsewhere / "copy", "glyphs", "v1", glyphs_v1.levels, published_metadata(glyphs_v1)).path
        if where == "project":
            (elsewhere / "splits").mkdir()
            copy.parent.rename(elsewhere / "splits" / "glyphs")
        else:
            monkeypatch.setenv("OODML_SPLITS", str(elsewhere / "copy"))
    assert load("glyphs", "v1").digest == GLYPHS_V1_DIGEST


# --- malformed manifests: one line, exit 2 -------------------------------------------------------

def toy_levels(kind: str = "swap") -> tuple[Level, ...]:
    support = {c: (f"{c}/0.png", f"{c}/1.png") for c in ("c4", "c5", "c6", "c7")}
    return tuple(Level(k, float(k), k - 0.1, k + 0.1, kind if k == 2 else "swap", ("c0", "c1", "c2", "c3"),
                       ("c4", "c5", "c6", "c7"), ("c1",), 40, 40, {2: (Episode(2, 0, support),)}) for k in (1, 2))


def reseal(path: Path, digest: bool = True) -> None:
    """Recompute ``checksums.json`` of a hand-edited split set, as a careless or hostile writer would."""
    sums = json.loads((path / "checksums.json").read_text())
    sums["files"] = {name: file_digest(path / name) for name in manifest.FILES if (path / name).is_file()}
    if digest:
        tables = {name: pq.read_table(path / f"{name}.parquet") for name in manifest.TABLES}
        sums["digest"] = manifest.content_digest(tables, json.loads((path / "metadata.json").read_text()))
    (path / "checksums.json").write_text(json.dumps(sums))


@pytest.fixture
def toy(tmp_path) -> Path:
    return write_split_set(tmp_path, "toy", "v1", toy_levels(), {}).path


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def nest_metadata(path: Path) -> None:
    (path / "metadata.json").write_text(deep_json())
    reseal(path, digest=False)


def nest_a_metadata_value(path: Path) -> None:
    metadata = json.loads((path / "metadata.json").read_text())
    (path / "metadata.json").write_text(json.dumps(metadata)[:-1] + ', "notes": ' + deep_json(5_000) + "}")
    reseal(path, digest=False)


def metadata_as_directory(path: Path) -> None:
    (path / "metadata.json").unlink()
    (path / "metadata.json").mkdir()


def checksums_as_directory(path: Path) -> None:
    (path / "checksums.json").unlink()
    (path / "checksums.json").mkdir()


def unknown_kind(path: Path) -> None:
    table = pq.read_table(path / "levels.parquet")
    kinds = pa.array(["swap", "shuffle"], pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("kind"), "kind", kinds), path / "levels.parquet")
    reseal(path)


def missing_kind(path: Path) -> None:
    table = pq.read_table(path / "levels.parquet")
    kinds = pa.array(["swap", None], pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("kind"), "kind", kinds), path / "levels.parquet")
    reseal(path)


def first_role(role: str | None):
    def damage(path: Path) -> None:
        table = pq.read_table(path / "classes.parquet")
        roles = [role, *table.column("role").to_pylist()[1:]]
        pq.write_table(table.set_column(table.schema.get_field_index("role"), "role", pa.array(roles, pa.string())),
                       path / "classes.parquet")
        reseal(path)
    return damage


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "checksums.json").write_text(deep_json()), "checksums.json is nested too deeply to read"),
    (nest_metadata, "metadata.json is nested too deeply to read"),
    (nest_a_metadata_value, "metadata.json is nested too deeply to"),
    (metadata_as_directory, "metadata.json is not a file; restore the split set"),
    (checksums_as_directory, "checksums.json is a directory, not a file; restore the split set"),
    (unknown_kind, "level 2 has kind 'shuffle', not one of swap, removal; the split set is malformed"),
    (missing_kind, "levels.parquet has missing values in column 'kind'; the split set is malformed"),
    (first_role("bogus"), "classes.parquet has a class with role 'bogus' and tuning 'train', expected train with "
                          "train or val, or test with none"),
    (first_role(None), "classes.parquet has missing values in column 'role'"),
], ids=["deep checksums", "deep metadata", "deep metadata value", "metadata dir", "checksums dir", "unknown kind",
        "missing kind", "unknown role", "missing role"])
@pytest.mark.parametrize("command", ["verify", "show"])
def test_a_malformed_manifest_is_one_line_exit_2(toy, damage, message, command, capsys):
    damage(toy)
    assert main(["splits", command, str(toy)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err
    assert len(err.strip().splitlines()) == (2 if command == "verify" else 1)   # verify: FAIL line + summary


def test_a_level_kind_outside_swap_and_removal_is_not_written(tmp_path):
    with pytest.raises(OodmlError, match="level 2 has kind 'shuffle', not one of swap, removal"):
        write_split_set(tmp_path, "toy", "v1", toy_levels(kind="shuffle"), {})
    assert not (tmp_path / "toy").exists()


def test_a_directory_on_the_search_path_with_deep_metadata_does_not_break_latest(elsewhere, capsys):
    (elsewhere / "splits").mkdir()
    toy = write_split_set(elsewhere / "splits", "toy", "v1", toy_levels(), {}).path
    write_split_set(elsewhere / "splits", "toy", "v2", toy_levels(), {})
    nest_metadata(toy)
    assert load("toy").version == "v2"                                  # v1's metadata cannot say when it was made
    assert main(["splits", "show", "toy@v1"]) == 2
    assert "metadata.json is nested too deeply to read" in one_line_error(capsys)


# --- what the diff and the notes say -------------------------------------------------------------

def hf_split_set(out: Path, split: str):
    source = {"hub_id": None, "revision": None, "split": split}
    return write_split_set(out, "hf", "birds", toy_levels(), {"dataset_source": source})


def test_splits_diff_treats_the_order_of_joined_splits_as_the_same_data(tmp_path, capsys):
    a, b = hf_split_set(tmp_path / "a", "test+train"), hf_split_set(tmp_path / "b", "train+test")
    assert main(["splits", "diff", str(a.path), str(b.path)]) == 0
    assert "reproduces" in capsys.readouterr().out
    c = hf_split_set(tmp_path / "c", "train")                           # other rows: still a difference
    assert main(["splits", "diff", str(a.path), str(c.path)]) == 1
    assert "metadata dataset_source" in capsys.readouterr().out


def test_a_level_of_another_kind_is_a_difference(tmp_path):
    a = write_split_set(tmp_path / "a", "toy", "v1", toy_levels(), {})
    b = write_split_set(tmp_path / "b", "toy", "v1", toy_levels(kind="removal"), {})
    comparison = compare(a, b)
    assert not comparison.reproduces and comparison.first_difference() == "level 2: kind swap vs removal"


def write_four_classes(root: Path) -> Path:
    """Four classes of ten 8x8 PNGs, each class a noisy colour of its own."""
    rng = np.random.default_rng(4)
    for k in range(4):
        colour = rng.integers(0, 256, 3)
        (root / f"class{k}").mkdir(parents=True)
        for j in range(10):
            pixels = np.clip(colour + rng.normal(0, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{k}" / f"{j}.png")
    return root


def test_the_capped_levels_note_counts_the_removal_levels_made(tmp_path, capsys):
    root = write_four_classes(tmp_path / "images")
    assert main(["-q", "make-splits", "imagefolder", "--root", str(root), "--extractor", "pixels", "--shots", "2",
                 "--bootstrap", "0", "--out", str(tmp_path / "splits")]) == 0
    kinds = {lv.kind for lv in read_split_set(tmp_path / "splits" / "imagefolder" / "v1").levels}
    assert kinds == {"swap"}                                            # 2 classes per side: nothing to remove
    notes = [line for line in capsys.readouterr().err.splitlines() if "levels" in line]
    assert notes == ["oodml: warning: 4 classes have only 3 balanced splits: making 3 levels, 0 by removal, "
                     "not 8 (--levels)"]

