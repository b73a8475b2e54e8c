"""A source checkpoint to transfer from: a small untrained hfs trunk (with batch norm) saved the
way the Trainer saves one, for the 16x16 three-class ``tiny_folder`` data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hfsnet.train import resolve_config
from hfsnet.train.checkpoint import CHECKPOINT_NAME, save_checkpoint
from tests.helpers import tiny_hfs


def save_source(run: Path) -> Path:
    torch.manual_seed(0)
    model = tiny_hfs(num_classes=3)
    config = resolve_config(model="hfs", data="tiny", model_options=model.model_options)
    meta = {"classes": ["circle", "square", "stripe"], "mean": [0.3, 0.3, 0.3],
            "std": [0.3, 0.3, 0.3], "in_channels": 3, "image_size": [16, 16],
            "config": config.to_dict(), "epoch": 1, "history": []}
    save_checkpoint(run / CHECKPOINT_NAME, model, meta)
    return run


@pytest.fixture
def source_run(tmp_path) -> Path:
    return save_source(tmp_path / "source")
