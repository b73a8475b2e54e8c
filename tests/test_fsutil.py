"""Atomic writes (old file intact on any failure, no temporaries left, fsync of file and
directory), write errors as one HfsnetError, and file and tensor digests."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile

import pytest
import torch

from hfsnet import fsutil
from hfsnet.errors import HfsnetError
from hfsnet.fsutil import (
    WriteError,
    atomic_link,
    atomic_replace_dir,
    atomic_write,
    atomic_write_bytes,
    file_digest,
    tensor_digest,
)

OLD = b"the previous contents\n"


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(OLD)
    return path


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_new_bytes_replace_the_file(target):
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert leftovers(target.parent) == []


def test_missing_parent_folders_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "c.bin"
    atomic_write(path, lambda file: file.write(b"x" * 10))
    assert path.read_bytes() == b"x" * 10


def test_a_writer_that_fails_midway_leaves_the_old_file(target):
    def half_then_fail(file):
        file.write(b"half of the new ")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_disk_full_in_the_writer_is_a_write_error_naming_the_file(target):
    def full_disk(file):
        file.write(b"some bytes")
        raise OSError(errno.ENOSPC, "raw message")

    with pytest.raises(WriteError) as caught:
        atomic_write(target, full_disk)
    assert isinstance(caught.value, HfsnetError)
    assert str(caught.value) == f"could not write {target}: No space left on device"
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_disk_full_at_fsync_is_a_write_error(target, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteError, match=f"{target.name}: No space left on device"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_read_only_file_system_at_rename_is_a_write_error(target, monkeypatch):
    def read_only(src, dst):
        raise OSError(errno.EROFS, "raw")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(WriteError, match="Read-only file system"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert leftovers(target.parent) == []


def test_no_permission_for_the_temporary_file_is_a_write_error(target, monkeypatch):
    def denied(**kwargs):
        raise PermissionError(errno.EACCES, "raw", kwargs["dir"])

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(WriteError, match=f"{target}: Permission denied"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == OLD


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_write_error(target):
    target.parent.chmod(0o555)
    try:
        with pytest.raises(WriteError, match="Permission denied"):
            atomic_write_bytes(target, b"new")
    finally:
        target.parent.chmod(0o755)
    assert target.read_bytes() == OLD


def count_fsyncs(monkeypatch) -> list[str]:
    """Record "file" or "dir" for each fsync call, then do it."""
    kinds = []
    real = os.fsync

    def recording(fd):
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return kinds


def test_the_file_and_then_its_folder_are_fsynced(target, monkeypatch):
    kinds = count_fsyncs(monkeypatch)
    atomic_write_bytes(target, b"new")
    assert kinds == ["file", "dir"]


def test_link_points_the_name_at_the_complete_file(tmp_path, monkeypatch):
    source, latest = tmp_path / "step-2.bin", tmp_path / "latest.bin"
    source.write_bytes(b"step 2")
    latest.write_bytes(b"step 1")
    kinds = count_fsyncs(monkeypatch)
    atomic_link(source, latest)
    assert os.path.samefile(source, latest)
    assert kinds == ["dir"]
    assert leftovers(tmp_path) == []


def test_link_copies_where_hard_links_are_refused(tmp_path, monkeypatch):
    source, latest = tmp_path / "step-2.bin", tmp_path / "latest.bin"
    source.write_bytes(b"step 2")

    def no_links(src, dst):
        raise OSError(errno.EPERM, "raw")

    monkeypatch.setattr(os, "link", no_links)
    atomic_link(source, latest)
    assert latest.read_bytes() == b"step 2" and not os.path.samefile(source, latest)
    assert leftovers(tmp_path) == []


def test_a_directory_replaces_the_old_one_whole(tmp_path, monkeypatch):
    final, new = tmp_path / "cache", tmp_path / ".cache.build"
    final.mkdir()
    (final / "stale.npy").write_bytes(b"old")
    new.mkdir()
    (new / "a.npy").write_bytes(b"a")
    (new / "b.json").write_bytes(b"b")
    kinds = count_fsyncs(monkeypatch)
    atomic_replace_dir(new, final)
    assert sorted(p.name for p in final.iterdir()) == ["a.npy", "b.json"]
    assert kinds == ["file", "file", "dir", "dir"]  # both files, the new folder, the parent
    assert leftovers(tmp_path) == []  # the old directory, renamed aside, is deleted


def test_a_failed_directory_swap_is_a_write_error(tmp_path, monkeypatch):
    new = tmp_path / ".new"
    new.mkdir()

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "raw")

    monkeypatch.setattr(os, "rename", full_disk)
    with pytest.raises(WriteError, match="cache: No space left on device"):
        atomic_replace_dir(new, tmp_path / "cache")


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_file_digest_is_hashlibs(tmp_path, algorithm):
    path = tmp_path / "data.bin"
    payload = bytes(range(256)) * 5000  # more than one read block
    path.write_bytes(payload)
    assert file_digest(path, algorithm) == hashlib.new(algorithm, payload).hexdigest()


def test_tensor_digest_format_is_stable():
    # Checkpoints store this digest: the format (name|dtype|shape, then the raw bytes, in name
    # order) must not change, or every saved checkpoint would read as corrupt.
    expected = hashlib.sha256(b"a|torch.uint8|(2,)\x01\x02b|torch.int16|()\x03\x00")
    tensors = {"b": torch.tensor(3, dtype=torch.int16), "a": torch.tensor([1, 2],
                                                                           dtype=torch.uint8)}
    assert tensor_digest(tensors) == expected.hexdigest()


def test_tensor_digest_sees_dtype_shape_and_layout():
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    base = tensor_digest({"x": x})
    assert tensor_digest({"x": x.view(torch.int32)}) != base  # same bytes, other dtype
    assert tensor_digest({"x": x.reshape(3, 2)}) != base
    assert tensor_digest({"x": x.t().contiguous().t()}) == base  # strides do not matter
    assert tensor_digest({"y": x}) != base


def test_temporary_names_match_the_checkpoint_cleanup_pattern(target, monkeypatch):
    # CheckpointStore.clean_temporaries deletes ".*.tmp" leftovers of killed saves.
    renamed = []
    real = os.replace

    def recording(src, dst):
        renamed.append(os.path.basename(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", recording)
    atomic_write_bytes(target, b"new")
    (name,) = renamed
    assert name.startswith(f".{target.name}.") and name.endswith(".tmp")


def test_several_files_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    real_fsync = fsutil.os.fsync
    calls = []

    def fsync_fails_on_the_second_file(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync_fails_on_the_second_file)
    with pytest.raises(fsutil.WriteError, match="No space left on device"):
        fsutil.atomic_write_files({a: b"new a", b: b"new b"})
    assert (a.read_bytes(), b.read_bytes()) == (b"old a", b"old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]
    monkeypatch.setattr(fsutil.os, "fsync", real_fsync)
    fsutil.atomic_write_files({a: b"new a", b: b"new b"})
    assert (a.read_bytes(), b.read_bytes()) == (b"new a", b"new b")
