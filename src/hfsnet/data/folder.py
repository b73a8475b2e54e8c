"""Image-folder datasets: ``train/<class>/*`` and ``test/<class>/*`` in a folder or archive.

The tree may sit inside one top-level folder (``cifar10-jpg/train/...``). Class order is the
sorted class folder names; files inside a class folder are taken in sorted path order, so the
result does not depend on archive order.
"""

from __future__ import annotations

import multiprocessing
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from .archive import display_path, iter_entries
from .decode import UNREADABLE, array_to_chw, decode_array, image_extensions
from .errors import DataError, MixedSizesError, listing
from .imageset import Decoded, ImageSet

SPLITS = ("train", "test")

# Images per pool task: amortises inter-process overhead (~60 us to decode a 32x32 JPEG) while
# leaving enough tasks to keep every worker busy.
CHUNK = 500

Results = dict[str, np.ndarray | str]  # member path -> decoded image, or why it is unreadable
Splits = dict[str, dict[str, list[str]]]  # split -> class name -> member paths


def read_image_folder(root: Path, image_size: int | None, workers: int = 1) -> Decoded:
    """Decode an image-folder tree (folder or archive) with ``workers`` processes.

    ``image_size`` resizes every image to a square of that side; without it all images must share
    one size. Unreadable files are left out and listed in ``Decoded.bad``.
    """
    size = (image_size, image_size) if image_size else None
    dirs: set[str] = set()
    results = _decode_all(_chunks(root, dirs), size, workers)
    folders = _folders(dirs, results.keys())
    base = _find_base(root, folders)
    splits = {split: _class_files(base + split + "/", folders, results) for split in SPLITS}
    _check_same_classes(root, base, splits)
    _check_not_empty(root, base, splits)
    bad = [f"{display_path(root, path)}: {results[path]}"
           for path in _members(splits) if isinstance(results[path], str)]
    splits = {split: _readable(root, base + split, classes, results, bad)
              for split, classes in splits.items()}
    images = {path: results[path] for path in _members(splits)}
    _check_one_size(root, images)
    channels = 1 if all(image.ndim == 2 for image in images.values()) else 3
    train, test = (_stack(splits[split], images, channels) for split in SPLITS)
    return Decoded(train, test, bad)


def _is_wanted(path: str, extensions: frozenset[str]) -> bool:
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))
    return not hidden and posixpath.splitext(path)[1].lower() in extensions


def _chunks(root: Path, dirs: set[str]) -> Iterator[tuple[list[str], list[bytes]]]:
    """Image files under ``root`` in chunks of (paths, bytes); directories go into ``dirs``."""
    extensions = image_extensions()
    paths: list[str] = []
    blobs: list[bytes] = []
    for entry in iter_entries(root, lambda path: _is_wanted(path, extensions)):
        if entry.data is None:
            dirs.add(entry.path)
            continue
        paths.append(entry.path)
        blobs.append(entry.data)
        if len(paths) == CHUNK:
            yield paths, blobs
            paths, blobs = [], []
    if paths:
        yield paths, blobs


def _decode_chunk(blobs: list[bytes], size: tuple[int, int] | None) -> list[np.ndarray | str]:
    decoded: list[np.ndarray | str] = []
    for blob in blobs:
        try:
            decoded.append(decode_array(blob, None, size))
        except UNREADABLE as err:
            decoded.append(f"{type(err).__name__}: {err}")
    return decoded


def _decode_all(chunks: Iterator[tuple[list[str], list[bytes]]], size: tuple[int, int] | None,
                workers: int) -> Results:
    """Decode every chunk, in worker processes when ``workers`` > 1.

    The calling process keeps reading the archive while the workers decode. Workers are forked:
    they only run Pillow and numpy, and a spawned worker would pay for importing torch.
    """
    if workers <= 1:
        done = [(paths, _decode_chunk(blobs, size)) for paths, blobs in chunks]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pending = [(paths, pool.apply_async(_decode_chunk, (blobs, size)))
                       for paths, blobs in chunks]
            done = [(paths, job.get()) for paths, job in pending]
    return {path: image for paths, images in done
            for path, image in zip(paths, images, strict=True)}


