"""Exact resume in the default memory layout: channels-last weights and bf16 autocast, as
`hfsnet train` runs without layout flags. A checkpoint stores tensors contiguous (NCHW); the
restore has to give the optimizer state back its parameters' channels-last layout, or the fused
step pairs the wrong elements and the resumed run drifts."""

import pytest
import torch

from hfsnet.train import resolve_config
from tests.helpers import tiny_hfs_options


def default_hfs(data):
    return resolve_config(model="hfs", data=str(data), epochs=2, batch_size=16, lr=3e-3,
                          model_options=tiny_hfs_options(), crop_padding=2, cutout=4,
                          checkpoint_every=1, keep_last=100, deterministic=True,
                          precision="bf16")


def fast_air(data):
    return resolve_config("fast", data=str(data), epochs=2, batch_size=16, eval_batch_size=10,
                          lr=0.2, model_options={"widths": [4, 8, 8]}, lookahead_every=2,
                          checkpoint_every=1, keep_last=100, deterministic=True,
                          precision="bf16")


def assert_identical(full, resumed):
    assert resumed.losses == {s: v for s, v in full.losses.items() if s >= min(resumed.losses)}
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    full_opt, resumed_opt = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert full_opt["state"].keys() == resumed_opt["state"].keys()
    for pid, slots in full_opt["state"].items():
        for key, value in slots.items():
            assert torch.equal(value, resumed_opt["state"][pid][key]), (pid, key)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    assert resumed.history[-1]["test_acc"] == full.history[-1]["test_acc"]


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-boundary"])
@pytest.mark.parametrize("make_config", [default_hfs, fast_air], ids=["hfs", "hfs-air-fast"])
def test_default_layout_resume_is_bit_identical(tiny_folder, full_and_resumed, make_config,
                                                where):
    config = make_config(tiny_folder)
    assert config.channels_last and config.precision == "bf16"  # the fast layout under test
    steps_per_epoch = 4  # 72 images, batch 16, last partial batch dropped
    at = steps_per_epoch // 2 if where == "mid-epoch" else steps_per_epoch
    full, resumed = full_and_resumed(config, at=at)
    assert len(full.loader) == steps_per_epoch
    assert_identical(full, resumed)
    if full.lookahead is not None:
        for key, value in full.lookahead.slow.items():
            assert torch.equal(value, resumed.lookahead.slow[key]), key


def test_restored_optimizer_state_has_the_parameters_layout(tiny_folder, full_and_resumed):
    _, resumed = full_and_resumed(default_hfs(tiny_folder), at=2)
    convs = [p for p in resumed.model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for param in convs:
        for key, value in resumed.optimizer.state[param].items():
            if value.shape == param.shape:
                assert value.stride() == param.stride(), key
