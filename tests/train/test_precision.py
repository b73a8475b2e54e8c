"""--precision auto: measured per model and machine, resolved once, and what ran is what
checkpoints say."""

import json
import math
import time

import pytest
import torch
from torch import nn

from hfsnet.train import resolve_config, runtime, train
from hfsnet.train.allocator import allocator_in_effect
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.config import ConfigError
from hfsnet.train.run import resume_trainer
from hfsnet.train.runtime import autocast, bf16_step_ratio, cpu_description, resolve_precision
from tests.helpers import TINY_HFS

CPU = torch.device("cpu")
SHAPE = (3, 8, 8)


def net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(256, 2))


class Timed(nn.Module):
    """Sleeps ``fp32``/``bf16`` seconds per forward and ``spell`` more on its ``busy``-th call
    (a busy spell of another process); records the precision of each call: a model whose
    precisions differ by a known time."""

    def __init__(self, fp32=0.0, bf16=0.0, spell=0.0, busy=-1):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.times = {"fp32": fp32, "bf16": bf16}
        self.spell, self.busy, self.calls = spell, busy, []

    def forward(self, x):
        precision = "bf16" if torch.is_autocast_enabled("cpu") else "fp32"
        self.calls.append(precision)
        time.sleep(self.times[precision] + self.spell * (len(self.calls) - 1 == self.busy))
        return self.linear(x.mean((2, 3)))


def config(data, **over):
    values = dict(model="hfs", data=str(data), epochs=2, batch_size=16, lr=3e-3,
                  model_options=TINY_HFS, channels_last=False)
    values.update(over)
    return resolve_config(**values)


@pytest.fixture
def probe(monkeypatch):
    """Replace the timing probe by a fixed bf16/fp32 ratio; returns a setter."""
    def set_ratio(ratio):
        monkeypatch.setattr(runtime, "bf16_step_ratio", lambda *args, **kwargs: ratio)
    return set_ratio


def test_concrete_precisions_pass_through_untouched(probe):
    probe(0.1)  # would pick bf16: must not be consulted
    assert resolve_precision("fp32", CPU, net(), SHAPE) == "fp32"
    probe(10.0)
    assert resolve_precision("bf16", CPU, net(), SHAPE) == "bf16"


@pytest.mark.parametrize(("native", "ratio", "picked"), [
    (False, 0.5, "bf16"), (False, 0.9, "bf16"), (False, 0.95, "fp32"), (False, 1.4, "fp32"),
    (True, 0.95, "bf16"), (True, 1.0, "bf16"), (True, 1.05, "fp32")])
def test_emulated_bf16_must_be_ten_percent_faster_and_native_fp32_must_be_faster(
        monkeypatch, probe, native, ratio, picked):
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: native)
    probe(ratio)
    assert resolve_precision("auto", CPU, net(), SHAPE) == picked


@pytest.fixture
def by_batch(monkeypatch):
    """Replace the timing probe by a ratio per batch size (a list: one per reading, in order);
    returns the batches it was asked."""
    asked = []

    def set_ratios(ratios, native=True):
        def fake(*args, batch, **kwargs):
            asked.append(batch)
            value = ratios[batch]
            return value.pop(0) if isinstance(value, list) else value
        monkeypatch.setattr(runtime, "bf16_step_ratio", fake)
        monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: native)
        return asked
    return set_ratios


@pytest.mark.parametrize(("native", "ratios", "asked", "picked"), [
    # bf16 instructions: a bf16 reading ends the probe, an fp32 one is checked on more images
    (True, {4: 0.5}, [4], "bf16"),
    (True, {4: 0.9}, [4], "bf16"),
    (True, {4: 0.97}, [4], "bf16"),                    # native: fp32 must be the faster
    (True, {4: 1.05, 16: 0.6}, [4, 16], "bf16"),        # 4 images would have said fp32
    (True, {4: 9.0, 16: 1.2, 64: 0.6}, [4, 16, 64], "bf16"),  # a disturbed reading is not final
    (True, {4: 1.4, 16: 1.4, 64: 1.4}, [4, 16, 64, 64], "fp32"),  # a model slower in bf16
    (True, {4: 1.2, 16: 1.2, 64: [1.1, 0.6]}, [4, 16, 64, 64], "bf16"),  # overruled once only
    (True, {4: 1.05, 16: 1.05, 64: [1.02, 1.05]}, [4, 16, 64, 64], "fp32"),
    # emulated bf16: a clear fp32 reading ends it, anything else is checked on more images
    (False, {4: 2.0}, [4], "fp32"),
    (False, {4: 1.2, 16: 1.4}, [4, 16], "fp32"),
    (False, {4: 0.8, 16: 0.8, 64: [0.78, 0.8]}, [4, 16, 64, 64], "bf16"),  # faster twice
    (False, {4: 0.8, 16: 0.8, 64: [0.78, 1.0]}, [4, 16, 64, 64], "fp32"),
])
def test_the_probe_times_bigger_batches_until_a_reading_agrees_with_the_cpu(
        by_batch, native, ratios, asked, picked):
    tried = by_batch(ratios, native)
    assert resolve_precision("auto", CPU, net(), SHAPE) == picked
    assert tried == asked


@pytest.mark.parametrize(("native", "first", "second", "picked"), [
    (True, 1.2, 0.6, "bf16"), (True, 1.2, 1.05, "fp32"),
    (False, 0.8, 0.85, "bf16"), (False, 0.8, 1.2, "fp32")])
