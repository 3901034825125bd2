"""The `hf` adapter as a benchmark source: every split of a save_to_disk copy, pinned revisions, one-line errors."""

import json
import shutil

import datasets
import pytest
from fixtures import build_hf

from oodml import OodmlError
from oodml.cli import main
from oodml.datasets import load_dataset
from oodml.splits import read_split_set

CLASSES = ["albatross", "gull", "tern", "wren"]  # make-splits needs at least 4 classes


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory):
    """A DatasetDict folder with splits train and test, 3 images of each of 4 classes in each."""
    root = tmp_path_factory.mktemp("hf") / "cub-like"
    build_hf(root, splits={"train": CLASSES, "test": CLASSES})
    return root


def cli_error(capsys, *argv):
    """The one stderr line of a failing `oodml` command (exit status 2)."""
    capsys.readouterr()
    assert main(["-q", *argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("oodml: error: hf: "), lines
    return lines[0]


def test_default_is_every_image_of_every_split_with_ids_from_the_original_split(two_splits):
    ds = load_dataset("hf", root=two_splits)
    assert len(ds) == 24 and ds.classes == CLASSES
    assert ds.sample_ids == [f"train/{i}" for i in range(12)] + [f"test/{i}" for i in range(12)]
    assert ds.source == {"hub_id": None, "revision": None, "split": "train+test"}
    assert ds.layout == "Hugging Face datasets (train+test)"
    both = load_dataset("hf", root=two_splits, split="train+test")
    assert both.sample_ids == ds.sample_ids and both.fingerprint == ds.fingerprint


def test_a_sample_keeps_its_id_and_image_whatever_the_selection(two_splits):
    both = load_dataset("hf", root=two_splits, split="train+test")
    test = load_dataset("hf", root=two_splits, split="test")
    tail = load_dataset("hf", root=two_splits, split="test[50%:]")
    assert tail.sample_ids == [f"test/{i}" for i in range(6, 12)]
    for ds in (test, tail):
        for k, sid in enumerate(ds.sample_ids):
            i = both.sample_ids.index(sid)
            assert ds[k][0].tobytes() == both[i][0].tobytes() and ds[k][1] == both[i][1]


def test_a_copy_of_the_folder_has_the_same_ids_and_fingerprint(two_splits, tmp_path):
    shutil.copytree(two_splits, tmp_path / "copy")
    original, copy = load_dataset("hf", root=two_splits), load_dataset("hf", root=tmp_path / "copy")
    assert copy.sample_ids == original.sample_ids and copy.fingerprint == original.fingerprint


def test_the_fingerprint_follows_the_split_selection(two_splits):
    fingerprints = {spec: load_dataset("hf", root=two_splits, split=spec).fingerprint
                    for spec in ("all", "train+test", "train", "test", "train[:50%]")}
    assert fingerprints["all"] == fingerprints["train+test"]
    assert len({fingerprints[s] for s in ("train+test", "train", "test", "train[:50%]")}) == 4


def test_the_fingerprint_follows_content(tmp_path):
    build_hf(tmp_path / "a")
    build_hf(tmp_path / "b", per_class=4)
    assert load_dataset("hf", root=tmp_path / "a").fingerprint != load_dataset("hf", root=tmp_path / "b").fingerprint


def test_a_single_saved_dataset_is_the_split_train(tmp_path):
    build_hf(tmp_path)
    ds = load_dataset("hf", root=tmp_path)
    assert ds.sample_ids[:2] == ["train/0", "train/1"] and ds.source["split"] == "train"
    assert len(load_dataset("hf", root=tmp_path, split="train")) == len(ds) == 6


def test_an_unknown_split_fails_in_one_line_naming_the_available_ones(two_splits, capsys):
    line = cli_error(capsys, "datasets", "info", "hf", "--root", str(two_splits), "-o", "split=train+valid")
    assert f"{two_splits} has no split 'valid'; splits: train, test (use -o split=NAME" in line


@pytest.mark.parametrize("spec, message", [
    ("train+train[:50%]", "takes rows of 'train' twice"),
    ("test[5:5]", "selects no rows"),
    ("train[", "cannot read the split selection 'train['"),
])
def test_a_bad_selection_fails_in_one_line(two_splits, capsys, spec, message):
    assert message in cli_error(capsys, "datasets", "info", "hf", "--root", str(two_splits), "-o", f"split={spec}")


def test_splits_whose_class_names_differ_fail_in_one_line(tmp_path, capsys):
    build_hf(tmp_path, splits={"train": CLASSES, "test": ["albatross", "tern", "gull", "wren"]})
    line = cli_error(capsys, "datasets", "info", "hf", "--root", str(tmp_path))
    assert "splits 'train' and 'test' of" in line
    assert "name their classes differently (label 1 is 'gull' in 'train' but 'tern' in 'test')" in line
    assert len(load_dataset("hf", root=tmp_path, split="test")) == 12   # each split alone is fine


def test_splits_whose_label_types_differ_fail_in_one_line(two_splits, tmp_path):
    data = datasets.load_from_disk(str(two_splits))
    data["test"] = data["test"].cast_column("label", datasets.Value("string"))
    data.save_to_disk(str(tmp_path / "mixed"))
    with pytest.raises(OodmlError, match=r"label column 'label' of .* is ClassLabel in split 'train' but "
                                         r"Value\('string'\) in 'test'"):
        load_dataset("hf", root=tmp_path / "mixed")


def test_a_hub_id_is_loaded_at_the_pinned_revision(two_splits, monkeypatch):
    calls = []

    def fake_hub(path, **kwargs):  # the hub cannot be reached here: serve the local copy
        calls.append((path, kwargs))
        return datasets.load_from_disk(str(two_splits))

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    ds = load_dataset("hf", root="someone/birds", revision="4f2e1c0", split="train")
    assert calls == [("someone/birds", {"revision": "4f2e1c0"})]
    assert ds.source == {"hub_id": "someone/birds", "revision": "4f2e1c0", "split": "train"}
    assert ds.sample_ids == load_dataset("hf", root=two_splits, split="train").sample_ids
    with pytest.warns(UserWarning, match="someone/birds is not pinned to a revision.*pass -o revision=COMMIT"):
        assert load_dataset("hf", root="someone/birds").source["revision"] is None


def test_a_local_folder_records_a_revision_as_a_label_without_changing_the_fingerprint(two_splits):
    labelled = load_dataset("hf", root=two_splits, revision=1234567)   # as `-o revision=1234567` parses
    assert labelled.source == {"hub_id": None, "revision": "1234567", "split": "train+test"}
    assert labelled.fingerprint == load_dataset("hf", root=two_splits).fingerprint
    with pytest.raises(OodmlError, match="revision must be a hub branch, tag or commit id, got 'a b'"):
        load_dataset("hf", root=two_splits, revision="a b")


def test_hub_id_offline_says_how_to_save_a_local_copy_at_the_revision():
    with pytest.raises(OodmlError, match=r"unreachable offline.*`datasets.load_dataset\('nobody/no-such-dataset', "
                                         r"revision='v2'\).save_to_disk\(DIR\)`.*--root DIR"):
        load_dataset("hf", root="nobody/no-such-dataset", revision="v2")


def test_unknown_columns_are_listed(tmp_path):
    build_hf(tmp_path)
    with pytest.raises(OodmlError, match="no column 'img'; columns: image, label"):
        load_dataset("hf", root=tmp_path, image_column="img")


def test_make_splits_from_train_and_test_records_the_selection_and_revision(two_splits, tmp_path, capsys):
    out = tmp_path / "splits"
    assert main(["-q", "make-splits", "hf", "--root", str(two_splits), "-o", "split=train+test", "-o",
                 "revision=4f2e1c0", "--extractor", "pixels", "--shots", "2", "--bootstrap", "0",
                 "--out", str(out)]) == 0
    metadata = json.loads((out / "hf" / "v1" / "metadata.json").read_text())
    assert metadata["dataset_source"] == {"hub_id": None, "revision": "4f2e1c0", "split": "train+test"}
    assert metadata["num_images"] == 24 and metadata["dataset_layout"] == "Hugging Face datasets (train+test)"
    ds = load_dataset("hf", root=two_splits, split="train+test")
    assert metadata["dataset_fingerprint"] == ds.fingerprint
    split_set = read_split_set(out / "hf" / "v1")
    support = {sid for lv in split_set.levels for ep in lv.episodes(2) for ids in ep.support.values() for sid in ids}
    assert support <= set(ds.sample_ids) and {s.split("/")[0] for s in support} == {"train", "test"}
