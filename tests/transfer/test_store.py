import dataclasses
import json

import numpy as np
import pytest
import torch

import hfsnet.transfer.extract as extract_module
from hfsnet.data import DataSplits, ImageSet, normalize
from hfsnet.models import create_model
from hfsnet.models.head import pool_levels
from hfsnet.train.distributed import DistContext
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.extract import CacheSpec, get_cache

CLASSES = ["a", "b", "c"]


def synthetic_data(seed=0, n_train=30, n_test=12):
    g = torch.Generator().manual_seed(seed)

    def split(n):
        images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
        return ImageSet(images, torch.arange(n) % 3, CLASSES)

    return DataSplits("synthetic", split(n_train), split(n_test), None, (0.5,) * 3, (0.25,) * 3,
                      "digest")


def small_model(stages=(1, 1, 1), seed=0):
    torch.manual_seed(seed)
    return create_model("hfs", num_classes=3, stages=stages, growth=4, stem=8).eval()


def spec(**over):
    values = dict(levels=[1, 2, 3], pool="gap", mean=(0.5,) * 3, std=(0.25,) * 3,
                  batch_size=7)
    values.update(over)
    return CacheSpec(**values)


def test_descriptors_are_the_trunks_pooled_stages(tmp_path):
    model, data = small_model(), synthetic_data()
    found = get_cache(tmp_path, model, data, spec(levels=[1, 3], pool="2x2"))
    assert found.built and found.cache.path.parent == tmp_path
    with torch.no_grad():
        x = normalize(data.test.images, (0.5,) * 3, (0.25,) * 3)
        expected = pool_levels(model.forward_features(x), [1, 3], "2x2").half().numpy()
    # The cache's trunk pass folds batch norms into the convs: equal to fp16 rounding.
    np.testing.assert_allclose(found.cache.features("test").astype(np.float32),
                               expected.astype(np.float32), rtol=2e-3, atol=1e-4)
    np.testing.assert_array_equal(found.cache.labels("test"), data.test.labels.numpy())
    manifest = found.cache.manifest
    assert manifest["level_names"] == ["stage1", "stage3"]
    assert manifest["width"] == 4 * sum(model.stage_channels()[i] for i in (0, 2))
    assert manifest["arrays"]["train_features"]["shape"] == [30, manifest["width"]]
    assert manifest["arrays"]["train_features"]["dtype"] == "float16"


def test_same_key_reuses_the_cache(tmp_path):
    model, data = small_model(), synthetic_data()
    first = get_cache(tmp_path, model, data, spec())
    stamp = (first.cache.path / "train_features.npy").stat().st_mtime_ns
    torch.nn.init.zeros_(model.head.classifier.weight)  # the head is not part of the trunk
    again = get_cache(tmp_path, model, synthetic_data(), spec(batch_size=100))
    assert not again.built and again.cache.path == first.cache.path
    assert (again.cache.path / "train_features.npy").stat().st_mtime_ns == stamp


def _perturb_weights(model, data, s):
    weight = next(model.blocks[0].parameters())
    with torch.no_grad():
        weight[(0,) * weight.ndim] += 1e-3
    return model, data, s


def _perturb_pixel(model, data, s):
    images = data.train.images.clone()
    images[0, 0, 0, 0] ^= 1
    return model, dataclasses.replace(data, train=ImageSet(images, data.train.labels,
                                                           CLASSES)), s


def _rename_class(model, data, s):
    names = ["a", "b", "z"]
    return model, dataclasses.replace(
        data, train=ImageSet(data.train.images, data.train.labels, names),
        test=ImageSet(data.test.images, data.test.labels, names)), s


def _other_pool_type(model, data, s):
    # Same weights, max instead of average pooling between stages: other features.
    other = create_model("hfs", num_classes=3, stages=(1, 1, 1), growth=4, stem=8, pool="max")
    other.load_state_dict(model.state_dict())
    return other.eval(), data, s


@pytest.mark.parametrize("change", [
    _perturb_weights,
    _perturb_pixel,
    _rename_class,
    _other_pool_type,
    lambda m, d, s: (m, d, dataclasses.replace(s, precision="bf16")),
    lambda m, d, s: (m, d, dataclasses.replace(s, mean=(0.4, 0.5, 0.5))),
    lambda m, d, s: (m, d, dataclasses.replace(s, levels=[3])),
    lambda m, d, s: (m, d, dataclasses.replace(s, pool="2x2")),
], ids=["weights", "pixel", "class-name", "trunk-option", "precision", "normalisation",
        "levels", "pool"])
