"""MNIST-style IDX files (raw or gzipped), and folders holding the four of a dataset."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .errors import DataError, human_bytes
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

# Data bytes one IDX file may claim: the largest IDX set we know of, EMNIST ByClass, holds
# 0.64 GB of training images; a header claiming more is corrupt or hostile.
MAX_IDX_BYTES = 2 << 30


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
    """The uint8 array in an IDX file; raises DataError naming the file if it is not one.

    The header's dimensions are checked against ``MAX_IDX_BYTES`` and the file's size before the
    data is read, and a gzipped file is inflated no further than the header promises, so a lying
    header costs neither memory nor time.
    """
    ndim = magic & 0xFF  # the low byte of the magic number is the dimension count
    header_size = 4 + 4 * ndim
    try:
        with _open(path) as file:
            header = file.read(header_size)
            dims = _dims(path, header, magic)
            expected = math.prod(dims)
            if path.suffix != ".gz":
                _check_data_size(path, os.fstat(file.fileno()).st_size - header_size, expected,
                                dims)
            data = file.read(expected + 1)  # one byte more shows a padded file
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: truncated or corrupt {_kind(path)} ({err})") from err
    _check_data_size(path, len(data), expected, dims)
    return np.frombuffer(data, np.uint8).reshape(dims)


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _kind(path: Path) -> str:
    return "gzip file" if path.suffix == ".gz" else "IDX file"


def _dims(path: Path, header: bytes, magic: int) -> tuple[int, ...]:
    """The dimensions in an IDX header, validated against ``magic`` and ``MAX_IDX_BYTES``."""
    ndim = magic & 0xFF
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({len(header)} bytes, expected "
                        f"{4 + 4 * ndim})")
    found = int.from_bytes(header[:4], "big")
    if found != magic:
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise DataError(f"{path}: magic number 0x{found:08X}, expected 0x{magic:08X} (an IDX "
                        f"{kind} file)")
    dims = struct.unpack(f">{ndim}I", header[4:])
    shape = " x ".join(map(str, dims))
    if 0 in dims:
        raise DataError(f"{path}: header claims an empty array ({shape}); expected at least one "
                        "item of at least 1 x 1 pixels")
    if math.prod(dims) > MAX_IDX_BYTES:
        raise DataError(f"{path}: header claims {shape} = {human_bytes(math.prod(dims))} of "
                        f"data, over the limit of {human_bytes(MAX_IDX_BYTES)} (MAX_IDX_BYTES "
                        "in hfsnet.data.idx); a corrupt or hostile header")
    return dims


def _check_data_size(path: Path, size: int, expected: int, dims: tuple[int, ...]) -> None:
    if size != expected:
        raise DataError(f"{path}: {size} bytes of data, expected {expected} for "
                        f"{' x '.join(map(str, dims))} (truncated or padded file)")


def read_idx_folder(folder: Path, classes: list[str]) -> Decoded:
    """Read the four IDX files of an MNIST-style dataset from ``folder``."""
    found = idx_files(folder)
    missing = [name for pair in IDX_FILES.values() for name in pair if name not in found]
    if missing:
        raise DataError(f"{folder}: missing IDX file(s) {missing} (raw or .gz)")
    train, test = (_split(found[images], found[labels], classes)
                   for images, labels in IDX_FILES.values())
    return Decoded(train, test)


def _split(images_path: Path, labels_path: Path, classes: list[str]) -> ImageSet:
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels")
    check_labels(labels, len(classes), str(labels_path))
    return ImageSet(torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels), classes)
