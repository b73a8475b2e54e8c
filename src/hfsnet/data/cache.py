"""On-disk cache of decoded datasets as .npy files, written so that a partial write is never read.

Layout: ``<cache_dir>/decoded/<key>/{train,test}_{images,labels}.npy`` plus ``meta.json``, which
is written last: an entry without it (an interrupted decode) counts as missing. ``meta.json``
records the sha256 of every array, so an entry changed on disk (edited labels, a flipped bit)
or one that fails any other check (malformed meta.json, labels outside the class list) is never
trained on: it is decoded again and rewritten, with a warning naming its folder.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hfsnet.fsutil import atomic_write, atomic_write_bytes, file_digest
from hfsnet.textutil import printable

from .imageset import Decoded, ImageSet, check_labels

# Bump when the decoded content or the entry's layout changes, to orphan old entries.
# 2: meta.json holds each array's sha256.
CACHE_VERSION = 2
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CacheEntryError(ValueError):
    """A cache entry that fails a check; the message names the file and what is wrong."""


def default_cache_dir() -> Path:
    """``$HFSNET_CACHE``, else ``~/.cache/hfsnet``."""
    return Path(os.environ.get("HFSNET_CACHE") or Path.home() / ".cache" / "hfsnet")


def cache_key(name: str, digest: str, image_size: int | None) -> str:
    """Key of a decode: the source's content digest plus every option that changes the pixels."""
    size = f"{image_size}px" if image_size else "native"
    return f"{name}-{digest[:24]}-{size}-v{CACHE_VERSION}"


def load_cached(cache_dir: Path, key: str) -> Decoded | None:
    """The cached decode for ``key``, or None if there is no complete entry, or the entry fails
    its checks (then with a warning naming its folder: the caller decodes again and rewrites
    it)."""
    folder = cache_dir / "decoded" / key
    if not (folder / "meta.json").is_file():
        return None
    try:
        return _read_entry(folder)
    except (OSError, ValueError, RecursionError) as err:
        warnings.warn(f"decoded-image cache {printable(str(folder))} is unusable "
                      f"({printable(str(err))}); decoding the dataset again", stacklevel=4)
        return None


def _read_entry(folder: Path) -> Decoded:
    """The entry in ``folder`` after checking meta.json, every array's sha256, the arrays'
    types and shapes (ImageSet), and the labels against the class list."""
    meta = json.loads((folder / "meta.json").read_text())
    _check_meta(meta, folder / "meta.json")
    arrays = {}
    for name in ARRAYS:
        file = folder / f"{name}.npy"
        if file_digest(file) != meta["sha256"][name]:
            raise CacheEntryError(f"{file}: checksum mismatch with meta.json")
        # Mapped, not read: nothing is copied up front, and a run that keeps a few images of a
        # large decode (a few-shot split, --classes) copies only those. EuroSAT's decode plus
        # the 100/class draw of `adapt --per-class 100`: 0.60 s against 1.22 s read (whole
        # dataset 0.61 vs 0.73 s; benchmarks/decode_load.py, results/decode_load-*epyc-avx2.json).
        # Copy-on-write, so in-place edits stay private to the process.
        arrays[name] = np.load(file, mmap_mode="c")
    splits = {}
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        check_labels(labels, len(meta["classes"]), str(folder / f"{split}_labels.npy"))
        splits[split] = ImageSet(torch.from_numpy(arrays[f"{split}_images"]),
                                 torch.from_numpy(labels), meta["classes"])
    if splits["train"].images.shape[1:] != splits["test"].images.shape[1:]:
        raise CacheEntryError(f"{folder}: train and test images differ in size")
    return Decoded(splits["train"], splits["test"], meta["bad"])


def _check_meta(meta: Any, file: Path) -> None:
    if not isinstance(meta, dict):
        raise CacheEntryError(f"{file}: expected a JSON object")
    classes, bad, sums = meta.get("classes"), meta.get("bad"), meta.get("sha256")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise CacheEntryError(f"{file}: 'classes': expected a list of class names")
    if not (isinstance(bad, list) and all(isinstance(line, str) for line in bad)):
        raise CacheEntryError(f"{file}: 'bad': expected a list of strings")
    if not (isinstance(sums, dict) and all(isinstance(sums.get(name), str)
                                           and _SHA256.fullmatch(sums[name]) for name in ARRAYS)):
        raise CacheEntryError(f"{file}: 'sha256': expected the sha256 of {', '.join(ARRAYS)}")


def save_cached(cache_dir: Path, key: str, decoded: Decoded) -> None:
    """Store a decode under ``key``; each file appears atomically, ``meta.json`` last.

    Raises OSError when the folder cannot be made, WriteError when a file cannot be written."""
    folder = cache_dir / "decoded" / key
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": decoded.train.images, "train_labels": decoded.train.labels,
        "test_images": decoded.test.images, "test_labels": decoded.test.labels,
    }
    sums = {}
    for name, tensor in arrays.items():
        atomic_write(folder / f"{name}.npy", lambda file, t=tensor: np.save(file, t.numpy()))
        sums[name] = file_digest(folder / f"{name}.npy")
    meta = json.dumps({"classes": decoded.train.classes, "bad": decoded.bad, "sha256": sums},
                      indent=1)
    atomic_write_bytes(folder / "meta.json", meta.encode())
