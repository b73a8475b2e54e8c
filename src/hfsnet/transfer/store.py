"""Feature caches on disk: float16 memory-mapped ``.npy`` arrays plus a JSON manifest.

A cache lives in ``<root>/<key digest>/``; the key is everything that decides its contents (trunk
weights, data, preprocessing, levels, pooling), so a changed input gets a new directory and the
same input finds the old one. A cache is built in a temporary directory under ``<root>`` and
renamed into place only once complete: an interrupted build is never read, and the next build
under the same root deletes what a killed builder left behind.

Opening a cache checks its manifest's form (:func:`check_manifest`: every field a reader uses,
with its type) and every array's shape, dtype and sha256, so a damaged or edited cache is a
CacheError naming the file and the field, never a KeyError.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from hfsnet.data.augment import view_count
from hfsnet.fsutil import atomic_replace_dir, file_digest
from hfsnet.transfer.errors import CacheError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "test")

# Key field -> how an error message names it.
KEY_FIELDS = {"trunk": "trunk (model and weights)", "data": "data (images and labels)",
              "preprocessing": "preprocessing", "levels": "levels", "pool": "pooling"}
# The arrays every cache holds: N x width descriptors and N labels per split.
ARRAY_NAMES = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("features", "labels"))
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class CacheKey:
    """Everything that decides a cache's contents."""

    trunk: dict[str, Any]  # model name, options and weights digest
    data: str  # content digest of the images, labels and class names
    preprocessing: dict[str, Any]  # normalisation, image size, precision
    levels: list[int]
    pool: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists, not tuples), so a key read back from a manifest compares
        equal to the one it was made from."""
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class FeatureCache:
    """An opened, verified cache."""

    path: Path
    manifest: dict[str, Any]

    def features(self, split: str) -> np.ndarray:
        """N x D float16, memory-mapped read-only."""
        return np.load(self.path / f"{split}_features.npy", mmap_mode="r")

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.path / f"{split}_labels.npy")

    @property
    def key(self) -> dict[str, Any]:
        return self.manifest["key"]

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def width(self) -> int:
        return int(self.manifest["width"])

    @property
    def views(self) -> int:
        """Rows per training image (``--train-views``; the test split has one)."""
        return view_count(self.key["preprocessing"].get("train_views", "none"))


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CacheError(f"{path}: no {MANIFEST}: not a feature cache") from None
    except (OSError, ValueError, RecursionError) as err:
        raise CacheError(f"{path / MANIFEST}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path / MANIFEST}: not a version-{FORMAT_VERSION} cache manifest")
    check_manifest(path / MANIFEST, manifest)
    return manifest


def check_manifest(file: Path, manifest: dict[str, Any]) -> None:
    """Every manifest field a reader uses is there with its type and consistent with the
    others; a CacheError names ``file`` and the field otherwise."""

    def bad(field: str, expected: str) -> CacheError:
        return CacheError(f"{file}: field {field!r}: expected {expected}")

    key = manifest.get("key")
    if not isinstance(key, dict) or set(key) != set(KEY_FIELDS):
        raise bad("key", f"an object with {', '.join(KEY_FIELDS)}")
    levels = key["levels"]
    if not (isinstance(key["trunk"], dict) and isinstance(key["preprocessing"], dict)
            and isinstance(key["data"], str) and isinstance(key["pool"], str)):
        raise bad("key", "trunk and preprocessing objects, data and pool strings")
    if not (_is_int_list(levels) and levels and levels == sorted(set(levels))):
        raise bad("key.levels", "increasing stage numbers >= 1")
    classes = manifest.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise bad("classes", "a list of class names")
    width = manifest.get("width")
    if not (_is_int_list([width]) and all(_is_int_list(manifest.get(name)) and len(
            manifest[name]) == len(levels) for name in ("level_channels", "level_widths"))
            and sum(manifest["level_widths"]) == width):
        raise bad("width", "an integer >= 1, the sum of level_widths (one per level, like "
                  "level_channels)")
    names = manifest.get("level_names")
    if not (isinstance(names, list) and len(names) == len(levels)
            and all(isinstance(n, str) for n in names)):
        raise bad("level_names", "one stage name per level")
    _check_array_entries(file, manifest.get("arrays"), width, bad)


def _check_array_entries(file: Path, arrays: Any, width: int,
                         bad: Callable[[str, str], CacheError]) -> None:
    if not isinstance(arrays, dict) or set(arrays) != set(ARRAY_NAMES):
        raise bad("arrays", f"an object with {', '.join(ARRAY_NAMES)}")
    for name, entry in arrays.items():
        if not (isinstance(entry, dict) and _is_int_list(entry.get("shape"), minimum=0)
                and isinstance(entry.get("dtype"), str) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"])):
            raise bad(f"arrays.{name}", "an object with shape, dtype and sha256")
    for split in SPLITS:
        features, labels = arrays[f"{split}_features"]["shape"], arrays[f"{split}_labels"]["shape"]
        if len(features) != 2 or features[1] != width or labels != features[:1]:
            raise bad(f"arrays.{split}_features", f"shape [N, {width}] with labels of shape [N]")
        if arrays[f"{split}_labels"]["dtype"] != "int64":
            raise bad(f"arrays.{split}_labels", "dtype int64")


def _is_int_list(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)


def _verify_arrays(path: Path, manifest: dict[str, Any]) -> None:
    """Every array the manifest lists exists, has its shape and dtype, and its checksum."""
    for name, entry in manifest["arrays"].items():
        file = path / f"{name}.npy"
        if not file.is_file():
            raise CacheError(f"{file}: array missing from the cache")
        try:
            array = np.load(file, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CacheError(f"{file}: unreadable array ({err})") from None
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
            raise CacheError(f"{file}: array is {array.dtype} {list(array.shape)}, the manifest "
                             f"says {entry['dtype']} {entry['shape']}")
        if file_digest(file) != entry["sha256"]:
            raise CacheError(f"{file}: checksum mismatch: the array is corrupt")


def open_cache(path: Path) -> FeatureCache:
    """Open the cache at ``path`` after checking its manifest, every array's checksum and the
    labels against the class list."""
    manifest = _read_manifest(path)
    _verify_arrays(path, manifest)
    cache = FeatureCache(path, manifest)
    for split in SPLITS:
        labels = cache.labels(split)
        outside = np.flatnonzero((labels < 0) | (labels >= len(cache.classes)))
        if len(outside):
            raise CacheError(f"{path / f'{split}_labels.npy'}: label {labels[outside[0]]} is out "
                             f"of range for the manifest's {len(cache.classes)} classes")
    return cache


def check_key(cache: FeatureCache, wanted: CacheKey) -> None:
    """Raise naming each key field (trunk, data, ...) where ``cache`` differs from ``wanted``."""
    differ = [label for field, label in KEY_FIELDS.items()
              if cache.key.get(field) != wanted.to_dict()[field]]
    if differ:
        raise CacheError(f"{cache.path}: cache does not match the request: its "
                         f"{', '.join(differ)} differ")


ArrayWriter = Callable[[Callable[[str, tuple[int, ...], str], np.ndarray]], dict[str, Any]]


def build_cache(root: Path, key: CacheKey, fill: ArrayWriter) -> FeatureCache:
    """Build the cache for ``key`` under ``root`` and return it opened.

    ``fill(allocate)`` creates arrays with ``allocate(name, shape, dtype)`` (a writable memmap)
    and returns manifest fields of its own (classes, widths...). Any existing cache for the key is
    replaced only after the new one is complete.
    """
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(root)
    final = root / key.digest()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=root))
    try:
        arrays: dict[str, dict[str, Any]] = {}
        maps: list[np.memmap] = []

        def allocate(name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
            arrays[name] = {"shape": list(shape), "dtype": dtype}
            maps.append(open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape))
            return maps[-1]

        extra = fill(allocate)
        for array in maps:
            array.flush()
        maps.clear()
        for name, entry in arrays.items():
            entry["sha256"] = file_digest(tmp / f"{name}.npy")
        manifest = {"format_version": FORMAT_VERSION, "key": key.to_dict(),
                    "key_digest": key.digest(), **extra, "arrays": arrays}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_cache(final)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_builds(root: Path) -> list[Path]:
    """Delete the temporary and set-aside directories (``.<digest>.<pid>.*``, the names
    ``build_cache`` and ``atomic_replace_dir`` give them) of builders that no longer run (killed
    mid-build); a live builder's are left alone. Returns what it deleted."""
    stale = []
    for path in root.glob(".*.*.*"):
        parts = path.name.split(".")
        if path.is_dir() and path.name.endswith((".tmp", ".old")) and parts[2].isdigit() \
                and not _pid_alive(int(parts[2])):
            shutil.rmtree(path, ignore_errors=True)
            stale.append(path)
    return stale
