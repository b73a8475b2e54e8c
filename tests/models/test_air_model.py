"""hfs-air: pooled dense stages, frozen norm scales, Dirac init, the fused max head."""

import torch
from torch import nn

from hfsnet.models import create_model


def _stage_params(c_in: int, w: int) -> int:
    # conv3x3 c_in->w, conv3x3 w->w, phi 1x1 2w->w (all bias-free), three BNs (scale + shift)
    return 9 * c_in * w + 9 * w * w + 2 * w * w + 3 * 2 * w


def test_hfs_air_s_parameter_count_by_hand():
    widths = (32, 128, 128)
    expected = (_stage_params(24, 32) + _stage_params(32, 128) + _stage_params(128, 128)
                + sum(widths) * 10)  # head: bias-free linear on the fused max-pooled levels
    model = create_model("hfs-air-s")
    assert sum(p.numel() for p in model.parameters()) == expected == 567_552


def test_feature_shapes_and_logit_scale():
    model = create_model("hfs-air", widths=(8, 16, 16)).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 8, 15, 15), (2, 16, 7, 7), (2, 16, 3, 3)]
    pooled = torch.cat([f.amax((2, 3)) for f in feats], 1)
    torch.testing.assert_close(model(x), model.head.classifier(pooled) / 9)
    assert model.stage_channels() == [8, 16, 16] and model.num_features == 40


def test_norm_scales_are_frozen_and_convs_start_as_identity():
    model = create_model("hfs-air", widths=(8, 16, 16))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    assert all(m.momentum == 0.4 for m in norms)
    second = model.blocks[1].second[0]  # 16 -> 16: the whole filter bank is the identity
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(second(x), x)
    first = model.blocks[1].first[0]  # 8 -> 16: the first 8 filters copy the input
    y = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(first(y)[:, :8], y)


def test_reset_classifier_keeps_the_bias_free_head():
    model = create_model("hfs-air-s")
    model.reset_classifier(5)
    assert model.head.classifier.out_features == 5 and model.head.classifier.bias is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_phi_starts_as_the_sum_of_what_the_stage_shares():
    stage = create_model("hfs-air", widths=(4, 8, 8)).blocks[1]
    a, b = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(stage.phi[0]((a, b)), a + b)


def test_phi_is_a_1x1_conv_over_the_concatenation_with_the_same_gradients():
    from hfsnet.models.hfs_air import ConcatPointwise

    torch.manual_seed(0)
    phi = ConcatPointwise((3, 5), 4)
    a = torch.randn(2, 3, 6, 6, requires_grad=True)
    b = torch.randn(2, 5, 6, 6, requires_grad=True)
    out = phi((a, b))
    joined = torch.cat([a, b], 1)
    expected = torch.nn.functional.conv2d(joined, phi.weight)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (a, b, phi.weight), grad)
    want = torch.autograd.grad(expected, (a, b, phi.weight), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    # The gradient flowing back into a channels-last part is channels-last itself; through
    # torch.cat it was a strided slice, neither layout (the reason this is not torch.cat).
    source = a.detach().to(memory_format=torch.channels_last).requires_grad_()
    part, seen = source * 1, []
    part.register_hook(seen.append)
    phi((part, b.detach().to(memory_format=torch.channels_last))).sum().backward()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_without_sharing_and_fusion_it_is_airbench_plain_net():
    """share=False: a stage returns its second conv's activation; fuse=False: the head reads
    the last stage only. Parameters by hand: no phi, a head on the last width alone."""
    model = create_model("hfs-air", widths=(8, 16, 16), share=False, fuse=False).eval()
    assert all(block.phi is None for block in model.blocks)
    expected = sum(9 * c * w + 9 * w * w + 2 * 2 * w
                   for c, w in ((24, 8), (8, 16), (16, 16))) + 16 * 10
    assert sum(p.numel() for p in model.parameters()) == expected
    x = torch.randn(2, 3, 32, 32)
    stage = model.blocks[0]
    h = model.stem(x)
    torch.testing.assert_close(stage(h), stage.second(stage.first(h)))
    last = model.forward_features(x)[-1]
    torch.testing.assert_close(model(x), model.head.classifier(last.amax((2, 3))) / 9)
    assert model.num_features == 16


def test_sharing_without_fusion_reads_the_last_stage_only():
    model = create_model("hfs-air", widths=(8, 16, 16), fuse=False)
    assert all(block.phi is not None for block in model.blocks)
    assert model.num_features == 16 and model.head.levels == [3]


def test_plain_presets_are_the_hfs_presets_without_sharing():
    plain, shared = create_model("air-plain-s"), create_model("hfs-air-s")
    assert plain.stage_channels() == shared.stage_channels() == [32, 128, 128]
    assert all(b.phi is None for b in plain.blocks) and plain.head.levels == [3]
    assert plain.num_features == 128 and shared.num_features == 288
