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
# verifying an entry rescores all its levels: fewer examples keep the suite's budget
FUZZ_ENTRY = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                max_size=4), max_leaves=12)


@FUZZ
@given(field=st.sampled_from(["schema_version", "entry", "protocol", "adaptations", "fewshot", "embedding_dim",
                              "files", "claimed", "seeds", "split_digest", "model_digests", "authors", "extra"]),
       value=JSON)
def test_submission_json_with_junk_fields(leaderboard_entry, tmp_path_factory, field, value):
    """Any value in any field gives problems or a valid entry, never an exception; unsafe file names never load."""
    import json

    from oodml.leaderboard import read_submission, verify

    copy = tmp_path_factory.mktemp("entry") / "submissions" / "glyphs" / "v1" / "tiny"
    shutil.copytree(leaderboard_entry, copy)
    meta = json.loads((copy / "submission.json").read_text())
    meta[field] = value
    (copy / "submission.json").write_text(json.dumps(meta))
    sub, problems = read_submission(copy)
    assert (sub is None) == bool(problems)
    if field in ("claimed", "seeds") and isinstance(value, dict):
        verify(copy)                                  # content checks run; only claims can disagree


@FUZZ_ENTRY
@given(data=st.binary(max_size=4096), keep=st.integers(0, 20000),
       name=st.sampled_from(["submission.json", "embeddings/level1.parquet"]))
def test_submission_files_replaced_by_junk_or_truncated(leaderboard_entry, tmp_path_factory, data, keep, name):
    import json

    from oodml.leaderboard import verify
    from oodml.leaderboard.submission import file_record

    copy = tmp_path_factory.mktemp("entry") / "submissions" / "glyphs" / "v1" / "tiny"
    shutil.copytree(leaderboard_entry, copy)
    original = (copy / name).read_bytes()
    (copy / name).write_bytes(original[:keep] + data)
    if name != "submission.json":                     # a cheat who also fixes the hash
        meta = json.loads((copy / "submission.json").read_text())
        meta["files"][name] = file_record(copy / name)
        (copy / "submission.json").write_text(json.dumps(meta))
    if (copy / name).read_bytes() == original:
        return
    result = verify(copy)
    assert not result.ok and all(isinstance(p, str) and "\n" not in p for p in result.problems)


@FUZZ
@given(ids=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=20))
def test_hostile_sample_ids_are_named_never_opened(tmp_path_factory, ids):
    """Sample ids like ../../etc/passwd are compared as strings only, and every mismatch is named."""
    import numpy as np

    from oodml.embedding import read_embedding_table, write_embedding_table
    from oodml.leaderboard.verify import _id_problems

    path = tmp_path_factory.mktemp("ids") / "level1.parquet"
    write_embedding_table(path, ids, np.zeros((len(ids), 4)), dtype=np.float16)
    read_ids, _ = read_embedding_table(path)
    assert read_ids == ids
    expected = ["U+0041/DejaVuSans-0.png", "U+0041/DejaVuSans-1.png"]
    problems = _id_problems(path, read_ids, expected)
    assert bool(problems) == (sorted(ids) != sorted(expected))
    assert all("\n" not in p for p in problems)


def png_header(width: int, height: int) -> bytes:
    """The signature and IHDR chunk of a greyscale PNG declaring ``width`` x ``height`` pixels."""
    import struct
    import zlib

    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


@FUZZ
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1), tail=st.binary(max_size=512),
       raw=st.booleans(), data=st.binary(max_size=512))
def test_image_files_with_junk_or_absurd_headers(tmp_path_factory, width, height, tail, raw, data):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for k in range(2):
        (root / f"c{k}").mkdir()
        Image.new("L", (4, 4), 255 * k).save(root / f"c{k}" / "ok.png")
    (root / "c0" / "bad.png").write_bytes(data if raw else png_header(width, height) + tail)
    ds = load_dataset("imagefolder", root=root)
    for i in range(len(ds)):
        try:
            image = ds.load_image(i)
        except OodmlError as exc:  # the image edge: a one-line error naming the file, nothing else
            assert "\n" not in str(exc) and ds.sample_ids[i] in str(exc)
        else:
            assert image.mode == "RGB"
