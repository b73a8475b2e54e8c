"""Batched augmentation: shapes, dtypes, exact semantics on hand-checked examples, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hfsnet.data import AugmentConfig
from hfsnet.data.augment import (
    augment,
    cutout,
    downscale,
    flip_mask,
    random_crop,
    random_flip,
    view_count,
    view_transforms,
)
from hfsnet.data.errors import DataError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n: int = 64, channels: int = 3, height: int = 5, width: int = 6) -> torch.Tensor:
    return torch.randint(1, 256, (n, channels, height, width), generator=gen(99),
                         dtype=torch.uint8)


@pytest.mark.parametrize("op", [
    lambda x, g: random_crop(x, 2, g),
    random_flip,
    lambda x, g: cutout(x, 3, g),
    lambda x, g: augment(x, AugmentConfig(crop_padding=2, flip=True, cutout=3), g),
])
def test_shape_and_dtype_are_kept_and_draws_are_deterministic(op) -> None:
    x = batch()
    out = op(x, gen(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, op(x, gen(1)))
    assert not torch.equal(out, op(x, gen(2)))


def test_flip_mirrors_exactly_the_masked_images() -> None:
    x = batch()
    out = random_flip(x, gen(7))
    mask = flip_mask(len(x), gen(7))
    assert 0 < int(mask.sum()) < len(x)
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])


def test_crop_without_padding_is_identity() -> None:
    x = batch()
    assert torch.equal(random_crop(x, 0, gen(0)), x)


def test_crops_are_the_windows_of_the_zero_padded_image() -> None:
    image = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8)  # padded by 1 to 4 x 4
    windows = [  # every 2 x 2 window of the padded image, by hand
        [[0, 0], [0, 1]], [[0, 0], [1, 2]], [[0, 0], [2, 0]],
        [[0, 1], [0, 3]], [[1, 2], [3, 4]], [[2, 0], [4, 0]],
        [[0, 3], [0, 0]], [[3, 4], [0, 0]], [[4, 0], [0, 0]],
    ]
    out = random_crop(image.expand(200, 1, 2, 2), 1, gen(0))
    seen = [out[i, 0].tolist() for i in range(len(out))]
    assert all(crop in windows for crop in seen)
    assert all(window in seen for window in windows)  # every offset is drawn


def test_crop_moves_all_channels_together() -> None:
    x = batch(n=16, channels=3, height=5, width=6)
    out = random_crop(x, 2, gen(3))
    padded = F.pad(x, (2, 2, 2, 2))
    for image, crop in zip(padded, out, strict=True):
        assert any(torch.equal(crop, image[:, top:top + 5, left:left + 6])
                   for top in range(5) for left in range(5))


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    x = torch.full((300, 2, 8, 8), 200, dtype=torch.uint8)
    out = cutout(x, 3, gen(0))
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])  # same square in every channel
    for mask in zero[:, 0]:
        rows, cols = mask.any(1), mask.any(0)
        assert torch.equal(mask, rows[:, None] & cols[None, :])  # a rectangle
        assert 1 <= int(rows.sum()) <= 3 and 1 <= int(cols.sum()) <= 3
    sizes = zero[:, 0].sum((1, 2))
    assert int(sizes.max()) == 9 and int(sizes.min()) < 9  # whole inside, clipped at a border
    assert torch.equal(out[~zero], x[~zero])


def test_cutout_off_is_identity() -> None:
    x = batch()
    assert torch.equal(cutout(x, 0, gen(0)), x)


def test_config_switches_each_step() -> None:
    x = batch()
    assert torch.equal(augment(x, AugmentConfig(crop_padding=0, flip=False, cutout=0), gen(0)), x)
    assert torch.equal(augment(x, AugmentConfig(crop_padding=0, flip=True, cutout=0), gen(4)),
                       random_flip(x, gen(4)))


def views_of(images, views):
    return [t(images) for t in view_transforms(views, tuple(images.shape[-2:]))]


def test_views_are_the_flips_and_quarter_turns_identity_first():
    images = torch.randint(0, 256, (3, 2, 5, 5), dtype=torch.uint8)
    plain, mirrored = views_of(images, "flip")
    assert torch.equal(plain, images) and torch.equal(mirrored, images.flip(-1))
    assert [torch.equal(v, images) for v in views_of(images, "none")] == [True]
    every = views_of(images, "dihedral")
    # the 8 symmetries of the square: distinct, and they include each quarter turn
    assert len({v.contiguous().numpy().tobytes() for v in every}) == 8
    for turns in range(4):
        turned = torch.rot90(images, turns, dims=(-2, -1))
        assert any(torch.equal(turned, v) for v in every)
    assert view_count("dihedral") == 8 and view_count("none") == 1


def test_quarter_turns_of_a_non_square_image_are_refused():
    images = torch.zeros(2, 3, 4, 6, dtype=torch.uint8)
    assert [v.shape for v in views_of(images, "flip")] == [(2, 3, 4, 6)] * 2
    with pytest.raises(DataError, match="--train-views dihedral: .*square images, got 4x6"):
        view_transforms("dihedral", (4, 6))


def test_downscale_averages_the_pixels_it_covers() -> None:
    checkerboard = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    x = checkerboard.float().expand(2, 3, 8, 8)
    half = downscale(x, 0.5)
    assert half.shape == (2, 3, 4, 4)
    # antialiased: each output pixel averages 0s and 1s (within 2% where the filter is clipped
    # at the border) instead of sampling one of them
    assert torch.allclose(half[..., 1:3, :], torch.full((2, 3, 2, 4), 0.5), atol=1e-6)
    assert (half - 0.5).abs().max() < 0.02
    assert downscale(torch.ones(1, 1, 32, 30), 0.75).shape == (1, 1, 24, 22)  # 22.5 rounds even
    assert downscale(torch.ones(1, 1, 3, 3), 0.1).shape == (1, 1, 1, 1)
