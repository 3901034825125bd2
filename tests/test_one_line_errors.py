"""The last tracebacks and silent surprises of issue 25 (item 7), each now one line: a class folder or image
file whose name is not UTF-8, a per-level model template with a placeholder other than ``{level}``, and
in-distribution references of another architecture than the evaluated model (a warning: the gap is still
computed, but it no longer measures the shift alone)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from cli_run import one_line_error, run
from fixtures import build_imagefolder

from oodml.datasets import load_dataset
from oodml.errors import OodmlError
from oodml.evaluation import evaluate, expand_level_template
from oodml.models import create_model, save
from oodml.reference import _ids_digest, architecture_of, architecture_warning, checkpoint_name, level_halves
from oodml.splits import resolve

LEVEL = 8   # glyphs@v1's smallest level: 132 test classes x 32 images


# --- names that are not UTF-8 --------------------------------------------------------------------------------

def rename_to_bytes(path: Path, name: bytes) -> Path:
    """Rename ``path`` to the raw file name ``name`` (bytes that need not be UTF-8) in the same folder."""
    target = os.path.join(os.fsencode(path.parent), name)
    os.rename(os.fsencode(path), target)
    return Path(os.fsdecode(target))


@pytest.fixture
def latin1_class(tmp_path) -> Path:
    """An image-folder dataset whose third class folder is named ``café`` in Latin-1 (the byte 0xE9)."""
    build_imagefolder(tmp_path / "data", per_class=3)
    third = sorted(p for p in (tmp_path / "data").iterdir() if p.is_dir())[2]
    rename_to_bytes(third, b"caf\xe9")
    return tmp_path / "data"


def test_datasets_info_names_a_class_folder_that_is_not_utf8(latin1_class):
    line = one_line_error(*run("datasets", "info", "imagefolder", "--root", str(latin1_class)))
    assert r"class folder b'caf\xe9' in " + str(latin1_class) in line
    assert "not valid UTF-8" in line and "rename it" in line


def test_make_splits_refuses_it_before_writing_anything(latin1_class, tmp_path):
    line = one_line_error(*run("make-splits", "imagefolder", "--root", str(latin1_class), "--extractor", "pixels",
                               "--out", str(tmp_path / "splits")))
    assert r"b'caf\xe9'" in line and "rename it" in line
    assert not (tmp_path / "splits").exists()


def test_an_image_file_name_that_is_not_utf8_is_named_with_its_folder(tmp_path):
    build_imagefolder(tmp_path / "data", per_class=3)
    folder = sorted(p for p in (tmp_path / "data").iterdir() if p.is_dir())[0]
    rename_to_bytes(next(folder.iterdir()), b"\xff\xfe.jpg")
    with pytest.raises(OodmlError, match=r"image file b'\\xff\\xfe\.jpg' in .*has a name that is not valid UTF-8"):
        load_dataset("imagefolder", tmp_path / "data")


def test_a_root_that_is_not_utf8_still_loads_when_its_class_and_file_names_are(tmp_path):
    build_imagefolder(tmp_path / "data", per_class=3)
    root = rename_to_bytes(tmp_path / "data", b"d\xe9j\xe0")
    ds = load_dataset("imagefolder", root)
    assert len(ds.classes) > 1 and len(ds.fingerprint) == 64     # the fingerprint hashes ids, not the root


# --- per-level model templates ---------------------------------------------------------------------------------

@pytest.mark.parametrize("template, shown", [
    ("runs/{seed}/level{level}.pt", "{seed}"),
    ("runs/{}/level{level}.pt", "{}"),
    ("runs/{0}/level{level}.pt", "{0}"),
    ("runs/level{level:02d}-{level}.pt", "{level:02d}"),
    ("runs/{level.real}/level{level}.pt", "{level.real}"),       # no attribute lookups on the user's text
    ("runs/{level!r}/level{level}.pt", "{level!r}"),
])
def test_a_template_with_another_placeholder_names_the_only_one_allowed(template, shown):
    line = one_line_error(*run("evaluate", template, "--dataset", "glyphs", "--splits", "v1"))
    assert f"per-level model template '{template}': it holds {shown}" in line
    assert "the only placeholder allowed is {level}" in line


@pytest.mark.parametrize("template", ["runs/level{level}}.pt", "runs/{level}/{x.pt"])
def test_an_unpaired_brace_in_a_template_is_one_line(template):
    line = one_line_error(*run("evaluate", template, "--dataset", "glyphs", "--splits", "v1"))
    assert "a brace in it is unpaired" in line and "the only placeholder allowed is {level}" in line


def test_level_and_doubled_braces_expand():
    assert expand_level_template("runs/ms/level{level}.pt", 3) == "runs/ms/level3.pt"
    assert expand_level_template("runs/{{x}}/level{level}-{level}.pt", 12) == "runs/{x}/level12-12.pt"


# --- references of another architecture --------------------------------------------------------------------------

def fake_references(folder: Path, glyphs, **config) -> Path:
    """Untrained level-8 references of ``glyph-cnn(**config)`` that pass every check of ``--reference``: the
    split digest, level and half they declare, and the sample ids of the half each was 'trained' on."""
    split_set = resolve("glyphs", "v1")
    halves = level_halves(glyphs, split_set.level(LEVEL), split_set.digest)
    for fold in (0, 1):
        provenance = {"split_digest": split_set.digest, "level": LEVEL, "config": {"arch": "glyph-cnn", **config},
                      "reference": {"fold": fold, "folds": 2, "train_ids_sha256": _ids_digest(glyphs, halves[fold])}}
        save(create_model("glyph-cnn", seed=fold, **config), folder / checkpoint_name(LEVEL, fold),
             provenance=provenance)
    return folder


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_architecture_of_names_the_build_without_the_seed():
    from oodml.models import load_model

    assert architecture_of(load_model("glyph-cnn", embed_dim=8, seed=3)) == "glyph-cnn(embed_dim=8, width=16)"
    same, other = load_model("glyph-cnn", embed_dim=8, seed=4), load_model("glyph-cnn", embed_dim=16)
    assert architecture_warning(same, [load_model("glyph-cnn", embed_dim=8)]) is None
    assert "glyph-cnn(embed_dim=8, width=16) but glyph-cnn is glyph-cnn(embed_dim=16, width=16)" in \
        architecture_warning(other, [same])


def test_references_of_another_width_warn_once_and_still_report_the_gap(glyphs, tmp_path):
    refs = fake_references(tmp_path / "refs", glyphs, embed_dim=8, width=16)
    save(create_model("glyph-cnn", embed_dim=8, width=8, seed=1), tmp_path / "model.pt")
    with pytest.warns(UserWarning) as caught:
        results = evaluate(str(tmp_path / "model.pt"), glyphs, "v1", levels=[LEVEL], device="cpu",
                           clustering=False, reference=refs)
    messages = [str(w.message) for w in caught if "--reference" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "glyph-cnn(embed_dim=8, width=16)" in messages[0] and "glyph-cnn(embed_dim=8, width=8)" in messages[0]
    assert "the gap measures the difference of architecture as well as the shift" in messages[0]
    assert results.meta["reference"]["levels"][0]["queries"] == 132 * 32


def test_references_of_the_models_architecture_do_not_warn(glyphs, tmp_path):
    refs = fake_references(tmp_path / "refs", glyphs, embed_dim=8)
    save(create_model("glyph-cnn", embed_dim=8, seed=1), tmp_path / "level8.pt")   # another seed: same arch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(str(tmp_path / "level{level}.pt"), glyphs, "v1", levels=[LEVEL], device="cpu", clustering=False,
                 reference=refs)


def test_the_cli_prints_the_warning_on_one_line(glyphs, tmp_path):
    refs = fake_references(tmp_path / "refs", glyphs, embed_dim=8)
    save(create_model("glyph-cnn", embed_dim=16, seed=1), tmp_path / "level8.pt")
    code, lines = run("evaluate", str(tmp_path / "level{level}.pt"), "--dataset", "glyphs", "--splits", "v1",
                      "--levels", str(LEVEL), "--device", "cpu", "--no-clustering", "--reference", str(refs),
                      "--out", str(tmp_path / "run"))
    assert code == 0, lines
    warned = [line for line in lines if line.startswith("oodml: warning: --reference")]
    assert len(warned) == 1 and "embed_dim=16" in warned[0] and "--arch and --embed-dim" in warned[0]
