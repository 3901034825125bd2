"""Hostile inputs: random bytes in manifests, annotations, pickles and model files give an OodmlError, nothing else."""

import shutil
from pathlib import Path

import pytest
from fixtures import build_cub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oodml import OodmlError
from oodml.datasets import load_dataset
from oodml.models import load_model
from oodml.splits import read_split_set
from oodml.splits.oodml_import import read_oodml_pickle

SPLITS = Path(__file__).resolve().parents[1] / "splits" / "glyphs" / "v1"
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(name=st.sampled_from(["levels.parquet", "classes.parquet", "episodes.parquet", "metadata.json",
                             "checksums.json"]),
       data=st.binary(max_size=2048), keep=st.integers(0, 4096))
def test_manifest_files_replaced_by_junk_or_truncated(tmp_path_factory, name, data, keep):
    copy = tmp_path_factory.mktemp("manifest") / "v1"
    shutil.copytree(SPLITS, copy)
    original = (copy / name).read_bytes()
    (copy / name).write_bytes(original[:keep] + data if keep < len(original) else data)
    if (copy / name).read_bytes() == original:
        return
    with pytest.raises(OodmlError):
        read_split_set(copy)


@FUZZ
@given(text=st.text(max_size=300), target=st.sampled_from(["images.txt", "image_class_labels.txt", "classes.txt"]))
def test_cub_annotations_replaced_by_junk(tmp_path_factory, text, target):
    root = tmp_path_factory.mktemp("cub")
    build_cub(root, per_class=1)
    (root / "CUB_200_2011" / target).write_text(text)
    try:
        ds = load_dataset("cub200", root=root)
    except OodmlError:
        return
    for sid in ds.sample_ids:  # whatever loaded must stay inside the root
        assert not sid.startswith("/") and ".." not in Path(sid).parts


@FUZZ
@given(data=st.binary(max_size=1024))
def test_random_bytes_as_an_oodml_pickle(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("pkl") / "splits.pkl"
    path.write_bytes(data)
    with pytest.raises(OodmlError):
        read_oodml_pickle(path)


@FUZZ
@given(data=st.binary(max_size=1024), suffix=st.sampled_from([".pt", ".pt2", ".pth"]))
def test_random_bytes_as_a_model_file(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("model") / f"model{suffix}"
    path.write_bytes(data)
    with pytest.raises(OodmlError):
        load_model(path)
