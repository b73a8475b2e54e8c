"""Exact resume: a run stopped at step k and resumed equals the uninterrupted run, bit for bit."""

import shutil

import pytest
import torch

from hfsnet.data import load_dataset
from hfsnet.train import resolve_config, train
from hfsnet.train.checkpoint import CheckpointStore, load_checkpoint
from hfsnet.train.run import resume_trainer
from tests.helpers import tiny_hfs_options

EPOCHS = 2


def config(data, **over):
    values = dict(model="hfs", data=str(data), epochs=EPOCHS, batch_size=16, lr=3e-3,
                  model_options=tiny_hfs_options(layer_dropout=0.1),
                  precision="fp32", channels_last=False, schedule="onecycle", crop_padding=2,
                  flip=True, cutout=4, checkpoint_every=1, keep_last=100, deterministic=True)
    values.update(over)
    return resolve_config(**values)


@pytest.fixture
def full_run(tiny_folder, tmp_path):
    """An uninterrupted run with a checkpoint after every step, and its per-step losses."""
    data = load_dataset(str(tiny_folder))
    losses: dict[int, float] = {}
    from hfsnet.train.loop import Trainer
    from hfsnet.train.run import build_model

    cfg = config(tiny_folder)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(cfg, tmp_path / "full", data, build_model(cfg, data), progress=False)
    trainer.step_hooks.append(lambda step, loss: losses.__setitem__(step, loss))
    trainer.fit()
    return data, trainer, losses


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-boundary"])
def test_resume_is_bit_identical(full_run, tmp_path, where):
    data, full, losses = full_run
    steps_per_epoch = len(full.loader)
    k = steps_per_epoch // 2 if where == "mid-epoch" else steps_per_epoch
    source = full.store.step_dir / f"step-{k:09d}.safetensors"
    part = tmp_path / f"resumed-{where}"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(source, part / "checkpoints" / source.name)

    resumed = resume_trainer(part, data=data, progress=False)
    assert resumed.global_step == k
    resumed_losses: dict[int, float] = {}
    resumed.step_hooks.append(lambda step, loss: resumed_losses.__setitem__(step, loss))
    resumed.fit()

    assert resumed_losses == {s: v for s, v in losses.items() if s >= k}
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    full_opt, resumed_opt = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for pid, slots in full_opt["state"].items():
        for key, value in slots.items():
            assert torch.equal(value, resumed_opt["state"][pid][key]), (pid, key)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


def test_same_seed_twice_identical_and_other_seed_differs(tiny_folder, tmp_path):
    data = load_dataset(str(tiny_folder))
    runs = {name: train(config(tiny_folder, epochs=1, checkpoint_every=0, seed=seed),
                        tmp_path / name, data=data, progress=False)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    weights = {n: load_checkpoint(tmp_path / n).section("model") for n in runs}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_keep_last_rotates_but_protects_the_resume_source(tiny_folder, tmp_path):
    data = load_dataset(str(tiny_folder))
    run = tmp_path / "run"
    train(config(tiny_folder, epochs=1, keep_last=2), run, data=data, progress=False)
    names = [p.name for p in CheckpointStore(run).step_files()]
    assert names == ["step-000000003.safetensors", "step-000000004.safetensors"]

    # Go back to step 2: keep steps 1-2 only, as if the run had died after step 2.
    full = tmp_path / "full"
    train(config(tiny_folder, epochs=1), full, data=data, progress=False)
    store = CheckpointStore(full)
    for path in store.step_files()[2:]:
        path.unlink()
    store.latest.unlink()
    trainer = resume_trainer(full, data=data, progress=False)
    assert trainer.global_step == 2
    trainer.store.keep_last = 1
    trainer.fit()  # saves steps 3 and 4, rotating down to one kept file
    names = [p.name for p in trainer.store.step_files()]
    assert names == ["step-000000002.safetensors", "step-000000004.safetensors"]
