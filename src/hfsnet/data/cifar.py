"""The official CIFAR-10/100 "python version": pickled dicts, read with a restricted unpickler."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .archive import archive_stem, display_path, iter_entries
from .errors import DataError
from .imageset import Decoded, ImageSet, check_labels
from .safe_pickle import safe_loads

PIXELS = 3 * 32 * 32  # one row of b"data": the R, G and B planes, each 32 x 32 row-major

# What a malformed pickle raises besides UnpicklingError (refused globals included). The
# unpickler allocates a bytes object of the length an opcode claims before reading it, so a
# lying length shows up as MemoryError or OverflowError; the file itself is bounded in size
# (hfsnet.data.archive.MAX_MEMBER_BYTES) before it is read.
BAD_PICKLE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
              KeyError, MemoryError, OverflowError)


@dataclass(frozen=True)
class CifarFormat:
    """File names and dict keys of one CIFAR variant."""

    name: str
    archive: str  # stem of the official archive, e.g. cifar-10-python(.tar.gz)
    folder: str  # folder the archive extracts to
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    labels_key: bytes
    names_key: bytes

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarFormat("cifar10", "cifar-10-python", "cifar-10-batches-py",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                      b"labels", b"label_names")
CIFAR100 = CifarFormat("cifar100", "cifar-100-python", "cifar-100-python", ("train",), "test",
                       "meta", b"fine_labels", b"fine_label_names")


def cifar_format_of(path: Path) -> CifarFormat | None:
    """The variant of an official archive (recognised by its file name) or of an extracted folder
    (recognised by its files), else None."""
    for fmt in (CIFAR10, CIFAR100):
        if path.is_file() and archive_stem(path) == fmt.archive:
            return fmt
        if path.is_dir() and all((path / name).is_file() for name in fmt.files):
            return fmt
    return None


def read_cifar(path: Path, fmt: CifarFormat) -> Decoded:
    """Read an official archive or its extracted folder. Raises DataError naming the bad file."""
    blobs = _read_files(path, fmt)
    meta = _unpickle(blobs, fmt.meta_file)
    classes = _class_names(meta, fmt, blobs[fmt.meta_file][0])
    train = [_batch(blobs, name, fmt.labels_key, len(classes)) for name in fmt.train_files]
    test = _batch(blobs, fmt.test_file, fmt.labels_key, len(classes))
    return Decoded(_image_set(train, classes), _image_set([test], classes))


Blobs = dict[str, tuple[str, bytes]]  # file name -> (how to name it in messages, its bytes)
Batch = tuple[np.ndarray, np.ndarray]  # images N x 3 x 32 x 32, labels N


def _read_files(path: Path, fmt: CifarFormat) -> Blobs:
    """The bytes of every file of ``fmt``, each bounded in size before it is read."""
    prefix = "" if path.is_dir() else f"{fmt.folder}/"
    members = {f"{prefix}{name}": name for name in fmt.files}
    blobs = {members[entry.path]: (display_path(path, entry.path), entry.data)
             for entry in iter_entries(path, members.__contains__) if entry.data is not None}
    missing = sorted(member for member, name in members.items() if name not in blobs)
    if missing:
        kind = "files" if path.is_dir() else "archive"
        raise DataError(f"{path}: not the official {fmt.name} python {kind}; missing {missing}")
    return blobs


def _unpickle(blobs: Blobs, name: str) -> dict:
    where, data = blobs[name]
    try:
        obj = safe_loads(data)
    except BAD_PICKLE as err:
        raise DataError(f"{where}: not a CIFAR python pickle ({err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _class_names(meta: dict, fmt: CifarFormat, where: str) -> list[str]:
    names = meta.get(fmt.names_key)
    if not isinstance(names, list) or not names:
        raise DataError(f"{where}: expected a non-empty list under {fmt.names_key!r}")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def _batch(blobs: Blobs, name: str, labels_key: bytes, num_classes: int) -> Batch:
    """(images N x 3 x 32 x 32 uint8, labels int64) of one pickled batch, validated."""
    where = blobs[name][0]
    batch = _unpickle(blobs, name)
    data, labels = batch.get(b"data"), batch.get(labels_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == PIXELS):
        raise DataError(f"{where}: expected b'data' as a uint8 array of N x {PIXELS}")
    if len(data) == 0:
        raise DataError(f"{where}: b'data' holds no images")
    if (not isinstance(labels, list) or len(labels) != len(data)
            or not all(isinstance(label, int | np.integer) for label in labels)):
        raise DataError(f"{where}: expected {labels_key!r} as a list of {len(data)} integer "
                        "labels")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except OverflowError as err:
        raise DataError(f"{where}: a label in {labels_key!r} is out of range for {num_classes} "
                        "classes (beyond 64 bits)") from err
    check_labels(labels, num_classes, where)
    return data.reshape(-1, 3, 32, 32), labels


def _image_set(batches: list[Batch], classes: list[str]) -> ImageSet:
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes)
