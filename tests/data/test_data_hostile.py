"""Data that lies: high bit depths and unusual modes, decompression bombs in images and
archives, lying IDX and CIFAR headers, and datasets too small to split."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from hfsnet.data import DataError, load_dataset, read_image_file
from hfsnet.data.archive import gunzip, iter_entries
from hfsnet.data.cifar import CIFAR10
from hfsnet.data.decode import decode_array
from hfsnet.data.errors import human_bytes
from hfsnet.data.folder import read_image_folder
from hfsnet.data.imageset import ImageSet
from hfsnet.data.splits import carve_validation, stratified_pick

GIB = 1 << 30


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def strict_decode(data: bytes, mode: str | None = None) -> np.ndarray:
    """decode_array with every warning an error: conversions must not warn either."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return decode_array(data, mode, None)


# ---- bit depths and modes -------------------------------------------------------------------


def test_dark_16bit_grayscale_png_stays_dark(tmp_path: Path) -> None:
    image = Image.fromarray(np.full((4, 5), 1000, np.uint16))
    assert image.mode == "I;16"
    path = tmp_path / "dark16.png"
    image.save(path)
    assert strict_decode(path.read_bytes()).tolist() == [[4] * 5] * 4  # round(1000 / 257)
    rgb = read_image_file(path, 3, (4, 5))
    assert rgb.shape == (3, 4, 5) and rgb.unique().tolist() == [4]


def test_16bit_grayscale_scales_by_257_with_rounding() -> None:
    levels = np.array([[0, 128, 129, 257, 1000, 32896, 65278, 65535]], np.uint16)
    decoded = strict_decode(encoded(Image.fromarray(levels)))
    # 128/257 = 0.498 rounds down, 129/257 = 0.502 up; 32896 = 128 * 257 + 0
    assert decoded.tolist() == [[0, 0, 1, 1, 4, 128, 254, 255]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_high_bit_depth_tiff_modes_are_scaled(mode: str) -> None:
    image = Image.new(mode, (3, 2), 1000)
    data = encoded(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == mode
    assert strict_decode(data).tolist() == [[4, 4, 4]] * 2


def test_32bit_integer_values_outside_16_bits_are_clipped() -> None:
    pixels = np.array([[-5, 65535, 70000, 2**30]], np.int32)
    assert strict_decode(encoded(Image.fromarray(pixels, "I"), "TIFF")).tolist() == [
        [0, 255, 255, 255]]


def test_float_images_are_on_the_8bit_scale() -> None:
    pixels = np.array([[-3.0, 0.4, 100.6, 254.5, 300.0, np.nan]], np.float32)
    data = encoded(Image.fromarray(pixels, "F"), "TIFF")
    assert strict_decode(data).tolist() == [[0, 0, 101, 254, 255, 0]]  # 254.5 rounds to even


def test_16bit_rgb_png_of_an_8bit_image_decodes_to_it(png16) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint16)
    data = png16(pixels * 257)
    assert np.array_equal(strict_decode(data), pixels.astype(np.uint8))
    rgba = np.concatenate([pixels, np.full((5, 7, 1), 9, np.uint16)], axis=2) * 257
    assert np.array_equal(strict_decode(png16(rgba)), pixels.astype(np.uint8))  # alpha dropped


def test_dark_16bit_colour_png_stays_dark(png16) -> None:
    rgb = strict_decode(png16(np.full((2, 3, 3), 1000, np.uint16)))
    assert rgb.shape == (2, 3, 3) and set(rgb.ravel().tolist()) <= {3, 4}  # Pillow: high byte
    gray_alpha = strict_decode(png16(np.full((2, 3, 2), 1000, np.uint16)))  # Pillow: RGBA
    assert gray_alpha.shape == (2, 3, 3) and set(gray_alpha.ravel().tolist()) <= {3, 4}


def test_palette_with_transparency_keeps_the_stored_colour() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # index 0 fully transparent
    data = encoded(palette)
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert strict_decode(data).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    gray = strict_decode(data, "L")
    assert gray.shape == (1, 2) and gray[0, 1] == Image.new("RGB", (1, 1), (200, 100, 50)).convert(
        "L").getpixel((0, 0))


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 2), (200, 100, 50, 0))
    assert strict_decode(encoded(rgba)).tolist() == [[[200, 100, 50]] * 3] * 2
    gray_alpha = Image.new("LA", (3, 2), (77, 10))
    assert strict_decode(encoded(gray_alpha)).tolist() == [[77] * 3] * 2
    path = tmp_path / "la.png"
    gray_alpha.save(path)
    assert read_image_file(path, 3, (2, 3)).unique().tolist() == [77]  # 3 channels, as promised


