import pytest

from hfsnet.models import create_model
from hfsnet.train.config import RECIPES, ConfigError, TrainConfig, resolve_config
from hfsnet.train.optim import ParamGroup, build_optimizer, set_lr_factor, split_decay
from hfsnet.train.schedule import lr_factor


def test_onecycle_ramps_then_decays_to_zero():
    total = 100  # warmup 0.2 -> 20 steps
    assert lr_factor("onecycle", 0, total, 0.2) == pytest.approx(0.1)
    assert lr_factor("onecycle", 10, total, 0.2) == pytest.approx(0.55)
    assert lr_factor("onecycle", 20, total, 0.2) == pytest.approx(1.0)
    assert lr_factor("onecycle", 60, total, 0.2) == pytest.approx(0.5)
    assert lr_factor("onecycle", 99, total, 0.2) == pytest.approx(1 / 80)


def test_cosine_and_constant():
    assert lr_factor("cosine", 0, 10) == pytest.approx(1.0)
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 0, 100, 0.1) == pytest.approx(0.1)  # warmup (0+1)/10
    assert lr_factor("constant", 7, 10) == 1.0
    with pytest.raises(ValueError):
        lr_factor("steps", 0, 10)


def test_weight_decay_skips_norms_and_biases():
    model = create_model("hfs", stages=(1, 1), growth=4, stem=8)
    decay, no_decay = split_decay(model.parameters())
    assert all(p.ndim > 1 for p in decay) and all(p.ndim <= 1 for p in no_decay)
    opt = build_optimizer([ParamGroup("all", list(model.parameters()), 0.1)], "sgd",
                          weight_decay=5e-4)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["all"]["weight_decay"] == 5e-4
    assert by_name["all.no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_two_groups_keep_their_rates_under_a_schedule():
    model = create_model("hfs-seed")
    groups = [ParamGroup("trunk", model.trunk_parameters(), 0.01),
              ParamGroup("head", model.head_parameters(), 0.05)]
    opt = build_optimizer(groups, "adamw", weight_decay=0.0)
    set_lr_factor(opt, 0.5)
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates["trunk"] == pytest.approx(0.005) and rates["head"] == pytest.approx(0.025)


def test_frozen_everything_is_an_error():
    model = create_model("hfs-seed")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        build_optimizer([ParamGroup("all", list(model.parameters()), 0.1)], "sgd",
                        weight_decay=0.0)


def test_seed_recipe_matches_the_note():
    cfg = resolve_config("seed", data="x")
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs) == ("adam", 2e-4, 32, 20)
    assert cfg.crop_padding == 0 and not cfg.flip and cfg.val_split == 0.1
    assert resolve_config("seed", data="x", epochs=3).epochs == 3  # flags override recipes
    assert set(RECIPES) >= {"default", "seed"}


@pytest.mark.parametrize("key,value,flag", [("epochs", 0, "--epochs"),
                                            ("batch_size", -1, "--batch-size"),
                                            ("lr", 0.0, "--lr"),
                                            ("val_split", 1.0, "--val-split")])
def test_bad_values_name_the_flag(key, value, flag):
    with pytest.raises(ConfigError, match=flag):
        resolve_config(data="x", **{key: value})


def test_config_round_trip_and_type_checks():
    cfg = resolve_config(data="d", model_options={"growth": 8})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="'epochs'"):
        TrainConfig.from_dict({"epochs": "3"})
    with pytest.raises(ConfigError, match="recipe"):
        resolve_config("nope")
    assert TrainConfig.from_dict({"lr": 1}).lr == 1  # ints are valid floats
