"""The air recipe's machinery: lookahead, alternating flips, shift TTA, norm learning rates."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hfsnet.data import AugmentConfig, BatchLoader, ImageSet
from hfsnet.train import resolve_config
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.config import ConfigError
from hfsnet.train.ema import Lookahead
from hfsnet.train.optim import ParamGroup, build_optimizer, set_lr_factor
from hfsnet.train.tta import FlipAverage


def _set(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


def test_lookahead_by_hand():
    model = nn.Linear(1, 1, bias=False)
    _set(model, 1.0)
    look = Lookahead(model, every=2, total_steps=4)
    _set(model, 3.0)
    look.after_step(model, 1)  # not a multiple of 2: nothing happens
    assert model.weight.item() == 3.0 and look.slow["weight"].item() == 1.0
    _set(model, 5.0)
    look.after_step(model, 2)
    d2 = 0.95**2 * (2 / 4) ** 3
    slow = d2 * 1.0 + (1 - d2) * 5.0
    assert look.slow["weight"].item() == pytest.approx(slow)
    assert model.weight.item() == pytest.approx(slow)  # the fast weights restart from the slow
    _set(model, 9.0)
    look.after_step(model, 3)
    _set(model, 7.0)
    look.after_step(model, 4)  # last step: update, then the run ends on the slow weights
    d4 = 0.95**2
    assert model.weight.item() == pytest.approx(d4 * slow + (1 - d4) * 7.0)


def test_lookahead_rejects_a_zero_period():
    with pytest.raises(ValueError, match="every"):
        Lookahead(nn.Linear(1, 1), every=0, total_steps=3)


def _loader(n: int, alternate: bool) -> BatchLoader:
    # Image i is a 1x1x2 picture [i, 0]: mirrored it reads [0, i].
    images = torch.zeros(n, 1, 1, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(1, n + 1, dtype=torch.uint8)
    data = ImageSet(images, torch.arange(n) % 2, ["a", "b"])
    augment = AugmentConfig(crop_padding=0, flip=True, alternate_flips=alternate)
    return BatchLoader(data, 4, mean=(0.0,), std=(1.0,), shuffle=True, augment=augment, seed=3)


def _mirrored_ids(loader: BatchLoader, epoch: int) -> dict[int, bool]:
    seen = {}
    for x, _ in loader.epoch(epoch):
        for image in x[:, 0, 0]:
            mirrored = image[0].item() == 0
            seen[round(image.max().item() * 255)] = mirrored  # pixels arrive scaled by 1/255
    return seen


def test_alternating_flips_mirror_each_image_in_every_other_epoch():
    loader = _loader(16, alternate=True)
    epochs = [_mirrored_ids(loader, e) for e in range(3)]
    assert all(len(e) == 16 for e in epochs)
    assert all(epochs[1][i] != epochs[0][i] for i in epochs[0])
    assert epochs[2] == epochs[0]
    assert 0 < sum(epochs[0].values()) < 16  # a random half to start with


def test_random_flips_do_not_alternate():
    loader = _loader(64, alternate=False)
    first, second = _mirrored_ids(loader, 0), _mirrored_ids(loader, 1)
    assert any(first[i] == second[i] for i in first)


def test_shift_tta_is_the_weighted_mean_of_six_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()
    x = torch.randn(5, 2, 6, 6)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[..., :6, :6], padded[..., 2:, 2:]

    def pair(v):
        return (model(v) + model(v.flip(-1))) / 2

    expected = 0.5 * pair(x) + 0.25 * pair(up_left) + 0.25 * pair(down_right)
    with torch.no_grad():
        torch.testing.assert_close(FlipAverage(model, translate=True)(x), expected)
        assert not torch.allclose(expected, pair(x))


def test_norm_lr_scale_gives_one_dimensional_parameters_their_own_rate():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2))
    opt = build_optimizer([ParamGroup("all", list(model.parameters()), 0.5)], "sgd",
                          weight_decay=1e-3, no_decay_lr_scale=64.0)
    rates = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert rates == {"all": (0.5, 1e-3), "all.no_decay": (32.0, 0.0)}
    set_lr_factor(opt, 0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 3.2])


def test_air_recipe_values_and_validation():
    air = resolve_config("fast-long", data="x")
    assert (air.model, air.batch_size, air.optimizer, air.momentum, air.norm_lr_scale) == \
        ("air-plain-m", 1024, "muon", 0.85, 64.0)
    assert air.lr * air.weight_decay == pytest.approx(0.002)
    assert (air.alternate_flips, air.lookahead_every, air.tta_flip, air.tta_translate) == \
        (True, 5, True, True)
    with pytest.raises(ConfigError, match="tta-translate"):
        resolve_config("fast-long", data="x", tta_flip=False)
    with pytest.raises(ConfigError, match="lookahead"):
        resolve_config("fast-long", data="x", lookahead_every=-1)
    with pytest.raises(ConfigError, match="norm-lr-scale"):
        resolve_config("fast-long", data="x", norm_lr_scale=0.0)


def small_air(data, **over):
    values = dict(data=str(data), epochs=2, batch_size=16, eval_batch_size=10, lr=0.2,
                  model_options={"widths": [4, 8, 8]}, precision="fp32", channels_last=False,
                  lookahead_every=2)
    values.update(over)
    return resolve_config("fast", **values)


def test_resume_with_lookahead_is_bit_identical(tiny_folder, tmp_path, full_and_resumed):
    cfg = small_air(tiny_folder, checkpoint_every=1, keep_last=100, deterministic=True)
    full, resumed = full_and_resumed(cfg)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    # the run ended on the slow weights, and they were checkpointed
    assert all(torch.equal(full.lookahead.slow[k], v) for k, v in
               full.model.state_dict().items() if k in full.lookahead.slow)
    assert load_checkpoint(tmp_path / "full").section("extra.lookahead").keys() == \
        full.lookahead.slow.keys()
    assert resumed.history[-1]["test_acc"] == full.history[-1]["test_acc"]


def test_air_flags_through_the_cli(tiny_folder, tmp_path):
    from hfsnet.cli import main

    out = tmp_path / "cli"
    argv = ["train", "--recipe", "fast", "--data", str(tiny_folder), "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--precision", "fp32", "--quiet",
            "--model-opt", "widths=[4,4,4]", "--lookahead-every", "3", "--norm-lr-scale", "8",
            "--momentum", "0.8", "--warmup-fraction", "0.1", "--no-alternate-flips",
            "--no-tta-flip"]
    assert main(argv) == 0
    saved = load_checkpoint(out).meta["config"]
    assert (saved["lookahead_every"], saved["norm_lr_scale"], saved["momentum"],
            saved["warmup_fraction"], saved["alternate_flips"], saved["tta_flip"],
            saved["tta_translate"]) == (3, 8.0, 0.8, 0.1, False, False, False)