def test_bilevel_and_cmyk_images() -> None:
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert strict_decode(encoded(bilevel)).tolist() == [[0, 255]]
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red ink
    assert strict_decode(encoded(cmyk, "TIFF")).tolist() == [[[255, 0, 0]] * 2] * 2
    jpeg = strict_decode(encoded(cmyk, "JPEG"))
    assert jpeg.shape == (2, 2, 3) and jpeg[0, 0, 0] > 200 and jpeg[0, 0, 1:].max() < 50


def test_16bit_copies_of_a_dataset_load_identically(image_tree, cache_dir) -> None:
    root = image_tree(mode="L", classes={"a": 2, "b": 2})
    eight = load_dataset(str(root), cache_dir=cache_dir)
    for path in root.rglob("*.png"):
        pixels = np.asarray(Image.open(path)).astype(np.uint16) * 257
        Image.fromarray(pixels).save(path)  # I;16 PNG, same picture
    assert Image.open(next(root.rglob("*.png"))).mode == "I;16"
    sixteen = load_dataset(str(root), cache_dir=cache_dir)
    assert sixteen.in_channels == 1
    assert torch.equal(sixteen.train.images, eight.train.images)
    assert torch.equal(sixteen.test.images, eight.test.images)


def test_mixed_modes_and_sizes_resize_into_one_rgb_set(tmp_path, archive_of, cache_dir,
                                                      png16) -> None:
    root = tmp_path / "mixed"
    files = {
        "a/gray16.png": lambda p: Image.fromarray(np.full((9, 4), 1000, np.uint16)).save(p),
        "a/rgba.png": lambda p: Image.new("RGBA", (5, 5), (9, 8, 7, 0)).save(p),
        "b/rgb16.png": lambda p: p.write_bytes(png16(np.full((3, 6, 3), 20 * 257, np.uint16))),
        "b/palette.gif": lambda p: Image.new("RGB", (7, 2), (255, 0, 0)).convert("P").save(p),
    }
    for split in ("train", "test"):
        for name, write in files.items():
            (root / split / name).parent.mkdir(parents=True, exist_ok=True)
            write(root / split / name)
    data = load_dataset(str(archive_of(root, ".zip")), cache_dir=cache_dir, image_size=4)
    assert data.train.images.shape == (4, 3, 4, 4)
    centre = data.train.images[:, :, 2, 2].tolist()  # sorted: gray16, rgba, palette, rgb16
    assert centre == [[4, 4, 4], [9, 8, 7], [255, 0, 0], [20, 20, 20]]


# ---- decompression bombs: images ------------------------------------------------------------


def test_png_claiming_100000_squared_is_refused_from_its_header(tmp_path, png_claiming,
                                                                monkeypatch) -> None:
    loads: list[object] = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: loads.append(self) or original(self))
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(DataError, match=r"huge\.png: not a readable image .*exceeds .*limit"):
        read_image_file(path, 3, (8, 8))
    assert loads == []  # refused before a pixel was decoded


def test_image_over_our_limit_names_it_and_the_limit(tmp_path, monkeypatch, archive_of,
                                                     image_tree, cache_dir) -> None:
    monkeypatch.setattr("hfsnet.data.decode.MAX_IMAGE_PIXELS", 29)  # the tree's images: 6 x 5
    root = image_tree(classes={"a": 1, "b": 1})
    Image.new("RGB", (6, 6)).save(root / "train" / "a" / "big.png")
    archive = archive_of(root, ".tar.gz")
    with pytest.raises(DataError, match=rf"{archive.name}:train/a/big\.png: "
                                        r"DecompressionBombError: 6 x 6 = 36 pixels exceeds the "
                                        r"limit of 29 \(hfsnet\.data\.decode\.MAX_IMAGE_PIXELS\)"):
        load_dataset(str(archive), cache_dir=cache_dir)


# ---- decompression bombs: archives ----------------------------------------------------------


def tar_claiming(dest: Path, member: str, size: int) -> Path:
    """A gzipped tar whose only member's header claims ``size`` bytes; 16 bytes follow it."""
    info = tarfile.TarInfo(member)
    info.size = size
    body = info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 16 + b"\0" * 1024
    dest.write_bytes(gzip.compress(body))
    return dest


