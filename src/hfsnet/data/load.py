"""``load_dataset``: from a ``--data`` spec to train/val/test splits with statistics."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from hfsnet.fsutil import WriteError

from .cache import cache_key, default_cache_dir, load_cached, save_cached
from .errors import DataError, listing
from .imageset import DataSplits, Decoded
from .sources import Source, resolve_source
from .splits import carve_validation, limit
from .stats import channel_stats


def load_dataset(spec: str, *, cache_dir: str | Path | None = None, val_split: float = 0.0,
                 limit_train: int | None = None, seed: int = 0, image_size: int | None = None,
                 skip_bad: bool = False, download: bool = True) -> DataSplits:
    """Load a dataset by path or name (cifar10, cifar100, fashion-mnist, mnist).

    A path may be a folder or .tar/.tar.gz/.tgz/.zip archive holding ``train/<class>/*`` and
    ``test/<class>/*`` images, an official CIFAR python archive or its extracted folder, or a
    folder with the four MNIST-style IDX files. Decoded images are cached under ``cache_dir``
    (default ``$HFSNET_CACHE`` or ``~/.cache/hfsnet``), keyed by the source's content digest.

    ``val_split`` carves a stratified validation set out of train (every class keeps at least one
    training image), then ``limit_train`` keeps a stratified subset of the rest; both are drawn
    from ``seed``. ``image_size`` resizes every image to that square side. Unreadable image files
    raise DataError unless ``skip_bad``, which leaves them out with a warning. A dataset with a
    single class loads with a warning: a classifier trained on it can only answer that class.
    ``download`` allows fetching a known dataset not found locally.
    """
    _check_options(val_split, limit_train, image_size)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    source = resolve_source(spec, cache_root, download)
    decoded = _decode_cached(source, cache_root, image_size)
    _judge_bad_files(decoded.bad, skip_bad)
    _warn_single_class(spec, decoded.train.classes)
    generator = torch.Generator().manual_seed(seed)
    train, val = decoded.train, None
    if val_split > 0:
        train, val = carve_validation(train, val_split, generator)
    if limit_train is not None:
        train = limit(train, limit_train, generator)
    mean, std = channel_stats(train.images)
    return DataSplits(source.name, train, decoded.test, val, mean, std, source.digest)


def _check_options(val_split: float, limit_train: int | None, image_size: int | None) -> None:
    if not 0 <= val_split < 1:
        raise DataError(f"--val-split: expected a fraction in [0, 1), got {val_split}")
    if limit_train is not None and limit_train <= 0:
        raise DataError(f"--limit-train: expected a positive number of images, got {limit_train}")
    if image_size is not None and image_size <= 0:
        raise DataError(f"--image-size: expected a positive side in pixels, got {image_size}")


def _decode_cached(source: Source, cache_dir: Path, image_size: int | None) -> Decoded:
    key = cache_key(source.name, source.digest, image_size)
    decoded = load_cached(cache_dir, key)
    if decoded is None:
        decoded = source.read(image_size)
        # A read-only or full cache only costs the next load a decode.
        try:
            save_cached(cache_dir, key, decoded)
        except (OSError, WriteError) as err:
            warnings.warn(f"could not cache the decoded {source.name} in {cache_dir}: {err}",
                          stacklevel=3)
    return decoded


def _judge_bad_files(bad: list[str], skip_bad: bool) -> None:
    if not bad:
        return
    if not skip_bad:
        raise DataError(f"{len(bad)} unreadable image file(s): {listing(bad)}; remove or replace "
                        "them, or skip them (--skip-bad)")
    warnings.warn(f"skipped {len(bad)} unreadable image file(s): {listing(bad)}", stacklevel=3)


def _warn_single_class(spec: str, classes: list[str]) -> None:
    if len(classes) == 1:
        warnings.warn(f"--data {spec}: only one class ({classes[0]!r}); a classifier trained on "
                      "it answers that class for every image (expected two or more class "
                      "folders)", stacklevel=3)


def data_spec(value: str | None) -> str:
    """--data, else $HFSNET_DATA, else a clear error."""
    spec = value or os.environ.get("HFSNET_DATA")
    if not spec:
        raise DataError("--data: no dataset given (pass --data SPEC or set HFSNET_DATA)")
    return spec
