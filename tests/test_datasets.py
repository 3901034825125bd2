"""Each adapter loads its official layout; fingerprints are stable and sensitive; bad input is named."""

import shutil

import numpy as np
import pytest
from fixtures import BUILDERS, adapter_of, build_cars_official, build_cub, build_sop, write_jpeg
from PIL import Image

from oodml import OodmlError
from oodml.datasets import list_datasets, load_dataset


@pytest.fixture(params=sorted(BUILDERS))
def built(request, tmp_path):
    root = tmp_path / request.param
    root.mkdir()
    expected = BUILDERS[request.param](root)
    return adapter_of(request.param), root, expected


def test_registry_lists_every_adapter():
    assert {"cub200", "cars196", "sop", "imagefolder", "hf", "glyphs"} <= set(list_datasets())


def test_adapter_loads_counts_labels_and_classes(built):
    name, root, expected = built
    ds = load_dataset(name, root=root)
    assert len(ds) == expected["images"]
    assert ds.classes == expected["classes"]
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels).tolist() == [expected["per_class"]] * len(expected["classes"])
    image, label = ds[len(ds) - 1]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert label == len(expected["classes"]) - 1
    assert len(set(ds.sample_ids)) == len(ds)


def test_fingerprint_is_stable_across_loads_and_copies(built, tmp_path):
    name, root, _ = built
    first = load_dataset(name, root=root).fingerprint
    assert load_dataset(name, root=root).fingerprint == first
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert load_dataset(name, root=copy).fingerprint == first
    assert len(first) == 64


@pytest.mark.parametrize("fixture", sorted(set(BUILDERS) - {"hf"}))
def test_fingerprint_changes_when_a_file_changes(fixture, tmp_path):
    name, root = adapter_of(fixture), tmp_path
    BUILDERS[fixture](root)
    ds = load_dataset(name, root=root)
    before = ds.fingerprint
    write_jpeg(ds.path(0), seed=999, size=40)  # rewritten at another size
    assert load_dataset(name, root=root).fingerprint != before


def test_cub_accepts_the_inner_folder_with_the_same_ids(tmp_path):
    build_cub(tmp_path)
    outer = load_dataset("cub200", root=tmp_path)
    inner = load_dataset("cub200", root=tmp_path / "CUB_200_2011")
    assert outer.sample_ids == inner.sample_ids
    assert outer.sample_ids[0] == "001.Black_footed_Albatross/Black_footed_Albatross_0000.jpg"


def test_cars_class_names_agree_across_layouts(tmp_path):
    build_cars_official(tmp_path / "official")
    from fixtures import build_cars_folders

    build_cars_folders(tmp_path / "folders")
    official = load_dataset("cars196", root=tmp_path / "official")
    folders = load_dataset("cars196", root=tmp_path / "folders")
    assert sorted(official.classes) == sorted(folders.classes)
    assert "Ram C-V Cargo Van Minivan 2012" in official.classes
    assert official.sample_ids[0] == "car_ims/000001.jpg"


def test_sop_keeps_super_class_and_subsets(tmp_path):
    build_sop(tmp_path)
    ds = load_dataset("sop", root=tmp_path)
    assert ds.metadata["super_class"].tolist() == ["bicycle"] * 4 + ["chair"] * 4
    test = load_dataset("sop", root=tmp_path, subset="test")
    assert test.classes == ["11319", "11320"]
    with pytest.raises(OodmlError, match="unknown subset 'val'"):
        load_dataset("sop", root=tmp_path, subset="val")


def test_unknown_option_is_named(tmp_path):
    build_cub(tmp_path)
    with pytest.raises(OodmlError, match="unknown option.*colour.*accepted: follow_symlinks"):
        load_dataset("cub200", root=tmp_path, colour="red")


# --- bad input -------------------------------------------------------------------------

def test_missing_root_names_the_expected_layout(tmp_path):
    with pytest.raises(OodmlError, match=r"does not exist.*images\.txt"):
        load_dataset("cub200", root=tmp_path / "nowhere")


def test_missing_annotation_file_is_named(tmp_path):
    build_cub(tmp_path)
    (tmp_path / "CUB_200_2011" / "image_class_labels.txt").unlink()
    with pytest.raises(OodmlError, match="missing .*image_class_labels.txt"):
        load_dataset("cub200", root=tmp_path)


def test_label_naming_no_class(tmp_path):
    build_cub(tmp_path)
    labels = tmp_path / "CUB_200_2011" / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("\n4 2\n", "\n4 999\n"))
    with pytest.raises(OodmlError, match=r"image_class_labels.txt line 4: class id 999 is not in classes.txt"):
        load_dataset("cub200", root=tmp_path)


def test_sop_class_ids_must_be_integers(tmp_path):
    build_sop(tmp_path)
    info = tmp_path / "Stanford_Online_Products" / "Ebay_info.txt"
    lines = info.read_text().splitlines()
    lines[2] = lines[2].replace(" 1 1 ", " one 1 ", 1)
    info.write_text("\n".join(lines) + "\n")
    with pytest.raises(OodmlError, match=r"Ebay_info.txt line 3: class_id 'one' is not an integer"):
        load_dataset("sop", root=tmp_path)


@pytest.mark.parametrize("bad_path", ["../../etc/passwd", "/etc/passwd", "001.x/../../../secret.jpg"])
def test_sample_path_escaping_the_root_is_refused(tmp_path, bad_path):
    build_cub(tmp_path)
    images = tmp_path / "CUB_200_2011" / "images.txt"
    lines = images.read_text().splitlines()
    lines[1] = f"2 {bad_path}"
    images.write_text("\n".join(lines) + "\n")
    with pytest.raises(OodmlError, match=r"images.txt line 2: sample path .* escapes the dataset root"):
        load_dataset("cub200", root=tmp_path)


def test_cars_mat_path_escaping_the_root_is_refused(tmp_path):
    import scipy.io

    build_cars_official(tmp_path)
    mat = scipy.io.loadmat(tmp_path / "cars_annos.mat")
    mat["annotations"][0, 0]["relative_im_path"] = np.array(["../outside.jpg"])
    scipy.io.savemat(tmp_path / "cars_annos.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(OodmlError, match="annotation 1: sample path '../outside.jpg' escapes"):
        load_dataset("cars196", root=tmp_path)


def test_truncated_image_is_reported_by_path_and_not_dropped(tmp_path):
    build_cub(tmp_path)
    ds = load_dataset("cub200", root=tmp_path)
    victim = ds.path(2)
    victim.write_bytes(victim.read_bytes()[:60])
    with pytest.raises(OodmlError, match=f"cannot read image {victim}"):
        ds[2]
    problems = ds.verify_images()
    assert len(problems) == 1 and str(victim) in problems[0]
    assert len(load_dataset("cub200", root=tmp_path)) == len(ds)  # nothing silently dropped


def test_missing_image_file_is_named_by_the_fingerprint(tmp_path):
    build_cub(tmp_path)
    ds = load_dataset("cub200", root=tmp_path)
    ds.path(1).unlink()
    with pytest.raises(OodmlError, match=f"image file {ds.path(1)} is missing"):
        _ = ds.fingerprint

