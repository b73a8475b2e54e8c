import json

import torch

from hfsnet.data import load_dataset
from hfsnet.train import resolve_config, train
from hfsnet.train.checkpoint import load_checkpoint
from tests.helpers import TINY_HFS


def small_config(data, **over):
    values = dict(model="hfs", data=str(data), epochs=4, batch_size=16, lr=3e-3,
                  model_options=TINY_HFS, precision="fp32",
                  channels_last=False)
    values.update(over)
    return resolve_config(**values)


def test_training_learns_and_writes_the_run(tiny_folder, tmp_path):
    out = tmp_path / "run"
    result = train(small_config(tiny_folder), out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert {"train_loss", "train_acc", "test_acc", "lr", "seconds"} <= set(rows[0])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert result.test_acc > 0.6  # three classes: chance is 1/3
    assert result.params == sum(p.numel() for p in load_checkpoint(out).build_model().parameters())
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "hfs" and saved["epochs"] == 4
    ckpt = load_checkpoint(out)
    assert ckpt.meta["classes"] == ["circle", "square", "stripe"]
    assert ckpt.meta["epoch"] == 4 and len(ckpt.meta["history"]) == 4


def test_same_seed_same_result_different_seed_differs(tiny_folder, tmp_path):
    data = load_dataset(str(tiny_folder))
    a = train(small_config(tiny_folder, epochs=1), tmp_path / "a", data=data, progress=False)
    b = train(small_config(tiny_folder, epochs=1), tmp_path / "b", data=data, progress=False)
    c = train(small_config(tiny_folder, epochs=1, seed=1), tmp_path / "c", data=data,
              progress=False)
    wa, wb, wc = (load_checkpoint(tmp_path / n).section("model") for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_validation_split_is_reported(tiny_folder, tmp_path):
    result = train(small_config(tiny_folder, epochs=1, val_split=0.25, precision="bf16",
                                channels_last=True), tmp_path / "v", progress=False)
    assert "val_acc" in result.history[0] and "val_loss" in result.history[0]
