"""Known dataset names: where they are looked for, and verified downloads."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pytest

from hfsnet.data import DataError, load_dataset
from hfsnet.data.catalog import KNOWN, Remote
from hfsnet.data.cifar import CIFAR10
from hfsnet.data.idx import FASHION_CLASSES


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def serve_cifar10(monkeypatch, archive: Path, checksum: str | None = None) -> None:
    """Point the cifar10 download at a local file:// URL."""
    remote = Remote(archive.as_uri(), checksum or md5(archive), "cifar-10-python.tar.gz")
    monkeypatch.setitem(KNOWN, "cifar10", dataclasses.replace(KNOWN["cifar10"],
                                                              downloads=(remote,)))


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_found_in_cache_dir(cifar_files, cache_dir, archive) -> None:
    path, expected = cifar_files(CIFAR10, archive=archive)
    cache_dir.mkdir()
    shutil.move(path, cache_dir / path.name)
    data = load_dataset("cifar10", cache_dir=cache_dir, download=False)
    assert data.name == "cifar10" and data.classes == expected["classes"]


def test_hfsnet_data_is_searched_before_the_cache(cifar_files, cache_dir, tmp_path,
                                                  monkeypatch) -> None:
    user, _ = cifar_files(CIFAR10, classes=3)
    cached, _ = cifar_files(CIFAR10, classes=4)
    cache_dir.mkdir()
    shutil.move(cached, cache_dir / cached.name)
    monkeypatch.setenv("HFSNET_DATA", str(user.parent))
    assert load_dataset("CIFAR10", cache_dir=cache_dir).num_classes == 3


def test_download_verifies_md5_then_keeps_the_file(cifar_files, cache_dir, monkeypatch) -> None:
    archive, expected = cifar_files(CIFAR10, archive=True)
    serve_cifar10(monkeypatch, archive)
    data = load_dataset("cifar10", cache_dir=cache_dir)
    assert data.train.labels.tolist() == expected["train_labels"].tolist()
    assert md5(cache_dir / "cifar-10-python.tar.gz") == md5(archive)
    archive.unlink()  # the second load must not need the network
    assert load_dataset("cifar10", cache_dir=cache_dir).digest == data.digest


def test_md5_mismatch_deletes_the_download(cifar_files, cache_dir, monkeypatch) -> None:
    archive, _ = cifar_files(CIFAR10, archive=True)
    serve_cifar10(monkeypatch, archive, checksum="0" * 32)
    with pytest.raises(DataError, match=rf"cifar-10-python.tar.gz: downloaded from .* with MD5 "
                                        rf"{md5(archive)}, expected {'0' * 32}"):
        load_dataset("cifar10", cache_dir=cache_dir)
    assert list(cache_dir.iterdir()) == []  # neither the file nor a temporary left behind


def test_unreachable_url_is_a_data_error(cache_dir, tmp_path, monkeypatch) -> None:
    serve_cifar10(monkeypatch, tmp_path / "absent.tar.gz", checksum="0" * 32)
    with pytest.raises(DataError, match="could not download file://.*absent.tar.gz"):
        load_dataset("cifar10", cache_dir=cache_dir)
    assert list(cache_dir.iterdir()) == []


def test_missing_without_download_says_where_it_looked(cache_dir) -> None:
    with pytest.raises(DataError, match=rf"--data cifar100: none of .*cifar-100-python.* found in "
                                        rf".*{cache_dir}.*downloading is disabled"):
        load_dataset("cifar100", cache_dir=cache_dir, download=False)


def test_fashion_mnist_prefers_the_system_folder(idx_folder, cache_dir, monkeypatch) -> None:
    folder, expected = idx_folder(name="fashion-mnist")
    known = dataclasses.replace(KNOWN["fashion-mnist"], system_dirs=(folder.parent,))
    monkeypatch.setitem(KNOWN, "fashion-mnist", known)
    data = load_dataset("fashion-mnist", cache_dir=cache_dir, download=False)
    assert data.classes == FASHION_CLASSES and data.name == "fashion-mnist"
    assert data.train.labels.tolist() == expected["train_labels"].tolist()


def test_mnist_downloads_only_missing_files(idx_folder, cache_dir, monkeypatch) -> None:
    served, expected = idx_folder(name="served")
    remotes = tuple(Remote(path.as_uri(), md5(path), f"mnist/{path.name}")
                    for path in sorted(served.iterdir()))
    known = dataclasses.replace(KNOWN["mnist"], downloads=remotes, system_dirs=())
    monkeypatch.setitem(KNOWN, "mnist", known)
    (cache_dir / "mnist").mkdir(parents=True)
    shutil.copy(served / "t10k-labels-idx1-ubyte.gz", cache_dir / "mnist")
    (served / "t10k-labels-idx1-ubyte.gz").unlink()  # fetching it again would now fail
    data = load_dataset("mnist", cache_dir=cache_dir)
    assert data.classes == [str(d) for d in range(10)]
    assert data.test.labels.tolist() == expected["test_labels"].tolist()


def test_unknown_name_lists_the_choices(cache_dir) -> None:
    with pytest.raises(DataError, match=r"--data: no such file or directory: imagenet \(expected "
                                        r"a folder/archive with train/ and test/, or one of: "
                                        r"cifar10, cifar100, fashion-mnist, mnist\)"):
        load_dataset("imagenet", cache_dir=cache_dir)


def test_unsupported_file_type(tmp_path, cache_dir) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3")
    with pytest.raises(DataError, match="data.csv is neither a folder nor a .tar"):
        load_dataset(str(path), cache_dir=cache_dir)
