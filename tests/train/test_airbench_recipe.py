"""The airbench94 recipe (the CIFAR-10 speed record as an hfsnet run): its numbers, the way its
options reach the optimizer, the whitening bias that freezes, and an exact resume."""

import shutil

import pytest
import torch

import hfsnet
from hfsnet.data import load_dataset
from hfsnet.train import resolve_config
from hfsnet.train.config import ConfigError
from hfsnet.train.muon import MUON_LR_RATIO
from hfsnet.train.optim import MuonSettings, ParamGroup, build_optimizer
from hfsnet.train.run import fresh_trainer, resume_trainer
from hfsnet.train.whiten_bias import WhitenBiasFreeze
from tests.train.conftest import record_losses

TINY_WIDTHS = [8, 16, 16]  # the recipe's net, narrow enough for the tiny folder
STEPS_PER_EPOCH = 4  # 72 tiny images, batch 16, the partial batch dropped


def tiny_recipe(data, **overrides):
    values = {"data": str(data), "batch_size": 16, "eval_batch_size": 12,
              "model_options": {"widths": TINY_WIDTHS}, **overrides}
    return resolve_config("airbench94", **values)


def groups_by_name(optimizer):
    return {g["name"]: g for g in optimizer.param_groups}


def test_recipe_holds_the_records_numbers_in_mean_loss_units():
    c = resolve_config("airbench94", data="x")
    assert (c.model, c.epochs, c.batch_size, c.optimizer) == ("air-plain", 8, 2000, "muon")
    # per step of lr the SGD groups shrink by the record's 2e-6 x batch 2000
    assert c.lr * c.weight_decay == pytest.approx(0.004)
    # the head: 0.67 per summed loss, x2000 for a mean, /768 for its default-initialised weights
    assert c.lr == pytest.approx(0.67 * 2000 / 768)
    assert c.lr * c.norm_lr_scale == pytest.approx(0.053 * 2000) and c.decay_norms
    assert (c.muon_lr, c.muon_momentum, c.muon_steps, c.muon_normalize, c.momentum) == \
        (0.24, 0.6, 3, True, 0.85)
    assert (c.schedule, c.warmup_fraction, c.whiten_bias_epochs) == ("onecycle", 0.0, 3)
    assert (c.label_smoothing, c.crop_padding, c.alternate_flips, c.lookahead_every) == \
        (0.2, 2, True, 0)
    assert c.tta_flip and c.tta_translate
    assert c.model_options == {"whiten_bias": True, "logit_scale": pytest.approx(0.1082532)}


def test_model_options_given_merge_into_the_recipes():
    c = resolve_config("airbench94", data="x", model_options={"widths": [8, 16, 16],
                                                              "whiten_bias": False})
    assert c.model_options == {"whiten_bias": False, "logit_scale": pytest.approx(0.1082532),
                               "widths": [8, 16, 16]}


def test_the_nets_head_matches_the_records_logits_at_the_start():
    """The record: a std-1 head divided by 256 features. Here: PyTorch's init (std
    1/sqrt(3 x 256)) times sqrt(3 / 256): the same product."""
    c = resolve_config("airbench94", data="x")
    model = hfsnet.create_model(c.model, **c.model_options)
    head = model.head.classifier
    assert head.weight.shape == (10, 256) and head.bias is None
    assert model.head.scale * head.weight.std().item() == pytest.approx(1 / 256, rel=0.05)
    assert model.stem.bias.shape == (24,)
    assert sum(p.numel() for p in model.parameters()) == 1_972_504


@pytest.mark.parametrize("bad, flag", [({"muon_lr": 0.0}, "--muon-lr"),
                                        ({"muon_momentum": 1.0}, "--muon-momentum"),
                                        ({"muon_steps": 0}, "--muon-steps"),
                                        ({"whiten_bias_epochs": -1}, "--whiten-bias-epochs")])
def test_new_options_refuse_bad_values_naming_the_flag(bad, flag):
    with pytest.raises(ConfigError, match=flag):
        resolve_config("airbench94", data="x", **bad)


def test_recipe_options_reach_the_optimizer(tiny_folder):
    trainer = fresh_trainer(tiny_recipe(tiny_folder), tiny_folder / "run", progress=False)
    groups = groups_by_name(trainer.optimizer)
    assert set(groups) == {"all", "all.no_decay", "all.muon"}
    muon, head, norms = groups["all.muon"], groups["all"], groups["all.no_decay"]
    assert muon["muon"] and not head["muon"] and not norms["muon"]
    assert (muon["lr"], muon["momentum"], muon["ns_steps"], muon["normalize"]) == \
        (pytest.approx(0.24), 0.6, 3, True)
    assert muon["base_lr"] == pytest.approx(0.24)
    model = trainer.model
    assert {id(p) for p in muon["params"]} == {id(p) for p in model.parameters() if p.ndim == 4}
    assert head["params"] == [model.head.classifier.weight]
    assert (head["lr"], head["momentum"]) == (pytest.approx(1.7447917), 0.85)
    assert head["lr"] * head["weight_decay"] == pytest.approx(0.004)
    assert any(p is model.stem.bias for p in norms["params"])
    assert (norms["lr"], norms["momentum"]) == (pytest.approx(106.0), 0.85)
    assert norms["lr"] * norms["weight_decay"] == pytest.approx(0.004)


