"""MNIST-style IDX files: parsing and the errors each malformed file gets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from hfsnet.data import DataError, load_dataset
from hfsnet.data.idx import DIGIT_CLASSES, FASHION_CLASSES

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_round_trips(idx_folder, cache_dir, gz) -> None:
    folder, expected = idx_folder(gz=gz)
    data = load_dataset(str(folder), cache_dir=cache_dir)
    assert data.train.images.shape == (7, 1, 28, 28) and data.in_channels == 1
    assert np.array_equal(data.train.images[:, 0].numpy(), expected["train_images"])
    assert np.array_equal(data.test.images[:, 0].numpy(), expected["test_images"])
    assert data.train.labels.tolist() == expected["train_labels"].tolist()
    assert data.test.labels.tolist() == expected["test_labels"].tolist()
    assert data.classes == DIGIT_CLASSES and data.name == "mnist"


def test_folder_named_fashion_gets_fashion_classes(idx_folder, cache_dir) -> None:
    folder, _ = idx_folder(name="my-fashion-copy")
    assert load_dataset(str(folder), cache_dir=cache_dir).classes == FASHION_CLASSES


def test_image_size_resizes_idx_images(idx_folder, cache_dir) -> None:
    folder, _ = idx_folder()
    data = load_dataset(str(folder), cache_dir=cache_dir, image_size=32)
    assert data.image_size == (32, 32) and data.test.images.shape == (5, 1, 32, 32)


def test_wrong_magic_number(idx_folder, idx_bytes, cache_dir) -> None:
    labels = idx_bytes(np.zeros(7, np.uint8), magic=0x00000803)
    folder, _ = idx_folder(overrides={"train-labels-idx1-ubyte": labels})
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: magic number 0x00000803, "
                                        r"expected 0x00000801 \(an IDX label file\)"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_truncated_data(idx_folder, idx_bytes, cache_dir) -> None:
    images = idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-10]
    folder, _ = idx_folder(gz=False, overrides={"t10k-images-idx3-ubyte": images})
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: 3910 bytes of data, expected "
                                        r"3920 for 5 x 28 x 28"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_truncated_header(idx_folder, cache_dir) -> None:
    folder, _ = idx_folder(gz=False, overrides={"t10k-labels-idx1-ubyte": b"\0\0\x08"})
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: truncated IDX header"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_truncated_gzip_stream(idx_folder, cache_dir) -> None:
    folder, _ = idx_folder()
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_label_out_of_range(idx_folder, idx_bytes, cache_dir) -> None:
    labels = idx_bytes(np.array([0, 1, 2, 10, 3], np.uint8))
    folder, _ = idx_folder(overrides={"t10k-labels-idx1-ubyte": labels})
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 10 at index 3 is out "
                                        r"of range for 10 classes"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_image_and_label_counts_differ(idx_folder, idx_bytes, cache_dir) -> None:
    folder, _ = idx_folder(overrides={"train-labels-idx1-ubyte": idx_bytes(np.zeros(6, np.uint8))})
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz holds 7 images but .*"
                                        r"train-labels-idx1-ubyte.gz holds 6 labels"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_missing_idx_file(idx_folder, cache_dir) -> None:
    folder, _ = idx_folder()
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing IDX file\(s\) \['t10k-images-idx3-ubyte'\]"):
        load_dataset(str(folder), cache_dir=cache_dir)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="apt package dataset-fashion-mnist")
def test_debian_fashion_mnist_files(cache_dir) -> None:
    data = load_dataset(str(DEBIAN_FASHION), cache_dir=cache_dir)
    assert (len(data.train), len(data.test), data.image_size) == (60000, 10000, (28, 28))
    assert data.train.labels.bincount().tolist() == [6000] * 10
    assert data.classes == FASHION_CLASSES
    with gzip.open(DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz") as file:
        assert data.test.labels[:5].tolist() == list(file.read()[8:13])