@pytest.mark.parametrize("in_memory", [True, False])
def test_tar_member_claiming_6_gib_is_refused_unread(tmp_path, monkeypatch, in_memory) -> None:
    if not in_memory:
        monkeypatch.setattr("hfsnet.data.archive.MAX_IN_MEMORY_TAR", 100)  # the streaming path
    archive = tar_claiming(tmp_path / "bomb.tar.gz", "data/train/cat/x.png", 6 * GIB)
    with pytest.raises(DataError) as info:
        list(iter_entries(archive, lambda path: True))
    message = str(info.value)
    assert message == (f"{archive}:data/train/cat/x.png: 6.0 GiB uncompressed, over the limit of "
                       "256.0 MiB per file (MAX_MEMBER_BYTES in hfsnet.data.archive); a "
                       "decompression bomb or not a dataset file")
    assert "\n" not in message


def test_member_over_the_limit_is_refused_one_at_the_limit_read(tmp_path, monkeypatch,
                                                                archive_of) -> None:
    monkeypatch.setattr("hfsnet.data.archive.MAX_MEMBER_BYTES", 4096)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ok.bin").write_bytes(b"\1" * 4096)
    (tmp_path / "src" / "zz.bin").write_bytes(b"\1" * 4097)
    for suffix in ("", ".tar", ".tar.gz", ".zip"):
        root = archive_of(tmp_path / "src", suffix) if suffix else tmp_path / "src"
        seen: list[str] = []
        with pytest.raises(DataError, match=r"zz\.bin: 4\.0 KiB uncompressed, over the limit of "
                                            r"4\.0 KiB per file"):
            seen.extend(entry.path for entry in iter_entries(root, lambda path: True))
        assert seen == ["ok.bin"]


@pytest.mark.parametrize("trailer_lies", [False, True])
def test_gzipped_tar_bomb_beyond_memory_is_streamed_and_refused(tmp_path, monkeypatch,
                                                               trailer_lies) -> None:
    monkeypatch.setattr("hfsnet.data.archive.MAX_MEMBER_BYTES", 64 << 10)
    monkeypatch.setattr("hfsnet.data.archive.MAX_IN_MEMORY_TAR", 32 << 10)
    monkeypatch.setattr("hfsnet.data.archive.INFLATE_STEP", 4 << 10)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("zeros.png")
        info.size = 1 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    archive = tmp_path / "zeros.tar.gz"
    data = buffer.getvalue()
    # the gzip trailer's length field, a hint that can claim a tiny stream
    archive.write_bytes(data[:-4] + struct.pack("<I", 100) if trailer_lies else data)
    assert archive.stat().st_size < 4096  # a real bomb: 1 MiB of zeros in a few KB
    with pytest.raises(DataError, match=r"zeros\.tar\.gz:zeros\.png: 1\.0 MiB uncompressed"):
        list(iter_entries(archive, lambda path: True))


def zip_claiming(dest: Path, member: str, size: int) -> Path:
    """A zip with one small stored member whose central directory claims ``size`` bytes."""
    with zipfile.ZipFile(dest, "w") as archive:
        archive.writestr(member, b"tiny")
    data = bytearray(dest.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = struct.pack("<I", size)  # uncompressed size
    dest.write_bytes(bytes(data))
    return dest


def test_zip_member_claiming_4_gib_is_refused_unread(tmp_path) -> None:
    archive = zip_claiming(tmp_path / "bomb.zip", "train/cat/x.png", 0xFFFF0000)
    assert zipfile.ZipFile(archive).getinfo("train/cat/x.png").file_size == 0xFFFF0000
    with pytest.raises(DataError, match=rf"{archive.name}:train/cat/x\.png: inflates 4 bytes to "
                                        r"4\.0 GiB, over the 100-fold limit"):
        list(iter_entries(archive, lambda path: True))


def test_zip_member_with_an_extreme_ratio_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("hfsnet.data.archive.MIN_RATIO_BYTES", 1024)
    archive = tmp_path / "ratio.zip"
    noise = np.random.default_rng(0).integers(0, 256, 64 << 10, dtype=np.uint8).tobytes()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("noise.bin", noise)
        zf.writestr("small-zeros.bin", bytes(1024))  # compresses 100-fold but is tiny
        zf.writestr("zeros.bin", bytes(64 << 10))
    seen: list[str] = []
    with pytest.raises(DataError, match=r"ratio\.zip:zeros\.bin: inflates .* to 64\.0 KiB, over "
                                        r"the 100-fold limit for members above 1\.0 KiB"):
        seen.extend(entry.path for entry in iter_entries(archive, lambda path: True))
    assert seen == ["noise.bin", "small-zeros.bin"]


@pytest.mark.parametrize("suffix", ["", ".tar.gz", ".zip"])
def test_total_size_is_bounded(image_tree, archive_of, monkeypatch, cache_dir, suffix) -> None:
    root = image_tree(classes={"a": 3, "b": 3})
    total = sum(path.stat().st_size for path in root.rglob("*.png"))
    monkeypatch.setattr("hfsnet.data.archive.MAX_TOTAL_BYTES", total - 1)
    spec = archive_of(root, suffix) if suffix else root
    with pytest.raises(DataError, match=rf"{spec.name}: its files hold over .* uncompressed, the "
                                        r"limit \(MAX_TOTAL_BYTES in hfsnet\.data\.archive\), "
                                        r"passed at .*train.b.02\.png; too large"):
        load_dataset(str(spec), cache_dir=cache_dir)
    monkeypatch.setattr("hfsnet.data.archive.MAX_TOTAL_BYTES", total)
    assert len(load_dataset(str(spec), cache_dir=cache_dir).train) == 6


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_folder_never_reads_a_device_posing_as_an_image(image_tree, monkeypatch) -> None:
    root = image_tree(classes={"a": 1, "b": 1})
    (root / "train" / "a" / "endless.png").symlink_to("/dev/zero")
    original = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        assert path.name != "endless.png", "read a character device"
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert len(read_image_folder(root, None).train) == 2


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 256 << 20, 6 * GIB, 5 << 40)] == [
        "0 bytes", "1023 bytes", "1.0 KiB", "256.0 MiB", "6.0 GiB", "5.0 TiB"]


