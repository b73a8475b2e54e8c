"""A feature cache whose manifest.json lacks a field or has one of the wrong type is a CacheError
naming the file and the field; get_cache keeps its policy for a damaged cache: refuse and point
at --rebuild, delete nothing, and rebuild on request."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from hfsnet.data import DataSplits, ImageSet
from hfsnet.models import create_model
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.extract import CacheSpec, get_cache
from hfsnet.transfer.store import open_cache


def synthetic_data() -> DataSplits:
    g = torch.Generator().manual_seed(0)

    def split(n):
        images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
        return ImageSet(images, torch.arange(n) % 3, ["a", "b", "c"])

    return DataSplits("synthetic", split(12), split(6), None, (0.5,) * 3, (0.25,) * 3, "digest")


def small_model():
    torch.manual_seed(0)
    return create_model("hfs", num_classes=3, stages=[1, 1], growth=4, stem=8).eval()


SPEC = CacheSpec(levels=[1, 2], pool="gap", mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=6)


@pytest.fixture
def built(tmp_path):
    model, data = small_model(), synthetic_data()
    path = get_cache(tmp_path, model, data, SPEC).cache.path
    return path, model, data


def edit_manifest(path, change):
    file = path / "manifest.json"
    manifest = json.loads(file.read_text())
    file.write_text(json.dumps(change(manifest)))


def drop(*keys):
    def change(manifest):
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
        return manifest

    return change


def put(value, *keys):
    def change(manifest):
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        return manifest

    return change


@pytest.mark.parametrize("change,field", [
    (drop("arrays"), "arrays"),
    (put([], "arrays"), "arrays"),
    (drop("arrays", "test_labels"), "arrays"),
    (drop("arrays", "train_features", "sha256"), "arrays.train_features"),
    (put(123, "arrays", "train_features", "sha256"), "arrays.train_features"),
    (put("12", "arrays", "test_features", "shape"), "arrays.test_features"),
    (put([12, 999], "arrays", "train_features", "shape"), "arrays.train_features"),
    (put("float64", "arrays", "train_labels", "dtype"), "arrays.train_labels"),
    (drop("width"), "width"),
    (put("24", "width"), "width"),
    (put(10**6, "width"), "width"),
    (drop("level_widths"), "width"),
    (drop("level_names"), "level_names"),
    (drop("classes"), "classes"),
    (put({"a": 0}, "classes"), "classes"),
    (drop("key"), "key"),
    (drop("key", "pool"), "key"),
    (put([0, 2], "key", "levels"), "key.levels"),
    (put("1,2", "key", "levels"), "key.levels"),
    (put([1, 2], "key", "trunk"), "key"),
])
def test_a_bad_manifest_field_is_named_and_rebuilt_on_request(built, tmp_path, change, field):
    path, model, data = built
    edit_manifest(path, change)
    before = sorted(p.name for p in path.iterdir())
    with pytest.raises(CacheError, match=f"manifest.json: field '{field}': expected .*--rebuild"):
        get_cache(tmp_path, model, data, SPEC)
    with pytest.raises(CacheError, match=f"manifest.json: field '{field}'"):
        open_cache(path)
    assert sorted(p.name for p in path.iterdir()) == before  # refused, not deleted
    rebuilt = get_cache(tmp_path, model, data, SPEC, rebuild=True)
    assert rebuilt.built and rebuilt.cache.path == path
    assert not get_cache(tmp_path, model, data, SPEC).built  # the new one is good


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", "not a version-1 cache manifest"),
    ("[" * 100_000 + "]" * 100_000, "unreadable manifest"),
    ("{broken", "unreadable manifest"),
])
def test_a_manifest_that_is_not_an_object_is_refused(built, tmp_path, text, match):
    path, model, data = built
    (path / "manifest.json").write_text(text)
    with pytest.raises(CacheError, match=f"manifest.json: {match}"):
        get_cache(tmp_path, model, data, SPEC)


def test_labels_outside_the_class_list_are_refused_despite_a_forged_checksum(built, tmp_path):
    path, model, data = built
    labels = np.load(path / "test_labels.npy")
    labels[2] = 3
    np.save(path / "test_labels.npy", labels)
    digest = hashlib.sha256((path / "test_labels.npy").read_bytes()).hexdigest()
    edit_manifest(path, put(digest, "arrays", "test_labels", "sha256"))
    with pytest.raises(CacheError, match="test_labels.npy: label 3 is out of range for the "
                       "manifest's 3 classes"):
        get_cache(tmp_path, model, data, SPEC)


def test_a_good_cache_beside_a_bad_one_is_untouched(built, tmp_path):
    path, model, data = built
    other_spec = CacheSpec(levels=[2], pool="gap", mean=(0.5,) * 3, std=(0.25,) * 3)
    other = get_cache(tmp_path, model, data, other_spec).cache.path
    stamp = (other / "train_features.npy").stat().st_mtime_ns
    edit_manifest(path, drop("width"))
    get_cache(tmp_path, model, data, SPEC, rebuild=True)
    again = get_cache(tmp_path, model, data, other_spec)
    assert not again.built and again.cache.path == other
    assert (other / "train_features.npy").stat().st_mtime_ns == stamp
