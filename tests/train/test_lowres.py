"""Progressive resizing (--lowres-fraction): which epochs train small, resume, refusals."""

import pytest
import torch

from hfsnet.cli import main
from hfsnet.data import load_dataset
from hfsnet.train import resolve_config
from hfsnet.train.checkpoint_schema import SchemaError, check_config
from hfsnet.train.config import ConfigError
from hfsnet.train.loop import Trainer
from hfsnet.train.run import build_model


def lowres_air(data, **over):
    values = dict(data=str(data), epochs=3, lowres_fraction=0.7, lowres_scale=0.75, batch_size=16,
                  eval_batch_size=10, lr=0.2, model_options={"widths": [4, 8, 8]},
                  precision="fp32", channels_last=False)
    values.update(over)
    return resolve_config("fast", **values)


def test_the_first_epochs_train_on_downscaled_images_and_evaluation_does_not(tiny_folder,
                                                                           tmp_path):
    config = lowres_air(tiny_folder)
    data = load_dataset(str(tiny_folder))
    trainer = Trainer(config, tmp_path / "run", data, build_model(config, data),
                      progress=False)
    seen: list[tuple[int, bool, int]] = []
    trainer.model.register_forward_pre_hook(
        lambda module, args: seen.append((trainer.epoch, module.training, args[0].shape[-1])))
    trainer.fit()
    train_sides = {(epoch, side) for epoch, training, side in seen if training}
    assert train_sides == {(0, 12), (1, 12), (2, 16)}  # 16 px images at 3/4 of the side
    assert {side for _, training, side in seen if not training} == {16}
    assert 0.0 <= trainer.history[-1]["test_acc"] <= 1.0


def test_resume_inside_a_downscaled_epoch_is_bit_identical(tiny_folder, full_and_resumed):
    config = lowres_air(tiny_folder, checkpoint_every=1, keep_last=100, deterministic=True)
    full, resumed = full_and_resumed(config)  # resumed one step into epoch 2, still small
    assert resumed.losses == {k: v for k, v in full.losses.items() if k in resumed.losses}
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(("fraction", "epochs", "small"), [
    (0.5, 10, 5), (0.5, 7, 3), (0.5, 1, 0), (0.29, 100, 29), (0.7, 10, 7), (0.0, 10, 0),
    (0.99, 3, 2)])
def test_the_fraction_of_epochs_rounds_down_and_always_leaves_a_full_size_one(fraction, epochs,
                                                                              small):
    config = resolve_config("fast", data="x", epochs=epochs, lowres_fraction=fraction)
    assert config.lowres_epochs() == small < epochs


@pytest.mark.parametrize("over, match", [
    (dict(lowres_fraction=1.0), "lowres-fraction"),
    (dict(lowres_fraction=-0.1), "lowres-fraction"),
    (dict(lowres_scale=1.0), "lowres-scale"),
    (dict(lowres_scale=0.2), "lowres-scale"),
])
def test_invalid_lowres_options(tiny_folder, over, match):
    with pytest.raises(ConfigError, match=match):
        lowres_air(tiny_folder, **over)


def test_a_scale_the_model_cannot_take_is_one_line_before_the_run_writes(tiny_folder, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    # 16 px at 0.5 is 8 px: the stem leaves 7, and three pooled stages need at least 8
    argv = ["train", "--recipe", "fast", "--data", str(tiny_folder), "--out", str(out),
            "--epochs", "2", "--lowres-fraction", "0.5", "--lowres-scale", "0.5", "--batch-size",
            "8", "--precision", "fp32", "--quiet", "--model-opt", "widths=[4,4,4]"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lowres-scale 0.5 gives 8x8 px images" in err[0]
    assert "air-plain-s cannot take" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_a_config_saved_with_a_count_of_small_epochs_loads_with_the_same_epochs_small():
    """Checkpoints of 954de0b-7431a32 carry lowres_epochs: N; they load and resume as before."""
    saved = resolve_config("fast", data="x").to_dict()
    del saved["lowres_fraction"]
    for epochs in range(2, 101):
        for count in range(epochs):
            config = check_config({**saved, "epochs": epochs, "lowres_epochs": count})
            assert config.lowres_epochs() == count, (count, epochs)
    with pytest.raises(SchemaError, match="lowres_epochs"):  # not a count: named, not guessed
        check_config({**saved, "lowres_epochs": "3"})
    with pytest.raises(SchemaError, match="lowres-fraction"):  # was refused then as well
        check_config({**saved, "epochs": 4, "lowres_epochs": 4})