def _folders(dirs: set[str], files: Iterable[str]) -> set[str]:
    """Every non-hidden folder: those listed, and the ancestors of files (archives need not list
    folders)."""
    folders: set[str] = set()
    for folder in dirs | {posixpath.dirname(path) for path in files}:
        while folder and folder not in folders:  # once seen, its ancestors are in too
            folders.add(folder)
            folder = posixpath.dirname(folder)
    return {folder for folder in folders
            if not any(part.startswith(".") for part in folder.split("/"))}


def _members(splits: Splits) -> list[str]:
    return [path for classes in splits.values() for paths in classes.values() for path in paths]


def _find_base(root: Path, folders: set[str]) -> str:
    """The prefix ('' or 'top/') under which train/ and test/ sit."""
    if set(SPLITS) <= folders:
        return ""
    tops = sorted({folder.split("/")[0] for folder in folders} - {"__MACOSX"})
    if len(tops) == 1 and {f"{tops[0]}/{split}" for split in SPLITS} <= folders:
        return tops[0] + "/"
    raise DataError(f"{root}: expected train/ and test/ class folders, optionally inside one "
                    f"top-level folder; found top-level folders: {tops or 'none'}")


def _class_files(prefix: str, folders: set[str], results: Results) -> dict[str, list[str]]:
    """Class name -> sorted image paths under ``prefix`` (= ``[top/]split/``), empty classes too.

    Images nested deeper inside a class folder belong to that class; files lying directly in the
    split folder belong to no class and are ignored.
    """
    classes: dict[str, list[str]] = {
        folder[len(prefix):]: [] for folder in folders
        if folder.startswith(prefix) and "/" not in folder[len(prefix):]
    }
    for path in sorted(p for p in results if p.startswith(prefix)):
        name, _, rest = path[len(prefix):].partition("/")
        if rest:
            classes[name].append(path)
    return dict(sorted(classes.items()))


def _check_same_classes(root: Path, base: str, splits: Splits) -> None:
    train, test = (set(splits[split]) for split in SPLITS)
    if train != test:
        raise DataError(
            f"{display_path(root, base)}: train/ and test/ must hold the same class folders; "
            f"only in train/: {sorted(train - test) or 'none'}; "
            f"only in test/: {sorted(test - train) or 'none'}")


def _check_not_empty(root: Path, base: str, splits: Splits) -> None:
    empty = [display_path(root, f"{base}{split}/{name}/")
             for split, classes in splits.items() for name, paths in classes.items() if not paths]
    if empty:
        raise DataError(f"empty class folder(s), every class needs at least one image: "
                        f"{listing(empty)}")


def _readable(root: Path, folder: str, classes: dict[str, list[str]], results: Results,
              bad: list[str]) -> dict[str, list[str]]:
    """The classes without their unreadable files; a class left with none is an error."""
    kept = {name: [p for p in paths if not isinstance(results[p], str)]
            for name, paths in classes.items()}
    emptied = [display_path(root, f"{folder}/{name}/") for name, paths in kept.items() if not paths]
    if emptied:
        raise DataError(f"no readable image in class folder(s): {listing(emptied)}; "
                        f"unreadable files: {listing(bad)}")
    return kept


def _check_one_size(root: Path, images: Results) -> None:
    examples: dict[tuple[int, int], str] = {}
    for path, image in images.items():
        examples.setdefault(image.shape[:2], path)
    if len(examples) > 1:
        sizes = [f"{h}x{w} (e.g. {display_path(root, path)})"
                 for (h, w), path in sorted(examples.items())]
        raise MixedSizesError(f"{root}: images differ in size (H x W): {listing(sizes)}; pass "
                              "an image size (--image-size) to resize them all to one square "
                              "size")


def _stack(classes: dict[str, list[str]], images: Results, channels: int) -> ImageSet:
    paths = [path for members in classes.values() for path in members]
    height, width = images[paths[0]].shape[:2]
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = array_to_chw(images[path])  # broadcasts grayscale into all three channels
    labels = [label for label, members in enumerate(classes.values()) for _ in members]
    return ImageSet(torch.from_numpy(out), torch.tensor(labels, dtype=torch.int64), list(classes))
