"""Writing files so that readers see the old version or the new one, never a torn one; digests of
files and tensors.

Every write goes to a temporary file beside its target, named ``.<target name>.<random>.tmp``
(``CheckpointStore.clean_temporaries`` deletes such leftovers of a killed process), is flushed
and fsynced, renamed over the target, and the directory is fsynced so that the rename itself
survives a power cut. A failing write (disk full, no permission, read-only file system) raises
``WriteError`` after deleting the temporary file; the previous file is untouched.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from hfsnet.errors import HfsnetError

if TYPE_CHECKING:
    import torch

TEMP_SUFFIX = ".tmp"  # of every temporary file written here


class WriteError(HfsnetError):
    """A file or directory that could not be written; the message names it and the reason."""

    @classmethod
    def from_os_error(cls, path: Path, err: OSError) -> WriteError:
        reason = os.strerror(err.errno) if err.errno else str(err)
        return cls(f"could not write {path}: {reason}")


def atomic_write(path: Path, writer: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` with what ``writer`` writes to the binary file it is given.

    An exception from ``writer`` leaves ``path`` as it was and no temporary file behind; an
    OSError (its own or the write's) becomes a WriteError, any other exception propagates.
    """
    path = Path(path)
    temp = _write_temporary(path, writer)
    _put_in_place({path: temp})


def atomic_write_files(files: Mapping[Path, bytes]) -> None:
    """Replace several files together: every new file is written and fsynced beside its target
    first, and only then are they renamed into place. A failed write (a full disk) leaves every
    target as it was; only a rename can fail between the renames, and renames do not need
    space."""
    temps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            temps[Path(path)] = _write_temporary(Path(path), lambda f, d=data: f.write(d))
    except BaseException:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise
    _put_in_place(temps)


def _write_temporary(path: Path, writer: Callable[[BinaryIO], object]) -> Path:
    """A complete, fsynced temporary file beside ``path`` holding what ``writer`` writes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX,
                                        dir=path.parent)
    except OSError as err:
        raise WriteError.from_os_error(path, err) from err
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            writer(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException as err:
        temp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise WriteError.from_os_error(path, err) from err
        raise
    return temp


def _put_in_place(temps: Mapping[Path, Path]) -> None:
    """Rename each temporary over its target, then fsync the directories."""
    for path, temp in temps.items():
        try:
            os.replace(temp, path)
        except OSError as err:
            for left in temps.values():
                left.unlink(missing_ok=True)
            raise WriteError.from_os_error(path, err) from err
    for folder in sorted({path.parent for path in temps}):
        try:
            fsync_dir(folder)
        except OSError as err:  # the new files are in place, but may not survive a power cut
            raise WriteError.from_os_error(folder, err) from err


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write`` of a byte string."""
    atomic_write(path, lambda file: file.write(data))


def atomic_link(source: Path, path: Path) -> None:
    """Make ``path`` a hard link to the complete file ``source``, atomically: readers of
    ``path`` see the old file or ``source``. Copies ``source`` where hard links are refused."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        os.link(source, temp)
    except OSError:
        _atomic_copy(source, path)
        return
    try:
        os.replace(temp, path)
        fsync_dir(path.parent)
    except OSError as err:
        temp.unlink(missing_ok=True)
        raise WriteError.from_os_error(path, err) from err


def _atomic_copy(source: Path, path: Path) -> None:
    try:
        original = Path(source).open("rb")
    except OSError as err:
        raise WriteError.from_os_error(path, err) from err
    with original:
        atomic_write(path, lambda file: shutil.copyfileobj(original, file))


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Put the complete directory ``tmp_dir`` in the place of ``final_dir``.

    Every file in ``tmp_dir`` is fsynced first. An existing ``final_dir`` is renamed aside to
    ``.<name>.<pid>.old`` (a name the feature cache's stale-build cleanup knows), then deleted;
    between the two renames ``final_dir`` is briefly absent, never partial.
    """
    try:
        for file in sorted(p for p in tmp_dir.rglob("*") if p.is_file()):
            _fsync_path(file, os.O_RDONLY)
        fsync_dir(tmp_dir)
        old = None
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.{os.getpid()}.old")
            os.rename(final_dir, old)
        os.rename(tmp_dir, final_dir)
        fsync_dir(final_dir.parent)
    except OSError as err:
        raise WriteError.from_os_error(final_dir, err) from err
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """Make the creation, rename or deletion of entries in the directory ``path`` durable."""
    _fsync_path(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path: Path, flags: int) -> None:
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    except OSError as err:
        if err.errno != errno_codes.EINVAL:  # a file system without fsync: nothing to flush
            raise
    finally:
        os.close(handle)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes."""
    with Path(path).open("rb") as file:
        return hashlib.file_digest(file, algorithm).hexdigest()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    import torch  # here, so that importing fsutil does not import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
