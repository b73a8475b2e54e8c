import json

import pytest
import torch

from hfsnet.cli import main
from hfsnet.models import create_model
from hfsnet.models.level_head import LEVEL_HEAD_MODEL
from hfsnet.train import resolve_config
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.config import ConfigError
from hfsnet.transfer.finetune import (
    FinetuneOptions,
    FreezeSchedule,
    build_finetuner,
    finetune,
)
from hfsnet.transfer.source import load_source, load_target
from tests.helpers import last_json

NEW = ("a", "b", "c", "d")


@pytest.fixture
def new_data(tmp_path, make_image_folder):
    return make_image_folder(tmp_path / "new", classes=NEW, per_class=(16, 4), seed=1)


def config(**over):
    values = dict(model="hfs", data="new", epochs=2, batch_size=16, lr=0.01, precision="fp32",
                  channels_last=False, track_test=False)
    values.update(over)
    return resolve_config(**values)


def trunk_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}


def test_head_and_trunk_learning_rates_land_in_the_optimizer(source_run, new_data, tmp_path):
    source = load_source(source_run)
    trainer, record = build_finetuner(source, load_target(source, str(new_data)),
                                      config(epochs=1, schedule="constant", warmup_fraction=0.0),
                                      tmp_path / "ft", FinetuneOptions(head_lr=0.01),
                                      progress=False)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {n: g["base_lr"] for n, g in groups.items()} == pytest.approx(
        {"head": 0.01, "head.no_decay": 0.01, "trunk": 0.002, "trunk.no_decay": 0.002})
    head_ids = {id(p) for p in source.model.head.parameters()}
    assert all(id(p) in head_ids for p in groups["head"]["params"] + groups["head.no_decay"][
        "params"])
    assert not any(id(p) in head_ids for p in groups["trunk"]["params"])
    assert record["trunk_lr"] == pytest.approx(0.002)
    trainer.fit()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx(
        [g["base_lr"] for g in trainer.optimizer.param_groups])  # constant: scaled by 1


def test_explicit_trunk_rate_and_onecycle_scaling_keep_the_ratio(source_run, new_data, tmp_path):
    source = load_source(source_run)
    trainer, _ = build_finetuner(source, load_target(source, str(new_data)), config(epochs=1),
                                 tmp_path / "ft", FinetuneOptions(head_lr=0.02, trunk_lr=0.005),
                                 progress=False)
    trainer.fit()
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["trunk"] / lrs["head"] == pytest.approx(0.25)
    assert 0 < lrs["head"] < 0.02  # the schedule scaled both groups by the same factor


def test_frozen_trunk_stays_bit_identical(source_run, new_data, tmp_path):
    source = load_source(source_run)
    before = trunk_state(source.model)
    head_before = source.model.head.classifier.weight.clone()
    finetune(source, load_target(source, str(new_data)), config(epochs=2), tmp_path / "ft",
             FinetuneOptions(freeze_epochs=2), progress=False)
    after = load_checkpoint(tmp_path / "ft").build_model()
    assert trunk_state(after).keys() == before.keys()
    assert all(torch.equal(trunk_state(after)[k], v) for k, v in before.items())
    assert after.head.classifier.weight.shape == (4, head_before.shape[1])


def test_train_bn_updates_only_norm_layers_while_frozen(source_run, new_data, tmp_path):
    source = load_source(source_run)
    before = trunk_state(source.model)
    finetune(source, load_target(source, str(new_data)), config(epochs=1), tmp_path / "ft",
             FinetuneOptions(freeze_epochs=1, train_bn=True), progress=False)
    after = trunk_state(load_checkpoint(tmp_path / "ft").build_model())
    norm = [k for k in before if "running_mean" in k]
    conv = [k for k, v in before.items() if v.ndim == 4]
    assert norm and conv
    assert all(not torch.equal(after[k], before[k]) for k in norm)
    assert all(torch.equal(after[k], before[k]) for k in conv)


@pytest.mark.parametrize("norm_stats", ["frozen", "batch"])
def test_norm_statistics_of_trained_stages_follow_norm_stats(source_run, new_data, tmp_path,
                                                             norm_stats):
    source = load_source(source_run)
    before = trunk_state(source.model)
    finetune(source, load_target(source, str(new_data)), config(epochs=1), tmp_path / "ft",
             FinetuneOptions(norm_stats=norm_stats), progress=False)
    after = trunk_state(load_checkpoint(tmp_path / "ft").build_model())
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    shifts = [k for k in before if k.endswith(".bias") and k.replace(".bias", ".running_mean")
              in before]
    conv = [k for k, v in before.items() if v.ndim == 4]
    assert stats and shifts and conv
    assert all(not torch.equal(after[k], before[k]) for k in conv + shifts)  # all of them train
    kept = [torch.equal(after[k], before[k]) for k in stats]
    assert all(kept) if norm_stats == "frozen" else not any(kept)
    record = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert record["norm_stats"] == norm_stats


