"""A cache built by 2 processes under torchrun equals the one a single process builds."""

import json
import subprocess
import sys

import numpy as np


def build(source_run, data, out, *extra):
    done = subprocess.run([sys.executable, "-m", "hfsnet", "cache", "--checkpoint",
                           str(source_run), "--data", str(data), "--out", str(out), "--json",
                           *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_ranks_build_the_same_cache(source_run, tiny_folder, tmp_path):
    one = build(source_run, tiny_folder, tmp_path / "one")
    two = build(source_run, tiny_folder, tmp_path / "two", "--nproc", "2")
    assert one["shapes"] == two["shapes"] and one["built"] and two["built"]
    for name in ("train_features", "test_features", "train_labels", "test_labels"):
        a = np.load(f"{one['path']}/{name}.npy")
        b = np.load(f"{two['path']}/{name}.npy")
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), atol=2e-3,
                                   err_msg=name)
    root = tmp_path / "two"
    assert not [p for p in root.iterdir() if p.name.endswith(".shards")]  # merged, cleaned up
    again = build(source_run, tiny_folder, tmp_path / "two", "--nproc", "2")
    assert not again["built"] and again["path"] == two["path"]  # same key: reused


def test_only_rank_0_reports_a_cache(source_run, tiny_folder, tmp_path, monkeypatch, capsys):
    """Under torchrun every rank runs the command; two ranks' --json lines interleaved into one
    unparseable line, so the other ranks stay silent."""
    from hfsnet.cli import main

    argv = ["cache", "--checkpoint", str(source_run), "--data", str(tiny_folder), "--out",
            str(tmp_path / "c"), "--json"]
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["built"] is False
