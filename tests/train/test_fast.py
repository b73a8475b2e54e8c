"""The fast preset's machinery: weight averaging, flip TTA, fused optimizers, recipes, resume."""

import pytest
import torch
from torch import nn

from hfsnet.data import load_dataset
from hfsnet.train import resolve_config
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.config import ConfigError, TrainConfig
from hfsnet.train.ema import WeightAverage
from hfsnet.train.evaluate import summarize
from hfsnet.train.optim import fused
from hfsnet.train.run import fresh_trainer
from hfsnet.train.tta import FlipAverage
from tests.helpers import last_json


def test_weight_average_after_two_steps_is_the_hand_computed_one():
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    average = WeightAverage(model, decay=0.9)
    for new in ([[3.0, 0.0]], [[5.0, -2.0]]):
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor(new))
        average.update(model)
    # 0.9 * (0.9 * w0 + 0.1 * w1) + 0.1 * w2 = 0.81 w0 + 0.09 w1 + 0.1 w2
    expected = torch.tensor([[0.81 * 1 + 0.09 * 3 + 0.1 * 5, 0.81 * 2 + 0.09 * 0 - 0.1 * 2]])
    torch.testing.assert_close(average.shadow["0.weight"], expected)
    assert "1.num_batches_tracked" not in average.shadow  # integer counters are not averaged
    averaged = average.averaged_model(model)
    torch.testing.assert_close(averaged[0].weight, expected)
    assert not averaged.training
    assert torch.equal(model[0].weight, torch.tensor([[5.0, -2.0]]))  # the live model is untouched


def test_weight_average_rejects_decay_outside_the_open_unit_interval():
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(nn.Linear(1, 1), decay=1.0)


def test_flip_average_is_the_mean_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(3, 3, 8, 8)
    expected = (model(x) + model(x.flip(-1))) / 2
    torch.testing.assert_close(FlipAverage(model)(x), expected)
    assert not torch.allclose(expected, model(x))  # the conv is not mirror-symmetric


@pytest.mark.parametrize("kind", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_fused_optimizer_keeps_groups_and_takes_the_same_step(kind):
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    extra = {"momentum": 0.9, "nesterov": True} if kind is torch.optim.SGD else {}

    def groups(m):
        return [{"params": [m.weight], "lr": 0.1, "weight_decay": 0.01, "name": "decay"},
                {"params": [m.bias], "lr": 0.05, "weight_decay": 0.0, "name": "no_decay"}]

    plain = kind(groups(a), lr=0.1, **extra)
    fast = fused(kind(groups(b), lr=0.1, **extra))
    assert fast.defaults["fused"] is True
    assert [(g["lr"], g["weight_decay"], g["name"]) for g in fast.param_groups] == \
        [(0.1, 0.01, "decay"), (0.05, 0.0, "no_decay")]
    x = torch.randn(4, 3)
    for _ in range(3):
        for model, opt in ((a, plain), (b, fast)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)


def test_fast_recipes():
    fast = resolve_config("fast", data="x")
    assert (fast.model, fast.optimizer, fast.batch_size, fast.lr, fast.schedule) == \
        ("air-plain-s", "muon", 1024, 1.5, "onecycle")
    assert (fast.muon_momentum, fast.muon_steps, fast.muon_normalize) == (0.6, 3, True)
    assert (fast.label_smoothing, fast.crop_padding, fast.flip, fast.tta_flip) == \
        (0.2, 2, True, True)
    assert (fast.precision, fast.channels_last, fast.track_test) == ("auto", True, False)
    assert (fast.epochs, fast.lowres_fraction, fast.lowres_scale, fast.lowres_epochs()) == \
        (10, 0.5, 0.625, 5)  # progressive resizing: 5 epochs at 20 px, then 5 at 32
    long = resolve_config("fast-long", data="x")
    assert (long.model, long.tta_translate, fast.tta_translate) == ("air-plain-m", True, False)
    assert long.lowres_fraction == 0.0  # +0.17 points for 1.08x the time there
    assert long.epochs > fast.epochs
    plain = resolve_config("fast", data="x", epochs=2, tta_flip=False, tta_translate=False)
    assert (plain.tta_flip, plain.tta_translate) == (False, False)


@pytest.mark.parametrize(("key", "value", "flag"), [("ema_decay", 1.0, "--ema-decay"),
                                                    ("ema_decay", -0.1, "--ema-decay"),
                                                    ("threads", -1, "--threads")])
def test_new_fields_are_validated(key, value, flag):
    with pytest.raises(ConfigError, match=flag):
        resolve_config(data="x", **{key: value})


def test_new_fields_round_trip_strictly():
    config = resolve_config("fast", data="x", ema_decay=0.99, threads=1)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="tta_flip"):
        TrainConfig.from_dict({"tta_flip": "yes"})


