"""Fixtures that write tiny synthetic datasets in every supported format."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from hfsnet.data.cifar import CifarFormat


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests away from the user's cache and data folders."""
    monkeypatch.setenv("HFSNET_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("HFSNET_DATA", raising=False)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _pixels(rng: np.random.Generator, mode: str, size: tuple[int, int]) -> np.ndarray:
    shape = size if mode == "L" else (*size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def image_tree(tmp_path: Path) -> Callable[..., Path]:
    """``image_tree(classes={"cat": 3}, size=(H, W), mode="RGB", ext=".png", splits=...)`` writes
    ``train/<class>/NN<ext>`` and ``test/<class>/NN<ext>`` with seeded random pixels under a fresh
    folder (inside ``top`` if given) and returns the folder."""
    counter = iter(range(1000))

    def make(classes: dict[str, int] | None = None, size: tuple[int, int] = (6, 5),
             mode: str = "RGB", ext: str = ".png", splits: tuple[str, ...] = ("train", "test"),
             top: str | None = None, seed: int = 0) -> Path:
        root = tmp_path / f"tree{next(counter)}"
        base = root / top if top else root
        rng = np.random.default_rng(seed)
        for split in splits:
            for name, count in (classes or {"cat": 3, "dog": 2}).items():
                folder = base / split / name
                folder.mkdir(parents=True)
                for i in range(count):
                    Image.fromarray(_pixels(rng, mode, size), mode).save(folder / f"{i:02d}{ext}")
        return root

    return make


def read_tree(root: Path, split: str) -> tuple[np.ndarray, list[int], list[str]]:
    """What a correct loader must produce for ``root/split``: images N x C x H x W in sorted path
    order (classes sorted), labels, class names."""
    classes = sorted(p.name for p in (root / split).iterdir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / split / name).iterdir()):
            array = np.asarray(Image.open(path))
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), labels, classes


@pytest.fixture
def tree_reader() -> Callable[[Path, str], tuple[np.ndarray, list[int], list[str]]]:
    return read_tree


@pytest.fixture
def archive_of(tmp_path: Path) -> Callable[[Path, str], Path]:
    """``archive_of(folder, suffix)`` packs the folder's contents (paths relative to it) into a
    .tar, .tar.gz, .tgz or .zip archive and returns its path."""

    def pack(folder: Path, suffix: str) -> Path:
        dest = tmp_path / f"{folder.name}{suffix}"
        files = sorted(p for p in folder.rglob("*"))
        if suffix == ".zip":
            with zipfile.ZipFile(dest, "w") as archive:
                for path in files:
                    archive.write(path, path.relative_to(folder).as_posix())
        else:
            with tarfile.open(dest, "w:gz" if suffix in (".tar.gz", ".tgz") else "w") as archive:
                for path in files:
                    archive.add(path, path.relative_to(folder).as_posix(), recursive=False)
        return dest

    return pack


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), at protocol 2, as the official CIFAR
    files were written."""

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)
    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def _py2_pickle(obj: object) -> bytes:
    """``obj`` pickled like a Python 2 / numpy 1 file: numpy's reconstructor spelled
    ``numpy.core.multiarray``."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


@pytest.fixture
def py2_pickle() -> Callable[[object], bytes]:
    return _py2_pickle


@pytest.fixture
def cifar_files(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """``cifar_files(fmt, per_batch=4, test=6, classes=3, archive=False)`` writes an official-format
    extracted folder (or .tar.gz archive) into a fresh directory; returns its path and the expected
    ``train_images``/``train_labels``/``test_images``/``test_labels``/``classes``."""
    counter = iter(range(1000))

    def make(fmt: CifarFormat, per_batch: int = 4, test: int = 6, classes: int = 3,
             archive: bool = False, overrides: dict[str, bytes] | None = None,
             ) -> tuple[Path, dict[str, np.ndarray]]:
        rng = np.random.default_rng(1)
        blobs, expected = {}, {}
        splits = {"train": [(name, per_batch) for name in fmt.train_files],
                  "test": [(fmt.test_file, test)]}
        for split, batches in splits.items():
            images, labels = [], []
            for name, count in batches:
                data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
                batch_labels = [int(v) for v in rng.integers(0, classes, count)]
                blobs[name] = _py2_pickle({b"batch_label": name.encode(), b"data": data,
                                          fmt.labels_key: batch_labels})
                images.append(data.reshape(-1, 3, 32, 32))
                labels += batch_labels
            expected[f"{split}_images"] = np.concatenate(images)
            expected[f"{split}_labels"] = np.array(labels)
        names = [f"class{i}".encode() for i in range(classes)]
        blobs[fmt.meta_file] = _py2_pickle({fmt.names_key: names})
        expected["classes"] = [name.decode() for name in names]
        blobs.update(overrides or {})
        root = tmp_path / f"cifar{next(counter)}"
        folder = root / fmt.folder
        folder.mkdir(parents=True)
        for name, blob in blobs.items():
            (folder / name).write_bytes(blob)
        if not archive:
            return folder, expected
        dest = root / f"{fmt.archive}.tar.gz"
        with tarfile.open(dest, "w:gz") as tar:
            tar.add(folder, fmt.folder)
        return dest, expected

    return make


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """``array`` (uint8) as an IDX file: magic 0x0000 08 <ndim>, big-endian dims, then data."""
    magic = 0x0800 | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


@pytest.fixture
def idx_bytes() -> Callable[..., bytes]:
    return _idx_bytes


@pytest.fixture
def idx_folder(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """``idx_folder(name="mnist", gz=True, train=7, test=5, overrides={file: bytes})`` writes the
    four IDX files (28 x 28 images); returns the folder and the expected arrays."""

    def make(name: str = "mnist", gz: bool = True, train: int = 7, test: int = 5,
             overrides: dict[str, bytes] | None = None) -> tuple[Path, dict[str, np.ndarray]]:
        rng = np.random.default_rng(2)
        expected = {
            "train_images": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, train, dtype=np.uint8),
            "test_images": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, test, dtype=np.uint8),
        }
        files = {
            "train-images-idx3-ubyte": _idx_bytes(expected["train_images"]),
            "train-labels-idx1-ubyte": _idx_bytes(expected["train_labels"]),
            "t10k-images-idx3-ubyte": _idx_bytes(expected["test_images"]),
            "t10k-labels-idx1-ubyte": _idx_bytes(expected["test_labels"]),
            **(overrides or {}),
        }
        folder = tmp_path / name
        folder.mkdir()
        for base, blob in files.items():
            if gz:
                (folder / f"{base}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / base).write_bytes(blob)
        return folder, expected

    return make


@pytest.fixture
def png_claiming() -> Callable[[int, int], bytes]:
    """``png_claiming(width, height)``: a 1 x 1 PNG whose header claims that size, the calling card
    of a decompression bomb, which Pillow checks before decoding anything."""

    def make(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (1, 1)).save(buffer, "PNG")
        data = bytearray(buffer.getvalue())
        data[16:24] = struct.pack(">II", width, height)  # IHDR fields, after its type tag
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        return bytes(data)

    return make


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour): ``samples`` is
    H x W (gray), H x W x 2 (gray + alpha), x 3 (RGB) or x 4 (RGBA) of values 0..65535."""
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    height, width = samples.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in samples)  # filter 0: none
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


@pytest.fixture
def png16() -> Callable[[np.ndarray], bytes]:
    return _png16
