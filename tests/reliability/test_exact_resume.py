"""Exact resume across processes in the default layout (channels-last, bf16): a run stopped
(SIGTERM, or SIGKILL after a checkpoint) and resumed with `hfsnet train --resume` ends with the
same bytes as the uninterrupted run: weights, optimizer state, per-epoch metrics."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from hfsnet.train.checkpoint import load_checkpoint
from tests.helpers import tiny_hfs_flags

# Defaults for layout and precision: no --precision, no --no-channels-last.
FLAGS = [*tiny_hfs_flags(), "--batch-size", "16", "--epochs", "2", "--deterministic",
         "--threads", "1", "--crop-padding", "2", "--quiet"]


def hfsnet_train(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "hfsnet", "train", *args],
                          capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def assert_same_run(full, resumed):
    a, b = load_checkpoint(full), load_checkpoint(resumed)
    assert a.meta["global_step"] == b.meta["global_step"]
    trained = [k for k in a.tensors if k.startswith(("model.", "optim."))]
    assert trained and set(trained) == {k for k in b.tensors if k.startswith(("model.", "optim."))}
    different = [k for k in trained if not torch.equal(a.tensors[k], b.tensors[k])]
    assert different == []
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (full, resumed)]
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]


@pytest.mark.parametrize("at", [2, 4], ids=["mid-epoch", "epoch-boundary"])
def test_resume_after_sigkill_in_a_new_process_is_bit_identical(tiny_folder, tmp_path, at):
    """SIGKILL after step ``at``: what is left is the run's checkpoint of that step."""
    full = tmp_path / "full"
    hfsnet_train("--data", str(tiny_folder), "--out", str(full), *FLAGS,
                 "--checkpoint-every", "1", "--keep-last", "100")
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    step_file = full / "checkpoints" / f"step-{at:09d}.safetensors"
    shutil.copy(step_file, killed / "checkpoints" / step_file.name)
    for name in ("config.json", "run.json"):
        shutil.copy(full / name, killed / name)
    # --resume takes the checkpoint file too, and continues its run directory
    hfsnet_train("--resume", str(killed / "checkpoints" / step_file.name))
    assert_same_run(full, killed)


@pytest.fixture
def medium_folder(tmp_path, make_image_folder):
    """37 steps an epoch: the run outlives the signal sent after its first checkpoint."""
    return make_image_folder(tmp_path / "medium", per_class=(200, 4))


def test_sigterm_then_resume_with_the_printed_hint_is_bit_identical(medium_folder, tmp_path):
    args = [*FLAGS, "--checkpoint-every", "3", "--epochs", "1"]
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "hfsnet", "train", "--data",
                             str(medium_folder), "--out", str(stopped), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((stopped / "checkpoints").glob("step-*.safetensors")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert 0 < load_checkpoint(stopped).meta["global_step"] < 37
    hint = re.search(r"resume with --resume (\S+)", err).group(1)
    assert hint == str(stopped)
    hfsnet_train("--resume", hint)

    full = tmp_path / "full"
    hfsnet_train("--data", str(medium_folder), "--out", str(full), *args)
    assert_same_run(full, stopped)
