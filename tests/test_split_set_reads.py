"""A split set read again in one process is hashed once (every evaluate, verify and board build reads one), and
what makes a read fail still makes it fail: the files are checked every time, the remembered digest is that of
exactly those bytes."""

import json

import pytest

from oodml import OodmlError
from oodml._fs import file_digest
from oodml.splits import Episode, Level, manifest, read_split_set, write_split_set


@pytest.fixture
def published(tmp_path):
    support = {c: (f"{c}/img0.png", f"{c}/img1.png") for c in ("c2", "c3")}
    levels = tuple(Level(k, float(k), k - 0.1, k + 0.1, "swap", ("c0", "c1"), ("c2", "c3"), ("c1",), 20, 20,
                         {2: (Episode(2, 0, support),)}) for k in (1, 2))
    write_split_set(tmp_path, "toy", "v1", levels, {"created_at": "2026-01-01T00:00:00+00:00"})
    return tmp_path / "toy" / "v1"


@pytest.fixture
def hashed(monkeypatch) -> list:
    """The content digests computed from now on (one entry per computation)."""
    calls, real = [], manifest.content_digest
    monkeypatch.setattr(manifest, "content_digest", lambda *args: calls.append(args) or real(*args))
    return calls


def rewrite_checksums(path, **changes) -> None:
    sums = json.loads((path / "checksums.json").read_text())
    sums.update(changes)
    (path / "checksums.json").write_text(json.dumps(sums))


def test_the_same_files_read_again_are_not_hashed_again(published, hashed):
    first = read_split_set(published)
    again = read_split_set(published)
    assert again.digest == first.digest and len(hashed) <= 1       # none when an earlier test read these bytes


def test_a_wrong_recorded_digest_is_refused_however_often_the_files_were_read(published, hashed):
    digest = read_split_set(published).digest
    rewrite_checksums(published, digest="0" * 64)
    for _ in range(2):
        with pytest.raises(OodmlError, match="content digest .* does not match the recorded 000000000000"):
            read_split_set(published)
    rewrite_checksums(published, digest=digest)
    assert read_split_set(published).digest == digest


def test_changed_bytes_with_matching_file_sums_are_hashed_anew_and_refused(published, hashed):
    read_split_set(published)
    before = len(hashed)
    metadata = json.loads((published / "metadata.json").read_text())
    (published / "metadata.json").write_text(json.dumps({**metadata, "note": "changed"}))
    sums = json.loads((published / "checksums.json").read_text())["files"]
    rewrite_checksums(published, files={**sums, "metadata.json": file_digest(published / "metadata.json")})
    with pytest.raises(OodmlError, match="content digest .* does not match the recorded"):
        read_split_set(published)
    assert len(hashed) == before + 1


def test_a_tampered_file_is_caught_before_any_remembered_digest(published):
    read_split_set(published)
    (published / "levels.parquet").write_bytes(b"junk")
    with pytest.raises(OodmlError, match="levels.parquet does not match its sha256"):
        read_split_set(published)