# ---- lying IDX and CIFAR headers ------------------------------------------------------------


def idx_header(magic: int, *dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_claiming_more_than_the_file(idx_folder, gz, cache_dir) -> None:
    lying = idx_header(0x803, 100_000, 28, 28) + bytes(5 * 28 * 28)
    folder, _ = idx_folder(gz=gz, overrides={"train-images-idx3-ubyte": lying})
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    with pytest.raises(DataError, match=rf"{name}: 3920 bytes of data, expected 78400000 for "
                                        r"100000 x 28 x 28 \(truncated or padded file\)"):
        load_dataset(str(folder), cache_dir=cache_dir)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_claiming_terabytes_is_refused_before_reading(idx_folder, gz,
                                                                 cache_dir) -> None:
    lying = idx_header(0x803, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(16)
    folder, _ = idx_folder(gz=gz, overrides={"t10k-images-idx3-ubyte": lying})
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte(\.gz)?: header claims "
                                        r"4294967295 x 4294967295 x 4294967295 = .* TiB of data, "
                                        r"over the limit of 2\.0 GiB"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_idx_gzip_bomb_is_inflated_only_as_far_as_the_header_says(idx_folder, cache_dir,
                                                                  monkeypatch) -> None:
    padded = idx_header(0x801, 7) + bytes(7) + bytes(64 << 20)  # 64 MiB of zeros after the labels
    folder, _ = idx_folder(overrides={"train-labels-idx1-ubyte": padded})
    reads: list[int] = []
    original = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read",
                        lambda self, size=-1: reads.append(size) or original(self, size))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: 8 bytes of data, "
                                        r"expected 7 for 7 \(truncated or padded file\)"):
        load_dataset(str(folder), cache_dir=cache_dir)
    assert -1 not in reads and max(reads) < 1 << 20


def test_idx_header_with_an_empty_dimension(idx_folder, cache_dir) -> None:
    folder, _ = idx_folder(overrides={"train-images-idx3-ubyte": idx_header(0x803, 7, 0, 28)})
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: header claims an empty "
                                        r"array \(7 x 0 x 28\)"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_idx_truncated_header(idx_folder, cache_dir) -> None:
    folder, _ = idx_folder(gz=False, overrides={"t10k-labels-idx1-ubyte": b"\0\0\x08"})
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: truncated IDX header \(3 bytes, "
                                        r"expected 8\)"):
        load_dataset(str(folder), cache_dir=cache_dir)


def lying_length_pickle() -> bytes:
    """A protocol-4 pickle whose BINBYTES8 opcode claims 2**62 bytes and holds 3."""
    return b"\x80\x04" + pickle.BINBYTES8 + struct.pack("<Q", 2**62) + b"abc."


@pytest.mark.parametrize("archive", [False, True])
def test_cifar_pickle_claiming_a_huge_length(cifar_files, cache_dir, archive) -> None:
    path, _ = cifar_files(CIFAR10, archive=archive,
                          overrides={"data_batch_2": lying_length_pickle()})
    with pytest.raises(DataError, match=r"data_batch_2: not a CIFAR python pickle"):
        load_dataset(str(path), cache_dir=cache_dir)


