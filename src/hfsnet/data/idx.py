"""MNIST-style IDX files (raw or gzipped), and folders holding the four of a dataset."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .imageset import Decoded, ImageSet, check_labels

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N)

# (images, labels) base names per split; each may also carry a .gz suffix.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(digit) for digit in range(10)]


def idx_files(folder: Path) -> dict[str, Path]:
    """Base name -> path of the IDX files present in ``folder`` (raw preferred over .gz)."""
    found = {}
    for base in (name for pair in IDX_FILES.values() for name in pair):
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                found[base] = candidate
                break
    return found


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array in an IDX file; raises DataError naming the file if it is not one."""
    data = _read_bytes(path)
    header = 4 + 4 * (magic & 0xFF)  # the low byte of the magic number is the dimension count
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header})")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise DataError(f"{path}: magic number 0x{found:08X}, expected 0x{magic:08X} (an IDX "
                        f"{kind} file)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=magic & 0xFF, offset=4))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(f"{path}: {len(data) - header} bytes of data, expected {expected} for "
                        f"{' x '.join(map(str, dims))} (truncated or padded file)")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_idx_folder(folder: Path, classes: list[str]) -> Decoded:
    """Read the four IDX files of an MNIST-style dataset from ``folder``."""
    found = idx_files(folder)
    missing = [name for pair in IDX_FILES.values() for name in pair if name not in found]
    if missing:
        raise DataError(f"{folder}: missing IDX file(s) {missing} (raw or .gz)")
    train, test = (_split(found[images], found[labels], classes)
                   for images, labels in IDX_FILES.values())
    return Decoded(train, test)


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: truncated or corrupt gzip file ({err})") from err


def _split(images_path: Path, labels_path: Path, classes: list[str]) -> ImageSet:
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels")
    check_labels(labels, len(classes), str(labels_path))
    return ImageSet(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels), classes)
