"""On-disk cache of decoded datasets as .npy files, written so that a partial write is never read.

Layout: ``<cache_dir>/decoded/<key>/{train,test}_{images,labels}.npy`` plus ``meta.json``, which
is written last: an entry without it (an interrupted decode) counts as missing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .imageset import Decoded, ImageSet

# Bump when the decoded content for the same source and options changes, to orphan old entries.
CACHE_VERSION = 1
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def default_cache_dir() -> Path:
    """``$HFSNET_CACHE``, else ``~/.cache/hfsnet``."""
    return Path(os.environ.get("HFSNET_CACHE") or Path.home() / ".cache" / "hfsnet")


def cache_key(name: str, digest: str, image_size: int | None) -> str:
    """Key of a decode: the source's content digest plus every option that changes the pixels."""
    size = f"{image_size}px" if image_size else "native"
    return f"{name}-{digest[:24]}-{size}-v{CACHE_VERSION}"


def load_cached(cache_dir: Path, key: str) -> Decoded | None:
    """The cached decode for ``key``, or None if there is no complete, readable entry."""
    folder = cache_dir / "decoded" / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: torch.from_numpy(np.load(folder / f"{name}.npy")) for name in ARRAYS}
        train = ImageSet(arrays["train_images"], arrays["train_labels"], meta["classes"])
        test = ImageSet(arrays["test_images"], arrays["test_labels"], meta["classes"])
        return Decoded(train, test, meta["bad"])
    except (OSError, ValueError, KeyError):  # missing, partial or foreign: decode again
        return None


def save_cached(cache_dir: Path, key: str, decoded: Decoded) -> None:
    """Store a decode under ``key``; each file appears atomically, ``meta.json`` last."""
    folder = cache_dir / "decoded" / key
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": decoded.train.images, "train_labels": decoded.train.labels,
        "test_images": decoded.test.images, "test_labels": decoded.test.labels,
    }
    for name, tensor in arrays.items():
        _write_atomic(folder / f"{name}.npy", lambda file, t=tensor: np.save(file, t.numpy()))
    meta = json.dumps({"classes": decoded.train.classes, "bad": decoded.bad}, indent=1)
    _write_atomic(folder / "meta.json", lambda file: file.write(meta.encode()))


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