def small_fast(data, recipe="fast", **over):
    """A fast recipe at test size: a narrow hfs-air net on 16x16 images, fp32, a few steps."""
    values = dict(data=str(data), epochs=2, batch_size=16, eval_batch_size=10, lr=0.2,
                  model_options={"widths": [4, 8, 8]}, precision="fp32", channels_last=False)
    values.update(over)
    return resolve_config(recipe, **values)


@pytest.mark.parametrize(("recipe", "translate"), [("fast", False), ("fast-long", True)])
def test_fast_presets_train_and_their_final_test_pass_averages_the_views(
        recipe, translate, tiny_folder, tmp_path):
    """fast averages each image with its mirror; fast-long also with 1 px shifts (6 views)."""
    config = small_fast(tiny_folder, recipe, epochs=3)
    trainer = fresh_trainer(config, tmp_path / "run", progress=False)
    result = trainer.fit()
    assert result.epochs == 3
    assert "test_acc" not in result.history[0]  # track_test is off: only the final pass
    model = trainer.model.eval()
    x = (trainer.data.test.images.float() / 255 - torch.tensor(trainer.data.mean)[:, None, None]) \
        / torch.tensor(trainer.data.std)[:, None, None]
    with torch.no_grad():
        logits = FlipAverage(model, translate=translate)(x)  # checked by hand in test_air.py
    expected = summarize(logits, trainer.data.test.labels, trainer.data.num_classes)
    assert result.test_acc == pytest.approx(expected.acc)
    assert result.test_loss == pytest.approx(expected.loss, rel=1e-4)
    assert bool(model.stem.fitted)  # the whitening stem was fitted on the first batch
    saved = load_checkpoint(tmp_path / "run").section("model")
    assert torch.equal(saved["stem.weight"], model.stem.weight)


def test_threads_setting_is_applied(tiny_folder, tmp_path):
    before = torch.get_num_threads()
    try:
        fresh_trainer(small_fast(tiny_folder, threads=2), tmp_path / "t", progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_resume_with_weight_average_is_bit_identical(tiny_folder, tmp_path, full_and_resumed):
    cfg = small_fast(tiny_folder, ema_decay=0.8, checkpoint_every=1, keep_last=100,
                     deterministic=True)
    full, resumed = full_and_resumed(cfg)
    for key, value in full.average.shadow.items():
        assert torch.equal(value, resumed.average.shadow[key]), key
    assert resumed.history[-1]["test_acc"] == full.history[-1]["test_acc"]
    saved = load_checkpoint(tmp_path / "full").section("extra.ema")
    assert saved.keys() == full.average.shadow.keys()


def test_fast_recipe_through_the_cli_and_its_checkpoint_evaluates(tiny_folder, tmp_path, capsys):
    from hfsnet.cli import main

    out = tmp_path / "cli-run"
    argv = ["train", "--recipe", "fast", "--data", str(tiny_folder), "--out", str(out),
            "--epochs", "1", "--batch-size", "16", "--precision", "fp32", "--quiet", "--json",
            "--lr", "0.2", "--model-opt", "widths=[4,8,8]"]
    assert main(argv) == 0
    trained = last_json(capsys)
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(tiny_folder),
                 "--precision", "fp32", "--json"]) == 0
    evaluated = last_json(capsys)
    assert evaluated["count"] == 18
    # evaluate runs the saved weights without TTA: the same as the model's own logits
    ckpt = load_checkpoint(out)
    model = ckpt.build_model().eval()
    assert bool(model.stem.fitted)
    data = load_dataset(str(tiny_folder))
    x = (data.test.images.float() / 255 - torch.tensor(data.mean)[:, None, None]) \
        / torch.tensor(data.std)[:, None, None]
    with torch.no_grad():
        expected = summarize(model(x), data.test.labels, data.num_classes)
    assert evaluated["test_acc"] == pytest.approx(expected.acc)
    assert 0 <= trained["test_acc"] <= 1 and trained["epochs"] == 1
    # with the recipe's TTA (and the checkpoint's own precision) it reproduces the training report
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(tiny_folder),
                 "--tta-flip", "--tta-translate", "--json"]) == 0
    flipped = last_json(capsys)
    assert flipped["test_acc"] == pytest.approx(trained["test_acc"])
    assert flipped["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_flip_average_leaves_the_model_in_its_own_mode(training):
    from hfsnet.data import ImageSet
    from hfsnet.train.evaluate import evaluate

    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    model.train(training)
    data = ImageSet(torch.zeros(4, 3, 6, 6, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
                    ["a", "b"])
    evaluate(FlipAverage(model), data, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert model.training is training
