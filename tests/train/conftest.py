import shutil

import pytest
import torch

from hfsnet.data import load_dataset
from hfsnet.train.loop import Trainer
from hfsnet.train.run import build_model, resume_trainer


@pytest.fixture
def full_and_resumed(tiny_folder, tmp_path):
    """``run(config)``: train ``config`` (which must checkpoint every step) on the tiny folder
    without interruption, and again resumed from a copy of its checkpoint in the middle of the
    second epoch. Returns (full trainer, resumed trainer), both finished."""

    def run(config):
        data = load_dataset(str(tiny_folder))
        torch.manual_seed(config.seed)
        full = Trainer(config, tmp_path / "full", data, build_model(config, data),
                       progress=False)
        full.fit()
        k = len(full.loader) + 1
        source = full.store.step_dir / f"step-{k:09d}.safetensors"
        part = tmp_path / "part"
        (part / "checkpoints").mkdir(parents=True)
        shutil.copy(source, part / "checkpoints" / source.name)
        resumed = resume_trainer(part, data=data, progress=False)
        assert resumed.global_step == k
        resumed.fit()
        return full, resumed

    return run
