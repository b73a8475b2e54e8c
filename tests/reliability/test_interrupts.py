"""SIGTERM/SIGINT during training (real processes), and the NaN/Inf policies."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from hfsnet.data import load_dataset
from hfsnet.train import resolve_config
from hfsnet.train.checkpoint import CheckpointStore, load_checkpoint
from hfsnet.train.loop import NonFiniteError, Trainer
from hfsnet.train.run import build_model
from tests.helpers import TINY_HFS, tiny_hfs_flags

SMALL = [*tiny_hfs_flags(), "--batch-size", "16", "--precision", "fp32", "--quiet"]


EPOCHS = 3


@pytest.fixture
def medium_folder(tmp_path, make_image_folder):
    """Enough images (37 steps an epoch) that a run outlives the signal sent after step 3."""
    return make_image_folder(tmp_path / "medium", per_class=(200, 4))


def start_training(data, run, epochs=EPOCHS):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hfsnet", "train", "--data", str(data), "--out", str(run),
         "--epochs", str(epochs), "--checkpoint-every", "3", *SMALL],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc, run, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not list((run / "checkpoints").glob("step-*.safetensors")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_sigterm_saves_and_exits_143_then_resume_finishes(medium_folder, tmp_path):
    run = tmp_path / "run"
    proc = start_training(medium_folder, run)
    wait_for_checkpoint(proc, run)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert time.monotonic() - sent < 10
    assert "--resume" in err
    ckpt = load_checkpoint(run)
    stopped_at = ckpt.meta["global_step"]
    assert 0 < stopped_at < EPOCHS * 37

    done = subprocess.run(
        [sys.executable, "-m", "hfsnet", "train", "--resume", str(run), "--quiet", "--json"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["epochs"] == EPOCHS
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))


def test_second_sigint_exits_at_once_without_corruption(medium_folder, tmp_path):
    run = tmp_path / "run"
    proc = start_training(medium_folder, run)
    wait_for_checkpoint(proc, run)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode in (130, -signal.SIGINT)
    store = CheckpointStore(run)
    store.clean_temporaries()
    assert store.newest_valid() is not None


def nan_trainer(data_dir, tmp_path, policy, bad_step=3):
    data = load_dataset(str(data_dir))
    cfg = resolve_config(model="hfs", data=str(data_dir), epochs=2, batch_size=16,
                         model_options=TINY_HFS,
                         precision="fp32", channels_last=False, nonfinite=policy,
                         checkpoint_every=1)
    trainer = Trainer(cfg, tmp_path / policy, data, build_model(cfg, data), progress=False)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == bad_step + 1 and module.training else output

    trainer.model.head.register_forward_hook(poison)
    return trainer


def test_nan_stops_the_run_naming_the_step(tiny_folder, tmp_path):
    trainer = nan_trainer(tiny_folder, tmp_path, "stop")
    with pytest.raises(NonFiniteError, match="step 3"):
        trainer.fit()
    ckpt = load_checkpoint(trainer.out_dir)
    assert ckpt.meta["global_step"] == 3
    assert all(v.isfinite().all() for v in ckpt.section("model").values()
               if v.is_floating_point())


def test_nan_skip_policy_drops_the_step_and_finishes(tiny_folder, tmp_path):
    trainer = nan_trainer(tiny_folder, tmp_path, "skip")
    result = trainer.fit()
    assert result.history[0]["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert load_checkpoint(trainer.out_dir).meta["epoch"] == 2
