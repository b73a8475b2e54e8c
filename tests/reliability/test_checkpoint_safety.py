"""Atomic saves under SIGKILL and ENOSPC, safe loading of hostile files, non-finite weights."""

import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from hfsnet.train import checkpoint as ck
from hfsnet.train.checkpoint import CheckpointError, CheckpointStore, load_checkpoint
from tests.helpers import CHECKPOINT_META, tiny_hfs

CHILD = textwrap.dedent("""
    import os, sys, time, torch
    from hfsnet.models import create_model
    from hfsnet.train import checkpoint as ck
    run, phase = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = create_model("hfs-seed", num_classes=2)
    meta = {"classes": ["a", "b"], "in_channels": 3, "image_size": [32, 32]}
    store = ck.CheckpointStore(__import__("pathlib").Path(run), keep_last=5)
    store.save(1, model, meta)
    open(os.path.join(run, "ready"), "w").close()
    if phase == "write":   # die while the bytes are being written
        def slow_fsync(fd):
            time.sleep(60)
        os.fsync = slow_fsync
    else:                  # die between the complete temporary file and the rename
        def slow_replace(a, b):
            time.sleep(60)
        os.replace = slow_replace
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    store.save(2, model, meta)
""")


@pytest.mark.parametrize("phase", ["write", "rename"])
def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path, phase):
    run = tmp_path / "run"
    run.mkdir()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run), phase])
    deadline = time.monotonic() + 60
    while not (run / "ready").exists():
        assert child.poll() is None and time.monotonic() < deadline, "child failed to start"
        time.sleep(0.05)
    before = (run / "checkpoint.safetensors").read_bytes()
    time.sleep(1.0)  # the child is now inside the slowed-down save of step 2
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert (run / "checkpoint.safetensors").read_bytes() == before
    loaded = load_checkpoint(run)
    assert loaded.meta["classes"] == ["a", "b"]
    store = CheckpointStore(run)
    leftovers = store.clean_temporaries()
    assert leftovers, "the killed save should have left a temporary file"
    assert not [p for p in run.rglob("*.tmp")]
    assert store.newest_valid().path.name in {"step-000000001.safetensors",
                                              "checkpoint.safetensors"}


def test_disk_full_keeps_previous_and_says_so(tmp_path, monkeypatch):
    model = tiny_hfs()
    store = CheckpointStore(tmp_path)
    store.save(1, model, CHECKPOINT_META)
    before = store.latest.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint.*intact"):
        store.save(2, model, CHECKPOINT_META)
    monkeypatch.undo()
    assert store.latest.read_bytes() == before
    assert not list(tmp_path.rglob("*.tmp"))
    assert [p.name for p in store.step_files()] == ["step-000000001.safetensors"]


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "checkpoint.safetensors"
    bad.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(CheckpointError, match="checkpoint.safetensors"):
        load_checkpoint(tmp_path)
    torch_style = tmp_path / "torch.safetensors"
    torch.save({"x": _Exploit(marker)}, torch_style)
    with pytest.raises(CheckpointError, match="torch.safetensors"):
        load_checkpoint(torch_style)
    assert not marker.exists()


def test_truncated_and_zero_byte_files_name_the_file(tmp_path):
    model = tiny_hfs()
    path = tmp_path / "ck.safetensors"
    ck.save_checkpoint(path, model, CHECKPOINT_META)
    data = path.read_bytes()
    for cut in (0, 7, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="ck.safetensors"):
            load_checkpoint(path)


def test_newest_valid_skips_a_corrupt_newest(tmp_path):
    model = tiny_hfs()
    store = CheckpointStore(tmp_path, keep_last=5)
    store.save(1, model, CHECKPOINT_META)
    store.save(2, model, CHECKPOINT_META)
    newest = store.step_files()[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated in place
    store.latest.unlink()
    assert store.newest_valid().path.name == "step-000000001.safetensors"


def test_non_finite_weights_are_refused_for_inference(tmp_path):
    model = tiny_hfs()
    with torch.no_grad():
        model.head.classifier.weight[0, 0] = float("nan")
    ck.save_checkpoint(tmp_path / "ck.safetensors", model, CHECKPOINT_META)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(tmp_path / "ck.safetensors").build_model()
