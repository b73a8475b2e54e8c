"""The official CIFAR python format: reading, the restricted unpickler, lookup and download."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from hfsnet.data import DataError, load_dataset
from hfsnet.data.cifar import CIFAR10, CIFAR100
from hfsnet.data.safe_pickle import safe_loads


def assert_matches(data, expected) -> None:
    assert np.array_equal(data.train.images.numpy(), expected["train_images"])
    assert data.train.labels.tolist() == expected["train_labels"].tolist()
    assert np.array_equal(data.test.images.numpy(), expected["test_images"])
    assert data.test.labels.tolist() == expected["test_labels"].tolist()
    assert data.classes == expected["classes"]


@pytest.mark.parametrize("archive", [False, True])
@pytest.mark.parametrize("fmt", [CIFAR10, CIFAR100])
def test_official_format_round_trips(cifar_files, cache_dir, fmt, archive) -> None:
    path, expected = cifar_files(fmt, archive=archive)
    data = load_dataset(str(path), cache_dir=cache_dir)
    assert data.name == fmt.name
    assert data.train.images.shape == (4 * len(fmt.train_files), 3, 32, 32)
    assert_matches(data, expected)


class Boom:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_nothing_runs(cifar_files, cache_dir, tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": Boom(marker)}, protocol=4)
    path, _ = cifar_files(CIFAR10, overrides={"data_batch_3": evil})
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR python pickle .*refusing to "
                                        r"load global (posix|os)\.system"):
        load_dataset(str(path), cache_dir=cache_dir)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("numpy", "load"),
                                          ("numpy._core.numeric", "_frombuffer"),
                                          ("numpy.core.multiarray", "scalar")])
def test_unpickler_allows_only_the_array_rebuilders(module: str, name: str) -> None:
    crafted = f"c{module}\n{name}\n)R.".encode()  # GLOBAL, EMPTY_TUPLE, REDUCE: call it
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global {module}.{name}"):
        safe_loads(crafted)


def test_unpickler_reads_numpy_2_spelling() -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    loaded = safe_loads(pickle.dumps({b"x": array}, protocol=3))  # numpy._core.multiarray
    assert np.array_equal(loaded[b"x"], array)


def test_missing_member_of_archive(cifar_files, cache_dir, tmp_path) -> None:
    path, _ = cifar_files(CIFAR10, archive=True)
    partial = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path) as src, tarfile.open(partial, "w:gz") as dest:
        for member in src.getmembers():
            if not member.name.endswith("test_batch"):
                dest.addfile(member, src.extractfile(member) if member.isfile() else None)
    with pytest.raises(DataError, match=r"not the official cifar10 python archive; missing "
                                        r"\['cifar-10-batches-py/test_batch'\]"):
        load_dataset(str(partial), cache_dir=cache_dir)


def test_label_out_of_range_names_the_file(cifar_files, cache_dir, py2_pickle) -> None:
    batch = py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 7]})
    path, _ = cifar_files(CIFAR10, classes=3, overrides={"test_batch": batch})
    with pytest.raises(DataError, match=r"test_batch: label 7 at index 1 is out of range for 3"):
        load_dataset(str(path), cache_dir=cache_dir)


def test_wrong_data_shape_names_the_file(cifar_files, cache_dir, py2_pickle) -> None:
    batch = py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    path, _ = cifar_files(CIFAR10, overrides={"data_batch_1": batch})
    with pytest.raises(DataError, match=r"data_batch_1: expected b'data' as a uint8 array"):
        load_dataset(str(path), cache_dir=cache_dir)
