"""--precision auto: measured per machine, resolved once, and what ran is what checkpoints say."""

import json
import math

import pytest
import torch

from hfsnet.train import resolve_config, runtime, train
from hfsnet.train.checkpoint import load_checkpoint
from hfsnet.train.config import ConfigError
from hfsnet.train.run import resume_trainer
from hfsnet.train.runtime import autocast, bf16_step_ratio, resolve_precision
from tests.helpers import TINY_HFS

CPU = torch.device("cpu")


def config(data, **over):
    values = dict(model="hfs", data=str(data), epochs=2, batch_size=16, lr=3e-3,
                  model_options=TINY_HFS, channels_last=False)
    values.update(over)
    return resolve_config(**values)


@pytest.fixture
def probe(monkeypatch):
    """Replace the timing probe by a fixed bf16/fp32 ratio; returns a setter."""
    def set_ratio(ratio):
        monkeypatch.setattr(runtime, "bf16_step_ratio", lambda threads: ratio)
    return set_ratio


def test_concrete_precisions_pass_through_untouched(probe):
    probe(0.1)  # would pick bf16: must not be consulted
    assert resolve_precision("fp32", CPU) == "fp32"
    probe(10.0)
    assert resolve_precision("bf16", CPU) == "bf16"


@pytest.mark.parametrize(("ratio", "picked"), [(0.5, "bf16"), (0.9, "bf16"), (0.95, "fp32"),
                                               (1.4, "fp32")])
def test_auto_takes_bf16_only_when_it_is_at_least_ten_percent_faster(probe, ratio, picked):
    probe(ratio)
    assert resolve_precision("auto", CPU) == picked


def test_the_probe_measures_a_real_ratio():
    ratio = bf16_step_ratio(torch.get_num_threads())
    assert math.isfinite(ratio) and 0.05 < ratio < 20
    assert bf16_step_ratio(torch.get_num_threads()) == ratio  # measured once per thread count


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
    train(config(tiny_folder, precision="auto", epochs=1), out, progress=False)
    assert json.loads((out / "config.json").read_text())["precision"] == ran
    assert load_checkpoint(out).meta["config"]["precision"] == ran
    probe(1 / ratio)  # the machine now prefers the other one: a resumed run keeps its own
    assert resume_trainer(out, progress=False).config.precision == ran
