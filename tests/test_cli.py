"""The CLI as a user sees it: output of `datasets info`, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest
from fixtures import BUILDERS, adapter_of, build_cub

from oodml.cli import main


@pytest.mark.parametrize("fixture", sorted(BUILDERS))
def test_datasets_info_on_each_fixture(fixture, tmp_path, capsys):
    expected = BUILDERS[fixture](tmp_path)
    assert main(["-q", "datasets", "info", adapter_of(fixture), "--root", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == len(expected["classes"])
    assert summary["images"] == expected["images"]
    assert len(summary["fingerprint"]) == 64


def test_datasets_info_text(tmp_path, capsys):
    build_cub(tmp_path)
    assert main(["datasets", "info", "cub200", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "classes      3" in out and "images       9" in out and "official CUB_200_2011" in out


def test_datasets_info_glyphs_tallies_script_groups(glyphs, capsys):
    assert main(["-q", "datasets", "info", "glyphs"]) == 0
    out = capsys.readouterr().out
    assert "latin-upper 26" in out and "(classes)" in out


def test_datasets_list_and_version(capsys):
    assert main(["datasets", "list"]) == 0
    assert "cub200" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("oodml ")


def test_options_are_passed_to_the_adapter(tmp_path, capsys):
    from fixtures import build_sop

    build_sop(tmp_path)
    assert main(["-q", "datasets", "info", "sop", "--root", str(tmp_path), "-o", "subset=train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == 2


def test_verify_lists_every_corrupt_image(tmp_path, capsys):
    build_cub(tmp_path)
    images = sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))
    for victim in images[:2]:
        victim.write_bytes(b"not a jpeg")
    assert main(["-q", "datasets", "verify", "cub200", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert all(str(v) in err for v in images[:2])
    assert "2 of 9 images are unreadable" in err


@pytest.mark.parametrize("argv, message", [
    (["datasets", "info", "cub200", "--root", "{tmp}/missing"], "does not exist"),
    (["datasets", "info", "nosuch"], "unknown dataset 'nosuch'"),
    (["datasets", "info", "imagefolder", "--root", "{tmp}"], "no class directories"),
    (["datasets", "download", "imagefolder", "--root", "{tmp}"], "has no official download"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(argv, message, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "oodml", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oodml: error: ") and message in lines[0]


def _break_labels(base):
    p = base / "image_class_labels.txt"
    p.write_text(p.read_text().replace("\n4 2\n", "\n4 999\n"))


def _escape_path(base):
    p = base / "images.txt"
    p.write_text(p.read_text().replace("2 001.", "2 ../../001.", 1))


def _truncate_image(base):
    victim = sorted((base / "images").rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:50])


@pytest.mark.parametrize("damage, command, message", [
    (lambda b: (b / "classes.txt").unlink(), "info", "missing .*classes.txt"),
    (_break_labels, "info", "class id 999 is not in classes.txt"),
    (_escape_path, "info", "escapes the dataset root"),
    (_truncate_image, "verify", "cannot read image .*Black_footed_Albatross_0000.jpg"),
])
def test_cli_reports_each_bad_annotation(damage, command, message, tmp_path, capsys):
    import re

    build_cub(tmp_path)
    damage(tmp_path / "CUB_200_2011")
    assert main(["-q", "datasets", command, "cub200", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
