import shutil

import pytest
import torch

from hfsnet.data import load_dataset
from hfsnet.train.loop import Trainer
from hfsnet.train.run import build_model, resume_trainer


def record_losses(trainer: Trainer) -> dict[int, float]:
    """The loss of every step ``trainer`` runs from now on, by global step."""
    losses: dict[int, float] = {}
    trainer.step_hooks.append(lambda step, loss: losses.__setitem__(step, loss))
    return losses


@pytest.fixture
def full_and_resumed(tiny_folder, tmp_path):
    """``run(config, at=None)``: train ``config`` (which must checkpoint every step) on the tiny
    folder without interruption, and again resumed from a copy of its checkpoint after step
    ``at`` (default: one step into the second epoch). Returns (full trainer, resumed trainer),
    both finished; each has ``losses``, its per-step losses by global step."""

    def run(config, at=None):
        data = load_dataset(str(tiny_folder))
        torch.manual_seed(config.seed)
        full = Trainer(config, tmp_path / "full", data, build_model(config, data),
                       progress=False)
        full.losses = record_losses(full)
        full.fit()
        k = len(full.loader) + 1 if at is None else at
        source = full.store.step_dir / f"step-{k:09d}.safetensors"
        part = tmp_path / f"part-{k}"
        (part / "checkpoints").mkdir(parents=True)
        shutil.copy(source, part / "checkpoints" / source.name)
        resumed = resume_trainer(part, data=data, progress=False)
        assert resumed.global_step == k
        resumed.losses = record_losses(resumed)
        resumed.fit()
        return full, resumed

    return run
