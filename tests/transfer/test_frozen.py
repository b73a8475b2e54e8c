"""The fast frozen feature pass: folded copies compute the original trunk's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hfsnet.data import ImageSet, normalize
from hfsnet.models import FeatureClassifier, create_model
from hfsnet.models.efficientnet import EfficientNetLite, EfficientNetOptions
from hfsnet.models.head import pool_levels
from hfsnet.transfer.extract import CacheSpec, extract
from hfsnet.transfer.frozen import (
    FrozenTrunk,
    FrozenTrunkError,
    _Features,
    _LeafTracer,
    fold_trunk,
    fx_pairs,
    sequential_pairs,
    should_compile,
)


def randomise_norms(model: nn.Module) -> None:
    """Batch norms far from the identity, so that folding them changes every weight."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def efficientnet() -> EfficientNetLite:
    torch.manual_seed(0)
    model = EfficientNetLite(3, 3, EfficientNetOptions(pretrained=False, image_size=64))
    randomise_norms(model)
    return model.eval()


def air() -> FeatureClassifier:
    torch.manual_seed(0)
    model = create_model("hfs-air-s", num_classes=3)
    model.train()
    model.forward_features(torch.randn(8, 3, 32, 32))  # fits the whitening stem
    randomise_norms(model)
    with torch.no_grad():  # hfs-air's norms keep scale 1: any positive scale folds the same
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
    return model.eval()


def seed() -> FeatureClassifier:
    torch.manual_seed(0)
    return create_model("hfs-seed", num_classes=3).eval()


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Worst level's ||got - want|| / ||want||."""
    assert [g.shape for g in got] == [w.shape for w in want]
    return max(float((g.float() - w).norm() / w.norm()) for g, w in zip(got, want, strict=True))


def reference(model: FeatureClassifier, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_features(x)


BUILDERS = {"efficientnet": (efficientnet, 64), "hfs-air-s": (air, 32), "hfs-seed": (seed, 32)}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_folded_trunk_equals_the_original_in_fp32(name: str) -> None:
    build, side = BUILDERS[name]
    model = build()
    x = torch.randn(4, 3, side, side)
    trunk = FrozenTrunk(model, precision="fp32")
    assert relative_error(trunk(x), reference(model, x)) < 1e-4
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert trunk.report.folded == trunk.report.norms == norms  # every norm follows a conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trunk.module.modules())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_folded_trunk_equals_the_original_in_bf16(name: str) -> None:
    build, side = BUILDERS[name]
    model = build()
    x = torch.randn(4, 3, side, side)
    out = FrozenTrunk(model, precision="bf16")(x)
    assert all(f.dtype == torch.bfloat16 for f in out)
    assert relative_error(out, reference(model, x)) < 5e-2


def test_the_original_is_unchanged() -> None:
    model = efficientnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    x = torch.randn(2, 3, 64, 64)
    want = reference(model, x)
    trunk = FrozenTrunk(model, precision="bf16")
    trunk(x)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in model.modules()] == modules
    assert all(torch.equal(a, b) for a, b in zip(reference(model, x), want, strict=True))


def test_a_negative_scale_is_not_folded_through_a_max_pool() -> None:
    model = air()
    with torch.no_grad():
        model.blocks[0].first[2].weight[0] = -1.0  # conv -> max pool -> this norm
    x = torch.randn(4, 3, 32, 32)
    trunk = FrozenTrunk(model)
    assert trunk.report.folded == trunk.report.norms - 1
    assert relative_error(trunk(x), reference(model, x)) < 1e-4