def test_any_change_of_the_key_builds_a_new_cache(tmp_path, change):
    model, data = small_model(), synthetic_data()
    first = get_cache(tmp_path, model, data, spec())
    second = get_cache(tmp_path, *change(model, data, spec()))
    assert second.built and second.cache.path != first.cache.path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [first.cache.path.name, second.cache.path.name])


def test_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
    model, data = small_model(), synthetic_data()
    real = extract_module.extract
    calls = []

    def dies_on_test_split(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_module, "extract", dies_on_test_split)
    with pytest.raises(KeyboardInterrupt):
        get_cache(tmp_path, model, data, spec())
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(extract_module, "extract", real)
    assert get_cache(tmp_path, model, data, spec()).built


def test_next_build_removes_what_a_killed_builder_left(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # that process has exited: nothing of it is running
    killed = tmp_path / f".abc.{dead_pid}.x1.tmp"
    set_aside = tmp_path / f".abc.{dead_pid}.old"
    running = tmp_path / f".def.{os.getpid()}.x2.tmp"  # a live builder's: left alone
    for path in (killed, set_aside, running):
        path.mkdir()
        (path / "train.npy").write_bytes(b"partial")
    built = get_cache(tmp_path, small_model(), synthetic_data(), spec())
    assert built.built
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [running.name, built.cache.path.name])


def test_corrupt_array_is_detected_and_rebuilt_on_request(tmp_path):
    model, data = small_model(), synthetic_data()
    path = get_cache(tmp_path, model, data, spec()).cache.path
    raw = bytearray((path / "train_features.npy").read_bytes())
    raw[-3] ^= 0x40
    (path / "train_features.npy").write_bytes(bytes(raw))
    with pytest.raises(CacheError, match=r"train_features.npy: checksum mismatch.*--rebuild"):
        get_cache(tmp_path, model, data, spec())
    rebuilt = get_cache(tmp_path, model, data, spec(), rebuild=True)
    assert rebuilt.built and rebuilt.cache.path == path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_missing_array_is_named(tmp_path):
    model, data = small_model(), synthetic_data()
    path = get_cache(tmp_path, model, data, spec()).cache.path
    (path / "test_labels.npy").unlink()
    with pytest.raises(CacheError, match="test_labels.npy: array missing"):
        get_cache(tmp_path, model, data, spec())


def test_a_named_cache_of_other_weights_or_data_says_which(tmp_path):
    model, data = small_model(), synthetic_data()
    path = get_cache(tmp_path, model, data, spec()).cache.path
    with pytest.raises(CacheError, match=r"its trunk \(model and weights\) differ"):
        get_cache(path, small_model(seed=1), data, spec())
    with pytest.raises(CacheError, match=r"its data \(images and labels\) differ"):
        get_cache(path, model, synthetic_data(seed=1), spec())
    beside = get_cache(path, small_model(seed=1), data, spec(), rebuild=True)
    assert beside.built and beside.cache.path.parent == tmp_path
    assert beside.cache.path != path


def test_a_trunk_that_does_not_fit_the_cache_levels_is_refused(tmp_path):
    path = get_cache(tmp_path, small_model(), synthetic_data(), spec()).cache.path
    with pytest.raises(CacheError, match=r"does not fit this cache.*stages \[1, 2, 3\]"):
        get_cache(path, small_model(stages=(1, 1)), synthetic_data(), spec(levels=[1, 2]))


def test_manifest_records_key_and_checksums(tmp_path):
    path = get_cache(tmp_path, small_model(), synthetic_data(), spec()).cache.path
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["key_digest"] == path.name
    assert set(manifest["key"]) == {"trunk", "data", "preprocessing", "levels", "pool"}
    assert manifest["key"]["preprocessing"]["precision"] == "fp32"
    assert len(manifest["arrays"]["test_features"]["sha256"]) == 64


