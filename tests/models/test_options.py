"""The model contract: options checked by name and value, sizes bounded before allocation,
registration without import side effects."""

import ast
import subprocess
import sys
import time

import pytest
import torch

import hfsnet
from hfsnet.errors import HfsnetError
from hfsnet.models import ModelOptionError, UnknownModelError, create_model, list_models
from hfsnet.models.registry import MAX_PARAMS


def test_unknown_option_names_the_model_the_option_and_close_matches():
    with pytest.raises(ModelOptionError) as info:
        create_model("hfs-seed", fusion=False)
    message = str(info.value)
    assert message.startswith("model 'hfs-seed': unknown option 'fusion'. Did you mean fuse?")
    assert "Valid options: stages, growth," in message and "activation" in message
    assert isinstance(info.value, HfsnetError)


def test_an_unknown_option_without_close_matches_lists_the_valid_ones():
    with pytest.raises(ModelOptionError, match=r"unknown option 'zzz'\. Valid options: "
                                               r"widths, activation"):
        create_model("hfs-air-s", zzz=1)


@pytest.mark.parametrize("name,options,message", [
    ("hfs", {"activation": "bogus"}, "option 'activation': expected one of relu, silu, gelu, "
                                     "got 'bogus'"),
    ("hfs", {"growth": -4}, "option 'growth': expected an integer >= 1, got -4"),
    ("hfs", {"growth": [4, 4]}, "option 'growth': expected a list of 3 integers >= 1"),
    ("hfs", {"stages": []}, "option 'stages': expected a list of 1 to 16 integers >= 1"),
    ("hfs", {"stem": 2.5}, "option 'stem': expected an integer >= 0, got 2.5"),
    ("hfs", {"fuse": "yes"}, "option 'fuse': expected true or false, got 'yes'"),
    ("hfs", {"layer_dropout": 1.0}, "option 'layer_dropout': expected a number in [0, 1)"),
    ("hfs", {"projection_widths": 1.5}, "option 'projection_widths': expected a compression "
                                        "ratio in (0, 1]"),
    ("hfs-air", {"widths": [8, 0]}, "option 'widths': expected a list of 1 to 16 integers"),
    ("hfs-air", {"logit_scale": 0}, "option 'logit_scale': expected a finite number > 0"),
    ("seed-cnn", {"image_size": 12}, "option 'image_size': expected at least 16"),
    ("seed-cnn", {"widths": [8]}, "option 'widths': expected a list of 2 integers"),
    ("level-head", {}, "option 'trunk': expected the name of a registered model, got ''"),
    ("level-head", {"trunk": "hfs", "trunk_options": [1]}, "option 'trunk_options': expected "
                                                           "a mapping"),
    ("level-head", {"trunk": "level-head"}, "option 'trunk': expected a plain model"),
    ("level-head", {"trunk": "hfs-seed", "pool": "sum"}, "option 'pool': expected one of gap, "
                                                         "max, 2x2"),
])
def test_bad_values_name_the_model_the_option_and_what_was_expected(name, options, message):
    with pytest.raises(ModelOptionError) as info:
        create_model(name, **options)
    assert str(info.value).startswith(f"model {name!r}: ")
    assert message in str(info.value)


def test_trunk_options_are_checked_as_the_trunks():
    with pytest.raises(ModelOptionError, match="model 'hfs-seed': unknown option 'widths'"):
        create_model("level-head", trunk="hfs-seed", trunk_options={"widths": [1]})
    with pytest.raises(ModelOptionError, match=r"option 'levels': expected stage numbers in "
                                               r"1\.\.2 \(trunk 'hfs-seed' has 2 stages\)"):
        create_model("level-head", trunk="hfs-seed", levels=[3])


def test_bad_class_and_channel_counts_are_refused():
    with pytest.raises(ModelOptionError, match="'hfs-seed': num_classes: expected an integer "
                                               ">= 1, got 0"):
        create_model("hfs-seed", num_classes=0)
    with pytest.raises(ModelOptionError, match="in_channels: expected an integer >= 1, got -3"):
        create_model("hfs-seed", in_channels=-3)


@pytest.mark.parametrize("name,options", [
    ("hfs-air", {"widths": [10**6]}),
    ("hfs", {"stages": [2], "growth": 10**6, "stem": 8}),
    ("seed-cnn", {"hidden": 10**8}),
    ("level-head", {"trunk": "hfs-seed", "hidden": 10**9}),
])
def test_absurd_sizes_are_refused_before_allocation(name, options):
    start = time.perf_counter()
    with pytest.raises(ModelOptionError, match=rf"model '{name}': these options make "
                                               rf"[\d,]+ parameters, more than the "
                                               rf"{MAX_PARAMS:,}"):
        create_model(name, **options)  # allocated for real, these would need terabytes
    assert time.perf_counter() - start < 5


def test_sizes_past_what_a_tensor_can_index_are_refused_too():
    with pytest.raises(ModelOptionError, match="model 'hfs-air': these options make a tensor "
                                               "too large to index"):
        create_model("hfs-air", widths=[10**10, 10**10])


def test_depth_is_bounded_before_any_build():
    start = time.perf_counter()
    with pytest.raises(ModelOptionError, match="option 'stages': expected at most 1000 dense "
                                               "layers in all, got"):
        create_model("hfs", stages=[100_000])
    assert time.perf_counter() - start < 1


def test_a_bug_inside_a_constructor_surfaces_as_itself(monkeypatch):
    from hfsnet.models import hfs

    def broken(self, *args, **kwargs):
        raise TypeError("a bug, not a bad option")

    monkeypatch.setattr(hfs.HFSNet, "_init_weights", broken)
    with pytest.raises(TypeError, match="a bug, not a bad option"):
        create_model("hfs-seed")


def test_model_options_record_what_the_caller_passed():
    model = create_model("hfs-seed", hidden=64, stages=[2, 2])
    assert model.model_options == {"hidden": 64, "stages": [2, 2]}
    assert model.model_name == "hfs-seed"


def test_create_model_is_exported_at_the_top_level():
    assert hfsnet.create_model is create_model
    assert hfsnet.create_model("hfs-seed", num_classes=4).num_classes == 4


def test_importing_models_imports_no_higher_layer_and_registers_everything():
    code = ("import sys, hfsnet.models as m; "
            "print(repr((sorted(k for k in sys.modules if k.startswith('hfsnet.')), "
            "[e.name for e in m.list_models()])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    modules, names = ast.literal_eval(out.strip())
    for layer in ("hfsnet.transfer", "hfsnet.train", "hfsnet.interop"):
        assert not any(m == layer or m.startswith(layer + ".") for m in modules), modules
    assert "level-head" in names and "hfs-air-s" in names


def test_every_entry_builds_from_its_defaults_with_a_checked_options_type():
    for entry in list_models():
        if entry.name == "level-head":
            continue  # needs a trunk
        parsed = entry.options.from_mapping(dict(entry.defaults))
        assert type(parsed) is entry.options


def test_unknown_model_is_still_its_own_error():
    with pytest.raises(UnknownModelError, match="Did you mean hfs-seed"):
        create_model("hfs-sed")


def test_measuring_on_the_meta_device_draws_no_random_numbers():
    from hfsnet.models.hfs import HFSNet, HFSOptions

    torch.manual_seed(0)
    direct = HFSNet(10, 3, HFSOptions(stages=(1, 1), growth=4, stem=8)).state_dict()
    torch.manual_seed(0)
    created = create_model("hfs", stages=[1, 1], growth=4, stem=8).state_dict()
    assert direct.keys() == created.keys()
    assert all(torch.equal(direct[k], created[k]) for k in direct)
