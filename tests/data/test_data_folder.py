"""Image-folder datasets from folders and archives: layout, modes, sizes and bad files."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hfsnet.data import DataError, MixedSizesError, load_dataset
from hfsnet.data.folder import read_image_folder


def assert_split_matches(split, expected) -> None:
    images, labels, classes = expected
    assert split.images.dtype.is_floating_point is False
    assert np.array_equal(split.images.numpy(), images)
    assert split.labels.tolist() == labels
    assert split.classes == classes


@pytest.mark.parametrize("suffix", ["", ".tar", ".tar.gz", ".tgz", ".zip"])
def test_png_tree_round_trips_from_folder_and_archives(image_tree, tree_reader, archive_of,
                                                       cache_dir, suffix) -> None:
    root = image_tree(classes={"zebra": 2, "ant": 3, "cat": 1})
    spec = archive_of(root, suffix) if suffix else root
    data = load_dataset(str(spec), cache_dir=cache_dir)
    assert data.name == root.name
    assert data.classes == ["ant", "cat", "zebra"]  # sorted folder names, not creation order
    assert_split_matches(data.train, tree_reader(root, "train"))
    assert_split_matches(data.test, tree_reader(root, "test"))
    assert (data.in_channels, data.image_size, data.num_classes) == (3, (6, 5), 3)
    assert data.val is None


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_archive_with_one_top_level_folder(image_tree, tree_reader, archive_of, cache_dir,
                                           suffix) -> None:
    root = image_tree(top="wrapped-jpg")
    data = load_dataset(str(archive_of(root, suffix)), cache_dir=cache_dir)
    assert_split_matches(data.train, tree_reader(root / "wrapped-jpg", "train"))


def test_zip_without_folder_entries(image_tree, tree_reader, tmp_path, cache_dir) -> None:
    root = image_tree(top="top")
    dest = tmp_path / "files-only.zip"
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(root.rglob("*.png")):
            archive.write(path, path.relative_to(root).as_posix())
    data = load_dataset(str(dest), cache_dir=cache_dir)
    assert_split_matches(data.test, tree_reader(root / "top", "test"))


def test_jpeg_tree_decodes_close_to_pillow(image_tree, tree_reader, cache_dir) -> None:
    root = image_tree(ext=".jpg")
    data = load_dataset(str(root), cache_dir=cache_dir)
    assert np.array_equal(data.train.images.numpy(), tree_reader(root, "train")[0])


def test_grayscale_tree_has_one_channel(image_tree, tree_reader, cache_dir) -> None:
    root = image_tree(mode="L")
    data = load_dataset(str(root), cache_dir=cache_dir)
    assert data.in_channels == 1 and len(data.mean) == 1
    assert_split_matches(data.train, tree_reader(root, "train"))


def test_mixed_grayscale_and_rgb_become_rgb(image_tree, cache_dir) -> None:
    root = image_tree(mode="L")
    Image.new("RGB", (5, 6), (1, 2, 3)).save(root / "test" / "dog" / "zz.png")
    data = load_dataset(str(root), cache_dir=cache_dir)
    assert data.in_channels == 3
    gray = np.asarray(Image.open(root / "train" / "cat" / "00.png"))
    assert all(np.array_equal(data.train.images[0, c].numpy(), gray) for c in range(3))
    assert data.test.images[-1, :, 0, 0].tolist() == [1, 2, 3]


def test_hidden_and_non_image_files_are_ignored(image_tree, tree_reader, cache_dir) -> None:
    root = image_tree()
    expected = tree_reader(root, "train")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / ".hidden").mkdir()
    (root / "train" / "README.png").write_bytes(b"loose file in the split folder")
    assert_split_matches(load_dataset(str(root), cache_dir=cache_dir).train, expected)


def test_differing_sizes_list_each_size_with_an_example(image_tree, cache_dir) -> None:
    root = image_tree(size=(6, 5))
    Image.new("RGB", (9, 7)).save(root / "test" / "dog" / "odd.png")
    with pytest.raises(DataError, match=r"6x5 \(e\.g\. .*\.png\); 7x9 \(e\.g\. .*odd\.png\)"):
        load_dataset(str(root), cache_dir=cache_dir)


def test_image_size_resizes_everything(image_tree, cache_dir) -> None:
    root = image_tree(size=(6, 5))
    Image.new("RGB", (9, 7), (5, 6, 7)).save(root / "test" / "dog" / "odd.png")
    data = load_dataset(str(root), cache_dir=cache_dir, image_size=4)
    assert data.train.images.shape[1:] == (3, 4, 4) and data.test.images.shape[1:] == (3, 4, 4)
    assert data.test.images[-1, :, 2, 2].tolist() == [5, 6, 7]


def test_train_and_test_classes_must_match(image_tree, cache_dir) -> None:
    root = image_tree()
    shutil.move(root / "test" / "dog", root / "test" / "wolf")
    (root / "test" / "emu").mkdir()
    Image.new("RGB", (5, 6)).save(root / "test" / "emu" / "0.png")
    with pytest.raises(DataError, match=r"only in train/: \['dog'\]; only in test/: \['emu', "
                                        r"'wolf'\]"):
        load_dataset(str(root), cache_dir=cache_dir)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_empty_class_folder_is_an_error_even_when_skipping(image_tree, cache_dir,
                                                           skip_bad) -> None:
    root = image_tree()
    (root / "train" / "owl").mkdir()
    (root / "test" / "owl").mkdir()
    (root / "test" / "owl" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty class folder.*train/owl/.*test/owl/"):
        load_dataset(str(root), cache_dir=cache_dir, skip_bad=skip_bad)


def test_empty_class_in_archive_is_found_from_its_folder_entry(image_tree, archive_of,
                                                               cache_dir) -> None:
    root = image_tree()
    (root / "train" / "owl").mkdir()
    (root / "test" / "owl").mkdir()
    archive = archive_of(root, ".tar.gz")
    with pytest.raises(DataError, match=rf"{archive.name}:train/owl/"):
        load_dataset(str(archive), cache_dir=cache_dir)


def write_bad_files(root: Path, png_claiming) -> list[str]:
    """A text file, a truncated JPEG and a decompression bomb in train/cat; their names."""
    (root / "train" / "cat" / "text.jpg").write_text("hello")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train" / "cat" / "cut.jpg")
    full = (root / "train" / "cat" / "cut.jpg").read_bytes()
    (root / "train" / "cat" / "cut.jpg").write_bytes(full[: len(full) // 2])
    (root / "train" / "cat" / "bomb.png").write_bytes(png_claiming(9000, 9000))
    return ["bomb.png", "cut.jpg", "text.jpg"]


def test_bad_files_are_listed_before_any_training(image_tree, cache_dir, png_claiming) -> None:
    root = image_tree()
    names = write_bad_files(root, png_claiming)
    with pytest.raises(DataError, match="3 unreadable image file") as info:
        load_dataset(str(root), cache_dir=cache_dir)
    for name in names:
        assert str(root / "train" / "cat" / name) in str(info.value)


def test_skip_bad_leaves_them_out_with_a_warning(image_tree, tree_reader, cache_dir,
                                                 png_claiming) -> None:
    root = image_tree()
    expected = tree_reader(root, "train")
    names = write_bad_files(root, png_claiming)
    with pytest.warns(UserWarning, match="skipped 3 unreadable image file") as record:
        data = load_dataset(str(root), cache_dir=cache_dir, skip_bad=True)
    assert all(name in str(record[0].message) for name in names)
    assert_split_matches(data.train, expected)


def test_bad_file_list_is_capped(image_tree, cache_dir) -> None:
    root = image_tree()
    for i in range(12):
        (root / "train" / "dog" / f"bad{i:02d}.png").write_text("x")
    with pytest.raises(DataError, match=r"12 unreadable.*bad09\.png.*; and 2 more"):
        load_dataset(str(root), cache_dir=cache_dir)


def test_class_with_only_bad_files_is_an_error_when_skipping(image_tree, cache_dir) -> None:
    root = image_tree(classes={"cat": 1, "dog": 1})
    (root / "train" / "cat" / "00.png").write_text("broken")
    with pytest.raises(DataError, match=r"no readable image in class folder.*train/cat/"):
        load_dataset(str(root), cache_dir=cache_dir, skip_bad=True)


def test_missing_train_test_layout(tmp_path, cache_dir) -> None:
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    with pytest.raises(DataError, match=r"photos: expected train/ and test/.*\['a', 'b'\]"):
        load_dataset(str(folder), cache_dir=cache_dir)


def test_corrupt_archive_names_it(image_tree, archive_of, cache_dir) -> None:
    archive = archive_of(image_tree(), ".tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{archive.name}: truncated or corrupt archive"):
        load_dataset(str(archive), cache_dir=cache_dir)


def test_worker_processes_decode_the_same(image_tree, archive_of, monkeypatch) -> None:
    monkeypatch.setattr("hfsnet.data.folder.CHUNK", 2)  # several tasks for the pool
    archive = archive_of(image_tree(classes={"a": 3, "b": 4, "c": 2}), ".tar.gz")
    serial = read_image_folder(archive, None, workers=1)
    pooled = read_image_folder(archive, None, workers=2)
    assert np.array_equal(serial.train.images.numpy(), pooled.train.images.numpy())
    assert serial.test.labels.tolist() == pooled.test.labels.tolist()


def test_mixed_sizes_raise_their_own_error_type(tmp_path):
    root = tmp_path / "mixed"
    for split in ("train", "test"):
        for name, side in (("a", 8), ("b", 12)):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (side, side)).save(root / split / name / "0.png")
    with pytest.raises(MixedSizesError, match="images differ in size"):
        load_dataset(str(root))
