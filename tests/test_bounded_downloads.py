"""Downloads wait a bounded time and leave nothing behind: a server that stops sending, or never answers, ends
the run within $OODML_DOWNLOAD_TIMEOUT seconds in one line; a bad URL scheme, a bad timeout value and Ctrl-C
leave no file and no ``.partial``.  Weights and dataset archives share one download routine (oodml.download).

Every test talks to a local HTTP server on 127.0.0.1 that the test starts (tests/local_server.py).
"""

import contextlib
import hashlib
import io
import threading
import time
from pathlib import Path

import pytest
from fixtures import build_imagefolder
from local_server import closed_port_url

import oodml.download
import oodml.progress
from oodml import OodmlError
from oodml.cli import main
from oodml.datasets import Download, download_dataset, register_dataset
from oodml.datasets import registry as registry_module
from oodml.datasets.cub200 import load_cub200
from oodml.download import TIMEOUT_ENV, download_timeout
from oodml.weights import RESNET50_FILE, URL_ENV, fetch_weights

WEIGHTS = b"sixteen bytes.. " * 1024                     # 16 KiB: the stalling server sends the first 1 KiB
WEIGHTS_FILE = f"fake-{hashlib.sha256(WEIGHTS).hexdigest()[:8]}.pth"
ARCHIVE_MD5 = hashlib.md5(WEIGHTS).hexdigest()


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """A private torch hub cache; returns its checkpoints folder.  Downloads give up after 1 s without bytes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def dataset_at(monkeypatch):
    """Register a CUB-layout dataset whose one archive is at the given URL; returns its name."""
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    added = []

    def register(url: str) -> str:
        name = f"cub-at-{len(added)}"
        register_dataset(name, description="test", layout="CUB_200_2011/",
                         downloads=(Download(url, "archive.tgz", ARCHIVE_MD5),))(load_cub200)
        added.append(name)
        return name

    yield register
    for name in added:
        del registry_module.DATASETS[name]


def leftovers(folder: Path) -> list[str]:
    """The names of whatever is in ``folder`` (nothing when it was never created)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def cli_error(args: list[str]) -> tuple[int, list[str]]:
    """``oodml -q <args>``: its exit status and the lines it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["-q", *args])
    return code, err.getvalue().splitlines()


# --- a server that stops sending, or never answers ---------------------------------------------------------------

def test_weights_from_a_server_that_stalls_after_1_kib_fail_within_the_timeout(server, checkpoints):
    server.files[f"/{WEIGHTS_FILE}"] = WEIGHTS
    server.stalled.add(f"/{WEIGHTS_FILE}")
    start = time.monotonic()
    with pytest.raises(OodmlError) as stalled:
        fetch_weights(WEIGHTS_FILE, owner="test", base_url=server.url)
    assert time.monotonic() - start < 10                 # 1 s without bytes; before, it waited for the server
    message = str(stalled.value)
    assert "\n" not in message
    assert message.startswith(f"test: the download of {server.url}{WEIGHTS_FILE} stalled after 1,024 bytes "
                              f"(nothing for 1 s, the limit {TIMEOUT_ENV} sets) and was discarded; try again, "
                              f"raise {TIMEOUT_ENV}, or fetch it on a machine that can and put it at ")
    assert leftovers(checkpoints) == []                  # no file, no .partial


def test_a_dataset_archive_from_a_server_that_stalls_fails_within_the_timeout(server, dataset_at, tmp_path):
    server.files["/archive.tgz"] = WEIGHTS
    server.stalled.add("/archive.tgz")
    name = dataset_at(f"{server.url}archive.tgz")
    start = time.monotonic()
    with pytest.raises(OodmlError, match=rf"^{name}: the download of {server.url}archive.tgz stalled after 1,024 "
                                         rf"bytes \(nothing for 1 s, the limit {TIMEOUT_ENV} sets\)"):
        download_dataset(name, tmp_path / "data")
    assert time.monotonic() - start < 10
    assert leftovers(tmp_path / "data") == []


def test_a_server_that_never_answers_fails_within_the_timeout(server, checkpoints):
    server.silent.add(f"/{WEIGHTS_FILE}")
    start = time.monotonic()
    with pytest.raises(OodmlError) as silent:
        fetch_weights(WEIGHTS_FILE, owner="test", base_url=server.url)
    assert time.monotonic() - start < 10
    assert str(silent.value).startswith(f"test: cannot download {server.url}{WEIGHTS_FILE} (no answer within 1 s, "
                                        f"the limit {TIMEOUT_ENV} sets); try again, raise {TIMEOUT_ENV}, or ")
    assert leftovers(checkpoints) == []


def test_the_cli_ends_a_stalled_weights_download_with_exit_status_2(server, checkpoints, tmp_path, monkeypatch):
    server.files[f"/{RESNET50_FILE}"] = WEIGHTS
    server.stalled.add(f"/{RESNET50_FILE}")
    monkeypatch.setenv(URL_ENV, server.url)
    build_imagefolder(tmp_path / "images")
    code, lines = cli_error(["make-splits", "imagefolder", "--root", str(tmp_path / "images"), "--extractor",
                             "resnet50", "--device", "cpu", "--out", str(tmp_path / "splits")])
    assert code == 2 and len(lines) == 1, lines          # no traceback
    assert lines[0].startswith(f"oodml: error: resnet50: the download of {server.url}{RESNET50_FILE} stalled after "
                               f"1,024 bytes (nothing for 1 s, the limit {TIMEOUT_ENV} sets)")
    assert leftovers(checkpoints) == [] and not (tmp_path / "splits").exists()


def test_the_cli_ends_a_stalled_dataset_download_with_exit_status_2(server, dataset_at, tmp_path):
    server.files["/archive.tgz"] = WEIGHTS
    server.stalled.add("/archive.tgz")
    name = dataset_at(f"{server.url}archive.tgz")
    code, lines = cli_error(["datasets", "download", name, "--root", str(tmp_path / "data")])
    assert code == 2 and len(lines) == 1, lines
    assert f"{name}: the download of {server.url}archive.tgz stalled after 1,024 bytes (nothing for 1 s" in lines[0]
    assert leftovers(tmp_path / "data") == []


# --- URLs that cannot be fetched --------------------------------------------------------------------------------

@pytest.mark.parametrize("base, problem", [
    ("ftp://127.0.0.1:9/models", "'ftp' URL scheme; use one of http://, https://, file://"),
    ("nonsense", "no URL scheme; use one of http://, https://, file://"),
    ("file:///nowhere/at/all", "No such file or directory"),
])
def test_a_url_that_cannot_be_fetched_leaves_nothing(checkpoints, base, problem, monkeypatch):
    monkeypatch.setenv(URL_ENV, base)
    with pytest.raises(OodmlError) as refused:
        fetch_weights(WEIGHTS_FILE, owner="test")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("test: cannot download ") and problem in message
    assert leftovers(checkpoints) == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:9/archive.tgz", "nonsense", "file:///nowhere/archive.tgz"])
def test_a_dataset_url_that_cannot_be_fetched_leaves_nothing(dataset_at, tmp_path, url):
    name = dataset_at(url)
    code, lines = cli_error(["datasets", "download", name, "--root", str(tmp_path / "data")])
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"oodml: error: {name}: cannot download "), lines
    assert leftovers(tmp_path / "data") == []


def test_a_file_url_still_downloads(tmp_path, checkpoints, monkeypatch):
    """``file:`` stays allowed (a mirror on a shared filesystem), through the same checks."""
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / WEIGHTS_FILE).write_bytes(WEIGHTS)
    monkeypatch.setenv(URL_ENV, (tmp_path / "mirror").as_uri())
    assert fetch_weights(WEIGHTS_FILE, owner="test").read_bytes() == WEIGHTS
    assert leftovers(checkpoints) == [WEIGHTS_FILE]


# --- the timeout's value ---------------------------------------------------------------------------------------

def test_the_timeout_defaults_to_60_seconds_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert download_timeout() == 60.0
    monkeypatch.setenv(TIMEOUT_ENV, " 2.5 ")
    assert download_timeout() == 2.5


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf", "1e999", "60s"])
def test_a_bad_timeout_value_is_one_line_before_any_request(server, checkpoints, tmp_path, monkeypatch, value):
    server.files[f"/{RESNET50_FILE}"] = WEIGHTS
    monkeypatch.setenv(URL_ENV, server.url)
    monkeypatch.setenv(TIMEOUT_ENV, value)
    build_imagefolder(tmp_path / "images")
    code, lines = cli_error(["make-splits", "imagefolder", "--root", str(tmp_path / "images"), "--extractor",
                             "resnet50", "--device", "cpu", "--out", str(tmp_path / "splits")])
    assert code == 2 and lines == [f"oodml: error: {TIMEOUT_ENV} must be a positive number of seconds (default 60), "
                                   f"got {value!r}; set it to e.g. 120, or unset it"]
    assert server.requests == [] and leftovers(checkpoints) == []


def test_a_bad_timeout_value_stops_a_dataset_download_before_any_request(server, dataset_at, tmp_path,
                                                                         monkeypatch):
    name = dataset_at(f"{server.url}archive.tgz")
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(OodmlError, match=f"^{TIMEOUT_ENV} must be a positive number of seconds"):
        download_dataset(name, tmp_path / "data")
    assert server.requests == [] and not (tmp_path / "data").exists()


# --- interrupted, and two at once -----------------------------------------------------------------------------

def test_ctrl_c_midway_removes_the_partial_file(server, checkpoints, monkeypatch):
    """Ctrl-C while the bytes arrive: the interrupt propagates, and the partial file it interrupted is gone."""
    server.files[f"/{WEIGHTS_FILE}"] = WEIGHTS
    seen = []

    def interrupted(stage, n=1):
        seen.extend(p.name for p in checkpoints.glob("*.partial"))
        raise KeyboardInterrupt

    monkeypatch.setattr(oodml.progress.Stage, "update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_weights(WEIGHTS_FILE, owner="test", base_url=server.url)
    assert len(seen) == 1 and seen[0].startswith(f"{WEIGHTS_FILE}.")   # it was there, midway
    assert leftovers(checkpoints) == []


def test_two_downloads_of_one_file_at_once_give_one_verified_file(server, checkpoints):
    server.files[f"/{WEIGHTS_FILE}"] = WEIGHTS
    results, errors = [], []

    def fetch() -> None:
        try:
            results.append(fetch_weights(WEIGHTS_FILE, owner="test", base_url=server.url))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 2
    assert leftovers(checkpoints) == [WEIGHTS_FILE] and (checkpoints / WEIGHTS_FILE).read_bytes() == WEIGHTS


def test_an_unreachable_server_is_still_the_offline_message(checkpoints):
    url = closed_port_url()
    with pytest.raises(OodmlError, match=rf"cannot download {url}{WEIGHTS_FILE} \(.*Connection refused\); if this "
                                         "machine is offline, fetch it on a machine that can"):
        fetch_weights(WEIGHTS_FILE, owner="test", base_url=url)
    assert leftovers(checkpoints) == []
