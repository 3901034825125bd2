"""Hostile and careless input at the command line: one line naming what is wrong and how to fix it, exit status 2,
no traceback, nothing half-written and no earlier results lost (issue 18).

Most commands here fail on purpose before loading a model or data (`no-such-model`, an unknown dataset or split
set), so that an argument that is wrongly accepted shows up as the wrong error message, cheaply.
"""

import math
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from cli_run import one_line_error, run
from fixtures import build_cub, build_imagefolder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oodml import OodmlError
from oodml.datasets import load_dataset
from oodml.evaluation import evaluate
from oodml.results import Results
from oodml.splits import read_split_set
from oodml.splits.selection import level_ranges, parse_levels
from oodml.training import TrainConfig

SPLITS = Path(__file__).resolve().parents[1] / "splits" / "glyphs" / "v1"
FUZZ = settings(max_examples=40, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def evaluate_argv(*extra: str, model: str = "no-such-model", splits: str = "v1") -> list[str]:
    return ["evaluate", model, "--dataset", "glyphs", "--splits", splits, *extra]


def train_argv(*extra: str) -> list[str]:
    return ["train", "--dataset", "no-such-dataset", "--out", "never-written", *extra]


@pytest.fixture(scope="module")
def split_set():
    return read_split_set(SPLITS)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_run(split_set, model: str = "glyph-cnn", recall: float = 0.5) -> Results:
    """Two levels of made-up zero-shot results, shaped as `oodml evaluate` saves them."""
    rows = [{"model": model, "model_digest": "0" * 64, "dataset": "glyphs", "split_digest": split_set.digest,
             "level": level, "distance": distance, "protocol": "zero-shot", "adaptation": "none", "shots": 0,
             "episode": -1, "metric": metric, "value": value}
            for level, distance in ((1, 0.1), (2, 0.2)) for metric, value in (("recall@1", recall), ("map@r", 0.3))]
    levels = [{"level": lv, "distance": d, "ci_low": math.nan, "ci_high": math.nan} for lv, d in ((1, 0.1), (2, 0.2))]
    meta = {"model": model, "dataset": "glyphs", "split_digest": split_set.digest, "splits": "glyphs@v1",
            "created_at": "2026-11-27T00:00:00+00:00"}
    return Results(rows, levels, meta)


# --- item 3: an error never destroys earlier results ------------------------------------------------------

def test_a_bad_metric_is_refused_before_the_earlier_run_is_touched(split_set, tmp_path):
    out = tmp_path / "run"
    tiny_run(split_set).save(out, metric="map@r")
    before = folder_bytes(out)
    line = one_line_error(*run(*evaluate_argv("--levels", "1", "--no-clustering", "--device", "cpu",
                                              "--metric", "nonsense", "--out", str(out), model="glyph-cnn")))
    assert "--metric 'nonsense'" in line and "choose one of recall@1" in line
    assert folder_bytes(out) == before


def test_a_failure_while_saving_leaves_the_folder_as_it_was(split_set, tmp_path):
    out = tmp_path / "run"
    tiny_run(split_set).save(out)
    before = folder_bytes(out)
    with pytest.raises(OodmlError, match="no zero-shot 'nonsense'"):
        tiny_run(split_set, recall=0.9).save(out, metric="nonsense")
    assert folder_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left beside it


def test_saving_the_same_run_again_replaces_all_of_its_files(split_set, tmp_path):
    out = tmp_path / "run"
    tiny_run(split_set).save(out, metric="map@r")
    written = tiny_run(split_set).save(out, metric="recall@1")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    assert not (out / "curve-map_at_r.png").exists()  # the earlier curve does not linger beside the new results


def test_another_models_run_is_replaced_only_with_overwrite(split_set, tmp_path):
    out = tmp_path / "run"
    tiny_run(split_set, model="resnet50").save(out)
    with pytest.raises(OodmlError, match=r"holds another run \(resnet50 on glyphs@v1\); pass --overwrite"):
        tiny_run(split_set).save(out)
    assert Results.from_parquet(out / "results.parquet").meta["model"] == "resnet50"
    tiny_run(split_set).save(out, overwrite=True)
    assert Results.from_parquet(out / "results.parquet").meta["model"] == "glyph-cnn"


def test_a_folder_holding_other_files_is_never_replaced(split_set, tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(OodmlError, match="holds files that no oodml evaluation wrote \\(e.g. 'notes.txt'\\)"):
        tiny_run(split_set).save(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "my notes"


# --- item 5: tracebacks become one-line errors ------------------------------------------------------------

def test_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    target = tmp_path / "results"
    target.write_text("not a folder")
    line = one_line_error(*run(*evaluate_argv("--levels", "1", "--no-clustering", "--device", "cpu",
                                              "--out", str(target), model="glyph-cnn")))
    assert f"--out {target} is a file" in line
    assert target.read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_out_where_nothing_can_be_created_is_refused_up_front():
    line = one_line_error(*run(*evaluate_argv("--out", "/proc/self/results")))
    assert "cannot write into /proc/self" in line and "choose another --out" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_out_folder_is_refused_up_front(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        line = one_line_error(*run(*evaluate_argv("--out", str(locked / "results"))))
    finally:
        locked.chmod(0o755)
    assert f"cannot write into {locked}" in line


def write_png_header(path: Path, width: int, height: int) -> None:
    """A PNG declaring ``width`` x ``height`` pixels but holding none: what a decompression bomb shows PIL first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30000, 10000])  # PIL raises above twice its pixel limit, warns above it
def test_datasets_verify_names_an_image_with_too_many_pixels(tmp_path, side):
    build_imagefolder(tmp_path)
    write_png_header(tmp_path / "cat" / "huge.png", side, side)
    code, lines = run("datasets", "verify", "imagefolder", "--root", str(tmp_path))
    assert code == 2 and not any("Traceback" in line or "warning" in line for line in lines), lines
    assert f"image {tmp_path / 'cat' / 'huge.png'} has more pixels than the 89,478,485 decoded safely" in lines[0]
    assert lines[-1] == "oodml: error: imagefolder: 1 of 10 images are unreadable (listed above)"


def test_make_splits_names_an_image_with_too_many_pixels(tmp_path):
    build_imagefolder(tmp_path / "data")
    write_png_header(tmp_path / "data" / "dog" / "huge.png", 30000, 30000)
    line = one_line_error(*run("make-splits", "imagefolder", "--root", str(tmp_path / "data"), "--extractor",
                               "pixels", "--device", "cpu", "--out", str(tmp_path / "splits")))
    assert "huge.png has more pixels than" in line
    assert not (tmp_path / "splits").exists()


@pytest.mark.parametrize("argv", [evaluate_argv("--batch-size", "0"), evaluate_argv("--batch-size", "-3"),
                                  train_argv("--batch-size", "0")], ids=["evaluate-0", "evaluate-neg", "train-0"])
def test_batch_size_below_one_is_a_usage_error(argv):
    line = one_line_error(*run(*argv))
    assert "argument --batch-size: expected a whole number of at least 1" in line


# --- item 6: silent misreadings are refused ---------------------------------------------------------------

@pytest.mark.parametrize("option, value", [
    ("--levels", "3-1"), ("--levels", "1,,2"), ("--episodes", "-1"), ("--episodes", "0"),
    ("--adapt-iterations", "-5"), ("--adapt-iterations", "0"), ("--workers", "-1"), ("--workers", "100000"),
    ("--shard-size", "0"),
    ("--fewshot", "0"), ("--fewshot", "2,-1"), ("--fewshot", ","),
])
def test_evaluate_refuses_nonsense_numbers(option, value):
    line = one_line_error(*run(*evaluate_argv(f"{option}={value}")))
    assert line.startswith(f"oodml: error: argument {option}: ") and repr(value) in line
    assert line.endswith("(see `oodml evaluate --help`)")


def test_a_reversed_level_range_says_how_to_write_it():
    line = one_line_error(*run(*evaluate_argv("--levels", "3-1")))
    assert "the range 3-1 runs backwards; write 1-3" in line


@pytest.mark.parametrize("option, value", [
    ("--iterations", "0"), ("--epochs", "0"), ("--epochs", "nan"), ("--lr", "-1e-3"), ("--lr", "inf"),
    ("--samples-per-class", "0"), ("--eval-every", "0"), ("--embed-dim", "0"), ("--workers", "-1"),
    ("--workers", "257"), ("--sec", "-1"), ("--l2-reg", "nan"), ("--seed", "-1"), ("--seed", str(2**64)),
    ("--level", "3-1"),
])
def test_train_refuses_nonsense_numbers(option, value):
    line = one_line_error(*run(*train_argv(f"{option}={value}")))
    assert line.startswith(f"oodml: error: argument {option}: ") and repr(value) in line
    assert line.endswith("(see `oodml train --help`)")


def test_level_ranges_are_not_expanded_and_are_bounded_by_the_split_set(split_set):
    assert level_ranges("1-999999999") == [(1, 999999999)]        # nothing allocated
    assert parse_levels("8, 1-2,2", split_set) == [8, 1, 2]       # order kept, repeats dropped
    with pytest.raises(OodmlError, match="glyphs@v1 has no level 20000000; its levels are 1-8"):
        parse_levels("1-20000000", split_set)
    line = one_line_error(*run(*evaluate_argv("--levels", "1-20000000")))
    assert "--levels '1-20000000': glyphs@v1 has no level 20000000" in line


@pytest.mark.parametrize("extra, message", [
    (("--fewshot", "3"), "level 1 has no 3-shot episodes; available: 2, 5, 10"),
    (("--fewshot", "2", "--episodes", "11"), "level 1 has 10 2-shot episodes; ask for at most 10"),
    (("--metric", "nmi", "--no-clustering"), "--metric 'nmi' is not a metric of this run; drop --no-clustering"),
])
def test_requests_the_split_set_cannot_honour_are_refused_before_the_model_is_loaded(extra, message):
    assert message in one_line_error(*run(*evaluate_argv(*extra)))


@pytest.mark.parametrize("device, available", [
    ("cuda", torch.cuda.is_available()),
    ("mps", getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()),
])
def test_an_unavailable_device_is_refused_before_anything_else(device, available):
    if available:
        pytest.skip(f"{device} is available here")
    line = one_line_error(*run(*evaluate_argv("--device", device)))
    assert f"device '{device}' requested but" in line and "use --device cpu" in line


def test_the_python_api_refuses_the_same_nonsense(split_set):
    with pytest.raises(OodmlError, match="episodes=-1: must be a whole number of at least 1"):
        evaluate("glyph-cnn", "glyphs", split_set, episodes=-1, fewshot=(2,))
    with pytest.raises(OodmlError, match="batch_size=0"):
        evaluate("glyph-cnn", "glyphs", split_set, batch_size=0)
    with pytest.raises(OodmlError, match="iterations=0: must be a whole number of at least 1"):
        TrainConfig(iterations=0).resolved()
    with pytest.raises(OodmlError, match="lr=nan: must be a finite number above 0"):
        TrainConfig(lr=float("nan")).resolved()


# --- item 7: symbolic links out of a dataset root ---------------------------------------------------------

def test_a_class_folder_linked_from_outside_the_root_is_refused(tmp_path):
    build_imagefolder(tmp_path / "data")
    build_imagefolder(tmp_path / "elsewhere")
    (tmp_path / "data" / "lion").symlink_to(tmp_path / "elsewhere" / "cat", target_is_directory=True)
    with pytest.raises(OodmlError, match=f"{tmp_path / 'data' / 'lion'} is a symbolic link to "
                                         f"{tmp_path / 'elsewhere' / 'cat'}, outside the dataset root .*"
                                         "-o follow_symlinks=true"):
        load_dataset("imagefolder", root=tmp_path / "data")
    assert "lion" in load_dataset("imagefolder", root=tmp_path / "data", follow_symlinks=True).classes


def test_an_image_linked_from_outside_the_root_is_refused_but_links_inside_are_fine(tmp_path):
    build_imagefolder(tmp_path / "data")
    (tmp_path / "data" / "dog" / "img9.jpg").symlink_to(tmp_path / "data" / "cat" / "img0.jpg")
    assert len(load_dataset("imagefolder", root=tmp_path / "data")) == 10
    (tmp_path / "secret.jpg").write_bytes((tmp_path / "data" / "cat" / "img0.jpg").read_bytes())
    (tmp_path / "data" / "cat" / "img8.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(OodmlError, match=f"{tmp_path / 'data' / 'cat' / 'img8.jpg'} is a symbolic link to "
                                         f"{tmp_path / 'secret.jpg'}"):
        load_dataset("imagefolder", root=tmp_path / "data")


def test_annotation_adapters_refuse_links_out_of_the_root_too(tmp_path):
    build_cub(tmp_path / "data")
    images = tmp_path / "data" / "CUB_200_2011" / "images"
    moved = tmp_path / "elsewhere"
    (images / "002.Laysan_Albatross").rename(moved)
    (images / "002.Laysan_Albatross").symlink_to(moved, target_is_directory=True)
    with pytest.raises(OodmlError, match="002.Laysan_Albatross is a symbolic link to .*elsewhere, outside"):
        load_dataset("cub200", root=tmp_path / "data")


def test_the_cli_refuses_links_out_of_the_root_unless_asked_to_follow_them(tmp_path):
    build_imagefolder(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "cat" / "away.jpg").symlink_to((tmp_path / "data" / "cat" / "img0.jpg").rename(
        tmp_path / "elsewhere" / "img0.jpg"))
    line = one_line_error(*run("datasets", "info", "imagefolder", "--root", str(tmp_path / "data")))
    assert "away.jpg is a symbolic link to" in line
    assert run("datasets", "info", "imagefolder", "--root", str(tmp_path / "data"),
               "-o", "follow_symlinks=true")[0] == 0
    line = one_line_error(*run("datasets", "info", "imagefolder", "--root", str(tmp_path / "data"),
                               "-o", "follow_symlinks=maybe"))
    assert "follow_symlinks must be true or false, got 'maybe'" in line


# --- fuzzing the argument edge ----------------------------------------------------------------------------

VALUES = st.one_of(st.text(max_size=12), st.integers(-10**12, 10**12).map(str),
                   st.from_regex(r"\A[0-9 ,-]{1,10}\Z"), st.sampled_from(["all", "nan", "inf", "1e3", "0x10", "٣"]))


@FUZZ
@given(option=st.sampled_from(["--levels", "--fewshot", "--episodes", "--batch-size", "--adapt-iterations",
                               "--workers", "--shard-size"]), value=VALUES)
def test_fuzzed_evaluate_arguments_give_one_line_and_write_nothing(tmp_path, option, value):
    out = tmp_path / "never"
    one_line_error(*run(*evaluate_argv(f"{option}={value}", "--out", str(out), splits="no-such-version")))
    assert not out.exists()


@FUZZ
@given(option=st.sampled_from(["--level", "--iterations", "--epochs", "--batch-size", "--samples-per-class",
                               "--eval-every", "--lr", "--embed-dim", "--seed", "--workers", "--sec"]), value=VALUES)
def test_fuzzed_train_arguments_give_one_line(option, value):
    one_line_error(*run(*train_argv(f"{option}={value}")))
