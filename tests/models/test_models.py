import pytest
import torch
from torch import nn

from hfsnet.models import UnknownModelError, create_model, list_models


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def dense(cin: int, cout: int) -> int:
    return cin * cout + cout


def test_seed_cnn_matches_keras_count_layer_by_layer():
    model = create_model("seed-cnn")
    expected = [conv(3, 32, 3), conv(32, 32, 3), conv(32, 64, 3), conv(64, 64, 3),
                dense(64 * 5 * 5, 512), dense(512, 10)]
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [n_params(m) for m in layers] == expected
    assert n_params(model) == sum(expected) == 890_410


def test_hfs_seed_parameter_count_by_hand():
    stage1 = conv(3, 32, 3) + conv(3 + 32, 32, 3) + conv(3 + 64, 32, 1)
    stage2 = conv(32, 64, 3) + conv(32 + 64, 64, 3) + conv(32 + 128, 64, 1)
    head = dense(32 + 64, 512) + dense(512, 10)
    assert n_params(create_model("hfs-seed")) == stage1 + stage2 + head == 152_138


def test_bc_100_12_is_densenet_bc_plus_fusion():
    model = create_model("hfs-bc-100-12")
    # DenseNet-BC (L=100, k=12) has 769,162 parameters; fusing the pooled outputs of stages 1
    # and 2 (108 + 150 channels) into the classifier adds 258 x 10 weights.
    assert n_params(model) == 769_162 + 258 * 10
    assert model.stage_channels() == [108, 150, 342]
    plain = create_model("hfs-bc-100-12", fuse=False)
    assert n_params(plain) == 769_162


@pytest.mark.parametrize("name", ["seed-cnn", "hfs-seed", "hfs-bc-100-12", "hfs"])
def test_shapes_and_interface(name):
    model = create_model(name, num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    feats = model.forward_features(x)
    assert [f.shape[1] for f in feats] == model.stage_channels()
    assert len(model.stage_names()) == len(feats)
    # Every stage halves the resolution, except a DenseNet-style last stage (no pool).
    assert feats[0].shape[-1] < 32
    logits = model.forward_head(feats)
    assert logits.shape == (3, 7)
    torch.testing.assert_close(model(x), logits)


def test_hfs_seed_feature_shapes():
    feats = create_model("hfs-seed").forward_features(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 16), (2, 64, 8, 8)]


@pytest.mark.parametrize("name", ["seed-cnn", "hfs-seed"])
def test_every_parameter_gets_a_gradient(name):
    model = create_model(name)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_small_hfs_every_parameter_gets_a_gradient():
    model = create_model("hfs", stages=(2, 2), growth=4, stem=8)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.arange(4)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_reset_classifier_keeps_trunk():
    model = create_model("hfs-seed")
    trunk_before = [p.clone() for p in model.trunk_parameters()]
    model.reset_classifier(3)
    assert model.num_classes == 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    for before, after in zip(trunk_before, model.trunk_parameters(), strict=True):
        assert torch.equal(before, after)
    with pytest.raises(ValueError):
        model.reset_classifier(0)


def test_trunk_and_head_partition_parameters():
    model = create_model("hfs-seed")
    trunk, head = model.trunk_parameters(), model.head_parameters()
    assert len(trunk) + len(head) == len(list(model.parameters()))
    assert any(p is model.head.classifier.weight for p in head)
    assert n_params(model.head) == sum(p.numel() for p in head)


def test_fusion_off_reads_last_stage_only():
    fused = create_model("hfs-seed")
    plain = create_model("hfs-seed", fuse=False)
    assert fused.num_features == plain.num_features == 512
    assert n_params(fused) - n_params(plain) == 32 * 512


def test_grayscale_input():
    model = create_model("hfs-seed", num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    seed = create_model("seed-cnn", in_channels=1, image_size=28)
    assert seed(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError, match="hfs-seed") as info:
        create_model("hfs-sed")
    assert "Did you mean" in str(info.value)
    assert "seed-cnn" in str(info.value)


def test_registry_lists_presets():
    names = [e.name for e in list_models()]
    assert {"seed-cnn", "hfs-seed", "hfs", "hfs-bc-100-12"} <= set(names)


def test_memory_efficient_matches_plain_outputs_and_gradients():
    torch.manual_seed(0)
    plain = create_model("hfs", stages=(3, 3), growth=6, stem=8, num_classes=5).double()
    efficient = create_model("hfs", stages=(3, 3), growth=6, stem=8, num_classes=5,
                             memory_efficient=True).double()
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    y = torch.arange(4)
    outs = []
    for model in (plain, efficient):
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
