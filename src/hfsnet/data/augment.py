"""Batched training augmentation of uint8 N x C x H x W images, as tensor ops (no per-image loop).

Every random draw comes from the ``torch.Generator`` passed in (a CPU generator; draws are moved
to the images' device), so the same generator state gives the same augmentation on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hfsnet.data.errors import DataError


@dataclass
class AugmentConfig:
    """``crop_padding``: zero padding (px) for random crops, 0 = off; ``flip``: horizontal
    flips, random per batch or, with ``alternate_flips``, in alternate epochs per image (the
    caller passes the mask: see ``BatchLoader``); ``cutout``: side (px) of a square zeroed at a
    random centre, 0 = off."""

    crop_padding: int = 4
    flip: bool = True
    cutout: int = 0
    alternate_flips: bool = False

    @property
    def active(self) -> bool:
        """Whether any transform is on: an inactive config leaves every batch as it is."""
        return bool(self.crop_padding or self.flip or self.cutout)


def augment(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
            mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop, then flip, then cutout, as ``config`` enables them. ``mirror`` (bool, one
    per image) replaces the random flips when given."""
    x = random_crop(x, config.crop_padding, generator)
    if mirror is not None:
        x = torch.where(mirror.to(x.device)[:, None, None, None], x.flip(-1), x)
    elif config.flip:
        x = random_flip(x, generator)
    return cutout(x, config.cutout, generator)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per image, an H x W window at a random offset of the image zero-padded by ``padding``."""
    if padding == 0:
        return x
    n, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = _draw(torch.randint(0, 2 * padding + 1, (n,), generator=generator), x)
    left = _draw(torch.randint(0, 2 * padding + 1, (n,), generator=generator), x)
    # A view (no copy) of every H x W window: n x C x (2p+1) x (2p+1) x H x W; then one gather.
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)
    return windows[torch.arange(n, device=x.device), :, top, left]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right where ``flip_mask(len(x), generator)`` says so."""
    flip = _draw(flip_mask(len(x), generator), x)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def flip_mask(n: int, generator: torch.Generator) -> torch.Tensor:
    """Which of ``n`` images to flip: each with probability 1/2 (bool, on the CPU)."""
    return torch.rand(n, generator=generator) < 0.5


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square per image, centred anywhere in the image and clipped at
    its border (DeVries & Taylor, 2017)."""
    if size == 0:
        return x
    n, _, height, width = x.shape
    top = _draw(torch.randint(0, height, (n,), generator=generator), x) - size // 2
    left = _draw(torch.randint(0, width, (n,), generator=generator), x) - size // 2
    rows = torch.arange(height, device=x.device)[None, :]
    cols = torch.arange(width, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # n x H
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # n x W
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


def downscale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Float images resized to ``scale`` of their height and width (each side rounded, at
    least 1 px), bilinear with antialiasing, so the small image averages the pixels it covers
    instead of sampling every few."""
    height, width = x.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def _draw(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Random values drawn on the CPU, moved to the device of ``like``."""
    return values.to(like.device)


# Fixed copies of every training image for a feature cache (``--train-views``): "flip" adds the
# mirror, "dihedral" the 8 flips and quarter turns, for images with no up or left (satellite,
# microscopy). Quarter turns swap height and width, so they need square images.
Transform = Callable[[torch.Tensor], torch.Tensor]
_TRANSFORMS: dict[str, Transform] = {
    "identity": lambda x: x,
    "mirror": lambda x: x.flip(-1),
    "upside_down": lambda x: x.flip(-2),
    "turn180": lambda x: x.flip(-2, -1),
    "transpose": lambda x: x.transpose(-2, -1),
    "turn90": lambda x: x.transpose(-2, -1).flip(-1),
    "turn270": lambda x: x.transpose(-2, -1).flip(-2),
    "antitranspose": lambda x: x.transpose(-2, -1).flip(-2, -1),
}
VIEW_TRANSFORMS = {"none": ("identity",), "flip": ("identity", "mirror"),
                   "dihedral": tuple(_TRANSFORMS)}


def view_count(views: str) -> int:
    return len(VIEW_TRANSFORMS[views])


def view_transforms(views: str, size: tuple[int, int]) -> list[Transform]:
    """The transforms of ``views`` for images of ``size`` (height, width), identity first."""
    names = VIEW_TRANSFORMS[views]
    if len(names) > 2 and size[0] != size[1]:
        raise DataError(f"--train-views {views}: quarter turns need square images, got "
                        f"{size[0]}x{size[1]}")
    return [_TRANSFORMS[name] for name in names]
