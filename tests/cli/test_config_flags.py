"""Flags generated from the option dataclasses: coverage, parse-time checks, values reaching the
config, and messages that only name flags which exist."""

import dataclasses
import math
import re
import typing

import pytest

from hfsnet.cli import build_parser, main
from hfsnet.cli.config_flags import given_values
from hfsnet.errors import HfsnetError
from hfsnet.train.config import RECIPES, ConfigError, TrainConfig, resolve_config
from hfsnet.train.options import Range, flag_of, option_of
from hfsnet.train.runtime import seed_everything
from hfsnet.transfer.errors import CacheError
from hfsnet.transfer.finetune import FinetuneOptions
from hfsnet.transfer.fit import HeadOptions
from hfsnet.transfer.sgd import SgdOptions

FLAG = re.compile(r"--[a-z][a-z0-9-]*")
NOT_FLAGS = {"model_options", "recipe", "eval_batch_size", "track_test"}


def help_flags(capsys, command: str) -> set[str]:
    assert main([command, "--help"]) == 0
    return set(FLAG.findall(capsys.readouterr().out))


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_every_config_field_is_a_train_flag_or_marked_as_none(capsys):
    flags = help_flags(capsys, "train")
    fields = dataclasses.fields(TrainConfig)
    assert all(option_of(f) is not None for f in fields)  # every field decided its flag
    assert {f.name for f in fields if flag_of(f) is None} == NOT_FLAGS
    missing = {flag_of(f) for f in fields if f.name not in NOT_FLAGS} - flags
    assert not missing
    assert "--eval-batch-size" not in flags and "--recipe" in flags


def bad_values(cls: type) -> list[tuple[str, object]]:
    """One refused value per check of ``cls``'s fields, from the declared check itself."""
    hints = typing.get_type_hints(cls)
    values = []
    for f in dataclasses.fields(cls):
        spec = option_of(f)
        if spec is None:
            continue
        if spec.choices is not None:
            values.append((f.name, "no-such-choice"))
        if float in (hints[f.name], *typing.get_args(hints[f.name])):
            values.append((f.name, math.nan))
        if isinstance(spec.check, Range):
            if spec.check.low is not None:
                values.append((f.name, type(spec.check.low)(spec.check.low - 1)))
            if spec.check.high is not None:
                values.append((f.name, type(spec.check.high)(spec.check.high + 1)))
    return values


def refusal(make, error: type[HfsnetError]) -> str:
    with pytest.raises(error) as caught:
        make()
    return str(caught.value)


def named_flags(messages: list[str]) -> set[str]:
    return {flag for message in messages for flag in FLAG.findall(message)}


def test_train_messages_name_real_flags_or_config_keys(capsys):
    cases = bad_values(TrainConfig)
    assert len(cases) > 30  # every range, choice and float field contributes
    messages = [refusal(lambda k=k, v=v: resolve_config(data="x", **{k: v}), ConfigError)
                for k, v in cases]
    messages.append(refusal(lambda: resolve_config(data="x", tta_translate=True), ConfigError))
    messages.append(refusal(lambda: resolve_config(data="x", optimizer="sgd", momentum=0),
                            ConfigError))
    messages.append(refusal(lambda: resolve_config("nope", data="x"), ConfigError))
    assert named_flags(messages) <= help_flags(capsys, "train")
    for (key, _), message in zip(cases, messages[:len(cases)], strict=True):
        field = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
        assert message.startswith(flag_of(field) or f"{key} (config key) ")
    assert "eval_batch_size (config key) must be >= 1, got 0" in messages


def test_transfer_messages_name_flags_of_their_commands(capsys):
    config = resolve_config(data="x", epochs=2)
    finetune = [refusal(lambda k=k, v=v: FinetuneOptions(**{k: v}).validate(config), ConfigError)
                for k, v in bad_values(FinetuneOptions)]
    finetune.append(refusal(lambda: FinetuneOptions(freeze_epochs=3).validate(config),
                            ConfigError))
    assert named_flags(finetune) <= help_flags(capsys, "finetune")
    head = [refusal(lambda k=k, v=v: HeadOptions(**{k: v}).validate(), CacheError)
            for k, v in bad_values(HeadOptions)]
    head += [refusal(lambda k=k, v=v: SgdOptions(**{k: v}).validate(), CacheError)
             for k, v in bad_values(SgdOptions)]
    head.append(refusal(lambda: HeadOptions(hidden=4).validate(), CacheError))
    fit_head = help_flags(capsys, "fit-head")
    assert {"--cache-precision", "--cache-batch-size", "--holdout"} <= named_flags(head)
    assert named_flags(head) <= fit_head