class SharedConvOutput(FeatureClassifier):
    """A conv whose output its norm, an activation and residuals all read: nothing folds, and
    the activation on ``y`` must not run in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.act = nn.ReLU()
        self.act_y = nn.ReLU()
        self.head = nn.Module()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.conv(x)
        return [self.act(self.norm(y)) + y, self.act_y(y) - y]

    def stage_channels(self) -> list[int]:
        return [3]


def test_a_conv_output_read_twice_keeps_its_norm() -> None:
    model = SharedConvOutput()
    randomise_norms(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    trunk = FrozenTrunk(model)
    # The norm stays; the activation may run in place on the norm's fresh output, not on y.
    assert trunk.report.folded == 0 and trunk.report.inplace == 1
    assert isinstance(trunk.module.model.norm, nn.BatchNorm2d)
    assert not trunk.module.model.act_y.inplace
    assert relative_error(trunk(x), reference(model, x)) < 1e-6


class Untraceable(FeatureClassifier):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Module()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.body(x)
        return [y if y.sum() > 0 else -y]

    def stage_channels(self) -> list[int]:
        return [4]


def test_an_untraceable_trunk_folds_its_sequential_pairs() -> None:
    model = Untraceable()
    randomise_norms(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    trunk = FrozenTrunk(model)
    assert not trunk.report.traced and trunk.report.folded == 1
    assert relative_error(trunk(x), reference(model, x)) < 1e-4


def test_the_sequential_fallback_finds_the_pairs_fx_finds() -> None:
    view = _Features(air())
    pairs = sequential_pairs(view)
    assert set(fx_pairs(view, _LeafTracer().trace(view))) == set(pairs)
    assert len(pairs) == 9 and sum(p.through_pool for p in pairs) == 3


def test_fold_trunk_returns_a_copy_computing_forward_features() -> None:
    model = air()
    root, report = fold_trunk(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(root(x), reference(model, x)) < 1e-4
    assert report.traced and report.folded == 9
    assert root.model is not model


def test_compile_setting_and_break_even() -> None:
    with pytest.raises(FrozenTrunkError, match="compile must be one of"):
        FrozenTrunk(seed(), compile="yes")
    assert not should_compile(1e-3, 1000)  # a second of eager work: not worth compiling
    assert should_compile(1e-2, 100_000)  # a quarter of an hour: worth it


def test_compiled_pass_sees_one_batch_shape(monkeypatch) -> None:
    """Compiled, every batch is padded to the caller's batch size, a first split smaller than
    one batch included, so inductor never recompiles for a new shape; the padding never reaches
    the features."""
    shapes: list[int] = []

    def fake_compile(fn, dynamic):
        assert dynamic is False

        def compiled(x):
            shapes.append(len(x))
            return fn(x)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = seed().eval()
    trunk = FrozenTrunk(model, compile="on", batch_size=8)
    torch.manual_seed(2)
    for n in (3, 8, 5, 10):  # a 3-image train split, a test split of 13 in batches of 8,
        # then a batch larger than announced, which compiles its own shape
        x = torch.randn(n, 3, 32, 32)
        got = trunk(x)
        assert [len(f) for f in got] == [n] * len(got)
        with torch.no_grad():
            assert relative_error(got, model.forward_features(x)) < 1e-4
    assert trunk.compiled and shapes == [8, 8, 8, 10]

def test_cached_descriptors_equal_the_unmodified_trunks() -> None:
    model = efficientnet()
    torch.manual_seed(1)
    images = ImageSet(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8),
                      torch.arange(6) % 3, ["a", "b", "c"])
    mean, std = model.preprocessing["mean"], model.preprocessing["std"]
    levels = list(range(1, len(model.stage_channels()) + 1))
    spec = CacheSpec(levels, "gap", mean, std, batch_size=4)
    width = sum(model.stage_channels())
    features = np.zeros((6, width), np.float16)
    labels = np.zeros(6, np.int64)
    extract(model, images, features, labels, spec)
    want = pool_levels(reference(model, normalize(images.images, mean, std)), levels, "gap")
    got = torch.from_numpy(features.astype(np.float32))
    assert float((got - want).norm() / want.norm()) < 1e-2  # the cache stores float16
    assert labels.tolist() == images.labels.tolist()


@pytest.mark.parametrize(("side", "moved", "kept"), [(64, 12, 5), (48, 13, 4)])
def test_symmetric_same_paddings_move_into_the_convolutions(side, moved, kept) -> None:
    """EfficientNet-Lite0's stride-1 depthwise convs (and stride-2 ones on odd sides) pad as much
    before as after: they become plain convs padding inside the convolution, with the same
    output; the stem and stride-2 convs on even sides pad one pixel more after, and stay."""
    torch.manual_seed(0)
    model = EfficientNetLite(3, 3, EfficientNetOptions(pretrained=False, image_size=side))
    randomise_norms(model)
    model.eval()
    unpadded, report = fold_trunk(model)
    padded, kept_report = fold_trunk(model, unpad=False)
    assert (report.unpadded, kept_report.unpadded) == (moved, 0)
    left = [m for m in unpadded.modules() if isinstance(getattr(m, "static_padding", None),
                                                        nn.ZeroPad2d)]
    assert len(left) == kept and all(m.static_padding.padding[0] != m.static_padding.padding[1]
                                     for m in left)
    x = torch.randn(3, 3, side, side)
    with torch.no_grad():
        assert relative_error(unpadded(x), padded(x)) < 1e-6
        assert relative_error(unpadded(x), reference(model, x)) < 1e-4
