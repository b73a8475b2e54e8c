"""Reading the entries of a folder, tar or zip archive in storage order, without extracting."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
GZIP_MAGIC = b"\x1f\x8b"

# What tarfile, gzip and zipfile raise on a truncated or corrupt archive.
CORRUPT_ARCHIVE = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)


@dataclass(frozen=True)
class Entry:
    """One member: ``path`` is POSIX-style relative to the root; ``data`` is None for a directory
    and the file's bytes otherwise."""

    path: str
    data: bytes | None = None


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: Path) -> str:
    """The file name without its archive suffix: ``cifar10-jpg.tar.gz`` -> ``cifar10-jpg``."""
    lower = path.name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def display_path(root: Path, member: str) -> str:
    """How to name a member in messages: a real path for folders, ``archive:member`` otherwise.
    A trailing slash (marking a folder) is kept; an empty member names the root itself."""
    if not member:
        return str(root)
    return f"{root}:{member}" if root.is_file() else f"{root}{os.sep}{member}"


def iter_entries(root: Path, wanted: Callable[[str], bool]) -> Iterator[Entry]:
    """Every directory under ``root`` (a folder or an archive), and every regular file that
    ``wanted(path)`` accepts, with its bytes. Raises DataError if the archive is corrupt."""
    if root.is_dir():
        yield from _iter_folder(root, wanted)
        return
    try:
        if root.name.lower().endswith(".zip"):
            yield from _iter_zip(root, wanted)
        else:
            yield from _iter_tar(root, wanted)
    except CORRUPT_ARCHIVE as err:
        raise DataError(f"{root}: truncated or corrupt archive ({err})") from err


def _clean(name: str) -> str:
    """Normalise a member name: no leading ``./`` or ``/``, no empty or ``.`` parts."""
    return "/".join(part for part in PurePosixPath(name).parts if part not in ("/", "."))


def _iter_folder(root: Path, wanted: Callable[[str], bool]) -> Iterator[Entry]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for name in dirs:
            yield Entry(prefix + name)
        for path in sorted(prefix + name for name in files):
            if wanted(path):
                yield Entry(path, (root / path).read_bytes())


def _open_tar(root: Path) -> tarfile.TarFile:
    with root.open("rb") as file:
        gzipped = file.read(2) == GZIP_MAGIC
    if gzipped:
        # Inflating in one go and parsing from memory is ~0.6 s faster on CIFAR-10 (60k members,
        # 93 MB) than tarfile's many small reads through gzip; the memory is transient and smaller
        # than the decoded images.
        return tarfile.open(fileobj=io.BytesIO(gzip.decompress(root.read_bytes())))
    return tarfile.open(root, "r:*")


def _iter_tar(root: Path, wanted: Callable[[str], bool]) -> Iterator[Entry]:
    # Iterating the TarFile reads members in stream order: extractfile() never seeks back.
    with _open_tar(root) as tar:
        for member in tar:
            path = _clean(member.name)
            if member.isdir():
                yield Entry(path)
            elif member.isfile() and wanted(path):
                yield Entry(path, tar.extractfile(member).read())


def _iter_zip(root: Path, wanted: Callable[[str], bool]) -> Iterator[Entry]:
    with zipfile.ZipFile(root) as archive:
        for info in archive.infolist():
            path = _clean(info.filename)
            if info.is_dir():
                yield Entry(path)
            elif wanted(path):
                yield Entry(path, archive.read(info))