def test_a_slow_probe_is_timed_again_on_its_own_batch(by_batch, monkeypatch, native, first,
                                                      second, picked):
    monkeypatch.setattr(runtime, "PROBE_SECONDS", 0.0)  # every bigger batch counts as too slow
    tried = by_batch({4: [first, second], 16: 0.5}, native)
    assert resolve_precision("auto", CPU, net(), SHAPE) == picked
    assert tried == [4, 4]


def test_the_probe_interleaves_the_precisions_after_a_warm_up_each():
    model = Timed(0.001, 0.001)
    bf16_step_ratio(model, SHAPE)
    assert model.calls == ["fp32", "bf16"] + ["fp32", "bf16"] * runtime.PROBE_PAIRS


@pytest.mark.parametrize("busy", [2, 3, 5])  # the first timed fp32 step, bf16 step, a later one
def test_one_disturbed_step_does_not_change_the_reading(busy):
    model = Timed(0.02, 0.01, spell=0.2, busy=busy)
    assert 0.4 < bf16_step_ratio(model, SHAPE) < 0.7


def test_the_probe_times_the_model_and_leaves_no_trace():
    model = net().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ratio = bf16_step_ratio(model, SHAPE, channels_last=True)
    assert math.isfinite(ratio) and 0.01 < ratio < 100
    assert model.training  # back in training mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[4].weight.grad is None


def test_a_slower_bf16_step_picks_fp32_and_a_hopeless_one_is_timed_once():
    model = Timed(bf16=0.05)  # bf16 takes 50 ms more per step than a ~0.1 ms fp32 step
    assert bf16_step_ratio(model, SHAPE) > runtime.HOPELESS
    assert model.calls.count("bf16") == 1  # the first bf16 step ended the probe
    assert resolve_precision("auto", CPU, Timed(bf16=0.05), SHAPE) == "fp32"


def test_a_faster_bf16_step_picks_bf16():
    model = Timed(fp32=0.02)  # fp32 is the slow one
    assert bf16_step_ratio(model, SHAPE) < 0.5
    assert model.calls.count("bf16") == 1 + runtime.PROBE_PAIRS  # a warm-up and the timed steps
    assert resolve_precision("auto", CPU, Timed(fp32=0.02), SHAPE) == "bf16"


def test_autocast_refuses_an_unresolved_precision():
    with pytest.raises(ValueError, match="resolved precision"):
        autocast(CPU, "auto")


def test_auto_is_the_default_and_an_unknown_precision_is_refused():
    assert resolve_config().precision == "auto"
    assert resolve_config("fast").precision == "auto"
    assert resolve_config("seed").precision == "fp32"  # the note's fidelity
    with pytest.raises(ConfigError, match="--precision"):
        resolve_config(precision="fp16").validate()


@pytest.mark.parametrize(("ratio", "ran"), [(0.5, "bf16"), (2.0, "fp32")])
def test_the_run_records_the_precision_that_ran_and_resume_repeats_it(tiny_folder, tmp_path,
                                                                      probe, ratio, ran):
    probe(ratio)
    out = tmp_path / "run"
    result = train(config(tiny_folder, precision="auto", epochs=1), out, progress=False)
    assert json.loads((out / "config.json").read_text())["precision"] == ran
    assert result.machine["precision"] == ran and result.machine["device"] == "cpu"
    assert result.machine["cpu"] == cpu_description()
    assert result.machine["allocator"] == allocator_in_effect()  # what this process runs under
    assert json.loads((out / "result.json").read_text())["machine"] == result.machine
    assert load_checkpoint(out).meta["config"]["precision"] == ran
    probe(1 / ratio)  # the machine now prefers the other one: a resumed run keeps its own
    assert resume_trainer(out, progress=False).config.precision == ran


def test_the_cpu_is_named_with_the_extensions_that_decide_bf16():
    zen4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512_bf16\n"
    assert cpu_description(zen4) == "AMD EPYC (avx2, avx512f, avx512_bf16)"
    assert cpu_description("model name\t: AMD EPYC\nflags\t\t: fpu avx avx2\n") == \
        "AMD EPYC (avx2)"
    assert cpu_description("model name\t: Old CPU\nflags\t\t: fpu sse2\n") == "Old CPU"
    assert cpu_description("") and "(" not in cpu_description("")  # the platform's name


def test_the_probe_of_a_frozen_model_times_its_forward_alone():
    model = net()
    for param in model.parameters():
        param.requires_grad_(False)
    assert math.isfinite(bf16_step_ratio(model, SHAPE))  # no "does not require grad" error


@pytest.mark.parametrize("native", [True, False])
def test_untimed_auto_follows_the_cpu_instructions_not_the_probe(monkeypatch, native):
    """--deterministic: a probe that reads fp32 (bf16 50 ms slower) is not consulted."""
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: native)
    model = Timed(bf16=0.05)
    assert resolve_precision("auto", CPU, model, SHAPE, timed=False) == ("bf16" if native
                                                                          else "fp32")
    assert model.calls.count("bf16") == 0
    assert resolve_precision("fp32", CPU, model, SHAPE, timed=False) == "fp32"


def test_a_deterministic_run_records_the_untimed_choice(monkeypatch, probe, tiny_folder,
                                                        tmp_path):
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: False)
    probe(0.1)  # timed, bf16 would win
    out = tmp_path / "run"
    result = train(config(tiny_folder, precision="auto", epochs=1, deterministic=True), out,
                   progress=False)
    assert result.machine["precision"] == "fp32"
    assert load_checkpoint(out).meta["config"]["precision"] == "fp32"
