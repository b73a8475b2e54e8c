"""Single-image decoding: modes, resizing, and hostile files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hfsnet.data import DataError, read_image_file
from hfsnet.data.decode import MAX_IMAGE_PIXELS, decode_array, resize_images


def save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_read_image_file_converts_mode_and_resizes(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (40, 20), (10, 200, 30, 128))
    path = save(rgba, tmp_path / "big.png")
    rgb = read_image_file(path, 3, (8, 16))
    gray = read_image_file(path, 1, (8, 16))
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, 8, 16)
    assert rgb[:, 0, 0].tolist() == [10, 200, 30]  # alpha dropped, colour kept
    assert gray.shape == (1, 8, 16)
    assert gray[0, 0, 0].item() == Image.new("RGB", (1, 1), (10, 200, 30)).convert("L").getpixel(
        (0, 0))


def test_read_image_file_resizes_like_pillow_bilinear(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    path = save(Image.fromarray(pixels), tmp_path / "odd.png")
    expected = np.asarray(Image.fromarray(pixels).resize((9, 5), Image.Resampling.BILINEAR))
    assert np.array_equal(read_image_file(path, 3, (5, 9)).numpy(), expected.transpose(2, 0, 1))


def test_grayscale_file_read_as_rgb_repeats_the_channel(tmp_path: Path) -> None:
    path = save(Image.new("L", (4, 4), 77), tmp_path / "gray.jpg")
    image = read_image_file(path, 3, (4, 4))
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.mark.parametrize("content", [b"this is not an image", b""])
def test_unreadable_file_names_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match="fake.jpg"):
        read_image_file(path, 3, (8, 8))


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.png: no such image file"):
        read_image_file(tmp_path / "nope.png", 3, (8, 8))


def test_bad_channel_count_is_refused(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    with pytest.raises(DataError, match="in_channels must be 1 or 3"):
        read_image_file(path, 2, (4, 4))


def test_decompression_bomb_is_unreadable(tmp_path: Path, png_claiming) -> None:
    side = int(MAX_IMAGE_PIXELS**0.5) + 1  # just over the limit: Pillow only warns there
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(side, side))
    with pytest.raises(DataError, match=r"bomb\.png: not a readable image .*decompression bomb"):
        read_image_file(path, 3, (8, 8))
    with pytest.raises(Image.DecompressionBombError):  # far over: Pillow refuses by itself
        decode_array(png_claiming(4 * side, 4 * side), None, None)


def test_truncated_jpeg_is_unreadable(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        read_image_file(path, 3, (64, 64))


def test_decode_array_keeps_grayscale_and_converts_palette_to_rgb() -> None:
    def encoded(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    assert decode_array(encoded(Image.new("L", (3, 2), 9)), None, None).shape == (2, 3)
    assert decode_array(encoded(Image.new("1", (3, 2), 1)), None, None).shape == (2, 3)
    palette = Image.new("RGB", (3, 2), (1, 2, 3)).convert("P")
    assert decode_array(encoded(palette), None, None).shape == (2, 3, 3)


def test_resize_images_matches_per_image_pillow() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 7, 7), dtype=np.uint8)
    out = resize_images(images, (4, 5))
    expected = np.asarray(Image.fromarray(images[1, 0]).resize((5, 4), Image.Resampling.BILINEAR))
    assert out.shape == (2, 1, 4, 5) and np.array_equal(out[1, 0], expected)
    assert resize_images(images, (7, 7)) is images
