"""Datasets known by name: where to look for their files, and where to download them from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .cifar import cifar_format_of
from .download import fetch
from .errors import DataError
from .idx import IDX_FILES, idx_files


@dataclass(frozen=True)
class Remote:
    """One file to download: its URL, MD5 and destination relative to the cache folder."""

    url: str
    md5: str
    dest: str


@dataclass(frozen=True)
class KnownDataset:
    """``candidates`` are looked for, in order, inside each search folder (``system_dirs``, then
    ``$HFSNET_DATA``, then the cache folder); ``downloads`` produce ``fetched`` in the cache."""

    candidates: tuple[str, ...]
    downloads: tuple[Remote, ...]
    fetched: str
    system_dirs: tuple[Path, ...] = ()


def _idx_remotes(base_url: str, folder: str, md5s: tuple[str, ...]) -> tuple[Remote, ...]:
    names = [f"{name}.gz" for pair in IDX_FILES.values() for name in pair]
    return tuple(Remote(base_url + name, md5, f"{folder}/{name}")
                 for name, md5 in zip(names, md5s, strict=True))


# Debian's dataset-fashion-mnist package installs the IDX files under /usr/share/datasets.
SYSTEM_DATASETS = Path("/usr/share/datasets")

KNOWN: dict[str, KnownDataset] = {
    "cifar10": KnownDataset(
        candidates=("cifar-10-batches-py", "cifar-10-python.tar.gz"),
        downloads=(Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz"),),
        fetched="cifar-10-python.tar.gz",
    ),
    "cifar100": KnownDataset(
        candidates=("cifar-100-python", "cifar-100-python.tar.gz"),
        downloads=(Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz"),),
        fetched="cifar-100-python.tar.gz",
    ),
    # Zalando's own repository; MD5s as published in its README (train/test images, labels).
    "fashion-mnist": KnownDataset(
        candidates=("fashion-mnist",),
        downloads=_idx_remotes(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "fashion-mnist",
            ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
             "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
        fetched="fashion-mnist",
        system_dirs=(SYSTEM_DATASETS,),
    ),
    # LeCun's site often refuses downloads; this is the mirror PyTorch uses, same files and MD5s.
    "mnist": KnownDataset(
        candidates=("mnist",),
        downloads=_idx_remotes(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "mnist",
            ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
             "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
        fetched="mnist",
        system_dirs=(SYSTEM_DATASETS,),
    ),
}


def locate(name: str, cache_dir: Path, download: bool) -> Path:
    """The local path of the known dataset ``name``, downloading it into ``cache_dir`` if it is
    nowhere to be found and ``download`` is set."""
    known = KNOWN[name]
    folders = _search_dirs(known, cache_dir)
    for folder in folders:
        for candidate in known.candidates:
            if _usable(folder / candidate):
                return folder / candidate
    if not download:
        raise DataError(f"--data {name}: none of {list(known.candidates)} found in "
                        f"{[str(f) for f in folders]}, and downloading is disabled")
    for remote in known.downloads:
        if not (cache_dir / remote.dest).is_file():  # verified files of an earlier partial run
            fetch(remote.url, cache_dir / remote.dest, remote.md5)
    return cache_dir / known.fetched


def _search_dirs(known: KnownDataset, cache_dir: Path) -> list[Path]:
    user = [Path(os.environ["HFSNET_DATA"]).expanduser()] if os.environ.get("HFSNET_DATA") else []
    return [*known.system_dirs, *user, cache_dir]


def _usable(path: Path) -> bool:
    """An archive file, a complete extracted CIFAR folder, or a folder with all four IDX files."""
    if path.is_dir():
        return cifar_format_of(path) is not None or len(idx_files(path)) == 4
    return path.is_file()
