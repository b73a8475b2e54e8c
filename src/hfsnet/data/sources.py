"""Turning a ``--data`` spec (a path or a known name) into a readable, digested source."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hfsnet.fsutil import file_digest

from .archive import archive_stem, is_archive
from .catalog import KNOWN, locate
from .cifar import cifar_format_of, read_cifar
from .decode import resize_images
from .digest import files_digest, tree_digest
from .errors import DataError
from .folder import read_image_folder
from .idx import DIGIT_CLASSES, FASHION_CLASSES, idx_files, read_idx_folder
from .imageset import Decoded, ImageSet

# Below this many bytes of encoded images, forking decode workers costs about what it saves
# (~1,500 small JPEGs, ~0.1 s of decoding).
POOL_MIN_BYTES = 2 << 20


@dataclass(frozen=True)
class Source:
    """A dataset on disk: its name, content digest, and how to decode it at an image size."""

    name: str
    digest: str
    read: Callable[[int | None], Decoded]


def resolve_source(spec: str, cache_dir: Path, download: bool) -> Source:
    """An existing path is read by its format; otherwise ``spec`` must be a known dataset name."""
    path = Path(spec).expanduser()
    if path.exists():
        return source_for_path(path)
    if spec.lower() in KNOWN:
        return source_for_path(locate(spec.lower(), cache_dir, download), spec.lower())
    raise DataError(f"--data: no such file or directory: {spec} (expected a folder/archive with "
                    f"train/ and test/, or one of: {', '.join(KNOWN)})")


def source_for_path(path: Path, name: str | None = None) -> Source:
    """Recognise an official CIFAR archive or folder, an IDX folder, or an image-folder tree.

    ``name`` defaults to the dataset's own name (CIFAR) or the folder or archive stem. An IDX
    folder gets Fashion-MNIST class names if that name mentions "fashion", digits otherwise.
    """
    cifar = cifar_format_of(path)
    if cifar is not None:
        digest = file_digest(path) if path.is_file() else files_digest(path, cifar.files)
        return Source(name or cifar.name, digest, _resizing(lambda: read_cifar(path, cifar)))
    if path.is_dir() and idx_files(path):
        name = name or path.name
        classes = FASHION_CLASSES if "fashion" in name.lower() else DIGIT_CLASSES
        digest = files_digest(path, [p.name for p in idx_files(path).values()])
        return Source(name, digest, _resizing(lambda: read_idx_folder(path, classes)))
    if is_archive(path):
        workers = _workers(path.stat().st_size)
        return Source(name or archive_stem(path), file_digest(path),
                      lambda size: read_image_folder(path, size, workers))
    if path.is_dir():
        workers = _workers(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()))
        return Source(name or path.resolve().name, tree_digest(path),
                      lambda size: read_image_folder(path, size, workers))
    raise DataError(f"--data: {path} is neither a folder nor a .tar, .tar.gz, .tgz or .zip archive")


def _workers(source_bytes: int) -> int:
    """Decode processes for a source of this size: one per usable CPU, or 1 (no pool)."""
    if source_bytes < POOL_MIN_BYTES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _resizing(read: Callable[[], Decoded]) -> Callable[[int | None], Decoded]:
    """Give a reader of fixed-size arrays the image-folder readers' ``image_size`` option."""
    def read_at(image_size: int | None) -> Decoded:
        decoded = read()
        if image_size is None:
            return decoded
        return Decoded(_resize(decoded.train, image_size), _resize(decoded.test, image_size))
    return read_at


def _resize(data: ImageSet, side: int) -> ImageSet:
    images = resize_images(data.images.numpy(), (side, side))
    return ImageSet(torch.from_numpy(images), data.labels, data.classes)