def test_train_views_cache_every_view_of_the_training_images_only(tmp_path):
    model, data = small_model(), synthetic_data()
    plain = get_cache(tmp_path, model, data, spec()).cache
    viewed = get_cache(tmp_path, model, data, spec(train_views="flip")).cache
    assert viewed.path != plain.path and (viewed.views, plain.views) == (2, 1)
    assert "train_views" not in plain.key["preprocessing"]  # older caches keep their key
    train = viewed.features("train").astype(np.float32)
    assert train.shape == (60, plain.width)
    np.testing.assert_array_equal(train[:30], plain.features("train"))
    with torch.no_grad():
        x = normalize(data.train.images.flip(-1), (0.5,) * 3, (0.25,) * 3)
        mirrored = pool_levels(model.forward_features(x), [1, 2, 3], "gap").numpy()
    np.testing.assert_allclose(train[30:], mirrored, rtol=2e-3, atol=1e-4)
    np.testing.assert_array_equal(viewed.labels("train"), np.tile(data.train.labels, 2))
    np.testing.assert_array_equal(viewed.features("test"), plain.features("test"))


def test_shards_of_a_viewed_split_reassemble_view_major(tmp_path):
    """Two ranks each cache their own images under every view; merged in rank order within
    each view, the rows are those of one process (row v * n + i: image i under view v)."""
    model, data, views = small_model(), synthetic_data(n_train=31), spec(train_views="flip")
    one: dict[str, np.ndarray] = {}
    extract_module._extract_splits(model, data, views,
                                   lambda name, shape, dtype: one.setdefault(
                                       name, np.zeros(shape, dtype)), DistContext())
    for rank in range(2):
        extract_module._extract_splits(model, data, views,
                                       extract_module._shard_allocator(tmp_path, rank),
                                       DistContext(rank=rank, world_size=2))
    for split, count in (("train", 2), ("test", 1)):
        for name in (f"{split}_features", f"{split}_labels"):
            merged = extract_module._read_shards(tmp_path, name, 2, count)
            np.testing.assert_allclose(merged.astype(np.float32), one[name].astype(np.float32),
                                       atol=2e-3, err_msg=name)
    np.testing.assert_array_equal(one["train_labels"], np.tile(data.train.labels, 2))


@pytest.mark.parametrize(("batch", "side", "expected"), [
    (500, (64, 64), 500), (500, (32, 32), 500), (500, (128, 128), 125), (500, (224, 224), 40),
    (500, (64, 128), 250), (7, (1024, 1024), 1), (64, (224, 224), 5)])
def test_larger_inputs_go_in_proportionally_fewer_per_batch(batch, side, expected):
    assert extract_module.images_per_batch(batch, side) == expected


def test_batches_count_the_pixels_the_trunk_computes_at(tmp_path, monkeypatch):
    """A trunk that resizes its inputs to 128 px gets a quarter of a 64 px batch per call; the
    descriptors are the same as in batches of one."""
    model, data = small_model(), synthetic_data(n_train=6, n_test=3)
    sizes = []

    def resized_to_128(x):
        sizes.append(len(x))
        x = torch.nn.functional.interpolate(x, size=(128, 128), mode="nearest")
        return type(model).forward_features(model, x)

    monkeypatch.setattr(model, "forward_features", resized_to_128)
    assert extract_module.trunk_side(model, data.train) == (16, 16)
    model.preprocessing = {"image_size": 128}
    assert extract_module.trunk_side(model, data.train) == (128, 128)
    batched = get_cache(tmp_path / "a", model, data, spec(batch_size=8)).cache
    assert max(sizes) == 2 and sizes[-1] == 1  # 8 images of 64 px: 2 of 128 px; 3 test images
    sizes.clear()
    single = get_cache(tmp_path / "b", model, data, spec(batch_size=4)).cache
    assert set(sizes) == {1}
    for split in ("train", "test"):
        np.testing.assert_allclose(batched.features(split).astype(np.float32),
                                   single.features(split).astype(np.float32), rtol=2e-3,
                                   atol=1e-4)


def test_one_folded_trunk_serves_every_split(tmp_path, monkeypatch):
    """Folding, its check and the first batch's set-up are paid once per build, and the trunk
    is told the build's whole size (train views included) for its compile decision."""
    made = []
    real = extract_module.FrozenTrunk

    def counting(model, **kwargs):
        made.append(kwargs["n_images"])
        return real(model, **kwargs)

    monkeypatch.setattr(extract_module, "FrozenTrunk", counting)
    data = synthetic_data(n_train=10, n_test=4)
    cache = get_cache(tmp_path, small_model(), data, spec(train_views="flip")).cache
    assert made == [2 * 10 + 4]
    assert len(cache.labels("train")) == 20 and len(cache.labels("test")) == 4
