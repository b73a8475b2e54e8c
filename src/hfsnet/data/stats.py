"""Per-channel statistics of uint8 images, and normalisation with them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

CHUNK = 4096  # images per histogram step: a 12 MB uint8 copy of one channel at 3 x 32 x 32


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of uint8 N x C x H x W images scaled to [0, 1], in float64.

    Counts a 256-bin histogram per channel, chunk by chunk, so no float copy of the images is
    made and the result is exact. ``std`` is the population standard deviation.
    """
    counts = torch.zeros(images.shape[1], 256, dtype=torch.float64)
    for chunk in images.split(CHUNK):
        for channel, plane in enumerate(chunk.unbind(1)):
            counts[channel] += torch.bincount(plane.reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / total
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


def normalize(images_uint8: torch.Tensor, mean: Sequence[float],
              std: Sequence[float]) -> torch.Tensor:
    """float32 ``(x / 255 - mean) / std`` per channel, for ... x C x H x W uint8 images."""
    return apply_affine(images_uint8, *normalize_affine(mean, std, images_uint8.device))


def apply_affine(images_uint8: torch.Tensor, scale: torch.Tensor,
                 shift: torch.Tensor) -> torch.Tensor:
    """float32 ``x * scale + shift``, the one float copy modified in place (3x faster than
    ``torch.addcmul`` on a 256 x 3 x 32 x 32 batch)."""
    return images_uint8.float().mul_(scale).add_(shift)


def normalize_affine(mean: Sequence[float], std: Sequence[float],
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each C x 1 x 1 float32, with ``normalize(x) = x * scale + shift``."""
    mean64 = torch.tensor(mean, dtype=torch.float64).view(-1, 1, 1)
    std64 = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
    scale, shift = 1 / (255 * std64), -mean64 / std64
    return scale.float().to(device), shift.float().to(device)
