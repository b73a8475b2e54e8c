"""Content digests of dataset sources, used as cache keys."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def files_digest(root: Path, relpaths: Iterable[str]) -> str:
    """SHA-256 over sorted (relative path, size, mtime_ns) of the given files under ``root``.

    Cheap for folders of many files, and it changes whenever a file is replaced or edited.
    """
    digest = hashlib.sha256()
    for relpath in sorted(relpaths):
        stat = (root / relpath).stat()
        digest.update(f"{relpath}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """``files_digest`` over every file below the folder ``root``."""
    return files_digest(root, [p.relative_to(root).as_posix() for p in root.rglob("*")
                               if p.is_file()])
