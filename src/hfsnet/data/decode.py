"""Decoding single images with Pillow into uint8 arrays, treating hostile files as unreadable."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DataError

# 2**26 px (e.g. 8192 x 8192) is far beyond any image a classifier here trains on; a file that
# claims more is a decompression bomb or a mistake. Pillow warns above this and refuses above
# twice it; decode_array turns the warning into an error too.
MAX_IMAGE_PIXELS = 2**26
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Modes that hold one intensity per pixel; everything else is converted to RGB.
GRAY_MODES = frozenset({"1", "L", "LA"})

# What Pillow raises on corrupt or hostile input: plugins differ, so the list is long.
UNREADABLE = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def image_extensions() -> frozenset[str]:
    """Lower-case file suffixes (with the dot) that Pillow can open."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def decode_array(
    source: bytes | Path, mode: str | None, size: tuple[int, int] | None
) -> np.ndarray:
    """Decode an encoded image (its bytes, or a path) into H x W (mode L) or H x W x 3 (RGB) uint8.

    ``mode`` None keeps grayscale images grayscale and converts every other mode to RGB. ``size`` is
    (H, W); other sizes are resized with bilinear filtering. Raises one of ``UNREADABLE``.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fp) as image:
            target = mode or ("L" if image.mode in GRAY_MODES else "RGB")
            if image.mode != target:
                image = image.convert(target)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image)


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 N x C x H x W images (C = 1 or 3) to ``size`` (H, W) with Pillow's bilinear."""
    if images.shape[-2:] == size:
        return images
    out = np.empty((*images.shape[:2], *size), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        out[i] = array_to_chw(np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)))
    return out


def read_image_file(path: str | Path, in_channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Read one image file of any size and mode as uint8 C x H x W, ready for a trained model.

    The image is converted to L (``in_channels`` 1) or RGB (3) and resized to ``size`` (H, W)
    with Pillow's bilinear filter. Raises DataError naming the file if it cannot be read.
    """
    if in_channels not in (1, 3):
        raise DataError(f"{path}: in_channels must be 1 or 3, got {in_channels}")
    try:
        array = decode_array(Path(path), "L" if in_channels == 1 else "RGB", size)
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such image file") from err
    except UNREADABLE as err:
        raise DataError(f"{path}: not a readable image ({err})") from err
    return torch.from_numpy(array_to_chw(array).copy())


def array_to_chw(array: np.ndarray) -> np.ndarray:
    """View an H x W or H x W x C array as C x H x W."""
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
