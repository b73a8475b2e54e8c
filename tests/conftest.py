"""Fixtures shared across the suite: an isolated decode cache and a tiny image-folder dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tests use tiny tensors, where one thread beats two (no OpenMP barriers) and stays fast when
# other processes load the machine; child processes inherit the setting through the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep decoded-dataset caches out of the user's ~/.cache."""
    monkeypatch.setenv("HFSNET_CACHE", str(tmp_path_factory.mktemp("hfsnet-cache")))
    monkeypatch.delenv("HFSNET_DATA", raising=False)


def write_image_folder(root: Path, *, classes=("circle", "square", "stripe"), per_class=(24, 6),
                       size=16, seed=0) -> Path:
    """train/<class>/*.png and test/<class>/*.png with a learnable colour cue per class."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] += 150  # the class shows as a dominant channel
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "tiny")


@pytest.fixture
def make_image_folder():
    """The writer itself, for tests that need folders with other classes or sizes."""
    return write_image_folder