def test_default_muon_settings_keep_the_ratio_and_undecayed_norms():
    conv, norm = torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4)
    params = list(conv.parameters()) + list(norm.parameters())
    plain = groups_by_name(build_optimizer([ParamGroup("all", params, 0.5)], "muon",
                                           weight_decay=0.01, momentum=0.9))
    assert plain["all.muon"]["lr"] == pytest.approx(0.5 * MUON_LR_RATIO)
    assert (plain["all.muon"]["momentum"], plain["all.muon"]["ns_steps"]) == (0.9, 5)
    assert plain["all.no_decay"]["weight_decay"] == 0.0
    tuned = groups_by_name(build_optimizer(
        [ParamGroup("all", params, 0.5)], "muon", weight_decay=0.01, momentum=0.9,
        no_decay_lr_scale=4.0, decay_norms=True, muon=MuonSettings(0.1, 0.5, 2, True)))
    assert (tuned["all.muon"]["lr"], tuned["all.muon"]["momentum"]) == (pytest.approx(0.05), 0.5)
    assert tuned["all.no_decay"]["weight_decay"] == pytest.approx(0.0025)


def _bias_at_epoch_starts(trainer):
    """The whitening bias as each epoch starts (after the freeze hook), by epoch."""
    seen = {}
    trainer.epoch_hooks.append(
        lambda t, epoch: seen.__setitem__(epoch, t.model.stem.bias.detach().clone()))
    return seen


def test_whitening_bias_trains_for_its_epochs_then_stays_bit_identical(tiny_folder):
    trainer = fresh_trainer(tiny_recipe(tiny_folder, epochs=3, whiten_bias_epochs=1),
                            tiny_folder / "run", progress=False)
    assert any(isinstance(h, WhitenBiasFreeze) for h in trainer.epoch_hooks)
    biases = _bias_at_epoch_starts(trainer)
    head_before = trainer.model.head.classifier.weight.detach().clone()
    trainer.fit()
    final = trainer.model.stem.bias.detach()
    assert not torch.equal(biases[0], biases[1])  # epoch 1 trained it
    assert torch.equal(biases[1], biases[2]) and torch.equal(biases[2], final)
    assert not trainer.model.stem.bias.requires_grad
    assert not torch.equal(head_before, trainer.model.head.classifier.weight)  # the rest trains


def test_whiten_bias_epochs_refuses_a_net_without_the_bias(tiny_folder):
    config = tiny_recipe(tiny_folder, model_options={"widths": TINY_WIDTHS,
                                                     "whiten_bias": False})
    with pytest.raises(ConfigError, match="--whiten-bias-epochs 3: model 'air-plain' has no"):
        fresh_trainer(config, tiny_folder / "run", progress=False)


@pytest.mark.parametrize("epochs, at", [(1, 2), (2, STEPS_PER_EPOCH + 1)],
                         ids=["one-epoch-mid", "across-the-freeze"])
def test_tiny_run_of_the_recipe_resumes_exactly(tiny_folder, tmp_path, epochs, at):
    """Both runs assembled as ``hfsnet train`` does (``run.fresh_trainer``), so the full run has
    the recipe's optimizer and hook too; ``across-the-freeze`` resumes into the epoch where the
    bias is frozen."""
    config = tiny_recipe(tiny_folder, epochs=epochs, whiten_bias_epochs=1, checkpoint_every=1,
                         keep_last=100, deterministic=True)
    data = load_dataset(str(tiny_folder))
    full = fresh_trainer(config, tmp_path / "full", data=data, progress=False)
    full_losses = record_losses(full)
    full.fit()
    assert len(full.loader) == STEPS_PER_EPOCH
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full.store.step_dir / f"step-{at:09d}.safetensors", part / "checkpoints")
    resumed = resume_trainer(part, data=data, progress=False)
    assert groups_by_name(resumed.optimizer)["all.muon"]["momentum"] == 0.6
    resumed_losses = record_losses(resumed)
    resumed.fit()
    assert resumed_losses == {s: v for s, v in full_losses.items() if s >= at}
    for (name, a), b in zip(full.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for pid, slots in full.optimizer.state_dict()["state"].items():
        for key, value in slots.items():
            assert torch.equal(value, resumed.optimizer.state_dict()["state"][pid][key])
    assert resumed.history[-1]["test_acc"] == full.history[-1]["test_acc"]
