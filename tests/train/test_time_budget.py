"""--time-budget: a run sized to a number of seconds by timing one step of its own model."""

import json

import pytest
import torch
from torch import nn

from hfsnet.train import loop, resolve_config, runtime, train
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.config import ConfigError
from hfsnet.train.run import resume_trainer
from hfsnet.train.runtime import epochs_for_budget, train_step_seconds
from tests.helpers import TINY_HFS

CPU = torch.device("cpu")


def config(data, **over):
    values = dict(model="hfs", data=str(data), batch_size=16, lr=3e-3, model_options=TINY_HFS,
                  channels_last=False, precision="fp32")
    values.update(over)
    return resolve_config(**values)


@pytest.fixture
def step_takes(monkeypatch):
    """Fix the timed step's seconds; returns a setter. Each call is counted in ``calls``."""
    calls = []

    def set_seconds(seconds):
        def fake(model, batch_shape, *args, **kwargs):
            calls.append(tuple(batch_shape))
            return seconds
        monkeypatch.setattr(loop, "train_step_seconds", fake)
    set_seconds.calls = calls
    return set_seconds


@pytest.mark.parametrize(("budget", "step", "steps", "epochs"),
                         [(10.0, 0.5, 4, 5), (10.0, 0.5, 3, 6), (9.9, 0.5, 4, 4),
                          (0.1, 0.5, 4, 1)])
def test_the_budget_holds_whole_epochs_and_at_least_one(budget, step, steps, epochs):
    assert epochs_for_budget(budget, step, steps) == epochs


def test_a_run_is_sized_to_its_budget_and_records_it(tiny_folder, tmp_path, step_takes):
    step_takes(0.25)
    out = tmp_path / "run"
    result = train(config(tiny_folder, time_budget=3.0), out, progress=False)
    assert len(step_takes.calls) == 1 and step_takes.calls[0][:2] == (16, 3)  # one batch, RGB
    # the tiny folder's training images, batch 16: 4 steps; 3 s / (4 x 0.25 s) = 3 epochs
    assert result.budget == {"seconds": 3.0, "step_seconds": 0.25, "steps_per_epoch": 4,
                             "epochs": 3}
    assert result.epochs == 3 and len(result.history) == 3
    saved = json.loads((out / "config.json").read_text())
    assert (saved["epochs"], saved["time_budget"]) == (3, None)
    assert json.loads((out / "result.json").read_text())["budget"] == result.budget
    assert load_checkpoint(out).meta["config"]["epochs"] == 3


def test_a_resumed_run_keeps_its_epochs_without_timing_again(tiny_folder, tmp_path, step_takes):
    step_takes(0.5)
    out = tmp_path / "run"
    train(config(tiny_folder, time_budget=3.0), out, progress=False)  # 3 / (4 x 0.5): 1 epoch
    step_takes(0.01)  # the machine got faster: a resume must not resize the run
    before = len(step_takes.calls)
    trainer = resume_trainer(out, progress=False)
    assert trainer.config.epochs == 1 and trainer.budget is None
    assert len(step_takes.calls) == before


def test_no_recipe_has_a_budget_and_a_bad_one_is_refused():
    assert resolve_config("fast").time_budget is None  # recipes train the same on every machine
    assert resolve_config("fast", time_budget=60.0).time_budget == 60.0
    with pytest.raises(ConfigError, match="--time-budget"):
        resolve_config(time_budget=0.0)


def test_the_timed_step_leaves_the_model_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5)).eval()
    model[3].weight.grad = torch.ones_like(model[3].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = train_step_seconds(model, (6, 3, 8, 8), 5, CPU, "fp32")
    assert 0 < seconds < 10
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert not model.training
    assert torch.equal(model[3].weight.grad, torch.ones_like(model[3].weight))
    assert model[0].weight.grad is None


def test_the_step_time_is_the_median_after_the_warm_ups(monkeypatch):
    durations = iter([9.0, 8.0, 7.0, 6.0, 1.0, 3.0, 2.0])  # four slow warm-ups, three timed
    clock = []

    def perf_counter():  # step() reads the clock twice: start, then end
        if len(clock) % 2 == 0:
            clock.append(0.0)
        else:
            clock.append(next(durations))
        return clock[-1]
    monkeypatch.setattr(runtime.time, "perf_counter", perf_counter)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert train_step_seconds(model, (2, 3, 2, 2), 2, CPU, "fp32") == 2.0
    assert len(clock) == 14