def test_cifar_data_shape_larger_than_its_bytes(cifar_files, py2_pickle, cache_dir) -> None:
    data = py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 0]})
    lying = data.replace(pickle.BININT1 + b"\x02", pickle.BININT + struct.pack("<i", 2**30), 1)
    path, _ = cifar_files(CIFAR10, overrides={"test_batch": lying})
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR python pickle \(buffer size"):
        load_dataset(str(path), cache_dir=cache_dir)


@pytest.mark.parametrize(("batch", "message"), [
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, r"b'data' holds no images"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [2**70]},
     r"a label in b'labels' is out of range for 3 classes"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["0"]},
     r"expected b'labels' as a list of 1 integer labels"),
])
def test_cifar_batch_contents_are_checked(cifar_files, py2_pickle, cache_dir, batch,
                                          message) -> None:
    path, _ = cifar_files(CIFAR10, overrides={"data_batch_4": py2_pickle(batch)})
    with pytest.raises(DataError, match=rf"data_batch_4: {message}"):
        load_dataset(str(path), cache_dir=cache_dir)


def test_cifar_file_over_the_member_limit(cifar_files, cache_dir, monkeypatch) -> None:
    monkeypatch.setattr("hfsnet.data.archive.MAX_MEMBER_BYTES", 8 << 10)
    path, _ = cifar_files(CIFAR10, per_batch=4, archive=True)  # 4 x 3 KiB images per batch
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz:cifar-10-batches-py/"
                                        r"data_batch_\d: 12\.\d KiB uncompressed, over the limit"):
        load_dataset(str(path), cache_dir=cache_dir)


# ---- tiny classes and datasets --------------------------------------------------------------


def test_val_split_never_takes_a_class_s_only_image(image_tree, cache_dir) -> None:
    root = image_tree(classes={"a": 1, "b": 1, "c": 8})
    data = load_dataset(str(root), cache_dir=cache_dir, val_split=0.5)
    assert data.train.labels.bincount().tolist() == [1, 1, 3]
    assert data.val.labels.bincount().tolist() == [0, 0, 5]


def test_val_split_that_must_empty_a_class_says_so(image_tree, cache_dir) -> None:
    root = image_tree(classes={"a": 1, "b": 1})
    with pytest.raises(DataError, match=r"--val-split 0\.5: holding out 1 of 2 images would "
                                        r"leave one of the 2 classes without training images; "
                                        r"at most 0 can be held out"):
        load_dataset(str(root), cache_dir=cache_dir, val_split=0.5)


def test_stratified_pick_with_spares_moves_shares_to_classes_with_room() -> None:
    labels = torch.tensor([0] + [1] * 3 + [2] * 6)  # exact shares of 5: 0.5, 1.5, 3.0
    generator = torch.Generator().manual_seed(0)
    assert labels[stratified_pick(labels, 5, generator)].bincount().tolist() == [1, 1, 3]
    spared = stratified_pick(labels, 5, generator, spare=1)
    assert labels[spared].bincount(minlength=3).tolist() == [0, 2, 3]


def test_carve_validation_keeps_every_class_in_train() -> None:
    labels = torch.tensor([0] + [1] * 2 + [2] * 30)
    data = ImageSet(torch.zeros(33, 1, 1, 1, dtype=torch.uint8), labels, ["a", "b", "c"])
    for seed in range(5):
        train, val = carve_validation(data, 0.9, torch.Generator().manual_seed(seed))
        assert train.labels.bincount(minlength=3).min() >= 1
        assert len(val) == round(0.9 * 33)


def test_single_class_dataset_loads_with_a_warning(image_tree, cache_dir) -> None:
    root = image_tree(classes={"only": 2})
    with pytest.warns(UserWarning, match=r"only one class \('only'\); a classifier trained on it "
                                         r"answers that class for every image"):
        data = load_dataset(str(root), cache_dir=cache_dir)
    assert data.num_classes == 1 and len(data.train) == 2


def test_one_image_class_loads_without_a_warning(image_tree, cache_dir) -> None:
    root = image_tree(classes={"a": 1, "b": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_dataset(str(root), cache_dir=cache_dir, val_split=0.2, limit_train=3)
    assert data.train.labels.bincount().tolist() == [1, 2]


def test_gunzip_reads_every_member_and_stops_at_the_limit() -> None:
    data = gzip.compress(b"abc") + b"\0\0" + gzip.compress(b"defg")
    assert gunzip(data, 7) == b"abcdefg"
    assert gunzip(data, 6) is None
    with pytest.raises(EOFError):
        gunzip(gzip.compress(bytes(1000))[:-12], 10_000)
