"""Multi-process training (torchrun, gloo) reproduces single-process training."""

import json
import subprocess
import sys

import pytest
import torch

from hfsnet.errors import HfsnetError
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.distributed import launch_torchrun

# BatchNorm everywhere, no dropout: with --sync-bn the 2-process job must match one process.
MODEL = ["--model", "hfs", "--model-opt", "stages=[2,1]", "--model-opt", "growth=6",
         "--model-opt", "stem=8"]
COMMON = [*MODEL, "--epochs", "2", "--batch-size", "16", "--lr", "0.01", "--optimizer", "sgd",
          "--precision", "fp32", "--no-channels-last", "--quiet", "--json"]


def run(args, timeout=300):
    done = subprocess.run([sys.executable, "-m", "hfsnet", "train", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_gloo_processes_match_one(tiny_folder, tmp_path):
    single = run(["--data", str(tiny_folder), "--out", str(tmp_path / "one"), *COMMON])
    double = run(["--nproc", "2", "--sync-bn", "--data", str(tiny_folder),
                  "--out", str(tmp_path / "two"), *COMMON])
    one = load_checkpoint(tmp_path / "one").section("model")
    two = load_checkpoint(tmp_path / "two").section("model")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    assert double["test_acc"] == pytest.approx(single["test_acc"])
    # Only rank 0 wrote: one metrics line per epoch, one result.
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_global_batch_must_split_evenly(tiny_folder, tmp_path):
    done = subprocess.run([sys.executable, "-m", "hfsnet", "train", "--nproc", "2",
                           "--data", str(tiny_folder), "--out", str(tmp_path / "x"), *MODEL,
                           "--batch-size", "15", "--epochs", "1", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "--batch-size 15" in done.stderr and "multiple of the 2 processes" in done.stderr


def test_nproc_must_be_positive():
    with pytest.raises(HfsnetError, match="--nproc"):
        launch_torchrun(0, ["train", "--nproc", "0"])
