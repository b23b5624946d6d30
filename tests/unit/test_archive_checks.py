"""The archive check against its manifest, on files in a temporary folder (no services)."""
from __future__ import annotations

import hashlib

import pytest

from bigskies_ops.archives.catalog import write_manifest
from bigskies_ops.archives.integrity import check_against_manifest
from bigskies_ops.errors import ArchiveError
from bigskies_ops.hosts.local import LocalRunner


def _archive(tmp_path, data: bytes, **manifest):
    path = str(tmp_path / "bigskies_20261203T120000Z_manual.sql.gz")
    with open(path, "wb") as f:
        f.write(data)
    write_manifest(LocalRunner(), path, {"status": "DONE", "bytes": len(data),
                                         "sha256": hashlib.sha256(data).hexdigest(), **manifest})
    return path


def test_a_file_matching_its_manifest_passes_and_returns_it(tmp_path):
    path = _archive(tmp_path, b"archive bytes")
    assert check_against_manifest(LocalRunner(), path)["bytes"] == 13


def test_no_manifest_is_none(tmp_path):
    p = tmp_path / "x.sql.gz"
    p.write_bytes(b"x")
    assert check_against_manifest(LocalRunner(), str(p)) is None


@pytest.mark.parametrize("change, message", [
    (lambda p: open(p, "ab").write(b"!"), "differs from the manifest's"),
    (lambda p: open(p, "r+b").write(b"X"), "sha256 differs"),
])
def test_a_changed_file_is_refused(tmp_path, change, message):
    path = _archive(tmp_path, b"archive bytes")
    change(path)
    with pytest.raises(ArchiveError, match=message):
        check_against_manifest(LocalRunner(), path)


def test_an_unfinished_backup_is_refused(tmp_path):
    path = _archive(tmp_path, b"half", status="FAILED", error="disk full")
    with pytest.raises(ArchiveError, match="FAILED .disk full."):
        check_against_manifest(LocalRunner(), path)


def test_an_archive_that_cannot_be_read_is_a_failed_check_not_another_error(tmp_path):
    """db.verify records an ArchiveError as a failed check and goes on with the next
    backup; any other error would end the whole run."""
    path = _archive(tmp_path, b"archive bytes")
    import os
    os.remove(path)
    os.mkdir(path)  # in the archive's place: reading it fails (EISDIR), even as root
    with pytest.raises(ArchiveError, match="cannot be read"):
        check_against_manifest(LocalRunner(), path)


@pytest.mark.parametrize("change, at_once, message", [
    (None, None, None),
    (lambda p: open(p, "ab").write(b"!"), True, "differs from the manifest's"),  # size: a stat, checked at once
    (lambda p: open(p, "r+b").write(b"X"), False, "sha256 differs"),  # same size: only the digest tells
])
def test_a_deferred_digest_is_compared_when_confirmed(tmp_path, change, at_once, message):
    """db.restore reads the sha256 beside its other checks (issue 21): the size is still
    checked before check_against_manifest returns, the digest when it is confirmed."""
    path = _archive(tmp_path, b"archive bytes" * 100_000)
    if change:
        change(path)
    pending: list = []
    if at_once:
        with pytest.raises(ArchiveError, match=message):
            check_against_manifest(LocalRunner(), path, deferred=pending)
        assert pending == []
        return
    assert check_against_manifest(LocalRunner(), path, deferred=pending)["bytes"] == 1_300_000
    (digest,) = pending
    if message is None:
        digest.result()
    else:
        with pytest.raises(ArchiveError, match=message):
            digest.result()


def test_a_deferred_digest_of_an_unreadable_archive_is_a_failed_check(tmp_path):
    """A folder in the archive's place, with the folder's size in the manifest: the size
    check passes, the deferred read fails (EISDIR, even as root) as a failed check."""
    import os
    path = str(tmp_path / "bigskies_20261203T120000Z_manual.sql.gz")
    os.mkdir(path)
    write_manifest(LocalRunner(), path, {"status": "DONE", "bytes": os.stat(path).st_size, "sha256": "0" * 64})
    pending: list = []
    check_against_manifest(LocalRunner(), path, deferred=pending)
    with pytest.raises(ArchiveError, match="cannot be read"):
        pending[0].result()


def test_an_archive_replaced_or_written_to_after_its_check_is_not_the_one_checked(tmp_path):
    """db.restore hashes the file, then its loader opens the path again: a file renamed
    over it or written to in between is refused before the swap (helper-39)."""
    import os

    from bigskies_ops.archives.integrity import ArchiveInfo
    path = _archive(tmp_path, b"archive bytes")

    def checked():
        st = os.stat(path)
        return ArchiveInfo(path, "plain", None, None, None, checked_stat=(st.st_ino, st.st_size, st.st_mtime_ns))
    info = checked()
    info.confirm_unchanged()
    other = tmp_path / "other"
    other.write_bytes(b"archive bytes")  # same size and content: another file all the same
    os.replace(other, path)
    with pytest.raises(ArchiveError, match="changed while it was restored"):
        info.confirm_unchanged()
    info = checked()
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"A")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a write within the clock's tick: mtime moved
    with pytest.raises(ArchiveError, match="changed while it was restored"):
        info.confirm_unchanged()
    os.remove(path)
    with pytest.raises(ArchiveError, match="changed while it was restored"):
        info.confirm_unchanged()