def test_unfrozen_after_the_frozen_epochs(source_run, new_data, tmp_path):
    source = load_source(source_run)
    before = trunk_state(source.model)
    finetune(source, load_target(source, str(new_data)), config(epochs=2), tmp_path / "ft",
             FinetuneOptions(freeze_epochs=1), progress=False)
    after = trunk_state(load_checkpoint(tmp_path / "ft").build_model())
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_gradual_unfreezing_goes_from_the_deepest_stage():
    model = create_model("hfs", num_classes=3, stages=(1, 1, 1), growth=4, stem=8)
    stages = model.stage_modules()
    covered = [id(p) for modules in stages for m in modules for p in m.parameters()]
    assert sorted(covered) == sorted(id(p) for p in model.trunk_parameters())
    assert stages[0][0] is model.stem  # the stem trains with the first stage
    schedule = FreezeSchedule(model, freeze_epochs=1, unfreeze="gradual")
    assert [schedule.frozen(e) for e in range(5)] == [[0, 1, 2], [0, 1], [0], [], []]
    schedule(None, 1)
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.blocks[2].parameters())


def test_frozen_levels_stay_frozen_and_out_of_the_optimizer(source_run, new_data, tmp_path,
                                                            capsys):
    """--frozen-levels 1: the shallowest level (with the stem) keeps its weights bit for bit
    through a fine-tune whose deeper levels train, sits in no optimizer group (the printed
    groups say so) and is recorded; with gradual unfreezing it never thaws."""
    source = load_source(source_run)
    before = trunk_state(source.model)
    shallow = {id(p) for m in source.model.stage_modules()[0] for p in m.parameters()}
    names = {id(p): n for n, p in source.model.named_parameters()}
    frozen_keys = {names[i] for i in shallow}
    trainer, record = build_finetuner(source, load_target(source, str(new_data)), config(),
                                      tmp_path / "ft", FinetuneOptions(frozen_levels=1),
                                      progress=False)
    assert "in no group (not trained)" in capsys.readouterr().err
    grouped = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not shallow & grouped and record["frozen_levels"] == 1
    trainer.fit()
    after = trunk_state(load_checkpoint(tmp_path / "ft").build_model())
    changed = {k for k in before if not torch.equal(after[k], before[k])}
    assert changed and not changed & frozen_keys
    schedule = FreezeSchedule(source.model, freeze_epochs=1, unfreeze="gradual",
                              frozen_levels=1)
    assert [schedule.frozen(e) for e in range(4)] == [[0, 1], [0], [0], [0]]


def test_frozen_levels_leave_a_level_to_train(source_run, new_data, tmp_path):
    source = load_source(source_run)
    levels = len(source.model.stage_modules())
    with pytest.raises(ConfigError, match=f"--frozen-levels {levels}: .* has {levels} levels, "
                       f"so at most {levels - 1} can stay frozen"):
        build_finetuner(source, load_target(source, str(new_data)), config(), tmp_path / "ft",
                        FinetuneOptions(frozen_levels=levels), progress=False)

def test_new_classes_replace_the_classifier_and_are_stored(source_run, new_data, tmp_path):
    source = load_source(source_run)
    finetune(source, load_target(source, str(new_data)), config(epochs=1), tmp_path / "ft",
             FinetuneOptions(), progress=False)
    ckpt = load_checkpoint(tmp_path / "ft")
    assert ckpt.meta["classes"] == list(NEW) and ckpt.meta["num_classes"] == 4
    assert ckpt.meta["mean"] == [0.3] * 3  # normalised as the trunk was trained
    record = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert record["head"] == "classifier reset"
    assert record["source_classes"] == ["circle", "square", "stripe"]


def test_cache_initialised_head_then_fine_tuned(source_run, new_data, tmp_path, capsys):
    assert main(["finetune", "--checkpoint", str(source_run), "--data", str(new_data),
                 "--out", str(tmp_path / "ft"), "--epochs", "1", "--head-lr", "0.003",
                 "--head-init", "cache", "--precision", "fp32", "--quiet", "--json"]) == 0
    result = last_json(capsys)
    assert result["epochs"] == 1
    ckpt = load_checkpoint(tmp_path / "ft")
    assert ckpt.meta["model"] == LEVEL_HEAD_MODEL
    assert ckpt.build_model().model_options["trunk"] == "hfs"
    record = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert record["head"] == "ridge on the feature cache" and record["cache_built"]
    assert (source_run / "feature-cache").is_dir()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ft"), "--data", str(new_data)]) == 0


@pytest.mark.parametrize("options,message", [
    (FinetuneOptions(freeze_epochs=3), "--freeze-epochs must be in [0, --epochs=2]"),
    (FinetuneOptions(head_lr=0.01, trunk_lr=0.0), "--trunk-lr must be > 0"),
    (FinetuneOptions(unfreeze="sometimes"), "--unfreeze must be one of"),
])
def test_bad_options_name_the_flag(source_run, new_data, tmp_path, options, message):
    source = load_source(source_run)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_finetuner(source, load_target(source, str(new_data)), config(), tmp_path / "ft",
                        options, progress=False)


def test_a_finished_fine_tune_is_refused_unless_overwrite(source_run, new_data, tmp_path, capsys):
    flags = ["finetune", "--checkpoint", str(source_run), "--data", str(new_data), "--out",
             str(tmp_path / "ft"), "--epochs", "1", "--precision", "fp32", "--quiet"]
    assert main(flags) == 0
    first = load_checkpoint(tmp_path / "ft").meta["run_id"]
    capsys.readouterr()
    assert main(flags) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the parameter groups: the one error line
    assert "holds a run" in last and "--overwrite" in last and "Traceback" not in err
    assert load_checkpoint(tmp_path / "ft").meta["run_id"] == first  # nothing was touched
    assert main([*flags, "--overwrite"]) == 0
    assert load_checkpoint(tmp_path / "ft").meta["run_id"] != first
