"""The real CIFAR-10 JPEG archive shipped beside the repository (skipped where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfsnet.data import load_dataset

ARCHIVE = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "cifar10-jpg.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not present")
def test_cifar10_jpg_archive(tmp_path: Path) -> None:
    data = load_dataset(str(ARCHIVE), cache_dir=tmp_path)
    assert (len(data.train), len(data.test)) == (50_000, 10_000)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"]
    assert data.train.images.shape[1:] == (3, 32, 32)
    assert data.train.labels.bincount().tolist() == [5_000] * 10
    assert data.test.labels.bincount().tolist() == [1_000] * 10
    cached = load_dataset(str(ARCHIVE), cache_dir=tmp_path)
    assert cached.digest == data.digest and cached.mean == data.mean
