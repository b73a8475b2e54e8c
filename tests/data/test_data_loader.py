"""BatchLoader: batching, normalisation, exact resume and sharding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hfsnet.data import AugmentConfig, BatchLoader, ImageSet, normalize

MEAN, STD = (0.2, 0.5, 0.7), (0.1, 0.3, 0.25)


def numbered(n: int) -> ImageSet:
    """Image i has i in its top-left pixel of every channel and label i, so y reveals order."""
    images = torch.randint(0, 256, (n, 3, 6, 6), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    images[:, :, 0, 0] = torch.arange(n, dtype=torch.uint8)[:, None]
    return ImageSet(images, torch.arange(n), [str(i) for i in range(n)])


def loader(data: ImageSet, batch_size: int = 4, **options) -> BatchLoader:
    return BatchLoader(data, batch_size, mean=MEAN, std=STD, **options)


def labels_of(batches) -> list[int]:
    return [label for _, y in batches for label in y.tolist()]


@pytest.mark.parametrize("n, batch_size, drop_last, world_size, expected", [
    (10, 4, False, 1, 3), (10, 4, True, 1, 2), (8, 4, True, 1, 2),
    (10, 6, False, 3, 2), (10, 6, True, 3, 1), (10, 3, False, 3, 4),
])
def test_length_counts_global_batches(n, batch_size, drop_last, world_size, expected) -> None:
    data_loader = loader(numbered(n), batch_size, drop_last=drop_last, world_size=world_size)
    assert len(data_loader) == expected == len(list(data_loader.epoch(0)))


def test_unshuffled_batches_are_normalised_images_in_order() -> None:
    data = numbered(10)
    batches = list(loader(data).epoch(0))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32 and labels_of(batches) == list(range(10))
    expected = (data.images.double() / 255 - torch.tensor(MEAN).view(3, 1, 1).double()) \
        / torch.tensor(STD).view(3, 1, 1).double()
    assert torch.allclose(x.double(), expected, atol=1e-5)
    assert torch.equal(x, normalize(data.images, MEAN, STD))


def test_shuffled_epoch_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    data = numbered(50)
    first = labels_of(loader(data, shuffle=True, seed=1).epoch(0))
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert labels_of(loader(data, shuffle=True, seed=1).epoch(0)) == first
    assert labels_of(loader(data, shuffle=True, seed=1).epoch(1)) != first
    assert labels_of(loader(data, shuffle=True, seed=2).epoch(0)) != first


def test_labels_stay_with_their_images() -> None:
    data_loader = loader(numbered(20), shuffle=True, augment=AugmentConfig(crop_padding=0))
    for x, y in data_loader.epoch(3):
        pixel = torch.round(x[:, 0, 0, :].double() * STD[0] * 255 + MEAN[0] * 255)
        flipped = pixel[:, -1]  # a flipped image has its numbered pixel at the right
        assert torch.equal(torch.where(pixel[:, 0] == y, pixel[:, 0], flipped), y.double())


def test_resume_reproduces_the_tail_of_a_full_pass_bit_for_bit() -> None:
    options = dict(shuffle=True, seed=5, augment=AugmentConfig(crop_padding=2, cutout=3))
    full = list(loader(numbered(30), **options).epoch(4))
    tail = list(loader(numbered(30), **options).epoch(4, start_step=3))
    assert len(tail) == len(full) - 3
    for (x_full, y_full), (x_tail, y_tail) in zip(full[3:], tail, strict=True):
        assert torch.equal(x_full, x_tail) and torch.equal(y_full, y_tail)


def test_augmentation_differs_between_epochs_and_batches() -> None:
    data_loader = loader(numbered(8), batch_size=8, augment=AugmentConfig(crop_padding=2))
    (x0, _), = data_loader.epoch(0)
    (x1, _), = data_loader.epoch(1)
    assert not torch.equal(x0, x1)


@pytest.mark.parametrize("n, batch_size, world_size", [(12, 6, 3), (10, 4, 2), (10, 8, 4)])
def test_ranks_split_each_global_batch_of_a_single_process(n, batch_size, world_size) -> None:
    """Concatenating the ranks' shards of every batch gives the single-process batch: the same
    images in the same order with the same augmentation."""
    data = numbered(n)
    options = dict(shuffle=True, seed=7, augment=AugmentConfig(crop_padding=2, cutout=2))
    whole = list(loader(data, batch_size, **options).epoch(2))
    shards = [list(loader(data, batch_size, rank=rank, world_size=world_size, **options).epoch(2))
              for rank in range(world_size)]
    assert all(len(s) == len(whole) for s in shards)  # every rank takes the same number of steps
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([s[step][0] for s in shards]), x)
        assert torch.equal(torch.cat([s[step][1] for s in shards]), y)
    sizes = {len(s[0][1]) for s in shards}
    assert sizes == {batch_size // world_size}


def test_channels_last_output() -> None:
    (x, _), *_ = loader(numbered(4), channels_last=True).epoch(0)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_resolution_downscales_the_augmented_batch_and_keeps_the_layout() -> None:
    data = numbered(8)
    options = dict(augment=AugmentConfig(crop_padding=1), seed=3, channels_last=True)
    (full, y_full), *_ = loader(data, **options).epoch(1)
    (small, y_small), *_ = loader(data, **options).epoch(1, resolution=0.5)
    assert small.shape == (4, 3, 3, 3) and torch.equal(y_small, y_full)
    assert small.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(small, F.interpolate(full, size=(3, 3), mode="bilinear",
                                               antialias=True), atol=1e-6)


@pytest.mark.parametrize("options, match", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(rank=2, world_size=2), r"rank must be in \[0, 2\)"),
    (dict(seed=-1), "seed must be >= 0"),
])
def test_invalid_options(options, match) -> None:
    with pytest.raises(ValueError, match=match):
        loader(numbered(4), **options)
