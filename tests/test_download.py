"""`oodml datasets download`: fetch over HTTP with a progress bar, checksum, write atomically, unpack safely;
offline, dropped and corrupt downloads fail in one line and leave nothing behind."""

import hashlib
import io
import tarfile

import pytest
from fixtures import build_cub
from local_server import closed_port_url

import oodml.progress
from oodml import OodmlError
from oodml.datasets import Download, download_dataset, load_dataset, register_dataset
from oodml.datasets import registry as registry_module
from oodml.datasets.cub200 import load_cub200


@pytest.fixture
def archive(tmp_path):
    """A CUB-layout tarball's bytes and md5."""
    src = tmp_path / "src"
    build_cub(src)
    path = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(path, "w:gz") as t:
        t.add(src / "CUB_200_2011", arcname="CUB_200_2011")
    return path.read_bytes(), hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def register_fixture():
    added = []

    def add(name, *downloads):
        register_dataset(name, description="test", layout="CUB_200_2011/", downloads=downloads)(load_cub200)
        added.append(name)

    yield add
    for name in added:
        del registry_module.DATASETS[name]


def test_download_verifies_and_unpacks_then_serves_from_disk(archive, server, register_fixture, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.setattr(oodml.progress, "_quiet", False)  # as without --quiet: a progress bar
    data, md5 = archive
    server.files["/CUB_200_2011.tgz"] = data
    register_fixture("cub-test", Download(f"{server.url}CUB_200_2011.tgz", "CUB_200_2011.tgz", md5))
    root = download_dataset("cub-test", tmp_path / "data")
    assert "download CUB_200_2011.tgz:" in capsys.readouterr().err
    assert len(load_dataset("cub-test", root=root)) == 9
    download_dataset("cub-test", root)  # present and verified: no refetch, same result
    assert server.requests == ["/CUB_200_2011.tgz"]
    assert (root / "CUB_200_2011.tgz").read_bytes() == data
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.parametrize("fault, message", [
    ("corrupted", r"the file downloaded from .* failed its md5 check \(expected 0{32}, got [0-9a-f]{32}\) and was "
                  "discarded; the transfer was corrupted or the server holds another file"),
    ("truncated", r"the download of http://127\.0\.0\.1:\d+/CUB_200_2011\.tgz stopped after [\d,]+ of [\d,]+ bytes "
                  "and was discarded; try again"),
])
def test_a_bad_download_is_refused_and_nothing_is_left(archive, server, register_fixture, tmp_path, fault,
                                                      message):
    data, md5 = archive
    server.files["/CUB_200_2011.tgz"] = data
    if fault == "truncated":
        server.short.add("/CUB_200_2011.tgz")  # announces the whole archive, sends half
    else:
        md5 = "0" * 32
    register_fixture("cub-bad", Download(f"{server.url}CUB_200_2011.tgz", "CUB_200_2011.tgz", md5))
    with pytest.raises(OodmlError, match=message) as refused:
        download_dataset("cub-bad", tmp_path / "data")
    assert "\n" not in str(refused.value)
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("reachable", [False, True], ids=["offline", "not-found"])
def test_a_failed_download_names_the_url_and_where_to_put_the_archive(server, register_fixture, tmp_path,
                                                                      reachable):
    url = f"{server.url if reachable else closed_port_url()}CUB_200_2011.tgz"
    register_fixture("cub-offline", Download(url, "CUB_200_2011.tgz", "0" * 32))
    with pytest.raises(OodmlError) as failed:
        download_dataset("cub-offline", tmp_path / "data", timeout=5)
    message = str(failed.value)
    reason = "HTTP 404 Not Found); " if reachable else "Connection refused); if this machine is offline, "
    assert message.startswith(f"cub-offline: cannot download {url} (") and reason in message
    assert message.endswith(f"fetch it elsewhere and put it at "
                            f"{tmp_path / 'data' / 'CUB_200_2011.tgz'} (then run this again), or unpack it into "
                            f"{tmp_path / 'data'} so that it holds CUB_200_2011/")
    assert list((tmp_path / "data").iterdir()) == []


def test_archive_members_escaping_the_root_are_refused(register_fixture, tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as t:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        t.addfile(info, io.BytesIO(b"bad"))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    register_fixture("evil", Download(path.as_uri(), "evil.tar", md5))
    with pytest.raises(OodmlError, match="would land outside the dataset root"):
        download_dataset("evil", tmp_path / "data")
    assert not (tmp_path / "escaped.txt").exists()


def test_datasets_without_download_say_so():
    with pytest.raises(OodmlError, match="imagefolder: has no official download"):
        download_dataset("imagefolder", "/tmp/unused")
