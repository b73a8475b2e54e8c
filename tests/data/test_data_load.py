"""load_dataset's options, statistics, digests and decode cache."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hfsnet.data import DataError, load_dataset
from hfsnet.data.cache import default_cache_dir
from hfsnet.data.splits import stratified_pick
from tests.helpers import decodes_counted

CLASSES = {"a": 20, "b": 10, "c": 30}


@pytest.fixture
def tree(image_tree):
    return image_tree(classes=CLASSES, size=(4, 4))


@pytest.mark.parametrize("flag, value, match", [
    ("val_split", 1.0, r"--val-split: expected a fraction in \[0, 1\), got 1.0"),
    ("val_split", -0.1, r"--val-split: expected a fraction in \[0, 1\), got -0.1"),
    ("limit_train", 0, "--limit-train: expected a positive number of images, got 0"),
    ("image_size", -3, "--image-size: expected a positive side in pixels, got -3"),
])
def test_bad_flags_are_named(tree, cache_dir, flag, value, match) -> None:
    with pytest.raises(DataError, match=match):
        load_dataset(str(tree), cache_dir=cache_dir, **{flag: value})


def test_val_split_is_stratified_and_seeded(tree, cache_dir) -> None:
    data = load_dataset(str(tree), cache_dir=cache_dir, val_split=0.2, seed=3)
    assert data.val.labels.bincount().tolist() == [4, 2, 6]
    assert data.train.labels.bincount().tolist() == [16, 8, 24]
    all_images = load_dataset(str(tree), cache_dir=cache_dir).train.images
    val_rows = {bytes(img.numpy()) for img in data.val.images}
    train_rows = {bytes(img.numpy()) for img in data.train.images}
    assert not val_rows & train_rows
    assert val_rows | train_rows == {bytes(img.numpy()) for img in all_images}
    again = load_dataset(str(tree), cache_dir=cache_dir, val_split=0.2, seed=3)
    other = load_dataset(str(tree), cache_dir=cache_dir, val_split=0.2, seed=4)
    assert torch.equal(again.val.images, data.val.images)
    assert not torch.equal(other.val.images, data.val.images)


def test_limit_train_is_stratified_after_the_val_carve_out(tree, cache_dir) -> None:
    data = load_dataset(str(tree), cache_dir=cache_dir, val_split=0.5, limit_train=12)
    assert data.val.labels.bincount().tolist() == [10, 5, 15]
    assert data.train.labels.bincount().tolist() == [4, 2, 6]
    val_rows = {bytes(img.numpy()) for img in data.val.images}
    assert not val_rows & {bytes(img.numpy()) for img in data.train.images}


def test_limit_beyond_the_train_set_keeps_everything(tree, cache_dir) -> None:
    assert len(load_dataset(str(tree), cache_dir=cache_dir, limit_train=10_000).train) == 60


def test_val_split_too_large_for_tiny_sets(image_tree, cache_dir) -> None:
    root = image_tree(classes={"a": 1})
    with pytest.raises(DataError, match="--val-split 0.5: leaves no training images out of 1"):
        load_dataset(str(root), cache_dir=cache_dir, val_split=0.5)


def test_stratified_pick_uses_largest_remainders() -> None:
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    picked = stratified_pick(labels, 5, torch.Generator().manual_seed(0))
    assert labels[picked].bincount().tolist() == [3, 1, 1]  # exact 2.5, 1.5, 1.0
    assert torch.equal(picked, picked.sort().values)


def test_mean_and_std_match_numpy_on_the_final_train_set(tree, cache_dir) -> None:
    data = load_dataset(str(tree), cache_dir=cache_dir, val_split=0.25, limit_train=30)
    pixels = data.train.images.numpy().astype(np.float64) / 255
    assert np.allclose(data.mean, pixels.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert np.allclose(data.std, pixels.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)


def test_second_load_reads_the_cache_without_decoding(tree, cache_dir, monkeypatch) -> None:
    calls = decodes_counted(monkeypatch)
    first = load_dataset(str(tree), cache_dir=cache_dir)
    second = load_dataset(str(tree), cache_dir=cache_dir)
    assert len(calls) == 1
    assert torch.equal(first.train.images, second.train.images)
    assert (first.digest, first.mean) == (second.digest, second.mean)
    assert load_dataset(str(tree), cache_dir=cache_dir, image_size=2).image_size == (2, 2)
    assert len(calls) == 2  # the image size is part of the key


def test_interrupted_cache_write_is_never_used(tree, cache_dir, monkeypatch) -> None:
    calls = decodes_counted(monkeypatch)
    load_dataset(str(tree), cache_dir=cache_dir)
    (meta,) = cache_dir.glob("decoded/*/meta.json")
    meta.unlink()  # as if the process died before the last file was renamed into place
    load_dataset(str(tree), cache_dir=cache_dir)
    assert len(calls) == 2
    assert not list(cache_dir.rglob("*.tmp"))


def test_digest_changes_when_a_file_changes(tree, cache_dir, monkeypatch) -> None:
    calls = decodes_counted(monkeypatch)
    before = load_dataset(str(tree), cache_dir=cache_dir)
    path = tree / "test" / "b" / "00.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    os.utime(path, ns=(1, 1))  # a new mtime even on coarse-grained file systems
    after = load_dataset(str(tree), cache_dir=cache_dir)
    assert before.digest != after.digest and len(calls) == 2
    assert after.test.images[20, :, 0, 0].tolist() == [9, 9, 9]


def test_archive_digest_is_the_sha256_of_its_bytes(tree, archive_of, cache_dir) -> None:
    archive = archive_of(tree, ".zip")
    data = load_dataset(str(archive), cache_dir=cache_dir)
    assert data.digest == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_cached_bad_files_are_judged_again(image_tree, cache_dir, monkeypatch) -> None:
    root = image_tree()
    (root / "train" / "dog" / "broken.png").write_text("x")
    calls = decodes_counted(monkeypatch)
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(str(root), cache_dir=cache_dir)
    with pytest.warns(UserWarning, match="skipped 1 unreadable.*broken.png"):
        load_dataset(str(root), cache_dir=cache_dir, skip_bad=True)
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(str(root), cache_dir=cache_dir)
    assert len(calls) == 1


def test_unwritable_cache_only_warns(tree, tmp_path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not cache the decoded"):
        data = load_dataset(str(tree), cache_dir=blocker)
    assert len(data.train) == 60


def test_default_cache_dir_follows_the_environment(tree, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HFSNET_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(str(tree))
    assert list((tmp_path / "env-cache" / "decoded").glob("*/meta.json"))
    monkeypatch.delenv("HFSNET_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "hfsnet"