@pytest.mark.parametrize("argv,line", [
    (["--threads", "-1"], "argument --threads: must be >= 0, got '-1'"),
    (["--momentum", "-1"], "argument --momentum: must be in [0, 1), got '-1'"),
    (["--seed", "-5"], "argument --seed: must be in [0, 2**63), got '-5'"),
    (["--seed", str(2**63)], "argument --seed: must be in [0, 2**63)"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1, got '0'"),
    (["--epochs", "0"], "argument --epochs: must be >= 1, got '0'"),
    (["--lr", "-1"], "argument --lr: must be > 0, got '-1'"),
    (["--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),
    (["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (["--image-size", "1"], "argument --image-size: must be in [8, 4096], got '1'"),
    (["--image-size", "5000"], "argument --image-size: must be in [8, 4096], got '5000'"),
    (["--val-split", "1"], "argument --val-split: must be in [0, 1), got '1'"),
    (["--keep-last", "2.5"], "argument --keep-last: expected an integer, got '2.5'"),
    (["--nonfinite", "ignore"], "argument --nonfinite: invalid choice: 'ignore'"),
])
def test_train_refuses_bad_values_at_parse_time(tmp_path, capsys, argv, line):
    # No --data: had parsing let the value through, the run would fail on that instead.
    assert main(["train", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    assert err.splitlines() == [err.strip()] and err.startswith("hfsnet: error: ")
    assert line in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,line", [
    (["finetune", "--out", "o", "--freeze-epochs", "-1"], "--freeze-epochs: must be >= 0"),
    (["finetune", "--out", "o", "--trunk-lr", "0"], "--trunk-lr: must be > 0"),
    (["finetune", "--out", "o", "--label-smoothing", "1"],
     "--label-smoothing: must be in [0, 1)"),
    (["fit-head", "--out", "o", "--holdout", "1"], "--holdout: must be in (0, 1)"),
    (["fit-head", "--out", "o", "--lr", "nan"], "--lr: must be a finite number"),
    (["fit-head", "--out", "o", "--epochs", "0"], "--epochs: must be >= 1"),
    (["cache", "--cache-batch-size", "0"], "--cache-batch-size: must be >= 1"),
    (["cache", "--seed", "-1"], "--seed: must be in [0, 2**63)"),
])
def test_transfer_commands_refuse_bad_values_at_parse_time(capsys, argv, line):
    assert main([*argv, "--checkpoint", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and line in err


def capture_config(monkeypatch) -> list[TrainConfig]:
    """Stop `hfsnet train` where it would start training; the configs it got."""
    seen: list[TrainConfig] = []

    def fake_train(config, out_dir, **kwargs):
        seen.append(config)
        raise HfsnetError("stopped before training")

    monkeypatch.setattr("hfsnet.cli.train.train_with_log", fake_train)
    return seen


def test_given_flags_reach_the_config_and_absent_ones_keep_the_recipe(tmp_path, monkeypatch,
                                                                      capsys):
    seen = capture_config(monkeypatch)
    assert main(["train", "--data", "d", "--out", str(tmp_path / "r"), "--recipe", "fast",
                 "--momentum", "0.8", "--no-flip", "--seed", str(2**63 - 1),
                 "--limit-train", "7"]) == 2
    (config,) = seen
    assert (config.momentum, config.flip, config.seed, config.limit_train) == \
        (0.8, False, 2**63 - 1, 7)
    fast = RECIPES["fast"]
    assert (config.lr, config.batch_size, config.epochs) == \
        (fast["lr"], fast["batch_size"], fast["epochs"])
    assert config.alternate_flips is True and config.tta_flip is True  # bools, not given
    assert config.eval_batch_size == fast["eval_batch_size"]
    assert config.weight_decay == fast["weight_decay"] and config.threads == 0


def test_no_tta_flip_also_drops_a_recipes_translations(tmp_path, monkeypatch, capsys):
    seen = capture_config(monkeypatch)
    assert main(["train", "--data", "d", "--out", str(tmp_path / "r"), "--recipe",
                 "fast-long", "--no-tta-flip"]) == 2
    assert (seen[0].tta_flip, seen[0].tta_translate) == (False, False)


def test_only_given_flags_are_collected():
    args = parse("train", "--momentum", "0.8", "--no-channels-last", "--threads", "0")
    assert given_values(args, TrainConfig) == {"momentum": 0.8, "channels_last": False,
                                               "threads": 0}
    assert given_values(parse("train"), TrainConfig) == {}


def test_fit_head_and_finetune_take_the_shared_flags_from_their_dataclasses():
    args = parse("fit-head", "--checkpoint", "c", "--out", "o", "--epochs", "5",
                 "--cache-precision", "bf16", "--seed", "3")
    sgd = SgdOptions(**given_values(args, SgdOptions))
    head = HeadOptions(**given_values(args, HeadOptions))
    assert (sgd.epochs, sgd.lr, sgd.seed) == (5, SgdOptions().lr, 3)
    assert (head.precision, head.batch_size, head.seed) == ("bf16", 500, 3)
    args = parse("finetune", "--checkpoint", "c", "--out", "o", "--epochs", "4",
                 "--no-flip", "--freeze-epochs", "1", "--train-bn")
    assert given_values(args, FinetuneOptions) == {"freeze_epochs": 1, "train_bn": True}
    assert resolve_config(args.recipe, data="d", **given_values(args, TrainConfig)).epochs == 4
    assert given_values(args, TrainConfig)["flip"] is False


@pytest.mark.parametrize("command", [["finetune", "--checkpoint", "c"], ["adapt", "--model", "m"]])
def test_fine_tuning_commands_default_to_the_benchmarked_fine_tune(command):
    """Without --recipe, `finetune` and `adapt --finetune` train benchmarks/adapt.py's recipe
    (15 epochs, lr 2e-3, 4 px crops, no per-epoch test pass); a flag given still wins."""
    args = parse(*command, "--out", "o")
    config = resolve_config(args.recipe, data="d", **given_values(args, TrainConfig))
    assert (config.epochs, config.lr, config.crop_padding) == (15, 2e-3, 4)
    assert config.track_test is False  # one test pass, after the last epoch
    assert (config.epochs, config.lr) != (TrainConfig.epochs, TrainConfig.lr)  # not the defaults
    args = parse(*command, "--out", "o", "--epochs", "2")
    assert resolve_config(args.recipe, data="d", **given_values(args, TrainConfig)).epochs == 2


def test_the_largest_seed_the_flag_accepts_seeds_everything():
    seed_everything(2**63 - 1)
    assert resolve_config(data="x", seed=2**63 - 1).seed == 2**63 - 1
    with pytest.raises(ConfigError, match=r"--seed must be in \[0, 2\*\*63\)"):
        resolve_config(data="x", seed=2**63)
