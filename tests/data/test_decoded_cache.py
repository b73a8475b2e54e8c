"""The decoded-image cache is checked on every load: an entry changed on disk, malformed or with
labels outside its class list is decoded again (with a warning naming it), never trained on."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hfsnet.data import load_dataset
from tests.helpers import decodes_counted

CLASSES = {"a": 4, "b": 3}


@pytest.fixture
def tree(image_tree):
    return image_tree(classes=CLASSES, size=(4, 4))


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    return decodes_counted(monkeypatch)


def entry_of(cache_dir: Path) -> Path:
    (folder,) = cache_dir.glob("decoded/*")
    return folder


def reload_warns(tree: Path, cache_dir: Path, entry: Path, decodes: list[int], reason: str):
    """Load again: one warning naming the entry and ``reason``, one more decode, and the
    entry is rewritten so that the next load uses it silently."""
    with pytest.warns(UserWarning, match="decoded-image cache .* is unusable") as caught:
        data = load_dataset(str(tree), cache_dir=cache_dir)
    (warning,) = [w for w in caught if "decoded-image cache" in str(w.message)]
    assert str(entry) in str(warning.message) and reason in str(warning.message)
    assert warning.filename == __file__  # points at the caller, not at hfsnet
    assert len(decodes) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_dataset(str(tree), cache_dir=cache_dir)
    assert len(decodes) == 2
    assert torch.equal(again.train.labels, data.train.labels)
    return data


def test_meta_records_every_arrays_sha256(tree, cache_dir):
    load_dataset(str(tree), cache_dir=cache_dir)
    entry = entry_of(cache_dir)
    meta = json.loads((entry / "meta.json").read_text())

    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert meta["sha256"][name] == hashlib.sha256((entry / f"{name}.npy").read_bytes()
                                                      ).hexdigest()


def test_labels_edited_on_disk_are_decoded_again(tree, cache_dir, decodes):
    honest = load_dataset(str(tree), cache_dir=cache_dir)
    entry = entry_of(cache_dir)
    labels = np.load(entry / "train_labels.npy")
    np.save(entry / "train_labels.npy", 1 - labels)  # swap the two classes: still in range
    data = reload_warns(tree, cache_dir, entry, decodes, "checksum mismatch")
    assert torch.equal(data.train.labels, honest.train.labels)


def test_out_of_range_labels_with_a_forged_checksum_are_refused(tree, cache_dir, decodes):
    honest = load_dataset(str(tree), cache_dir=cache_dir)
    entry = entry_of(cache_dir)
    labels = np.load(entry / "test_labels.npy")
    labels[0] = 7
    np.save(entry / "test_labels.npy", labels)
    meta = json.loads((entry / "meta.json").read_text())

    meta["sha256"]["test_labels"] = hashlib.sha256(
        (entry / "test_labels.npy").read_bytes()).hexdigest()
    (entry / "meta.json").write_text(json.dumps(meta))
    data = reload_warns(tree, cache_dir, entry, decodes, "label 7 at index 0 is out of range "
                        "for 2 classes")
    assert torch.equal(data.test.labels, honest.test.labels)


@pytest.mark.parametrize("meta,reason", [
    ("[1, 2]", "expected a JSON object"),
    ('{"classes": ["a", "b"], "bad": []}', "'sha256'"),
    ('{"classes": "ab", "bad": [], "sha256": {}}', "'classes'"),
    ('{"classes": ["a", "b"], "bad": 3, "sha256": {}}', "'bad'"),
    ("[" * 100_000 + "]" * 100_000, "recursion"),
    ("{not json", "Expecting property name"),
])
def test_malformed_meta_is_decoded_again(tree, cache_dir, decodes, meta, reason):
    load_dataset(str(tree), cache_dir=cache_dir)
    entry = entry_of(cache_dir)
    (entry / "meta.json").write_text(meta)
    reload_warns(tree, cache_dir, entry, decodes, reason)


def test_an_array_that_is_not_npy_is_decoded_again(tree, cache_dir, decodes):
    load_dataset(str(tree), cache_dir=cache_dir)
    entry = entry_of(cache_dir)
    (entry / "test_images.npy").write_bytes(b"\x1b[2J garbage")
    data = reload_warns(tree, cache_dir, entry, decodes, "checksum mismatch")
    assert data.test.images.shape[1:] == (3, 4, 4)


def test_a_missing_array_is_decoded_again(tree, cache_dir, decodes):
    load_dataset(str(tree), cache_dir=cache_dir)
    entry = entry_of(cache_dir)
    (entry / "train_images.npy").unlink()
    reload_warns(tree, cache_dir, entry, decodes, "train_images.npy")


def test_an_entry_without_meta_is_missing_not_broken(tree, cache_dir, decodes):
    """An interrupted write (no meta.json yet) is decoded again silently."""
    load_dataset(str(tree), cache_dir=cache_dir)
    (entry_of(cache_dir) / "meta.json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(str(tree), cache_dir=cache_dir)
    assert len(decodes) == 2


def test_images_edited_in_memory_never_reach_the_entry(tree, cache_dir, decodes):
    """The entry's arrays are mapped copy-on-write: a run that edits its images in place (an
    in-place augmentation) changes neither the files nor the next run's images."""
    load_dataset(str(tree), cache_dir=cache_dir)
    cached = load_dataset(str(tree), cache_dir=cache_dir)
    pristine = cached.train.images.clone()
    cached.train.images.fill_(7)
    cached.test.images.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checksums still match: no decode, no warning
        again = load_dataset(str(tree), cache_dir=cache_dir)
    assert len(decodes) == 1
    assert torch.equal(again.train.images, pristine) and int(again.test.images.max()) > 0
