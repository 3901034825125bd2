"""`oodml datasets download`: fetch, checksum, unpack safely; offline and corrupt downloads fail clearly."""

import hashlib
import io
import tarfile

import pytest
from fixtures import build_cub

from oodml import OodmlError
from oodml.datasets import Download, download_dataset, load_dataset, register_dataset
from oodml.datasets import registry as registry_module
from oodml.datasets.cub200 import load_cub200


@pytest.fixture
def archive(tmp_path):
    """A CUB-layout tarball served from a file:// URL, and its md5."""
    src = tmp_path / "src"
    build_cub(src)
    path = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(path, "w:gz") as t:
        t.add(src / "CUB_200_2011", arcname="CUB_200_2011")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def register_fixture():
    added = []

    def add(name, *downloads):
        register_dataset(name, description="test", layout="CUB_200_2011/", downloads=downloads)(load_cub200)
        added.append(name)

    yield add
    for name in added:
        registry_module._REGISTRY.pop(name)


def test_download_verifies_and_unpacks(archive, register_fixture, tmp_path):
    path, md5 = archive
    register_fixture("cub-test", Download(path.as_uri(), "CUB_200_2011.tgz", md5))
    root = download_dataset("cub-test", tmp_path / "data")
    assert len(load_dataset("cub-test", root=root)) == 9
    download_dataset("cub-test", root)  # present and verified: no refetch, same result
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_checksum_mismatch_discards_the_file(archive, register_fixture, tmp_path):
    path, _ = archive
    register_fixture("cub-bad", Download(path.as_uri(), "CUB_200_2011.tgz", "0" * 32))
    with pytest.raises(OodmlError, match="has md5 .* expected 0000"):
        download_dataset("cub-bad", tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_offline_download_names_the_layout_to_create(register_fixture, tmp_path):
    register_fixture("cub-offline", Download("http://127.0.0.1:9/CUB_200_2011.tgz", "CUB_200_2011.tgz", "0" * 32))
    with pytest.raises(OodmlError, match=r"cannot download .*offline.*unpack it into .* so that it holds CUB_200_2"):
        download_dataset("cub-offline", tmp_path / "data", timeout=5)


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
