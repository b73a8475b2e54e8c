"""Decoding single images with Pillow into uint8 arrays, treating hostile files as unreadable.

Every Pillow mode ends up as 8-bit L or RGB:

- 16-bit and 32-bit integer grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``) is read on
  the 16-bit scale, clipped to 0..65535 and divided by 257 with rounding, so 65535 is 255 and a
  dark 1000 is 4 (Pillow's own ``convert("L")`` clips instead, turning a dark image white).
- ``F`` (float) is on Pillow's 8-bit scale, the one ``convert("F")`` of an L image gives: rounded
  and clipped to 0..255; NaN reads as 0.
- 16-bit colour PNGs (and 16-bit gray + alpha, which thus arrives as RGB) Pillow itself opens
  as RGB/RGBA holding the high byte of each sample (``v // 256``, at most one level below
  ``round(v / 257)``); an 8-bit image stored at 16 bits (``v * 257``) reads back exactly.
- Alpha is dropped, not composited: ``RGBA``, ``LA`` and palette images with transparency keep
  the colour stored under every pixel, transparent ones too.
- ``P`` (palette) becomes RGB, ``1`` becomes L (0 or 255), ``CMYK``, ``YCbCr`` and the rest go
  through Pillow's conversion to RGB.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DataError

# 2**26 px (e.g. 8192 x 8192, 192 MiB as RGB) is far beyond any image a classifier here trains
# on; a file that claims more is a decompression bomb or a mistake. Checked from the header,
# before any pixel is decoded. Pillow's own, larger limit still applies (its warning is an error
# here); Pillow's global setting is left alone.
MAX_IMAGE_PIXELS = 2**26

# Modes that hold one intensity per pixel, once reduced to 8 bits by ``to_8bit``.
GRAY_MODES = frozenset({"1", "L", "LA", "La"})

# One 16-bit level is 1/257 of an 8-bit one: 65535 = 255 * 257.
LEVELS_16_PER_8 = 257

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

    ``mode`` None keeps grayscale images grayscale and converts every other mode to RGB (see the
    module docstring for how each mode is read). ``size`` is (H, W); other sizes are resized with
    bilinear filtering. Raises one of ``UNREADABLE``, DecompressionBombError for an image whose
    header claims more than ``MAX_IMAGE_PIXELS``.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fp) as opened:
            check_pixels(opened.size)
            image = to_8bit(opened)
            target = mode or ("L" if image.mode in GRAY_MODES else "RGB")
            if image.mode != target:
                image = image.convert(target)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image)


def check_pixels(size: tuple[int, int]) -> None:
    """Refuse an image whose (width, height) exceeds ``MAX_IMAGE_PIXELS``, before decoding it."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(
            f"{width} x {height} = {width * height:,} pixels exceeds the limit of "
            f"{MAX_IMAGE_PIXELS:,} (hfsnet.data.decode.MAX_IMAGE_PIXELS); a decompression bomb "
            "or an image far too large to train on")


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` in a mode Pillow converts to L or RGB without losing its scale.

    High-bit-depth grayscale becomes L by scaling (see the module docstring); palette images
    become RGBA, so that a transparent palette entry converts like any other alpha.
    """
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(image), image.mode), "L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA")
    return image


def _scale_to_uint8(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        return np.clip(np.rint(np.nan_to_num(pixels, nan=0.0)), 0, 255).astype(np.uint8)
    levels = np.clip(pixels.astype(np.int64), 0, 255 * LEVELS_16_PER_8)
    return ((2 * levels + LEVELS_16_PER_8) // (2 * LEVELS_16_PER_8)).astype(np.uint8)


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

    The image is converted to L (``in_channels`` 1) or RGB (3) as ``decode_array`` does and
    resized to ``size`` (H, W) with Pillow's bilinear filter. Raises DataError naming the file if
    it cannot be read.
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
