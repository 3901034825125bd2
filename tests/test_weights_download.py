"""Pretrained weights are downloaded once into the torch hub cache, hash-checked, atomically; offline says what to do.

Every test talks to a local HTTP server on 127.0.0.1 (or to a closed port) and a private TORCH_HOME.
"""

import contextlib
import hashlib
import io

import pytest
from fixtures import build_imagefolder
from local_server import closed_port_url

import oodml.progress
from oodml import OodmlError
from oodml.cli import main
from oodml.weights import RESNET50_FILE, URL_ENV, fetch_weights, published_hash_prefix, resnet50_weights_path

FAKE = b"not really weights, but bytes with a known sha256" * 100


def published_name(data: bytes, stem: str = "fake") -> str:
    """A torchvision-style file name carrying the sha256 prefix of ``data``."""
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """A private torch hub cache (TORCH_HOME); returns its checkpoints folder, where weights land."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(URL_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_the_hash_prefix_comes_from_the_file_name_as_in_torchvision():
    assert published_hash_prefix(RESNET50_FILE) == "0676ba61"
    with pytest.raises(ValueError, match="carries no sha256 prefix"):
        published_hash_prefix("resnet50.pth")


def test_a_good_file_is_fetched_once_then_served_from_the_cache(server, checkpoints, capsys, monkeypatch):
    monkeypatch.setattr(oodml.progress, "_quiet", False)  # as without --quiet: say what is fetched, and how much
    name = published_name(FAKE)
    server.files[f"/{name}"] = FAKE
    path = fetch_weights(name, owner="test", base_url=server.url)
    assert path == checkpoints / name and path.read_bytes() == FAKE
    shown = capsys.readouterr().err
    assert f"test: downloading {server.url}{name} to {path}\n" in shown
    assert f"download {name}: 4.79k B in " in shown and "\r" not in shown   # stderr is no terminal: one line
    assert fetch_weights(name, owner="test", base_url=server.url) == path
    assert server.requests == [f"/{name}"]              # the second call made no request
    assert sorted(p.name for p in checkpoints.iterdir()) == [name]


@pytest.mark.parametrize("fault, problem", [
    ("corrupted", "the file downloaded from {url} failed its sha256 check (expected d7acd6f8..., got "),
    ("truncated", "the download of {url} stopped after 2,450 of 4,900 bytes and was discarded; try again"),
])
def test_a_file_failing_its_hash_is_refused_and_nothing_is_left(server, checkpoints, fault, problem):
    name = published_name(FAKE)
    server.files[f"/{name}"] = FAKE.replace(b"weights", b"WEIGHTS") if fault == "corrupted" else FAKE
    if fault == "truncated":
        server.short.add(f"/{name}")                     # Content-Length says 4,900 bytes; 2,450 arrive
    with pytest.raises(OodmlError) as refused:
        fetch_weights(name, owner="test", base_url=server.url)
    message = str(refused.value)
    assert "\n" not in message
    assert f"test: {problem.format(url=server.url + name)}" in message
    assert f"put it at {checkpoints / name}, or name a local copy (--weights PATH" in message
    assert list(checkpoints.iterdir()) == []             # no file, no .partial


def test_offline_the_one_line_message_names_the_url_and_the_path(checkpoints):
    url = closed_port_url()
    with pytest.raises(OodmlError) as offline:
        resnet50_weights_path(None, base_url=url)
    message = str(offline.value)
    assert "\n" not in message
    assert message.startswith(f"resnet50: cannot download {url}{RESNET50_FILE} (")
    assert message.endswith(f"if this machine is offline, fetch it on a machine that can and put it at "
                            f"{checkpoints / RESNET50_FILE}, or name a local copy (--weights PATH for train and "
                            "make-splits, 'resnet50?weights=PATH' as a model)")
    assert not checkpoints.exists()                      # nothing created before the server answers


def test_a_mirror_without_the_file_names_the_http_status(server, checkpoints):
    with pytest.raises(OodmlError, match=rf"cannot download {server.url}{RESNET50_FILE} \(HTTP 404 Not Found\)"):
        resnet50_weights_path(None, base_url=server.url)


def test_the_environment_names_a_mirror(server, checkpoints, monkeypatch):
    name = published_name(FAKE)
    server.files[f"/mirror/{name}"] = FAKE
    monkeypatch.setenv(URL_ENV, f"{server.url}mirror")
    assert fetch_weights(name, owner="test").read_bytes() == FAKE
    assert server.requests == [f"/mirror/{name}"]


def test_a_weights_file_overrides_the_cache_and_is_never_downloaded(server, checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv(URL_ENV, server.url)
    mine = tmp_path / "mine.pth"
    mine.write_bytes(FAKE)
    assert resnet50_weights_path(str(mine)) == mine
    with pytest.raises(OodmlError, match=r"resnet50: weights file .*missing.pth does not exist"):
        resnet50_weights_path(str(tmp_path / "missing.pth"))
    assert server.requests == []


# --- the command line: one line, exit status 2, no traceback, nothing in the cache ----------------------------

def make_splits_error(tmp_path) -> str:
    """``oodml -q make-splits imagefolder --extractor resnet50`` on a small folder, expected to fail: its one line."""
    build_imagefolder(tmp_path / "images")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["-q", "make-splits", "imagefolder", "--root", str(tmp_path / "images"), "--extractor",
                     "resnet50", "--device", "cpu", "--out", str(tmp_path / "splits")])
    lines = err.getvalue().splitlines()
    assert code == 2 and len(lines) == 1, lines          # no traceback, no second line
    return lines[0]


def test_make_splits_offline_says_where_to_put_the_weights(checkpoints, tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv(URL_ENV, url)
    line = make_splits_error(tmp_path)
    assert line.startswith(f"oodml: error: resnet50: cannot download {url}{RESNET50_FILE} (")
    assert f"put it at {checkpoints / RESNET50_FILE}, or name a local copy (--weights PATH" in line
    assert not checkpoints.exists() and not (tmp_path / "splits").exists()


def test_make_splits_refuses_a_corrupted_download(server, checkpoints, tmp_path, monkeypatch):
    server.files[f"/{RESNET50_FILE}"] = FAKE             # its sha256 does not start with 0676ba61
    monkeypatch.setenv(URL_ENV, server.url)
    line = make_splits_error(tmp_path)
    assert "failed its sha256 check (expected 0676ba61..., got " in line
    assert server.requests == [f"/{RESNET50_FILE}"]
    assert list(checkpoints.iterdir()) == [] and not (tmp_path / "splits").exists()
