"""Reading the entries of a folder, tar or zip archive in storage order, without extracting.

Sizes are bounded before anything is read: a member's size comes from its header (tar) or the
central directory (zip), a file's from ``stat``, so a small archive that inflates to gigabytes
is refused with one line naming it, the member and the limit, instead of exhausting memory.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import DataError, human_bytes

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
GZIP_MAGIC = b"\x1f\x8b"

# What tarfile, gzip and zipfile raise on a truncated or corrupt archive.
CORRUPT_ARCHIVE = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)

# One file: encoded images are kilobytes to a few megabytes and the largest dataset file read
# here, CIFAR-100's pickled train set, is 155 MB; a member claiming more is a bomb or not data.
MAX_MEMBER_BYTES = 256 << 20

# All the files read from one folder or archive, uncompressed. The decode pool may hold every
# encoded image in memory at once and the decoded images are held for training, so a dataset
# past this does not fit a workstation (CIFAR-10 as JPEGs is 0.1 GB; ImageNet-1k's 140 GB
# wants a streaming loader, which this is not).
MAX_TOTAL_BYTES = 32 << 30

# Zip members above MIN_RATIO_BYTES may inflate at most MAX_ZIP_RATIO-fold. Encoded images and
# dataset files barely compress (JPEG, PNG, pickled pixels: ~1x; raw BMP/PPM photos: a few x),
# while zeros deflate ~1000x. Small members are exempt: a flat-colour BMP icon compresses
# 100-fold legitimately and cannot hurt.
MAX_ZIP_RATIO = 100
MIN_RATIO_BYTES = 16 << 20

# A gzipped tar up to this size is inflated in one go and parsed from memory, ~0.6 s faster on
# CIFAR-10 (60k members, 93 MB) than tarfile's many small reads through gzip; a larger one is
# read as a stream, one member in memory at a time.
MAX_IN_MEMORY_TAR = 512 << 20

# Inflate at most this much per zlib call, so that memory grows with the output actually kept.
INFLATE_STEP = 16 << 20


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
    ``wanted(path)`` accepts, with its bytes. Raises DataError if the archive is corrupt or a
    wanted file, or all of them together, exceed ``MAX_MEMBER_BYTES`` / ``MAX_TOTAL_BYTES``."""
    budget = SizeBudget(root)
    if root.is_dir():
        yield from _iter_folder(root, wanted, budget)
        return
    try:
        if root.name.lower().endswith(".zip"):
            yield from _iter_zip(root, wanted, budget)
        else:
            yield from _iter_tar(root, wanted, budget)
    except CORRUPT_ARCHIVE as err:
        raise DataError(f"{root}: truncated or corrupt archive ({err})") from err


class SizeBudget:
    """Refuses, before it is read, a file larger than ``MAX_MEMBER_BYTES`` or one that takes the
    files of ``root`` read so far past ``MAX_TOTAL_BYTES``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.total = 0

    def take(self, member: str, size: int) -> None:
        where = display_path(self.root, member)
        if size > MAX_MEMBER_BYTES:
            raise DataError(f"{where}: {human_bytes(size)} uncompressed, over the limit of "
                            f"{human_bytes(MAX_MEMBER_BYTES)} per file (MAX_MEMBER_BYTES in "
                            "hfsnet.data.archive); a decompression bomb or not a dataset file")
        self.total += size
        if self.total > MAX_TOTAL_BYTES:
            raise DataError(f"{self.root}: its files hold over {human_bytes(MAX_TOTAL_BYTES)} "
                            f"uncompressed, the limit (MAX_TOTAL_BYTES in hfsnet.data.archive), "
                            f"passed at {where}; too large to hold in memory")


def gunzip(data: bytes, limit: int) -> bytes | None:
    """The inflated bytes of gzip ``data`` (all of its members), or None if they exceed
    ``limit``, found without inflating more than ``limit`` + one step. Raises EOFError on a
    truncated stream and zlib.error on a corrupt one."""
    out = io.BytesIO()
    rest = data
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        while not inflater.eof:
            chunk = inflater.decompress(pending, INFLATE_STEP)
            pending = inflater.unconsumed_tail
            if not chunk and not pending:  # input used up and nothing left to flush
                break
            out.write(chunk)
            if out.tell() > limit:
                return None
        if not inflater.eof:
            raise EOFError("gzip stream ended before its end-of-stream marker")
        rest = inflater.unused_data.lstrip(b"\0")  # gzip allows zero padding after a member
    return out.getvalue()


def _clean(name: str) -> str:
    """Normalise a member name: no leading ``./`` or ``/``, no empty or ``.`` parts."""
    return "/".join(part for part in PurePosixPath(name).parts if part not in ("/", "."))


def _iter_folder(root: Path, wanted: Callable[[str], bool], budget: SizeBudget) -> Iterator[Entry]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        for name in dirs:
            yield Entry(prefix + name)
        for path in sorted(prefix + name for name in files):
            if not wanted(path):
                continue
            info = (root / path).stat()
            if stat.S_ISREG(info.st_mode):  # a link to /dev/zero or a FIFO would never end
                budget.take(path, info.st_size)
                yield Entry(path, (root / path).read_bytes())


def _open_tar(root: Path) -> tarfile.TarFile:
    with root.open("rb") as file:
        gzipped = file.read(2) == GZIP_MAGIC
        file.seek(-4, os.SEEK_END)
        # The gzip trailer's length (mod 2**32) is a free hint that a stream is too large to
        # hold; it may lie, which only costs the bounded attempt below.
        claimed = int.from_bytes(file.read(4), "little")
    if not gzipped:
        return tarfile.open(root, "r:*")
    if claimed > MAX_IN_MEMORY_TAR:
        return tarfile.open(root, "r|gz")
    inflated = gunzip(root.read_bytes(), MAX_IN_MEMORY_TAR)
    if inflated is None:
        return tarfile.open(root, "r|gz")
    return tarfile.open(fileobj=io.BytesIO(inflated))


def _iter_tar(root: Path, wanted: Callable[[str], bool], budget: SizeBudget) -> Iterator[Entry]:
    # Iterating the TarFile reads members in stream order: extractfile() never seeks back, so
    # this works on a stream too.
    with _open_tar(root) as tar:
        for member in tar:
            path = _clean(member.name)
            if member.isdir():
                yield Entry(path)
            elif member.isfile() and wanted(path):
                budget.take(path, member.size)
                yield Entry(path, tar.extractfile(member).read())


def _iter_zip(root: Path, wanted: Callable[[str], bool], budget: SizeBudget) -> Iterator[Entry]:
    with zipfile.ZipFile(root) as archive:
        for info in archive.infolist():
            path = _clean(info.filename)
            if info.is_dir():
                yield Entry(path)
            elif wanted(path):
                _check_ratio(root, path, info)
                budget.take(path, info.file_size)
                # zipfile stops inflating at the declared file_size (and then checks the CRC),
                # so a member lying about its size cannot read past the limit either.
                yield Entry(path, archive.read(info))


def _check_ratio(root: Path, path: str, info: zipfile.ZipInfo) -> None:
    if info.file_size > MIN_RATIO_BYTES and info.file_size > MAX_ZIP_RATIO * info.compress_size:
        raise DataError(f"{display_path(root, path)}: inflates {human_bytes(info.compress_size)} "
                        f"to {human_bytes(info.file_size)}, over the {MAX_ZIP_RATIO}-fold limit "
                        f"for members above {human_bytes(MIN_RATIO_BYTES)} (MAX_ZIP_RATIO in "
                        "hfsnet.data.archive); a decompression bomb, not images")
